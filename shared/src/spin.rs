//! The ports on Spin: the default key-value store, outbound `wasi:http`, Spin variables, WASI clocks and
//! randomness. Only the component crates use this (feature `spin`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use time::OffsetDateTime;

use crate::ports::{Clock, HttpClient, HttpError, KeyValue, Random, StoreError, Variables};

/// Spin's implementation of every port. The store opens lazily: routes that never touch it need no
/// `key_value_stores` entry.
#[derive(Default)]
pub struct SpinPlatform {
    store: std::cell::OnceCell<Result<spin_sdk::key_value::Store, StoreError>>,
}

impl SpinPlatform {
    pub fn new() -> Self {
        Self::default()
    }

    fn store(&self) -> Result<&spin_sdk::key_value::Store, StoreError> {
        self.store
            .get_or_init(|| {
                spin_sdk::key_value::Store::open_default()
                    .map_err(|e| StoreError(format!("cannot open the default store: {e}")))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn store_error(err: spin_sdk::key_value::Error) -> StoreError {
    StoreError(err.to_string())
}

impl KeyValue for SpinPlatform {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store()?.get(key).map_err(store_error)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store()?.set(key, value).map_err(store_error)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store()?.delete(key).map_err(store_error)
    }
    fn keys(&self) -> Result<Vec<String>, StoreError> {
        self.store()?.get_keys().map_err(store_error)
    }
}

/// No single upstream answer may be larger than this (a CMS page of 50 EOBs is a few MB): past it the
/// call fails instead of the component running out of memory.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 64 << 20;

impl HttpClient for SpinPlatform {
    async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        use futures::StreamExt;
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
        let mut body = Vec::new();
        let mut stream = response.take_body_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| HttpError::Connection(format!("reading the body: {e:?}")))?;
            if body.len() + chunk.len() > MAX_UPSTREAM_BODY_BYTES {
                return Err(HttpError::TooLarge(MAX_UPSTREAM_BODY_BYTES));
            }
            body.extend_from_slice(&chunk);
        }
        builder
            .body(body)
            .map_err(|e| HttpError::Other(format!("an unusable response: {e}")))
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
    fn variable(&self, name: &str) -> Result<Option<String>, String> {
        match spin_sdk::variables::get(name) {
            Ok(value) => Ok(Some(value)),
            Err(spin_sdk::variables::Error::Undefined(_)) => Ok(None),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// Writes a response through Spin's response outparam, streaming the body.
pub struct SpinResponseWriter {
    outparam: Option<spin_sdk::http::ResponseOutparam>,
    body: Option<(spin_sdk::http::OutgoingBody, SpinOutputStream)>,
}

type SpinOutputStream = wasi::io::streams::OutputStream;

impl SpinResponseWriter {
    pub fn new(outparam: spin_sdk::http::ResponseOutparam) -> Self {
        SpinResponseWriter {
            outparam: Some(outparam),
            body: None,
        }
    }
}

impl crate::ports::ResponseWriter for SpinResponseWriter {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> Result<(), String> {
        let outparam = self
            .outparam
            .take()
            .ok_or("the response was already started")?;
        let fields: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect();
        let fields = spin_sdk::http::Fields::from_list(&fields).map_err(|e| format!("{e:?}"))?;
        let response = spin_sdk::http::OutgoingResponse::new(fields);
        response
            .set_status_code(status)
            .map_err(|()| format!("invalid status {status}"))?;
        let body = response.body().map_err(|()| "no response body")?;
        let stream = body.write().map_err(|()| "response body not writable")?;
        outparam.set(response);
        self.body = Some((body, stream));
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        let (_, stream) = self.body.as_ref().ok_or("the response was not started")?;
        // `blocking-write-and-flush` takes at most 4096 bytes per call.
        for piece in chunk.chunks(4096) {
            stream
                .blocking_write_and_flush(piece)
                .map_err(|e| format!("the client went away: {e:?}"))?;
        }
        Ok(())
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

/// Reads a Spin request into plain `http` types.
pub async fn read_request(
    req: spin_sdk::http::IncomingRequest,
) -> Result<http::Request<Vec<u8>>, String> {
    use spin_sdk::http::conversions::TryFromIncomingRequest;
    http::Request::<Vec<u8>>::try_from_incoming_request(req)
        .await
        .map_err(|e| e.to_string())
}
