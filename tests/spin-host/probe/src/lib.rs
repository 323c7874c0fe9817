//! A test-only component that reports what the host lets it see, so the host's Spin behaviours can be
//! proven: memory that does not survive between requests, key-value labels, variable scoping, and the
//! outbound allow-list.
//!
//! Built for `wasm32-wasip2` only: natively this crate is empty.
#![cfg(target_arch = "wasm32")]

use std::sync::atomic::{AtomicU64, Ordering};

use spin_sdk::http::{send, ErrorCode, SendError};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

/// Lives as long as the instance: a host that reused instances would make it count past 1.
static REQUESTS_SEEN: AtomicU64 = AtomicU64::new(0);

fn param(req: &http::Request<Vec<u8>>, name: &str) -> String {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.replace("%2F", "/").replace("%3A", ":"))
        .unwrap_or_default()
}

fn answer(status: u16, body: String) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .body(body.into_bytes())
        .expect("valid response")
}

#[http_component]
async fn handle(req: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let info = req
        .headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    match info.as_str() {
        "/memory" => {
            let seen = REQUESTS_SEEN.fetch_add(1, Ordering::SeqCst) + 1;
            answer(200, seen.to_string())
        }
        "/kv/set" => match Store::open(&param(&req, "label")) {
            Ok(store) => match store.set(&param(&req, "key"), param(&req, "value").as_bytes()) {
                Ok(()) => answer(200, "stored".into()),
                Err(e) => answer(500, format!("{e:?}")),
            },
            Err(e) => answer(403, format!("{e:?}")),
        },
        "/kv/get" => match Store::open(&param(&req, "label")) {
            Ok(store) => match store.get(&param(&req, "key")) {
                Ok(Some(value)) => answer(200, String::from_utf8_lossy(&value).into_owned()),
                Ok(None) => answer(404, "absent".into()),
                Err(e) => answer(500, format!("{e:?}")),
            },
            Err(e) => answer(403, format!("{e:?}")),
        },
        "/variable" => match spin_sdk::variables::get(&param(&req, "name")) {
            Ok(value) => answer(200, value),
            Err(e) => answer(404, format!("{e:?}")),
        },
        "/fetch" => {
            let outbound = http::Request::get(param(&req, "url"))
                .body(Vec::new())
                .expect("valid request");
            match send::<_, http::Response<Vec<u8>>>(outbound).await {
                Ok(resp) => answer(
                    200,
                    format!(
                        "{} {}",
                        resp.status().as_u16(),
                        String::from_utf8_lossy(resp.body())
                    ),
                ),
                Err(SendError::Http(ErrorCode::HttpRequestDenied)) => {
                    answer(502, "HttpRequestDenied".into())
                }
                Err(e) => answer(502, format!("{e}")),
            }
        }
        "/headers" => {
            let mut names: Vec<String> = req
                .headers()
                .iter()
                .filter(|(n, _)| n.as_str().starts_with("spin-"))
                .map(|(n, v)| format!("{}={}", n, v.to_str().unwrap_or("")))
                .collect();
            names.sort();
            answer(200, names.join("\n"))
        }
        "/panic" => panic!("the probe was asked to trap"),
        other => answer(404, format!("no probe at {other}")),
    }
}
