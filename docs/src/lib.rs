//! `/docs` (Swagger UI, offline), `/openapi.json`, `/bluebutton/healthz` for the whole app, and a
//! problem+json 404 for any path no other component serves.
//!
//! A thin adapter: every rule is in `shared`; this crate only bundles Swagger UI's files at build time
//! (`build.rs`). Built for `wasm32-wasip2` only (natively this crate is empty).
#![cfg(target_arch = "wasm32")]

use shared::http::routes::docs::Assets;
use shared::http::routes::Docs;
use spin_sdk::http::{IncomingRequest, ResponseOutparam};

static ASSETS: Assets = include!(concat!(env!("OUT_DIR"), "/assets.rs"));

#[spin_sdk::http_component]
async fn handle(req: IncomingRequest, outparam: ResponseOutparam) {
    shared::spin::serve(Docs(&ASSETS), req, outparam).await
}
