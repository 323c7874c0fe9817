//! `/bluebutton/connect/...`: delivery to LinuxForHealth connect and its outbox.

use shared::spin::SpinPlatform;
use spin_sdk::http_component;

#[http_component]
async fn handle(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    shared::handlers::connect_push(&SpinPlatform::new(), req).await
}
