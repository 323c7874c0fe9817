//! `/bluebutton/connect/...`: admin delivery to LinuxForHealth connect, its outbox and dead letters.
//!
//! A thin adapter: every rule is in `shared`. Built for `wasm32-wasip2` only (natively this crate is empty).
#![cfg(target_arch = "wasm32")]

use shared::http::routes::ConnectPush;
use spin_sdk::http::{IncomingRequest, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(req: IncomingRequest, outparam: ResponseOutparam) {
    shared::spin::serve(ConnectPush, req, outparam).await
}
