//! LinuxForHealth connect intake emulator.
//!
//! Emulates what a client of connect 0.42 sees of `POST /fhir/{resource_type}`, `GET /data` and
//! `GET /status`, with Kafka replaced by an in-memory log (one partition per topic), so that the Blue
//! Button client can be tested end to end without connect's Kafka, NATS and IPFS. What it does:
//! - **Checks, in connect's order:** the body must be a JSON object (FastAPI 422 otherwise), the path a
//!   fhir.resources model name (404), the body's `resourceType` the path's (422), the resource valid
//!   FHIR R4 as fhir.resources sees it (500 with pydantic's text; see [`fhir`]).
//! - **Stores** every accepted POST as a new record (no de-duplication) and answers 200 with the
//!   `LinuxForHealthDataRecordResponse` envelope; the `data` is the base64 of the resource as
//!   connect re-serialises it (`fhir::stored_form`).
//! - **Fails like connect:** an envelope above `max_message_bytes` (Kafka's 1 MB message cap) or one
//!   of the first `fail_first` workflow runs answers 500 with an `LFHError` JSON text as `detail`;
//!   slowapi's rate limit answers 429; a fraction of 200s can carry a null `data_record_location`.
//! - **Reads back:** `GET /data` returns the message as produced to Kafka, which is the envelope before
//!   delivery: its `status`, `data_record_location` and elapsed times are null, as in connect.
//! - **For tests:** `GET /_emulator/records` and `GET /_emulator/stats` (not rate limited, not counted),
//!   and the same through [`ConnectSandbox::records`], [`ConnectSandbox::errors`] and
//!   [`ConnectSandbox::stats`].

pub mod fhir;
pub mod pki;
mod pyjson;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use base64::Engine;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use fhir::{is_model_name, validate as validate_fhir};
pub use pki::{pki, Pki};
use pyjson::{py_str, Py};

/// What connect's `/status` reports as its version.
const CONNECT_VERSION: &str = "0.42.0";
/// The topic connect writes its `LFHError`s to.
const EXCEPTION_TOPIC: &str = "LFH_EXCEPTION";
/// librdkafka's error when a produce exceeds `message.max.bytes`.
const KAFKA_TOO_LARGE: &str =
    "KafkaError{code=MSG_SIZE_TOO_LARGE,val=10,str=\"Unable to produce message: Broker: Message size too large\"}";
/// librdkafka's error when no broker can be reached before the message times out.
const KAFKA_UNAVAILABLE: &str =
    "KafkaError{code=_MSG_TIMED_OUT,val=-192,str=\"Local: Message timed out\"}";

/// The two envelope shapes connect has had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnvelopeVariant {
    /// Up to 2021-11: `data_format` `FHIR-R4_<TYPE>` (also the topic) and `transmission_attributes`
    /// as the base64 of a JSON object.
    V2021,
    /// From 2021-11-23 on (0.42.0): `data_format` `FHIR-R4` and `transmission_attributes` an object.
    #[default]
    V2022,
}

/// PEM text, from a file or in memory.
#[derive(Clone, Debug)]
pub enum PemSource {
    Path(PathBuf),
    Pem(Vec<u8>),
}

/// The server certificate (chain) and private key for HTTPS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PemSource,
    pub key: PemSource,
}

