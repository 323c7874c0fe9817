//! `GET /bluebutton/fhir/{Patient|Coverage|ExplanationOfBenefit}`: a session's claims data from CMS,
//! every page, streamed as one Bundle.
//!
//! Built for `wasm32-wasip2` only: natively this crate is empty (its rules are tested in `shared`).
#![cfg(target_arch = "wasm32")]

use shared::ports::write_full;
use shared::spin::{read_request, SpinPlatform, SpinResponseWriter};
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle(req: IncomingRequest, outparam: ResponseOutparam) {
    let writer = SpinResponseWriter::new(outparam);
    match read_request(req).await {
        Ok(req) => shared::fetch::handle(&SpinPlatform::new(), req, writer).await,
        Err(detail) => write_full(writer, shared::Error::BadRequest(detail).into_response()),
    }
}
