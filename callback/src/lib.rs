//! `GET /bluebutton/callback`: CMS sends the beneficiary back here with a code (or a refusal).
//!
//! Built for `wasm32-wasip2` only: natively this crate is empty (its rules are tested in `shared`).
#![cfg(target_arch = "wasm32")]

use shared::spin::SpinPlatform;
use spin_sdk::http_component;

#[http_component]
async fn handle(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    shared::handlers::callback(&SpinPlatform::new(), req).await
}
