//! `GET /bluebutton/fhir/{Patient|Coverage|ExplanationOfBenefit}`: a session's claims data from CMS.

use shared::spin::SpinPlatform;
use spin_sdk::http_component;

#[http_component]
async fn handle(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    shared::handlers::fhir_fetch(&SpinPlatform::new(), req).await
}
