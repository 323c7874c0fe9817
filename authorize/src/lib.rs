//! `GET /bluebutton/authorize`: sends the beneficiary to CMS with a fresh state and PKCE challenge.
//!
//! A thin adapter: every rule is in `shared`. Built for `wasm32-wasip2` only (natively this crate is empty).
#![cfg(target_arch = "wasm32")]

use shared::http::routes::Authorize;
use spin_sdk::http::{IncomingRequest, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(req: IncomingRequest, outparam: ResponseOutparam) {
    shared::spin::serve(Authorize, req, outparam).await
}
