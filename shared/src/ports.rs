//! The only ways the rules touch the world. Components pass Spin's implementations (`crate::spin`); unit
//! tests pass in-memory fakes (`crate::testing`, feature `testing`).

use std::future::Future;
use std::time::Duration;

use time::OffsetDateTime;

/// Spin's key-value store: no TTL; plain writes are last-write-wins, and the two atomic operations of
/// `wasi:keyvalue/atomics` (which Spin implements on SQLite and Redis) serve where that would lose
/// updates. Keys are at most [`MAX_KEY_BYTES`], values at most [`MAX_VALUE_BYTES`]. There is no way to
/// list keys: on Redis that is `KEYS *`, so the app keeps ordered logs instead
/// ([`crate::store::log`]).
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Adds `delta` to the number at `key` (an absent key counts as 0) and returns the sum, atomically.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError>;
    /// Replaces the value at `key` with `new` only if it is still exactly `expected`; `false` when
    /// another writer changed it first. The key must exist (Spin's SQLite store turns a swap of an
    /// absent key into a blind write), so only records with one creator are swapped.
    fn compare_and_swap(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool, StoreError>;
}

/// The largest key the app writes (Spin documents 256 bytes; Fermyon Cloud enforces it).
pub const MAX_KEY_BYTES: usize = 250;
/// The largest value the app writes (Spin documents 1 MB; Fermyon Cloud enforces it).
pub const MAX_VALUE_BYTES: usize = 1_000_000;

/// Why the key-value store failed, as Spin's `key-value` interface tells it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("the key-value store `default` is not configured for this component")]
    NoSuchStore,
    #[error("this component may not open the key-value store `default`")]
    AccessDenied,
    #[error("the key-value store is full")]
    Full,
    /// The backend failed (SQLite, Redis, …): its own words.
    #[error("the key-value store failed: {0}")]
    Backend(String),
}

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
    #[error("the request could not be formed: {0}")]
    InvalidRequest(String),
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
    fn variable(&self, name: &str) -> Result<Option<String>, VariableError>;
}

/// Why a defined variable could not be read (Spin's `variables` errors other than `undefined`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VariableError {
    #[error("`{0}` is not a valid variable name")]
    InvalidName(String),
    #[error("the variables provider failed: {0}")]
    Provider(String),
}

/// Everything a request handler may use.
pub trait Platform: KeyValue + HttpClient + Clock + Random + Variables {}
impl<T: KeyValue + HttpClient + Clock + Random + Variables> Platform for T {}

/// An incoming request's body, read only once a route has decided it wants it, and never past a limit.
pub trait RequestBody {
    fn read(self, limit: usize) -> impl Future<Output = Result<Vec<u8>, BodyError>>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than this route's {0}-byte limit")]
    TooLarge(usize),
    #[error("the request body could not be read: {0}")]
    Broken(String),
}

/// A body already in memory (unit tests, chained calls).
impl RequestBody for Vec<u8> {
    async fn read(self, limit: usize) -> Result<Vec<u8>, BodyError> {
        if self.len() > limit {
            Err(BodyError::TooLarge(limit))
        } else {
            Ok(self)
        }
    }
}

/// Where a response goes, possibly streamed: status and headers once, then body chunks.
pub trait ResponseWriter {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> Result<(), WriteError>;
    fn write(&mut self, chunk: &[u8]) -> Result<(), WriteError>;
    /// Ends the body. `complete: false` aborts it, so a client sees a broken response, never a partial one
    /// that looks whole.
    fn finish(self, complete: bool);
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("the response was already started")]
    AlreadyStarted,
    #[error("the response was not started")]
    NotStarted,
    #[error("the response head is invalid: {0}")]
    InvalidHead(String),
    #[error("the client went away: {0}")]
    Gone(String),
}
