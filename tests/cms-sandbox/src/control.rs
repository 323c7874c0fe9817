//! Test control (`/_emulator/`), fault injection, request counters and the per-token throttle.

use super::data::format_instant_ms;
use super::oauth::{NOT_AUTHENTICATED, PERMISSION_DENIED};
use super::{
    detail_response, html_response, json_response, operation_outcome, v2_patient_id, ApiVersion,
    AppState, Options, CT_JSON,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Statuses random faults draw from.
const RANDOM_FAULTS: [u16; 4] = [500, 502, 503, 429];
/// BB2's default `TOKEN_THROTTLE_RATE` is 100000/s.
const DEFAULT_THROTTLE_LIMIT: u64 = 100_000;

#[derive(Clone, Debug)]
struct StartIndexFault {
    start_index: usize,
    status: u16,
    remaining: u64,
    resource: Option<String>,
    /// A broken 200 instead of an error status.
    body: Option<BodyFault>,
}

/// A 200 whose body is broken: cut short, not JSON, or larger than any page should be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum BodyFault {
    Truncated,
    Malformed,
    Huge(usize),
}

/// What an injected fault does to a FHIR data request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Fault {
    Status(StatusCode),
    Body(BodyFault),
}

/// What a client sees for an injected fault. v3 passes BFD's OperationOutcome through with its status.
pub(crate) fn injected(ver: ApiVersion, fault: Fault, retry_after: u64, ct: &str) -> Response {
    match (ver, fault) {
        (_, Fault::Body(body)) => body_fault_response(body),
        (ApiVersion::V2, Fault::Status(status)) => fault_response(status, retry_after, ct),
        (ApiVersion::V3, Fault::Status(status)) => {
            let mut r = operation_outcome(
                status,
                &format!(
                    "{} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("Error")
                ),
            );
            if status == StatusCode::TOO_MANY_REQUESTS {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            r
        }
    }
}

/// The response for a broken-body fault.
fn body_fault_response(fault: BodyFault) -> Response {
    let body = match fault {
        BodyFault::Truncated => Body::from(
            r#"{"resourceType":"Bundle","type":"searchset","total":1000,"entry":[{"resource":{"resourceType":"ExplanationOfBenefit","id":"pde--1","#,
        ),
        BodyFault::Malformed => Body::from("<html><body>upstream proxy error</body></html>"),
        BodyFault::Huge(bytes) => {
            // Streamed, so the emulator itself never holds it.
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = bytes.div_ceil(chunk.len());
            let head =
                Bytes::from_static(br#"{"resourceType":"Bundle","type":"searchset","entry":[]"#);
            let stream = futures::stream::iter(
                std::iter::once(head)
                    .chain(std::iter::repeat_n(chunk, chunks))
                    .chain(std::iter::once(Bytes::from_static(b"}")))
                    .map(Ok::<_, std::convert::Infallible>),
            );
            Body::from_stream(stream)
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

/// Rate-limit numbers for the `X-RateLimit-*` headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateInfo {
    limit: u64,
    remaining: u64,
    reset_secs: f64,
}

#[derive(Debug)]
pub(crate) struct Control {
    rng: StdRng,
    fault_rate: f64,
    pub retry_after_secs: u64,
    next_faults: VecDeque<u16>,
    start_index_faults: Vec<StartIndexFault>,
    pub omit_total: bool,
    throttle_limit: u64,
    throttle_window: Duration,
    buckets: HashMap<String, (Instant, u64)>,
    counters: BTreeMap<String, BTreeMap<u16, u64>>,
}

impl Control {
    pub fn new(opts: &Options) -> Control {
        Control {
            rng: StdRng::seed_from_u64(opts.seed),
            fault_rate: opts.fault_rate,
            retry_after_secs: opts.retry_after_secs,
            next_faults: VecDeque::new(),
            start_index_faults: Vec::new(),
            omit_total: false,
            throttle_limit: DEFAULT_THROTTLE_LIMIT,
            throttle_window: Duration::from_secs(1),
            buckets: HashMap::new(),
            counters: BTreeMap::new(),
        }
    }

    /// The failure (if any) for a FHIR data request about to "call BFD": forced start-index faults,
    /// then forced next-K faults, then the seeded random rate.
    pub fn take_fault(&mut self, resource: &str, start_index: Option<usize>) -> Option<Fault> {
        if let Some(si) = start_index {
            let hit = self.start_index_faults.iter_mut().find(|f| {
                f.remaining > 0
                    && f.start_index == si
                    && f.resource.as_deref().is_none_or(|r| r == resource)
            });
            if let Some(f) = hit {
                f.remaining -= 1;
                let (status, body) = (f.status, f.body);
                self.start_index_faults.retain(|f| f.remaining > 0);
                if let Some(body) = body {
                    return Some(Fault::Body(body));
                }
                return StatusCode::from_u16(status).ok().map(Fault::Status);
            }
        }
        if let Some(status) = self.next_faults.pop_front() {
            return StatusCode::from_u16(status).ok().map(Fault::Status);
        }
        if self.fault_rate > 0.0 && self.rng.gen_bool(self.fault_rate) {
            let status = RANDOM_FAULTS[self.rng.gen_range(0..RANDOM_FAULTS.len())];
            return StatusCode::from_u16(status).ok().map(Fault::Status);
        }
        None
    }

    /// Counts a request against the token's window (fixed window of `throttle_window`).
    pub fn throttle(&mut self, token: &str) -> Result<RateInfo, (RateInfo, u64)> {
        let now = Instant::now();
        let window = self.throttle_window;
        let bucket = self.buckets.entry(token.to_string()).or_insert((now, 0));
        if now.duration_since(bucket.0) >= window {
            *bucket = (now, 0);
        }
        let reset = window
            .saturating_sub(now.duration_since(bucket.0))
            .as_secs_f64();
        if bucket.1 >= self.throttle_limit {
            let info = RateInfo {
                limit: self.throttle_limit,
                remaining: 0,
                reset_secs: reset,
            };
            return Err((info, (reset.ceil() as u64).max(1)));
        }
        bucket.1 += 1;
        Ok(RateInfo {
            limit: self.throttle_limit,
            remaining: self.throttle_limit - bucket.1,
            reset_secs: reset,
        })
    }

    /// Rate numbers for a request not tied to a token.
    pub fn anon_rate(&self) -> RateInfo {
        RateInfo {
            limit: self.throttle_limit,
            remaining: self.throttle_limit,
            reset_secs: self.throttle_window.as_secs_f64(),
        }
    }

    fn count(&mut self, path: &str, status: u16) {
        *self
            .counters
            .entry(path.to_string())
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    fn counters_json(&self) -> Value {
        let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
        let mut by_path = serde_json::Map::new();
        let mut total = 0;
        for (path, statuses) in &self.counters {
            let mut m = serde_json::Map::new();
            for (s, n) in statuses {
                m.insert(s.to_string(), json!(n));
                *by_status.entry(*s).or_default() += n;
                total += n;
            }
            by_path.insert(path.clone(), Value::Object(m));
        }
        let by_status: serde_json::Map<String, Value> = by_status
            .into_iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        json!({ "total": total, "by_path": by_path, "by_status": by_status })
    }
}

/// `X-RateLimit-Reset` is a float number of seconds, as DRF's throttle reports it.
pub(crate) fn apply_rate(resp: &mut Response, rate: &RateInfo) {
    let reset = (rate.reset_secs * 1000.0).round() / 1000.0;
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", rate.limit.to_string()),
        ("x-ratelimit-remaining", rate.remaining.to_string()),
        ("x-ratelimit-reset", format!("{reset:?}")),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

/// What a client sees when the gateway, BB2 or BFD fails with `status`.
pub(crate) fn fault_response(status: StatusCode, retry_after: u64, ct: &str) -> Response {
    match status.as_u16() {
        429 => {
            let mut r = detail_response(
                status,
                &format!("Request was throttled. Expected available in {retry_after} seconds."),
                ct,
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            r
        }
        // Django's bare 500 page.
        500 => html_response(status, "<h1>Server Error (500)</h1>".into()),
        502 => detail_response(status, "A failure occurred contacting the upstream server", ct),
        // The load balancer's pages.
        503 | 504 => html_response(
            status,
            format!(
                "<html><head><title>{0}</title></head><body><center><h1>{0}</h1></center></body></html>",
                format_args!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"))
            ),
        ),
        401 => {
            let mut r = detail_response(status, NOT_AUTHENTICATED, ct);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"api\""),
            );
            r
        }
        403 => detail_response(status, PERMISSION_DENIED, ct),
        404 => detail_response(status, "Not found.", ct),
        400 => detail_response(status, "An error occurred contacting the upstream server", ct),
        _ => detail_response(status, status.canonical_reason().unwrap_or("Error"), ct),
    }
}

/// Counts every request outside `/_emulator/` by path and status.
pub(crate) async fn count_requests(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if !path.starts_with("/_emulator") {
        st.with_ctl(|c| c.count(&path, resp.status().as_u16()));
    }
    resp
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/state", get(state))
        .route("/patients/{patient}/eobs", post(add_eobs))
        .route("/patients/{patient}/eob-count", post(set_eob_count))
        .route("/omit-total", post(omit_total))
        .route("/faults/next", post(faults_next))
        .route("/faults/start-index", post(faults_start_index))
        .route("/faults/rate", post(faults_rate))
        .route("/faults/clear", post(faults_clear))
        .route("/latency", post(latency))
        .route("/throttle", post(throttle))
        .route("/counters", get(counters).delete(reset_counters))
        .route("/counters/reset", post(reset_counters))
        .route("/tokens/expire", post(expire_tokens))
        .route("/grants/{patient}/expire", post(expire_grant))
        .route("/grants/{patient}/delete", post(delete_grant))
}

fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, v.to_string(), CT_JSON)
}

fn bad(msg: impl Into<String>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": msg.into() }).to_string(),
        CT_JSON,
    )
}

/// An optional JSON object body (empty means `{}`).
fn body_json(body: &Bytes) -> Result<Value, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(bad("body must be a JSON object")),
    }
}

