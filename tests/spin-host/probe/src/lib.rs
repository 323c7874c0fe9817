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
use spin_sdk::wit::wasi::keyvalue::{atomics, batch, store as wasi_store};

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

fn text(value: Option<Vec<u8>>) -> String {
    value.map_or("none".into(), |v| String::from_utf8_lossy(&v).into_owned())
}

fn cas(bucket: &wasi_store::Bucket, req: &http::Request<Vec<u8>>) -> String {
    let key = param(req, "key");
    let cas = match atomics::Cas::new(bucket, &key) {
        Ok(cas) => cas,
        Err(e) => return format!("new: {e:?}"),
    };
    let current = if param(req, "skip_current") == "1" {
        "skipped".to_string()
    } else {
        match cas.current() {
            Ok(v) => text(v),
            Err(e) => return format!("current: {e:?}"),
        }
    };
    let interfere = param(req, "interfere");
    if !interfere.is_empty() {
        if let Err(e) = bucket.set(&key, interfere.as_bytes()) {
            return format!("interfere: {e:?}");
        }
    }
    let retry = param(req, "retry");
    let swap = match atomics::swap(cas, param(req, "value").as_bytes()) {
        Ok(()) => "ok".to_string(),
        // With `retry=...`, the fresh CAS the host hands back is used as it comes (no `current`).
        Err(atomics::CasError::CasFailed(fresh)) if !retry.is_empty() => {
            match atomics::swap(fresh, retry.as_bytes()) {
                Ok(()) => "cas-failed retry=ok".to_string(),
                Err(atomics::CasError::CasFailed(_)) => "cas-failed retry=cas-failed".to_string(),
                Err(atomics::CasError::StoreError(e)) => format!("cas-failed retry={e:?}"),
            }
        }
        Err(atomics::CasError::CasFailed(_)) => "cas-failed".to_string(),
        Err(atomics::CasError::StoreError(e)) => format!("store-error {e:?}"),
    };
    let stored = match bucket.get(&key) {
        Ok(v) => text(v),
        Err(e) => format!("{e:?}"),
    };
    format!("current={current} swap={swap} stored={stored}")
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
        // `wasi:keyvalue` atomics on a label, reported as text so two hosts can be compared.
        "/kv/incr" => match wasi_store::open(&param(&req, "label")) {
            Ok(bucket) => {
                let delta = param(&req, "delta").parse().unwrap_or(1);
                match atomics::increment(&bucket, &param(&req, "key"), delta) {
                    Ok(n) => answer(200, n.to_string()),
                    Err(e) => answer(500, format!("{e:?}")),
                }
            }
            Err(e) => answer(403, format!("{e:?}")),
        },
        // A compare-and-swap: `current` (unless `skip_current=1`), then (with `interfere=...`) a plain write
        // of that value to the key between `current` and `swap`, then `swap` with `value`; the answer says
        // what `current` saw, what `swap` reported, and what is stored afterwards.
        // `wasi:keyvalue/batch.get-many` of comma-separated `keys`.
        "/kv/get-many" => match wasi_store::open(&param(&req, "label")) {
            Ok(bucket) => {
                let keys: Vec<String> = param(&req, "keys").split(',').map(String::from).collect();
                match batch::get_many(&bucket, &keys) {
                    Ok(pairs) => answer(
                        200,
                        pairs
                            .into_iter()
                            .map(|(k, v)| format!("{k}={}", text(v)))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    Err(e) => answer(500, format!("{e:?}")),
                }
            }
            Err(e) => answer(403, format!("{e:?}")),
        },
        "/kv/cas" => match wasi_store::open(&param(&req, "label")) {
            Ok(bucket) => answer(200, cas(&bucket, &req)),
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
