//! The only ways the rules touch the world. Components pass Spin's implementations (`crate::spin`); unit tests
//! pass in-memory fakes (`crate::testing`).

use std::future::Future;
use std::time::Duration;

use time::OffsetDateTime;

/// Spin's key-value store: no TTL, no compare-and-swap; last write wins.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    fn keys(&self) -> Result<Vec<String>, StoreError>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key-value store: {0}")]
pub struct StoreError(pub String);

/// Outbound HTTP, limited by the component's `allowed_outbound_hosts`.
pub trait HttpClient {
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> impl Future<Output = Result<http::Response<Vec<u8>>, HttpError>>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error("the host is not in this component's allowed_outbound_hosts")]
    Denied,
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("the answer is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("{0}")]
    Other(String),
}

pub trait Clock {
    fn now(&self) -> OffsetDateTime;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
}

/// Cryptographically secure random bytes.
pub trait Random {
    fn fill(&self, buf: &mut [u8]);
}

/// Spin variables: only those listed for the component are readable.
pub trait Variables {
    /// `Ok(None)` when the variable is not defined for this component.
    fn variable(&self, name: &str) -> Result<Option<String>, String>;
}

/// Everything a request handler may use.
pub trait Platform: KeyValue + HttpClient + Clock + Random + Variables {}
impl<T: KeyValue + HttpClient + Clock + Random + Variables> Platform for T {}

/// Where a response goes, possibly streamed: status and headers once, then body chunks.
pub trait ResponseWriter {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> Result<(), String>;
    fn write(&mut self, chunk: &[u8]) -> Result<(), String>;
    /// Ends the body. `complete: false` aborts it, so a client sees a broken response, never a partial one
    /// that looks whole.
    fn finish(self, complete: bool);
}

/// Sends a whole, already built response.
pub fn write_full(mut writer: impl ResponseWriter, resp: http::Response<Vec<u8>>) {
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let ok =
        writer.start(resp.status().as_u16(), &headers).is_ok() && writer.write(resp.body()).is_ok();
    writer.finish(ok);
}

/// A writer for pipelines that answer no client (the admin sync delivers, it does not stream).
pub struct NoResponse;

impl ResponseWriter for NoResponse {
    fn start(&mut self, _: u16, _: &[(String, String)]) -> Result<(), String> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
    fn finish(self, _: bool) {}
}
