//! The ports on Spin: the default key-value store, outbound `wasi:http`, Spin variables, WASI clocks and
//! randomness, and [`serve`], the one entry every component crate calls. Only the component crates use
//! this (feature `spin`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use time::OffsetDateTime;
use wasi::io::streams::{InputStream, StreamError};

use crate::http::routes::{self, Component};
use crate::http::write_full;
use crate::ports::{
    BodyError, Clock, HttpClient, HttpError, KeyValue, Random, RequestBody, ResponseWriter,
    StoreError, VariableError, Variables, WriteError,
};

/// Serves one request of `component`: the request's head is read at once, its body only when the route
/// asks for it (and never past the route's limit).
pub async fn serve(component: impl Component, req: IncomingRequest, outparam: ResponseOutparam) {
    let writer = SpinResponseWriter::new(outparam);
    match head_of(&req) {
        Ok(head) => {
            routes::handle(component, &SpinPlatform::new(), head, SpinBody(req), writer).await
        }
        Err(detail) => write_full(writer, crate::Error::BadRequest(detail).into_response()),
    }
}

fn head_of(req: &IncomingRequest) -> Result<http::request::Parts, String> {
    use spin_sdk::http::Method as M;
    let method = match req.method() {
        M::Get => http::Method::GET,
        M::Head => http::Method::HEAD,
        M::Post => http::Method::POST,
        M::Put => http::Method::PUT,
        M::Delete => http::Method::DELETE,
        M::Connect => http::Method::CONNECT,
        M::Options => http::Method::OPTIONS,
        M::Trace => http::Method::TRACE,
        M::Patch => http::Method::PATCH,
        M::Other(other) => http::Method::from_bytes(other.as_bytes())
            .map_err(|_| format!("`{other}` is not an HTTP method"))?,
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(req.path_with_query().unwrap_or_else(|| "/".into()));
    for (name, value) in req.headers().entries() {
        builder = builder.header(name, value);
    }
    let (head, ()) = builder
        .body(())
        .map_err(|e| format!("an unreadable request: {e}"))?
        .into_parts();
    Ok(head)
}

/// The request body, read from Spin's stream on demand.
struct SpinBody(IncomingRequest);

impl RequestBody for SpinBody {
    async fn read(self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let body = self
            .0
            .consume()
            .map_err(|()| BodyError::Broken("the body was already taken".into()))?;
        let stream = body
            .stream()
            .map_err(|()| BodyError::Broken("the body is not readable".into()))?;
        let read = read_stream(&stream, limit).await;
        drop(stream);
        drop(body);
        read.map_err(|e| match e {
            StreamRead::TooLarge => BodyError::TooLarge(limit),
            StreamRead::Failed(why) => BodyError::Broken(why),
        })
    }
}

use spin_sdk::wit::wasi::keyvalue::{atomics, store as wasi_store};

/// Spin's implementation of every port. The store opens lazily: routes that never touch it need no
/// `key_value_stores` entry. Plain reads and writes go through `fermyon:spin/key-value`; the atomics
/// through `wasi:keyvalue`, which Spin serves from the same store.
#[derive(Default)]
pub struct SpinPlatform {
    // Only an opened store is kept: opening can fail for a moment (a busy SQLite), and is tried again.
    store: std::cell::OnceCell<spin_sdk::key_value::Store>,
    bucket: std::cell::OnceCell<wasi_store::Bucket>,
}

impl SpinPlatform {
    pub fn new() -> Self {
        Self::default()
    }

    fn store(&self) -> Result<&spin_sdk::key_value::Store, StoreError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = spin_sdk::key_value::Store::open_default().map_err(store_error)?;
        Ok(self.store.get_or_init(|| store))
    }

    fn bucket(&self) -> Result<&wasi_store::Bucket, StoreError> {
        if let Some(bucket) = self.bucket.get() {
            return Ok(bucket);
        }
        let bucket = wasi_store::open("default").map_err(wasi_error)?;
        Ok(self.bucket.get_or_init(|| bucket))
    }
}

fn wasi_error(err: wasi_store::Error) -> StoreError {
    match err {
        wasi_store::Error::NoSuchStore => StoreError::NoSuchStore,
        wasi_store::Error::AccessDenied => StoreError::AccessDenied,
        wasi_store::Error::Other(why) => StoreError::Backend(why),
    }
}

fn store_error(err: spin_sdk::key_value::Error) -> StoreError {
    use spin_sdk::key_value::Error as E;
    match err {
        E::NoSuchStore => StoreError::NoSuchStore,
        E::AccessDenied => StoreError::AccessDenied,
        E::StoreTableFull => StoreError::Full,
        E::Other(why) => StoreError::Backend(why),
    }
}

