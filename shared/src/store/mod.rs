//! The app's memory, in Spin's key-value store, bounded by design: every record is sealed
//! ([`crate::crypto`]) and carries its own expiry (an expired one is deleted when read); large values
//! are chunked under the store's value limit; names that would reveal a person are keyed hashes; and
//! the lists the app walks are ordered [`log`]s, so no request lists the store's keys.

pub mod log;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::ApiVersion;
use crate::crypto::{OpenError, TokenKey, SEAL_OVERHEAD};
use crate::error::Error;
use crate::ports::{Clock, KeyValue, Random, StoreError, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// How long a claimant waits before checking that its claim stands (see [`Vault::claim`]): far longer
/// than the gap between another claimant's read and write, far shorter than any claim is held.
const CLAIM_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// What the ports a [`Vault`] needs.
pub trait Backing: KeyValue + Clock + Random {}
impl<T: KeyValue + Clock + Random> Backing for T {}

/// Sealed, expiring records and chunked blobs in the key-value store.
pub struct Vault<'a, P: Backing> {
    pub platform: &'a P,
    key: &'a TokenKey,
    version: ApiVersion,
}

/// When a record stops being: at `until` (Unix seconds), or never (an index counter, say).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Lifetime {
    Until(i64),
    Forever,
}

#[derive(Serialize, Deserialize)]
struct Sealed<T> {
    #[serde(rename = "x")]
    expires: Option<i64>,
    #[serde(rename = "v")]
    value: T,
}

/// A record as read, with the exact bytes stored, for a later [`Vault::swap`].
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub lifetime: Lifetime,
    raw: Vec<u8>,
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealed under another key, or tampered with.
    #[error("the record `{key}` cannot be opened: {why}")]
    Unopenable { key: String, why: OpenError },
    #[error("the record `{key}` is unreadable: {why}")]
    Malformed { key: String, why: String },
}

impl From<RecordError> for Error {
    fn from(err: RecordError) -> Error {
        match err {
            RecordError::Store(e) => Error::Store(e),
            other => Error::Store(StoreError::Backend(other.to_string())),
        }
    }
}

/// The room a chunk of a blob leaves for sealing.
const CHUNK_BYTES: usize = MAX_VALUE_BYTES - SEAL_OVERHEAD;

impl<'a, P: Backing> Vault<'a, P> {
    pub fn new(platform: &'a P, key: &'a TokenKey) -> Self {
        Vault {
            platform,
            key,
            version: ApiVersion::V2,
        }
    }

    /// The same vault for data from Blue Button `version`: what names a patient is keyed by it.
    pub fn on(self, version: ApiVersion) -> Self {
        Vault { version, ..self }
    }

    pub fn version(&self) -> ApiVersion {
        self.version
    }

    /// A patient's keyed hash, within the API version: v2 and v3 name a beneficiary by different ids,
    /// and what was stored under one must never be found under the other. (v2 keeps the hash it always
    /// had, so stores from before v3 stay readable.)
    pub fn hide_patient(&self, patient: &str) -> String {
        match self.version {
            ApiVersion::V2 => self.hide("patient", patient),
            ApiVersion::V3 => self.hide("patient@v3", patient),
        }
    }

    /// A keyed hash of `name` within `kind`, for keys about a person or a resource.
    pub fn hide(&self, kind: &str, name: &str) -> String {
        self.key.hide(kind, name)
    }

    pub fn now(&self) -> i64 {
        self.platform.now().unix_timestamp()
    }