fn req_u64(v: &Value, key: &str) -> Result<u64, Response> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| bad(format!("`{key}` (a non-negative integer) is required")))
}

/// The `count` of a JSON body such as `{"count": 100}`.
fn count_in(body: &Bytes) -> Result<usize, Response> {
    Ok(req_u64(&body_json(body)?, "count")? as usize)
}

fn req_status(v: &Value) -> Result<u16, Response> {
    let s = req_u64(v, "status")?;
    match u16::try_from(s).ok().filter(|s| (400..=599).contains(s)) {
        Some(s) => Ok(s),
        None => Err(bad("`status` must be an HTTP error status (400..=599)")),
    }
}

async fn state(State(st): State<Arc<AppState>>) -> Response {
    let (patients, last_updated) = {
        let store = st.read_store();
        let patients: serde_json::Map<String, Value> = store
            .patients
            .iter()
            .map(|(id, p)| {
                let mut v =
                    json!({ "eob_count": p.eobs.len(), "coverage_count": p.coverage.len() });
                if let Some(v3) = &p.v3 {
                    v["v3_id"] = json!(v3.id);
                    v["v3_eob_count"] = json!(p.v3_eobs().count());
                }
                (id.clone(), v)
            })
            .collect();
        (patients, format_instant_ms(store.last_updated_ms))
    };
    let ctl = st.with_ctl(|c| {
        json!({
            "fault_rate": c.fault_rate,
            "retry_after_secs": c.retry_after_secs,
            "forced_next": c.next_faults.iter().collect::<Vec<_>>(),
            "start_index_faults": c.start_index_faults.iter().map(|f| json!({
                "start_index": f.start_index, "status": f.status, "remaining": f.remaining, "resource": f.resource,
            })).collect::<Vec<_>>(),
            "omit_total": c.omit_total,
            "throttle": { "limit": c.throttle_limit, "window_secs": c.throttle_window.as_secs_f64() },
        })
    });
    ok(json!({
        "base_url": st.origin,
        "patients": patients,
        "last_updated": last_updated,
        "latency_ms": st.latency_ms.load(Ordering::Relaxed),
        "token_ttl_secs": st.opts.token_ttl_secs,
        "control": ctl,
    }))
}