impl KeyValue for SpinPlatform {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        retry_busy(|| self.store()?.get(key).map_err(store_error))
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        retry_busy(|| self.store()?.set(key, value).map_err(store_error))
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        retry_busy(|| self.store()?.delete(key).map_err(store_error))
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        retry_busy(|| atomics::increment(self.bucket()?, key, delta).map_err(wasi_error))
    }
    fn compare_and_swap(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        retry_busy(|| {
            let cas = atomics::Cas::new(self.bucket()?, key).map_err(wasi_error)?;
            match cas.current().map_err(wasi_error)?.as_deref() {
                Some(current) if current == expected => {}
                // An earlier try that reported busy did land (sealed values never repeat).
                Some(current) if current == new => return Ok(true),
                _ => return Ok(false),
            }
            match atomics::swap(cas, new) {
                // Spin's Redis store reports every swap as failed (its `UNWATCH key` is refused):
                // decide below.
                Ok(()) | Err(atomics::CasError::CasFailed(_)) => {}
                Err(atomics::CasError::StoreError(e)) => return Err(wasi_error(e)),
            }
            // Spin's Redis store can report an aborted transaction as done: believe only what is stored.
            Ok(self.get(key)?.as_deref() == Some(new))
        })
    }
}

/// How long a store call waits out a busy SQLite before it fails.
const BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// Runs a store call, trying again while Spin's SQLite store reports `database is locked`: it gives
/// up at once when another request of the same app holds the write lock, which concurrent requests
/// do all the time (measured on Spin 3.6.3: 32 concurrent authorizations failed within seconds). The
/// pauses are random, so that waiting requests do not all try again at the same moment.
fn retry_busy<T>(mut call: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut cap_ms = 2u64;
    let mut waited = Duration::ZERO;
    loop {
        match call() {
            Err(StoreError::Backend(why)) if is_busy(&why) && waited < BUSY_PATIENCE => {
                let pause =
                    Duration::from_millis(1 + wasi::random::random::get_random_u64() % cap_ms);
                // Blocks this instance on a host timer; the host serves other requests meanwhile.
                wasi::clocks::monotonic_clock::subscribe_duration(pause.as_nanos() as u64).block();
                waited += pause;
                cap_ms = (cap_ms * 2).min(50);
            }
            other => return other,
        }
    }
}

fn is_busy(why: &str) -> bool {
    why.contains("database is locked") || why.contains("DatabaseBusy")
}

/// No single upstream answer may be larger than this (a CMS page of 50 EOBs is a few MB): past it the
/// call fails instead of the component running out of memory.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 64 << 20;

impl HttpClient for SpinPlatform {
    async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        use spin_sdk::http::{ErrorCode, IncomingResponse, SendError};
        let response = match spin_sdk::http::send::<_, IncomingResponse>(request).await {
            Ok(resp) => resp,
            Err(SendError::Http(ErrorCode::HttpRequestDenied)) => return Err(HttpError::Denied),
            Err(SendError::Http(
                ErrorCode::ConnectionTimeout
                | ErrorCode::ConnectionReadTimeout
                | ErrorCode::ConnectionWriteTimeout
                | ErrorCode::HttpResponseTimeout,
            )) => return Err(HttpError::Timeout),
            Err(SendError::Http(code)) => return Err(HttpError::Connection(format!("{code:?}"))),
            Err(SendError::RequestConversion(e)) => {
                return Err(HttpError::InvalidRequest(e.to_string()))
            }
            Err(other) => return Err(HttpError::Other(other.to_string())),
        };
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers().entries() {
            builder = builder.header(name, value);
        }
        let declared = response
            .headers()
            .get("content-length")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_UPSTREAM_BODY_BYTES) {
            return Err(HttpError::TooLarge(MAX_UPSTREAM_BODY_BYTES));
        }
        let body = response
            .consume()
            .map_err(|()| HttpError::Other("the response body was already taken".into()))?;
        let stream = body
            .stream()
            .map_err(|()| HttpError::Other("the response body is not readable".into()))?;
        let read = read_stream(&stream, MAX_UPSTREAM_BODY_BYTES).await;
        drop(stream);
        drop(body);
        let body = read.map_err(|e| match e {
            StreamRead::TooLarge => HttpError::TooLarge(MAX_UPSTREAM_BODY_BYTES),
            StreamRead::Failed(why) => HttpError::Connection(format!("reading the body: {why}")),
        })?;
        builder
            .body(body)
            .map_err(|e| HttpError::Other(format!("an unusable response: {e}")))
    }
}

enum StreamRead {
    TooLarge,
    Failed(String),
}