    fn seal<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        lifetime: Lifetime,
    ) -> Result<Vec<u8>, Error> {
        check_key(key)?;
        let expires = match lifetime {
            Lifetime::Until(at) => Some(at),
            Lifetime::Forever => None,
        };
        let plain = serde_json::to_vec(&Sealed { expires, value }).expect("records serialize");
        if plain.len() + SEAL_OVERHEAD > MAX_VALUE_BYTES {
            return Err(Error::Store(StoreError::Backend(format!(
                "the record `{key}` would be {} bytes, over the store's {MAX_VALUE_BYTES}-byte limit",
                plain.len() + SEAL_OVERHEAD
            ))));
        }
        Ok(self.key.seal(self.platform, &plain, key.as_bytes()))
    }

    fn open<T: DeserializeOwned>(
        &self,
        key: &str,
        raw: Vec<u8>,
    ) -> Result<Versioned<T>, RecordError> {
        let plain = self
            .key
            .open(&raw, key.as_bytes())
            .map_err(|why| RecordError::Unopenable {
                key: key.to_string(),
                why,
            })?;
        let sealed: Sealed<T> =
            serde_json::from_slice(&plain).map_err(|e| RecordError::Malformed {
                key: key.to_string(),
                why: e.to_string(),
            })?;
        Ok(Versioned {
            value: sealed.value,
            lifetime: sealed.expires.map_or(Lifetime::Forever, Lifetime::Until),
            raw,
        })
    }

    pub fn put<T: Serialize>(&self, key: &str, value: &T, lifetime: Lifetime) -> Result<(), Error> {
        let sealed = self.seal(key, value, lifetime)?;
        self.platform.set(key, &sealed)?;
        Ok(())
    }

    /// The record at `key`, unless it is absent or expired (an expired one is deleted on the way).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, RecordError> {
        Ok(self.get_versioned(key)?.map(|v| v.value))
    }

    pub fn get_versioned<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, RecordError> {
        let Some(raw) = self.platform.get(key)? else {
            return Ok(None);
        };
        let record = self.open(key, raw)?;
        if let Lifetime::Until(at) = record.lifetime {
            if at <= self.now() {
                self.platform.delete(key)?;
                return Ok(None);
            }
        }
        Ok(Some(record))
    }

    /// Replaces a record only if nobody changed it since `previous` was read; `false` if someone did.
    pub fn swap<T: Serialize>(
        &self,
        key: &str,
        previous: &Versioned<impl Serialize>,
        value: &T,
        lifetime: Lifetime,
    ) -> Result<bool, Error> {
        Ok(self.swap_sealed(key, previous, value, lifetime)?.is_some())
    }

    /// [`Vault::swap`], answering the sealed bytes it stored.
    fn swap_sealed<T: Serialize>(
        &self,
        key: &str,
        previous: &Versioned<impl Serialize>,
        value: &T,
        lifetime: Lifetime,
    ) -> Result<Option<Vec<u8>>, Error> {
        let sealed = self.seal(key, value, lifetime)?;
        let swapped = self
            .platform
            .compare_and_swap(key, &previous.raw, &sealed)?;
        Ok(swapped.then_some(sealed))
    }

    /// Claims a record (a lease others respect) only if nobody changed it since `previous` was read.
    /// Spin's Redis store shares one connection between an instance's requests, so its `WATCH` can miss
    /// a concurrent writer and two swaps can both report success; the later write is the one stored, so
    /// after a pause each claimant reads the record again and only the one whose write stands goes on.
    pub async fn claim<T: Serialize>(
        &self,
        key: &str,
        previous: &Versioned<impl Serialize>,
        value: &T,
        lifetime: Lifetime,
    ) -> Result<bool, Error> {
        let Some(sealed) = self.swap_sealed(key, previous, value, lifetime)? else {
            return Ok(false);
        };
        self.platform.sleep(CLAIM_SETTLE).await;
        Ok(self.platform.get(key)?.as_deref() == Some(sealed.as_slice()))
    }

    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.platform.delete(key)?;
        Ok(())
    }

    /// Stores `bytes` sealed in as many chunks as the value limit needs (`{prefix}/{i}`); reading it
    /// back takes the same length (see [`chunks_for`]).
    pub fn put_blob(&self, prefix: &str, bytes: &[u8]) -> Result<(), Error> {
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let key = chunk_key(prefix, i as u32);
            check_key(&key)?;
            let sealed = self.key.seal(self.platform, chunk, key.as_bytes());
            self.platform.set(&key, &sealed)?;
        }
        Ok(())
    }

    /// The blob of `len` bytes stored under `prefix`.
    pub fn get_blob(&self, prefix: &str, len: usize) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(len);
        for i in 0..chunks_for(len) {
            let key = chunk_key(prefix, i);
            let raw = self
                .platform
                .get(&key)?
                .ok_or_else(|| RecordError::Malformed {
                    key: key.clone(),
                    why: "a chunk is missing".into(),
                })?;
            let plain =
                self.key
                    .open(&raw, key.as_bytes())
                    .map_err(|why| RecordError::Unopenable {
                        key: key.clone(),
                        why,
                    })?;
            out.extend_from_slice(&plain);
        }
        Ok(out)
    }

    pub fn delete_blob(&self, prefix: &str, len: usize) -> Result<(), Error> {
        for i in 0..chunks_for(len) {
            self.platform.delete(&chunk_key(prefix, i))?;
        }
        Ok(())
    }
}

