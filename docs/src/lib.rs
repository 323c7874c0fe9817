//! `/docs` (Swagger UI, offline), `/openapi.json`, `/bluebutton/healthz`, and a problem+json 404 for any
//! path no other component serves.
//!
//! Built for `wasm32-wasip2` only: natively this crate is empty (its rules are tested in `shared`).
#![cfg(target_arch = "wasm32")]

use std::sync::Arc;

use shared::spin::SpinPlatform;
use shared::web::no_store;
use shared::Error;
use spin_sdk::http_component;

fn file(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body)
        .expect("valid response")
}

fn redirect(to: &str) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(302)
        .header("location", to)
        .body(Vec::new())
        .expect("valid response")
}

#[http_component]
fn handle(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let path = req.uri().path().to_string();
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return match path.as_str() {
            "/openapi.json" | "/bluebutton/healthz" | "/docs" => {
                Error::MethodNotAllowed("use GET".into(), "GET").into_response()
            }
            p if p.starts_with("/docs/") => {
                Error::MethodNotAllowed("use GET".into(), "GET").into_response()
            }
            _ => not_found(&path),
        };
    }
    match path.as_str() {
        "/" | "/docs" => redirect("/docs/"),
        "/openapi.json" => file(
            200,
            "application/json",
            shared::api::openapi_json().into_bytes(),
        ),
        "/bluebutton/healthz" => no_store(shared::handlers::healthz(&SpinPlatform::new())),
        p if p.starts_with("/docs/") => {
            let tail = &p["/docs/".len()..];
            let config = Arc::new(utoipa_swagger_ui::Config::from("/openapi.json"));
            match utoipa_swagger_ui::serve(
                if tail.is_empty() { "index.html" } else { tail },
                config,
            ) {
                Ok(Some(f)) => file(200, &f.content_type, f.bytes.to_vec()),
                Ok(None) => not_found(&path),
                Err(e) => Error::BadGateway(format!("cannot serve the docs: {e}")).into_response(),
            }
        }
        _ => not_found(&path),
    }
}

fn not_found(path: &str) -> http::Response<Vec<u8>> {
    Error::NotFound(format!(
        "no route {path}: see /docs for the API, or /openapi.json"
    ))
    .into_response()
}