async fn add_eobs(
    State(st): State<Arc<AppState>>,
    Path(patient): Path<String>,
    body: Bytes,
) -> Response {
    let n = match count_in(&body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let patient = v2_patient_id(&patient);
    let mut store = st.write_store();
    match store.add_eobs(patient, n, true) {
        Ok(added) => {
            let count = store.patient(patient).map_or(0, |p| p.eobs.len());
            ok(json!({
                "added": added,
                "eob_count": count,
                "last_updated": format_instant_ms(store.last_updated_ms),
            }))
        }
        Err(e) => bad(e.to_string()),
    }
}

async fn set_eob_count(
    State(st): State<Arc<AppState>>,
    Path(patient): Path<String>,
    body: Bytes,
) -> Response {
    let n = match count_in(&body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let mut store = st.write_store();
    match store.set_eob_count(v2_patient_id(&patient), n, false) {
        Ok(added) => ok(json!({ "added": added, "eob_count": n })),
        Err(e) => bad(e.to_string()),
    }
}

async fn omit_total(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let omit = v.get("omit").and_then(Value::as_bool).unwrap_or(true);
    st.with_ctl(|c| c.omit_total = omit);
    ok(json!({ "omit_total": omit }))
}

async fn faults_next(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (count, status) = match (req_u64(&v, "count"), req_status(&v)) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let queued = st.with_ctl(|c| {
        c.next_faults
            .extend(std::iter::repeat_n(status, count as usize));
        c.next_faults.len()
    });
    ok(json!({ "queued": queued }))
}

async fn faults_start_index(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    // A broken-body fault is a 200 and needs no status.
    let status_check = if v.get("body").is_some() {
        Ok(200)
    } else {
        req_status(&v)
    };
    let (start_index, status) = match (req_u64(&v, "start_index"), status_check) {
        (Ok(i), Ok(s)) => (i as usize, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let remaining = v.get("count").and_then(Value::as_u64).unwrap_or(1);
    let resource = v
        .get("resource")
        .and_then(Value::as_str)
        .map(str::to_string);
    let body = match v.get("body").and_then(Value::as_str) {
        None => None,
        Some("truncated") => Some(BodyFault::Truncated),
        Some("malformed") => Some(BodyFault::Malformed),
        Some("huge") => Some(BodyFault::Huge(
            v.get("bytes").and_then(Value::as_u64).unwrap_or(100 << 20) as usize,
        )),
        Some(_) => return bad("`body` is `truncated`, `malformed` or `huge`"),
    };
    st.with_ctl(|c| {
        c.start_index_faults.push(StartIndexFault {
            start_index,
            status,
            remaining,
            resource,
            body,
        })
    });
    ok(json!({ "start_index": start_index, "status": status, "count": remaining }))
}

async fn faults_rate(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(rate) = v
        .get("rate")
        .and_then(Value::as_f64)
        .filter(|r| (0.0..=1.0).contains(r))
    else {
        return bad("`rate` must be a number within 0.0..=1.0");
    };
    let seed = v.get("seed").and_then(Value::as_u64);
    let retry = v.get("retry_after_secs").and_then(Value::as_u64);
    st.with_ctl(|c| {
        c.fault_rate = rate;
        if let Some(seed) = seed {
            c.rng = StdRng::seed_from_u64(seed);
        }
        if let Some(r) = retry {
            c.retry_after_secs = r;
        }
    });
    ok(json!({ "rate": rate, "seed": seed }))
}

async fn faults_clear(State(st): State<Arc<AppState>>) -> Response {
    st.with_ctl(|c| {
        c.fault_rate = 0.0;
        c.next_faults.clear();
        c.start_index_faults.clear();
    });
    ok(json!({ "cleared": true }))
}

async fn latency(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match req_u64(&v, "ms") {
        Ok(ms) => {
            st.latency_ms.store(ms, Ordering::Relaxed);
            ok(json!({ "latency_ms": ms }))
        }
        Err(r) => r,
    }
}

async fn throttle(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let limit = match req_u64(&v, "limit") {
        Ok(l) => l,
        Err(r) => return r,
    };
    let window = v.get("window_secs").and_then(Value::as_f64).unwrap_or(1.0);
    if !(window > 0.0 && window.is_finite()) {
        return bad("`window_secs` must be positive");
    }
    st.with_ctl(|c| {
        c.throttle_limit = limit;
        c.throttle_window = Duration::from_secs_f64(window);
        c.buckets.clear();
    });
    ok(json!({ "limit": limit, "window_secs": window }))
}

async fn counters(State(st): State<Arc<AppState>>) -> Response {
    ok(st.with_ctl(|c| c.counters_json()))
}

async fn reset_counters(State(st): State<Arc<AppState>>) -> Response {
    st.with_ctl(|c| c.counters.clear());
    ok(json!({ "reset": true }))
}

async fn expire_tokens(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let v = match body_json(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let patient = v.get("patient").and_then(Value::as_str).map(v2_patient_id);
    let n = st.with_auth(|a| a.expire_access_tokens(patient));
    ok(json!({ "expired": n }))
}

async fn expire_grant(State(st): State<Arc<AppState>>, Path(patient): Path<String>) -> Response {
    if st.with_auth(|a| a.expire_grant(v2_patient_id(&patient))) {
        ok(json!({ "expired": patient }))
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": "no grant" }).to_string(),
            CT_JSON,
        )
    }
}

async fn delete_grant(State(st): State<Arc<AppState>>, Path(patient): Path<String>) -> Response {
    if st.with_auth(|a| a.delete_grant(v2_patient_id(&patient))) {
        ok(json!({ "deleted": patient }))
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": "no grant" }).to_string(),
            CT_JSON,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(fault: Fault) -> u16 {
        match fault {
            Fault::Status(s) => s.as_u16(),
            Fault::Body(_) => 200,
        }
    }

    #[test]
    fn forced_faults_come_before_random_ones_and_are_consumed() {
        let mut c = Control::new(&Options::default());
        c.next_faults.extend([503, 502]);
        c.start_index_faults.push(StartIndexFault {
            start_index: 20,
            status: 500,
            remaining: 1,
            resource: Some("ExplanationOfBenefit".into()),
            body: None,
        });
        assert_eq!(c.take_fault("Coverage", Some(20)).map(status_of), Some(503));
        assert_eq!(
            c.take_fault("ExplanationOfBenefit", Some(20))
                .map(status_of),
            Some(500)
        );
        assert_eq!(
            c.take_fault("ExplanationOfBenefit", Some(20))
                .map(status_of),
            Some(502)
        );
        assert_eq!(c.take_fault("ExplanationOfBenefit", Some(20)), None);
    }

    #[test]
    fn throttle_counts_down_then_refuses() {
        let mut c = Control::new(&Options::default());
        c.throttle_limit = 2;
        c.throttle_window = Duration::from_secs(3600);
        assert_eq!(c.throttle("t").unwrap().remaining, 1);
        assert_eq!(c.throttle("t").unwrap().remaining, 0);
        let (info, wait) = c.throttle("t").unwrap_err();
        assert_eq!(info.remaining, 0);
        assert!(wait > 3590 && wait <= 3600);
        assert_eq!(c.throttle("other").unwrap().remaining, 1);
    }
}
