//! `GET /bluebutton/fhir/{Patient|Coverage|ExplanationOfBenefit}`: a session's claims data from CMS, every
//! page, as one Bundle; `POST /bluebutton/sync`: the admin sync.
//!
//! A thin adapter: every rule is in `shared`. Built for `wasm32-wasip2` only (natively this crate is empty).
#![cfg(target_arch = "wasm32")]

use shared::http::routes::FhirFetch;
use spin_sdk::http::{IncomingRequest, ResponseOutparam};

#[spin_sdk::http_component]
async fn handle(req: IncomingRequest, outparam: ResponseOutparam) {
    shared::spin::serve(FhirFetch, req, outparam).await
}