/// How many chunks a blob of `len` bytes takes (an empty one still has one).
pub fn chunks_for(len: usize) -> u32 {
    len.div_ceil(CHUNK_BYTES).max(1) as u32
}

fn chunk_key(prefix: &str, i: u32) -> String {
    format!("{prefix}/{i}")
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::Store(StoreError::Backend(format!(
            "a key of {} bytes is over the store's {MAX_KEY_BYTES}-byte limit",
            key.len()
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;
    use std::time::Duration;

    fn key() -> TokenKey {
        TokenKey::parse(&"42".repeat(32)).unwrap()
    }

    #[test]
    fn a_patient_is_hidden_apart_per_api_version() {
        let (p, k) = (FakePlatform::new(), key());
        let v2 = Vault::new(&p, &k);
        assert_eq!(v2.hide_patient("-1"), v2.hide("patient", "-1"));
        let v3 = Vault::new(&p, &k).on(ApiVersion::V3);
        assert_ne!(v3.hide_patient("-1"), v2.hide_patient("-1"));
        assert_eq!(v3.version(), ApiVersion::V3);
    }

    #[test]
    fn records_are_sealed_and_expire_when_read() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let until = vault.now() + 60;
        vault
            .put("note:1", &"patient -20140000010000", Lifetime::Until(until))
            .unwrap();
        assert!(!format!("{:?}", p.store.borrow()).contains("2014"));
        assert_eq!(
            vault.get::<String>("note:1").unwrap().as_deref(),
            Some("patient -20140000010000")
        );
        p.advance(Duration::from_secs(61));
        assert_eq!(vault.get::<String>("note:1").unwrap(), None);
        assert!(p.store.borrow().is_empty(), "the expired record is gone");
    }

    #[test]
    fn a_record_moved_to_another_key_does_not_open() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        vault.put("a", &1, Lifetime::Forever).unwrap();
        let raw = p.get("a").unwrap().unwrap();
        p.set("b", &raw).unwrap();
        assert!(matches!(
            vault.get::<i32>("b"),
            Err(RecordError::Unopenable { .. })
        ));
    }

    #[test]
    fn swaps_fail_when_someone_wrote_first() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        vault.put("r", &1, Lifetime::Forever).unwrap();
        let read = vault.get_versioned::<i32>("r").unwrap().unwrap();
        vault.put("r", &2, Lifetime::Forever).unwrap();
        assert!(!vault.swap("r", &read, &3, Lifetime::Forever).unwrap());
        let read = vault.get_versioned::<i32>("r").unwrap().unwrap();
        assert!(vault.swap("r", &read, &3, Lifetime::Forever).unwrap());
        assert_eq!(vault.get::<i32>("r").unwrap(), Some(3));
    }

    #[test]
    fn a_claim_stands_only_if_no_later_write_replaced_it() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        vault.put("r", &1, Lifetime::Forever).unwrap();
        let read = vault.get_versioned::<i32>("r").unwrap().unwrap();
        let claim = vault.claim("r", &read, &2, Lifetime::Forever);
        assert!(futures::executor::block_on(claim).unwrap());
        let stale = vault.get_versioned::<i32>("r").unwrap().unwrap();
        vault.put("r", &3, Lifetime::Forever).unwrap();
        assert!(
            !futures::executor::block_on(vault.claim("r", &stale, &4, Lifetime::Forever)).unwrap()
        );
        assert_eq!(vault.get::<i32>("r").unwrap(), Some(3));
    }

    #[test]
    fn blobs_are_chunked_under_the_value_limit() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        vault.put_blob("outbox-payload:1", &big).unwrap();
        assert_eq!(p.store.borrow().len(), 3);
        assert!(p
            .store
            .borrow()
            .values()
            .all(|v| v.len() <= MAX_VALUE_BYTES));
        assert_eq!(vault.get_blob("outbox-payload:1", big.len()).unwrap(), big);
        vault.delete_blob("outbox-payload:1", big.len()).unwrap();
        assert!(p.store.borrow().is_empty());
        assert!(vault
            .put("k", &"x".repeat(MAX_VALUE_BYTES), Lifetime::Forever)
            .is_err());
        assert!(vault.put(&"k".repeat(251), &1, Lifetime::Forever).is_err());
    }
}