impl TlsFiles {
    pub fn from_paths(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            cert: PemSource::Path(cert.into()),
            key: PemSource::Path(key.into()),
        }
    }

    pub fn from_pem(cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> TlsFiles {
        TlsFiles {
            cert: PemSource::Pem(cert.into()),
            key: PemSource::Pem(key.into()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Answer the first N POSTs that reach connect's workflow (valid resources) with 500, as when
    /// Kafka is unreachable; `/status` reports Kafka UNAVAILABLE until they are used up.
    pub fail_first: u32,
    /// The largest Kafka message (the envelope as pydantic's `.json()` writes it) that can be stored.
    pub max_message_bytes: usize,
    /// slowapi's limit per remote address and route per second; 0 turns it off.
    pub rate_limit_per_sec: u32,
    /// The fraction (0..=1) of 200s whose `data_record_location` and `status` are null, as connect
    /// answers when the Kafka delivery callback has not run yet. The record is stored all the same.
    pub null_location_rate: f64,
    pub envelope_variant: EnvelopeVariant,
    pub tls: Option<TlsFiles>,
    /// Seeds the null-location draws.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fail_first: 0,
            max_message_bytes: 1_000_000,
            rate_limit_per_sec: 10,
            null_location_rate: 0.0,
            envelope_variant: EnvelopeVariant::V2022,
            tls: None,
            seed: 0,
        }
    }
}

/// A record stored by a successful POST.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub uuid: String,
    /// The path's type, e.g. `Bundle`.
    pub resource_type: String,
    pub consuming_endpoint_url: String,
    /// The resource decoded from the envelope's `data`.
    pub resource: Value,
    /// The message as stored in Kafka (what `GET /data` returns).
    pub envelope: Value,
    /// The `data_record_location` the POST answered with (None when it answered null).
    pub reported_location: Option<String>,
}

impl StoredRecord {
    /// `topic:partition:offset`.
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// An `LFHError` that connect wrote to its `LFH_EXCEPTION` topic.
#[derive(Clone, Debug)]
pub struct StoredError {
    pub location: String,
    pub uuid: String,
    pub error_msg: String,
    pub consuming_endpoint_url: String,
}

/// What the emulator has seen, without `/_emulator/` requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// POSTs that passed validation and reached the (possibly failing) workflow.
    pub workflow_runs: u64,
    pub records: usize,
    pub errors: usize,
}

enum Message {
    Record { kafka: Py, record: StoredRecord },
    Error { kafka: Py, error: StoredError },
}

impl Message {
    fn kafka(&self) -> &Py {
        match self {
            Message::Record { kafka, .. } | Message::Error { kafka, .. } => kafka,
        }
    }
}

struct Inner {
    topics: BTreeMap<String, Vec<Message>>,
    workflow_runs: u64,
    rng: SmallRng,
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    /// Fixed one-second windows, as slowapi's default strategy: (start, hits).
    windows: HashMap<(IpAddr, String), (Instant, u32)>,
    /// connect's `@timer` metrics: total seconds and count per workflow step.
    timers: BTreeMap<&'static str, (f64, u64)>,
}