/// Reads a body in large reads (spin-sdk's stream reads 16 KiB at a time, and every read is a host
/// call), waiting on the stream's pollable when nothing is there yet, and stopping past `limit`.
async fn read_stream(stream: &InputStream, limit: usize) -> Result<Vec<u8>, StreamRead> {
    let mut out = Vec::new();
    loop {
        match stream.read(1 << 20) {
            Ok(bytes) if bytes.is_empty() => Ready(Some(stream.subscribe())).await,
            Ok(bytes) => {
                if out.len() + bytes.len() > limit {
                    return Err(StreamRead::TooLarge);
                }
                out.extend_from_slice(&bytes);
            }
            Err(StreamError::Closed) => return Ok(out),
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(StreamRead::Failed(e.to_debug_string()))
            }
        }
    }
}

/// Resolves once its pollable is ready, waking through Spin's executor.
struct Ready(Option<wasi::io::poll::Pollable>);

impl Future for Ready {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.take() {
            Some(pollable) if !pollable.ready() => {
                spin_executor::push_waker(pollable, cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

impl Clock for SpinPlatform {
    fn now(&self) -> OffsetDateTime {
        let now = wasi::clocks::wall_clock::now();
        OffsetDateTime::from_unix_timestamp(now.seconds as i64)
            .map(|t| t + Duration::from_nanos(u64::from(now.nanoseconds)))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Sleep {
            deadline: wasi::clocks::monotonic_clock::now().saturating_add(nanos),
        }
    }
}

/// A timer on Spin's executor, which waits on WASI pollables (a tokio timer would panic it).
struct Sleep {
    deadline: u64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if wasi::clocks::monotonic_clock::now() >= self.deadline {
            return Poll::Ready(());
        }
        let pollable = wasi::clocks::monotonic_clock::subscribe_instant(self.deadline);
        spin_executor::push_waker(pollable, cx.waker().clone());
        Poll::Pending
    }
}

impl Random for SpinPlatform {
    fn fill(&self, buf: &mut [u8]) {
        let bytes = wasi::random::random::get_random_bytes(buf.len() as u64);
        buf.copy_from_slice(&bytes[..buf.len()]);
    }
}

impl Variables for SpinPlatform {
    fn variable(&self, name: &str) -> Result<Option<String>, VariableError> {
        use spin_sdk::variables::Error as E;
        match spin_sdk::variables::get(name) {
            Ok(value) => Ok(Some(value)),
            Err(E::Undefined(_)) => Ok(None),
            Err(E::InvalidName(_)) => Err(VariableError::InvalidName(name.to_string())),
            Err(E::Provider(why) | E::Other(why)) => Err(VariableError::Provider(why)),
        }
    }
}

/// Writes a response through Spin's response outparam, streaming the body.
struct SpinResponseWriter {
    outparam: Option<ResponseOutparam>,
    body: Option<(
        spin_sdk::http::OutgoingBody,
        wasi::io::streams::OutputStream,
    )>,
}

impl SpinResponseWriter {
    fn new(outparam: ResponseOutparam) -> Self {
        SpinResponseWriter {
            outparam: Some(outparam),
            body: None,
        }
    }
}

impl ResponseWriter for SpinResponseWriter {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> Result<(), WriteError> {
        let outparam = self.outparam.take().ok_or(WriteError::AlreadyStarted)?;
        let fields: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect();
        let fields = spin_sdk::http::Fields::from_list(&fields)
            .map_err(|e| WriteError::InvalidHead(format!("{e:?}")))?;
        let response = spin_sdk::http::OutgoingResponse::new(fields);
        response
            .set_status_code(status)
            .map_err(|()| WriteError::InvalidHead(format!("status {status}")))?;
        let body = response
            .body()
            .map_err(|()| WriteError::InvalidHead("no response body".into()))?;
        let stream = body
            .write()
            .map_err(|()| WriteError::InvalidHead("the response body is not writable".into()))?;
        outparam.set(response);
        self.body = Some((body, stream));
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), WriteError> {
        let (_, stream) = self.body.as_ref().ok_or(WriteError::NotStarted)?;
        // As much per call as the host permits (`blocking-write-and-flush` takes 4 KiB at a time).
        let gone = |e: StreamError| WriteError::Gone(format!("{e:?}"));
        let mut rest = chunk;
        while !rest.is_empty() {
            let permit = stream.check_write().map_err(gone)? as usize;
            if permit == 0 {
                stream.subscribe().block();
                continue;
            }
            let n = permit.min(rest.len());
            stream.write(&rest[..n]).map_err(gone)?;
            rest = &rest[n..];
        }
        stream.blocking_flush().map_err(gone)
    }

    fn finish(mut self, complete: bool) {
        if let Some((body, stream)) = self.body.take() {
            drop(stream);
            if complete {
                let _ = spin_sdk::http::OutgoingBody::finish(body, None);
            }
            // Dropped unfinished, the body is reported to the client as broken.
        }
    }
}
