//! In-memory implementations of the ports, for unit tests of the rules (feature `testing`; never in a
//! component).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::ports::{
    Clock, HttpClient, HttpError, KeyValue, Random, ResponseWriter, StoreError, VariableError,
    Variables, WriteError,
};

type Handler = dyn Fn(&http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, HttpError>;

/// A platform whose store, clock, randomness, variables and upstreams are all in memory.
#[derive(Clone)]
pub struct FakePlatform {
    pub store: Rc<RefCell<BTreeMap<String, Vec<u8>>>>,
    pub vars: HashMap<String, String>,
    pub now: Rc<Cell<OffsetDateTime>>,
    pub sent: Rc<RefCell<Vec<http::Request<Vec<u8>>>>>,
    handler: Rc<RefCell<Option<Box<Handler>>>>,
    counter: Rc<Cell<u64>>,
    pub fail_store: Rc<Cell<bool>>,
}

impl Default for FakePlatform {
    fn default() -> Self {
        FakePlatform {
            store: Rc::default(),
            vars: HashMap::new(),
            now: Rc::new(Cell::new(
                OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("valid time"),
            )),
            sent: Rc::default(),
            handler: Rc::default(),
            counter: Rc::default(),
            fail_store: Rc::default(),
        }
    }
}

impl FakePlatform {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// Answers outbound requests with `handler`.
    pub fn on_send(
        &self,
        handler: impl Fn(&http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, HttpError>
            + 'static,
    ) {
        *self.handler.borrow_mut() = Some(Box::new(handler));
    }

    pub fn advance(&self, by: Duration) {
        self.now.set(self.now.get() + by);
    }

    /// Every key stored, in order (for tests: the app itself cannot list keys).
    pub fn stored_keys(&self) -> Vec<String> {
        self.store.borrow().keys().cloned().collect()
    }

    fn check_store(&self) -> Result<(), StoreError> {
        if self.fail_store.get() {
            Err(StoreError::Backend("injected failure".into()))
        } else {
            Ok(())
        }
    }
}

impl KeyValue for FakePlatform {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.check_store()?;
        Ok(self.store.borrow().get(key).cloned())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.check_store()?;
        // The limits Fermyon Cloud enforces, so a unit test catches a breach before a deployment does.
        if key.len() > crate::ports::MAX_KEY_BYTES || value.len() > crate::ports::MAX_VALUE_BYTES {
            return Err(StoreError::Backend(format!(
                "`{key}` ({} bytes) is over the store's limits",
                value.len()
            )));
        }
        self.store
            .borrow_mut()
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_store()?;
        self.store.borrow_mut().remove(key);
        Ok(())
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        self.check_store()?;
        let mut store = self.store.borrow_mut();
        let current = match store.get(key) {
            None => 0,
            Some(bytes) => i64::from_le_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Backend(format!("`{key}` does not hold a number")))?,
            ),
        };
        let sum = current + delta;
        store.insert(key.to_string(), sum.to_le_bytes().to_vec());
        Ok(sum)
    }
    fn compare_and_swap(&self, key: &str, expected: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        self.check_store()?;
        let mut store = self.store.borrow_mut();
        if store.get(key).map(Vec::as_slice) != Some(expected) {
            return Ok(false);
        }
        store.insert(key.to_string(), new.to_vec());
        Ok(true)
    }
}

impl HttpClient for FakePlatform {
    async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        // A network call suspends its caller: concurrent requests interleave here, as they would.
        YieldOnce(false).await;
        let result = match self.handler.borrow().as_ref() {
            Some(handler) => handler(&request),
            None => Err(HttpError::Connection("no upstream in this test".into())),
        };
        self.sent.borrow_mut().push(request);
        result
    }
}

/// Pending once, then ready: lets the executor run the other futures in between.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

impl Clock for FakePlatform {
    fn now(&self) -> OffsetDateTime {
        self.now.get()
    }
    async fn sleep(&self, duration: Duration) {
        self.advance(duration);
        YieldOnce(false).await;
    }
}

impl Random for FakePlatform {
    /// Distinct, deterministic bytes (splitmix64), so tests can compare values across runs.
    fn fill(&self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut z = self.counter.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            self.counter.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

impl Variables for FakePlatform {
    fn variable(&self, name: &str) -> Result<Option<String>, VariableError> {
        Ok(self.vars.get(name).cloned())
    }
}

/// Collects a (possibly streamed) response in memory.
#[derive(Debug, Default, Clone)]
pub struct CapturedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How many `write` calls: more than one means the body was streamed.
    pub writes: usize,
    pub complete: Option<bool>,
}

/// A [`ResponseWriter`] into a shared [`CapturedResponse`].
#[derive(Clone, Default)]
pub struct CaptureWriter(pub Rc<RefCell<CapturedResponse>>);

impl CapturedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl ResponseWriter for CaptureWriter {
    fn start(&mut self, status: u16, headers: &[(String, String)]) -> Result<(), WriteError> {
        let mut c = self.0.borrow_mut();
        c.status = status;
        c.headers = headers.to_vec();
        Ok(())
    }
    fn write(&mut self, chunk: &[u8]) -> Result<(), WriteError> {
        let mut c = self.0.borrow_mut();
        c.body.extend_from_slice(chunk);
        c.writes += 1;
        Ok(())
    }
    fn finish(self, complete: bool) {
        self.0.borrow_mut().complete = Some(complete);
    }
}
