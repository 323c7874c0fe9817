//! `GET /bluebutton/authorize`: sends the beneficiary to CMS with a fresh state and PKCE challenge.

use shared::spin::SpinPlatform;
use spin_sdk::http_component;

#[http_component]
async fn handle(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    shared::handlers::authorize(&SpinPlatform::new(), req).await
}