struct Shared {
    opts: Options,
    lfh_id: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler must not take the whole emulator down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator; stops when dropped.
pub struct ConnectSandbox {
    pub addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectSandbox {
    /// Binds `listen` (port 0 picks one) and serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr, opts: Options) -> anyhow::Result<ConnectSandbox> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&opts.null_location_rate),
            "null_location_rate must be within 0..=1, not {}",
            opts.null_location_rate
        );
        let acceptor = opts.tls.as_ref().map(tls::acceptor).transpose()?;
        let tcp = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = tcp.local_addr()?;
        let mut seed_rng = SmallRng::seed_from_u64(opts.seed);
        // connect reports its host name, a container id under Docker: 12 hex digits.
        let lfh_id = format!("{:012x}", seed_rng.gen::<u64>() & 0xffff_ffff_ffff);
        let shared = Arc::new(Shared {
            lfh_id,
            inner: Mutex::new(Inner {
                topics: BTreeMap::new(),
                workflow_runs: 0,
                rng: seed_rng,
                requests: 0,
                by_status: BTreeMap::new(),
                windows: HashMap::new(),
                timers: BTreeMap::new(),
            }),
            opts,
        });
        let app = router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = match acceptor {
            None => {
                let listener = tcp.tap_io(|s| {
                    let _ = s.set_nodelay(true);
                });
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await;
                })
            }
            Some(acceptor) => {
                let listener = tls::TlsListener::new(tcp, acceptor)?.tap_io(|_| {});
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await;
                })
            }
        };
        Ok(ConnectSandbox {
            addr,
            tls: shared.opts.tls.is_some(),
            shared,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, or with TLS `https://localhost:PORT` (the name certificates carry).
    pub fn base_url(&self) -> String {
        let host = match (self.tls, self.addr.ip()) {
            (true, ip) if ip.is_loopback() => "localhost".to_string(),
            (_, IpAddr::V6(ip)) => format!("[{ip}]"),
            (_, ip) => ip.to_string(),
        };
        format!(
            "{}://{host}:{}",
            if self.tls { "https" } else { "http" },
            self.addr.port()
        )
    }

    /// Every stored record, by topic then offset.
    pub fn records(&self) -> Vec<StoredRecord> {
        let inner = self.shared.lock();
        let all = inner.topics.values().flatten();
        all.filter_map(|m| match m {
            Message::Record { record, .. } => Some(record.clone()),
            Message::Error { .. } => None,
        })
        .collect()
    }

    /// Every `LFHError` written to `LFH_EXCEPTION`.
    pub fn errors(&self) -> Vec<StoredError> {
        let inner = self.shared.lock();
        let all = inner.topics.values().flatten();
        all.filter_map(|m| match m {
            Message::Error { error, .. } => Some(error.clone()),
            Message::Record { .. } => None,
        })
        .collect()
    }

    pub fn stats(&self) -> Stats {
        stats(&self.shared.lock())
    }

    /// Requests answered so far, `/_emulator/` ones excepted.
    pub fn request_count(&self) -> u64 {
        self.shared.lock().requests
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open connections; clients in tests keep theirs alive.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for ConnectSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stats(inner: &Inner) -> Stats {
    let all = || inner.topics.values().flatten();
    Stats {
        requests: inner.requests,
        by_status: inner.by_status.clone(),
        workflow_runs: inner.workflow_runs,
        records: all()
            .filter(|m| matches!(m, Message::Record { .. }))
            .count(),
        errors: all().filter(|m| matches!(m, Message::Error { .. })).count(),
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/fhir/{resource_type}", post(post_fhir))
        .route("/data", get(get_data))
        .route("/status", get(get_status))
        .route("/_emulator/records", get(emulator_records))
        .route("/_emulator/stats", get(emulator_stats))
        .route_layer(middleware::from_fn_with_state(shared.clone(), rate_limit))
        .fallback(|| async { json(StatusCode::NOT_FOUND, detail("Not Found")) })
        .method_not_allowed_fallback(|| async {
            json(StatusCode::METHOD_NOT_ALLOWED, detail("Method Not Allowed"))
        })
        .layer(middleware::from_fn_with_state(shared.clone(), count))
        // uvicorn takes any body size; what is too big for Kafka must reach the workflow to fail there.
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(shared)
}

fn is_emulator_path(path: &str) -> bool {
    path.starts_with("/_emulator/")
}

fn json(status: StatusCode, body: Py) -> Response {
    let mut resp = (status, body.compact()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn detail(text: impl Into<String>) -> Py {
    Py::dict([("detail", Py::str(text))])
}

async fn count(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let counted = !is_emulator_path(req.uri().path());
    let resp = next.run(req).await;
    if counted {
        let mut inner = shared.lock();
        inner.requests += 1;
        *inner.by_status.entry(resp.status().as_u16()).or_default() += 1;
    }
    resp
}

/// slowapi's default limit: per remote address (the IP, not the port) and per route.
async fn rate_limit(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let limit = shared.opts.rate_limit_per_sec;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(route) = route.filter(|r| limit > 0 && !is_emulator_path(r)) else {
        return next.run(req).await;
    };
    let retry_after = {
        let mut inner = shared.lock();
        let now = Instant::now();
        let window = inner.windows.entry((peer.ip(), route)).or_insert((now, 0));
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        window.1 += 1;
        (window.1 > limit)
            .then(|| Duration::from_secs(1).saturating_sub(now.duration_since(window.0)))
    };
    match retry_after {
        None => next.run(req).await,
        Some(wait) => {
            let body = Py::dict([(
                "error",
                Py::str(format!("Rate limit exceeded: {limit} per 1 second")),
            )]);
            let mut resp = json(StatusCode::TOO_MANY_REQUESTS, body);
            // Whole seconds, rounded up so that a client waiting that long finds a new window.
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            resp
        }
    }
}

/// FastAPI's 422 for a request it could not validate.
fn validation_422(errors: Vec<Py>) -> Response {
    json(
        StatusCode::UNPROCESSABLE_ENTITY,
        Py::dict([("detail", Py::List(errors))]),
    )
}

fn boxed_422(errors: Vec<Py>) -> Box<Response> {
    Box::new(validation_422(errors))
}

fn error_item(loc: Vec<Py>, msg: &str, ty: &str) -> Py {
    Py::dict([
        ("loc", Py::List(loc)),
        ("msg", Py::str(msg)),
        ("type", Py::str(ty)),
    ])
}

/// The `dict` body FastAPI hands connect, or FastAPI's 422.
fn parse_body(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<serde_json::Map<String, Value>, Box<Response>> {
    let body_loc = || vec![Py::str("body")];
    if body.is_empty() {
        return Err(boxed_422(vec![error_item(
            body_loc(),
            "field required",
            "value_error.missing",
        )]));
    }
    // FastAPI decodes JSON only without a content type or with application/json or application/*+json;
    // other bodies stay bytes, which are not a dict.
    let is_json = match headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => true,
        Some(ct) => {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        }
    };
    if !is_json {
        return Err(boxed_422(vec![error_item(
            body_loc(),
            "value is not a valid dict",
            "type_error.dict",
        )]));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(Value::Null) => Err(boxed_422(vec![error_item(
            body_loc(),
            "none is not an allowed value",
            "type_error.none.not_allowed",
        )])),
        Ok(_) => Err(boxed_422(vec![error_item(
            body_loc(),
            "value is not a valid dict",
            "type_error.dict",
        )])),
        Err(e) => {
            // Python's json module: position as a character offset, plus its parts in `ctx`.
            let text = String::from_utf8_lossy(body);
            let chars: Vec<char> = text.chars().collect();
            let (line, col) = (e.line().max(1), e.column().max(1));
            let mut pos: usize = text
                .split('\n')
                .take(line - 1)
                .map(|l| l.chars().count() + 1)
                .sum::<usize>()
                + col
                - 1;
            let serde_text = e.to_string();
            // serde_json points past a bad literal or number; Python at the value's first character.
            if serde_text.starts_with("expected ident") || serde_text.starts_with("invalid number")
            {
                pos = pos.min(chars.len());
                while pos > 0
                    && (chars[pos - 1].is_ascii_alphanumeric()
                        || matches!(chars[pos - 1], '-' | '+' | '.'))
                {
                    pos -= 1;
                }
            }
            let before = &chars[..pos.min(chars.len())];
            let line = before.iter().filter(|c| **c == '\n').count() + 1;
            let col = pos - before.iter().rposition(|c| *c == '\n').map_or(0, |i| i + 1) + 1;
            let what = python_json_error(&serde_text);
            let msg = format!("{what}: line {line} column {col} (char {pos})");
            let mut item = error_item(
                vec![Py::str("body"), Py::Num(pos.into())],
                &msg,
                "value_error.jsondecode",
            );
            if let Py::Dict(pairs) = &mut item {
                pairs.push((
                    "ctx".into(),
                    Py::dict([
                        ("msg", Py::str(what)),
                        ("doc", Py::str(text.into_owned())),
                        ("pos", Py::Num(pos.into())),
                        ("lineno", Py::Num(line.into())),
                        ("colno", Py::Num(col.into())),
                    ]),
                ));
            }
            Err(boxed_422(vec![item]))
        }
    }
}

/// The start of Python's `json` error for the nearest serde_json one.
fn python_json_error(serde_text: &str) -> &'static str {
    if serde_text.starts_with("trailing characters") {
        "Extra data"
    } else if serde_text.starts_with("key must be a string") {
        "Expecting property name enclosed in double quotes"
    } else if serde_text.starts_with("expected `,` or") {
        "Expecting ',' delimiter"
    } else if serde_text.starts_with("expected `:`") {
        "Expecting ':' delimiter"
    } else if serde_text.starts_with("control character") {
        "Invalid control character at"
    } else if serde_text.starts_with("EOF while parsing a string") {
        "Unterminated string starting at"
    } else {
        "Expecting value"
    }
}

/// The request headers as Starlette lists them (lower-case names, latin-1 values, the last of repeated
/// names), without the ones connect scrubs.
fn transmission_attributes(headers: &HeaderMap) -> Vec<(String, Py)> {
    let mut out: Vec<(String, Py)> = Vec::new();
    for (name, value) in headers {
        let key = name.as_str().to_ascii_lowercase();
        if key == "authorization" || ["password", "pwd", "token"].iter().any(|s| key.contains(s)) {
            continue;
        }
        let text: String = value.as_bytes().iter().map(|&b| b as char).collect();
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = Py::Str(text),
            None => out.push((key, Py::Str(text))),
        }
    }
    out
}

fn now_utc_seconds() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// A naive datetime's isoformat, as `datetime.utcnow().replace(microsecond=0)` prints.
fn iso_naive(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Seconds as `timedelta.total_seconds()` gives them (microsecond resolution).
fn seconds(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

/// An IPFS CIDv0 (`Qm…`): base58btc of the sha2-256 multihash.
fn cid_v0(content: &[u8]) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut bytes = vec![0x12, 0x20];
    bytes.extend_from_slice(&Sha256::digest(content));
    let mut digits: Vec<u8> = Vec::new(); // base 58, least significant first
    for &b in &bytes {
        let mut carry = b as u32;
        for d in digits.iter_mut() {
            carry += (*d as u32) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    digits
        .iter()
        .rev()
        .map(|&d| ALPHABET[d as usize] as char)
        .collect()
}

struct Envelope {
    uuid: String,
    lfh_id: String,
    date: String,
    endpoint: String,
    data: String,
    data_format: String,
    location: Option<String>,
    ipfs_uri: Option<String>,
    storage_time: Option<f64>,
    total_time: Option<f64>,
    attributes: Py,
}

impl Envelope {
    /// `LinuxForHealthDataRecordResponse`, in its field order.
    fn to_py(&self) -> Py {
        let delivered = self.location.is_some();
        Py::dict([
            ("uuid", Py::str(&self.uuid)),
            ("lfh_id", Py::str(&self.lfh_id)),
            ("operation", Py::str("POST")),
            ("creation_date", Py::str(&self.date)),
            ("store_date", Py::str(&self.date)),
            ("consuming_endpoint_url", Py::str(&self.endpoint)),
            ("data", Py::str(&self.data)),
            ("data_format", Py::str(&self.data_format)),
            (
                "status",
                if delivered {
                    Py::str("success")
                } else {
                    Py::Null
                },
            ),
            ("data_record_location", Py::opt_str(self.location.clone())),
            ("target_endpoint_urls", Py::List(Vec::new())),
            ("ipfs_uri", Py::opt_str(self.ipfs_uri.clone())),
            ("elapsed_storage_time", Py::opt_float(self.storage_time)),
            ("transmit_date", Py::Null),
            ("elapsed_transmit_time", Py::Null),
            ("elapsed_total_time", Py::opt_float(self.total_time)),
            ("transmission_attributes", self.attributes.clone()),
        ])
    }
}

/// `LFHError`, in its field order.
fn lfh_error(data: &Py, error_msg: &str, uuid: &str, date: &str, location: Option<String>) -> Py {
    Py::dict([
        ("data", data.clone()),
        ("error_msg", Py::str(error_msg)),
        ("uuid", Py::str(uuid)),
        ("error_date", Py::str(date)),
        ("data_record_location", Py::opt_str(location)),
    ])
}

fn append(inner: &mut Inner, topic: &str, make: impl FnOnce(u64) -> Message) -> u64 {
    let log = inner.topics.entry(topic.to_string()).or_default();
    let offset = log.len() as u64;
    log.push(make(offset));
    offset
}

fn add_timer(inner: &mut Inner, name: &'static str, d: Duration) {
    let t = inner.timers.entry(name).or_default();
    t.0 += seconds(d);
    t.1 += 1;
}

async fn post_fhir(
    State(shared): State<Arc<Shared>>,
    Path(resource_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // FastAPI validates the body before connect's handler runs.
    let obj = match parse_body(&headers, &body) {
        Ok(obj) => obj,
        Err(resp) => return *resp,
    };
    if !fhir::is_model_name(&resource_type) {
        return json(
            StatusCode::NOT_FOUND,
            detail(format!("/{resource_type} not found")),
        );
    }
    let declared = obj.get("resourceType");
    if declared.and_then(Value::as_str) != Some(resource_type.as_str()) {
        let msg = format!(
            "resource type {} in request does not match url /{resource_type}",
            py_str(declared)
        );
        return json(StatusCode::UNPROCESSABLE_ENTITY, detail(msg));
    }
    let body = Value::Object(obj);
    if let Err(text) = fhir::validate(&resource_type, &body) {
        return json(StatusCode::INTERNAL_SERVER_ERROR, detail(text));
    }
    run_workflow(&shared, &resource_type, &body, &headers)
}

/// connect's `CoreWorkflow.run` with `persist` producing to the in-memory Kafka.
fn run_workflow(
    shared: &Shared,
    resource_type: &str,
    body: &Value,
    headers: &HeaderMap,
) -> Response {
    let start = Instant::now();
    let opts = &shared.opts;
    let date = now_utc_seconds();
    let stored = fhir::stored_form(resource_type, body);
    let b64 = base64::engine::general_purpose::STANDARD;
    let attributes = Py::Dict(transmission_attributes(headers));
    let (data_format, attributes) = match opts.envelope_variant {
        EnvelopeVariant::V2021 => (
            format!("FHIR-R4_{}", resource_type.to_uppercase()),
            Py::Str(b64.encode(attributes.dumps())),
        ),
        EnvelopeVariant::V2022 => ("FHIR-R4".to_string(), attributes),
    };
    let mut envelope = Envelope {
        uuid: uuid::Uuid::new_v4().to_string(),
        lfh_id: shared.lfh_id.clone(),
        date: format!("{}+00:00", iso_naive(date)),
        endpoint: format!("/fhir/{resource_type}"),
        data: b64.encode(stored.dumps()),
        data_format,
        location: None,
        ipfs_uri: None,
        storage_time: None,
        total_time: None,
        attributes,
    };
    // IPFS pins the envelope as it is before the Kafka step.
    envelope.ipfs_uri = Some(format!(
        "/ipfs/{}",
        cid_v0(envelope.to_py().dumps().as_bytes())
    ));
    // What is produced to Kafka: pydantic's `.json()` of the envelope before delivery.
    let kafka = envelope.to_py();
    let kafka_text = kafka.dumps();

    let mut inner = shared.lock();
    let run = inner.workflow_runs;
    inner.workflow_runs += 1;
    let failure = if run < u64::from(opts.fail_first) {
        Some(KAFKA_UNAVAILABLE)
    } else if kafka_text.len() > opts.max_message_bytes {
        Some(KAFKA_TOO_LARGE)
    } else {
        None
    };
    if let Some(error_msg) = failure {
        // CoreWorkflow.error: the LFHError goes to LFH_EXCEPTION, and its JSON text becomes the detail.
        let error_uuid = uuid::Uuid::new_v4().to_string();
        let error_date = iso_naive(now_utc_seconds());
        let kafka = lfh_error(&stored, error_msg, &error_uuid, &error_date, None);
        let endpoint = envelope.endpoint.clone();
        let offset = append(&mut inner, EXCEPTION_TOPIC, |offset| Message::Error {
            kafka,
            error: StoredError {
                location: format!("{EXCEPTION_TOPIC}:0:{offset}"),
                uuid: error_uuid.clone(),
                error_msg: error_msg.to_string(),
                consuming_endpoint_url: endpoint,
            },
        });
        add_timer(&mut inner, "error", start.elapsed());
        drop(inner);
        let location = Some(format!("{EXCEPTION_TOPIC}:0:{offset}"));
        let text = lfh_error(&stored, error_msg, &error_uuid, &error_date, location).dumps();
        return json(StatusCode::INTERNAL_SERVER_ERROR, detail(text));
    }
    let topic = envelope.data_format.clone();
    let storage_start = Instant::now();
    let record = StoredRecord {
        topic: topic.clone(),
        partition: 0,
        offset: 0,
        uuid: envelope.uuid.clone(),
        resource_type: resource_type.to_string(),
        consuming_endpoint_url: envelope.endpoint.clone(),
        resource: stored.to_value(),
        envelope: kafka.to_value(),
        reported_location: None,
    };
    let offset = append(&mut inner, &topic, |offset| Message::Record {
        kafka,
        record: StoredRecord { offset, ..record },
    });
    let location = format!("{topic}:0:{offset}");
    let rate = opts.null_location_rate;
    let reported = !(rate > 0.0 && inner.rng.gen_bool(rate));
    if reported {
        if let Some(Message::Record { record, .. }) =
            inner.topics.get_mut(&topic).and_then(|l| l.last_mut())
        {
            record.reported_location = Some(location.clone());
        }
    }
    envelope.storage_time = Some(seconds(storage_start.elapsed()));
    envelope.location = reported.then_some(location);
    envelope.total_time = Some(seconds(start.elapsed()));
    add_timer(&mut inner, "persist", storage_start.elapsed());
    add_timer(&mut inner, "run", start.elapsed());
    drop(inner);
    json(StatusCode::OK, envelope.to_py())
}

/// `GET /data?dataformat=&partition=&offset=`.
async fn get_data(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let mut params: HashMap<String, String> = HashMap::new();
    // Starlette keeps the last of repeated parameters.
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params.insert(k.into_owned(), v.into_owned());
    }
    let mut errors = Vec::new();
    let dataformat = params.get("dataformat").cloned();
    if dataformat.is_none() {
        errors.push(error_item(
            vec![Py::str("query"), Py::str("dataformat")],
            "field required",
            "value_error.missing",
        ));
    }
    let mut int_param = |name: &str| -> Option<i64> {
        match params.get(name) {
            None => {
                errors.push(error_item(
                    vec![Py::str("query"), Py::str(name)],
                    "field required",
                    "value_error.missing",
                ));
                None
            }
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    let loc = vec![Py::str("query"), Py::str(name)];
                    errors.push(error_item(
                        loc,
                        "value is not a valid integer",
                        "type_error.integer",
                    ));
                    None
                }
            },
        }
    };
    let partition = int_param("partition");
    let offset = int_param("offset");
    let (Some(topic), Some(partition), Some(offset)) = (dataformat, partition, offset) else {
        return validation_422(errors);
    };
    // Kafka's own checks: a legal topic name, non-negative partition and offset.
    let legal_topic = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !legal_topic {
        return json(
            StatusCode::BAD_REQUEST,
            detail(format!("Invalid topic name: {topic:?}")),
        );
    }
    if partition < 0 || offset < 0 {
        return json(
            StatusCode::BAD_REQUEST,
            detail(format!("Invalid partition {partition} or offset {offset}")),
        );
    }
    let inner = shared.lock();
    let found = inner
        .topics
        .get(&topic)
        .filter(|_| partition == 0)
        .and_then(|log| log.get(offset as usize));
    match found {
        Some(message) => json(StatusCode::OK, message.kafka().clone()),
        None => json(
            StatusCode::NOT_FOUND,
            detail(format!(
                "No message was found that could be fetched for topic_name: {topic}, partition: {partition}, offset: {offset}"
            )),
        ),
    }
}

async fn get_status(State(shared): State<Arc<Shared>>) -> Response {
    let start = Instant::now();
    let inner = shared.lock();
    let kafka_up = inner.workflow_runs >= u64::from(shared.opts.fail_first);
    let metrics = Py::Dict(
        inner
            .timers
            .iter()
            .map(|(name, (total, count))| {
                let m = Py::dict([
                    ("total", Py::float(*total)),
                    ("count", Py::Num((*count).into())),
                    ("average", Py::float(total / *count as f64)),
                ]);
                (name.to_string(), m)
            })
            .collect(),
    );
    drop(inner);
    let body = Py::dict([
        ("application", Py::str("connect.asgi:app")),
        ("application_version", Py::str(CONNECT_VERSION)),
        ("is_reload_enabled", Py::Bool(false)),
        ("nats_client_status", Py::str("CONNECTED")),
        (
            "kafka_broker_status",
            Py::str(if kafka_up { "AVAILABLE" } else { "UNAVAILABLE" }),
        ),
        (
            "status_response_time",
            Py::float(start.elapsed().as_secs_f64()),
        ),
        ("metrics", metrics),
    ]);
    json(StatusCode::OK, body)
}

/// The ids a record holds: its own and, for a Bundle, each entry's `Type/id`.
fn contents(resource: &Value) -> (Py, Py) {
    let id = Py::opt_str(resource.get("id").and_then(Value::as_str));
    let entries = resource
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("resource"))
                .map(|r| {
                    let rt = r
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or("Resource");
                    match r.get("id").and_then(Value::as_str) {
                        Some(id) => Py::str(format!("{rt}/{id}")),
                        None => Py::str(rt),
                    }
                })
                .collect::<Vec<_>>()
        });
    (id, entries.map_or(Py::Null, Py::List))
}

async fn emulator_records(State(shared): State<Arc<Shared>>) -> Response {
    let inner = shared.lock();
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for message in inner.topics.values().flatten() {
        match message {
            Message::Record { record, .. } => {
                let (id, entries) = contents(&record.resource);
                records.push(Py::dict([
                    ("location", Py::str(record.location())),
                    ("topic", Py::str(&record.topic)),
                    ("partition", Py::Num(record.partition.into())),
                    ("offset", Py::Num(record.offset.into())),
                    ("uuid", Py::str(&record.uuid)),
                    ("resourceType", Py::str(&record.resource_type)),
                    (
                        "consuming_endpoint_url",
                        Py::str(&record.consuming_endpoint_url),
                    ),
                    ("id", id),
                    ("entries", entries),
                    (
                        "reported_location",
                        Py::opt_str(record.reported_location.clone()),
                    ),
                ]));
            }
            Message::Error { error, .. } => errors.push(Py::dict([
                ("location", Py::str(&error.location)),
                ("uuid", Py::str(&error.uuid)),
                ("error_msg", Py::str(&error.error_msg)),
                (
                    "consuming_endpoint_url",
                    Py::str(&error.consuming_endpoint_url),
                ),
            ])),
        }
    }
    json(
        StatusCode::OK,
        Py::dict([("records", Py::List(records)), ("errors", Py::List(errors))]),
    )
}

async fn emulator_stats(State(shared): State<Arc<Shared>>) -> Response {
    let s = stats(&shared.lock());
    let by_status = s
        .by_status
        .iter()
        .map(|(code, n)| (code.to_string(), Py::Num((*n).into())));
    json(
        StatusCode::OK,
        Py::dict([
            ("requests", Py::Num(s.requests.into())),
            ("by_status", Py::Dict(by_status.collect())),
            ("workflow_runs", Py::Num(s.workflow_runs.into())),
            ("records", Py::Num(s.records.into())),
            ("errors", Py::Num(s.errors.into())),
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_v0_is_a_qm_base58_multihash() {
        let cid = cid_v0(b"hello");
        assert!(cid.starts_with("Qm"), "{cid}");
        assert_eq!(cid.len(), 46);
        assert_ne!(cid, cid_v0(b"hello!"));
    }

    #[test]
    fn scrubbed_headers_drop_credentials_and_keep_the_rest() {
        let mut h = HeaderMap::new();
        h.insert("Authorization", HeaderValue::from_static("Bearer x"));
        h.insert("X-Api-Token", HeaderValue::from_static("t"));
        h.insert("x-db-password", HeaderValue::from_static("p"));
        h.insert("pwd-hint", HeaderValue::from_static("p"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        let attrs = transmission_attributes(&h);
        assert_eq!(
            attrs,
            vec![
                ("content-type".to_string(), Py::str("application/json")),
                ("x-multi".to_string(), Py::str("b"))
            ]
        );
    }
}
