//! `GET /bluebutton/callback`: exchanges CMS's code for tokens and answers an opaque session;
//! `DELETE /bluebutton/session` ends one.
//!
//! A thin adapter: every rule is in `shared`. Built for `wasm32-wasip2` only (natively this crate is empty).
#![cfg(target_arch = "wasm32")]

use shared::http::routes::Callback;
use spin_sdk::http::{IncomingRequest, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(req: IncomingRequest, outparam: ResponseOutparam) {
    shared::spin::serve(Callback, req, outparam).await
}
