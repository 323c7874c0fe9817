//! Key-value stores kept by the host (never in a component's memory).
//!
//! On SQLite as Spin's `spin` store type: in memory without a state directory, else in
//! `<state dir>/sqlite_key_value.db` so values survive a restart. The table, its statements and the
//! journal mode (SQLite's default rollback journal, no WAL) are Spin 3.6's own, so a file written here
//! opens in `spin up` and back, and another process (a test) can read and write it while the host runs.
//!
//! On Redis as Spin's `redis` store type ([`redis_store`]): the same commands on the same client crate,
//! so several hosts (or Spin and this host) can share one Redis.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

pub mod redis_store;
use redis_store::{RedisCas, RedisStore};

/// Spin's table (spinframework/spin `crates/key-value-spin/src/store.rs`, verified against a file that
/// `spin up` 3.6.3 wrote).
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS spin_key_value (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,

    PRIMARY KEY (store, key)
)";

/// One store, as a component sees it through either key-value interface.
#[derive(Clone)]
pub struct KvStore {
    label: String,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    Redis(Arc<RedisStore>),
}

impl KvStore {
    /// A store of type `spin`: SQLite in `file`, or in memory without one.
    pub fn open(label: &str, file: Option<&Path>) -> Result<KvStore> {
        if let Some(dir) = file.and_then(Path::parent) {
            // As Spin does: the store's folder (e.g. `.spin/`) is created on first use.
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        let conn = match file {
            Some(path) => Connection::open(path)
                .with_context(|| format!("cannot open key-value file {}", path.display()))?,
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch(CREATE_TABLE)?;
        Ok(KvStore {
            label: label.to_string(),
            backend: Backend::Sqlite(Arc::new(Mutex::new(conn))),
        })
    }

    /// A store of type `redis` at `url` (`redis://host:port[/db]`): the URL is checked now, the
    /// connection made when a component first opens the store (as Spin does). See [`redis_store`].
    pub fn redis(label: &str, url: &str) -> Result<KvStore> {
        Ok(KvStore {
            label: label.to_string(),
            backend: Backend::Redis(Arc::new(RedisStore::new(url)?)),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// `"spin"` or `"redis"`, as the runtime config names the type.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "spin",
            Backend::Redis(_) => "redis",
        }
    }

    /// What `spin up` says about a Redis store when it starts: `Redis at host:port`.
    pub fn summary(&self) -> Option<String> {
        match &self.backend {
            Backend::Redis(redis) => {
                let info: redis::ConnectionInfo = redis.url().parse().ok()?;
                Some(format!("Redis at {}", info.addr))
            }
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite connection; called on SQLite stores only.
    fn sqlite(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.backend {
            // A panic while holding the lock leaves SQLite consistent (each statement is atomic).
            Backend::Sqlite(conn) => conn.lock().unwrap_or_else(|e| e.into_inner()),
            Backend::Redis(_) => unreachable!("a SQLite statement on a Redis store"),
        }
    }

    /// What a component's `open` of this store does besides the label check: nothing on SQLite; on
    /// Redis, connect (once) and `PING`.
    pub async fn connect(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Redis(redis) => redis.open().await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match &self.backend {
            Backend::Redis(redis) => redis.get(key).await,
            Backend::Sqlite(_) => self.sqlite_get(key),
        }
    }

    fn sqlite_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .sqlite()
            .query_row(
                "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
                params![self.label, key],
                |row| row.get(0),
            )
            .optional()?)
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        check_limits(key, value)?;
        match &self.backend {
            Backend::Redis(redis) => redis.set(key, value).await,
            Backend::Sqlite(_) => self.sqlite_set(key, value),
        }
    }

    fn sqlite_set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.sqlite().execute(
            "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            params![self.label, key, value],
        )?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Redis(redis) => redis.delete(key).await,
            Backend::Sqlite(_) => self.sqlite_delete(key),
        }
    }

    fn sqlite_delete(&self, key: &str) -> Result<()> {
        self.sqlite().execute(
            "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
            params![self.label, key],
        )?;
        Ok(())
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match &self.backend {
            Backend::Redis(redis) => redis.exists(key).await,
            Backend::Sqlite(_) => Ok(self.sqlite_get(key)?.is_some()),
        }
    }

    /// The store's keys; on Redis every key of the database (`KEYS *`), as in Spin.
    pub async fn keys(&self) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Redis(redis) => redis.keys().await,
            Backend::Sqlite(_) => {
                let conn = self.sqlite();
                let mut stmt = conn.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
                let keys = stmt
                    .query_map(params![self.label], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(keys)
            }
        }
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        match &self.backend {
            Backend::Redis(redis) => redis.get_many(keys).await,
            // Spin's `key IN rarray(...)` answers the keys that exist only.
            Backend::Sqlite(_) => {
                let mut found = Vec::with_capacity(keys.len());
                for key in keys {
                    if let Some(value) = self.sqlite_get(&key)? {
                        found.push((key, Some(value)));
                    }
                }
                Ok(found)
            }
        }
    }

    pub async fn set_many(&self, key_values: Vec<(String, Vec<u8>)>) -> Result<()> {
        for (key, value) in &key_values {
            check_limits(key, value)?;
        }
        match &self.backend {
            Backend::Redis(redis) => redis.set_many(&key_values).await,
            Backend::Sqlite(_) => key_values
                .iter()
                .try_for_each(|(key, value)| self.sqlite_set(key, value)),
        }
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        match &self.backend {
            Backend::Redis(redis) => redis.delete_many(keys).await,
            Backend::Sqlite(_) => keys.iter().try_for_each(|key| self.sqlite_delete(key)),
        }
    }

    /// `wasi:keyvalue/atomics.increment`. On SQLite as Spin's SQLite store does it: in a transaction, the
    /// value read as an 8-byte little-endian integer (an absent key is 0) and written back the same way
    /// (a value of another length makes Spin's host panic; here it is an error). On Redis `INCRBY`: the
    /// value is decimal text.
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        check_limits(key, &[])?;
        match &self.backend {
            Backend::Redis(redis) => redis.increment(key, delta).await,
            Backend::Sqlite(_) => self.sqlite_increment(key, delta),
        }
    }

    fn sqlite_increment(&self, key: &str, delta: i64) -> Result<i64> {
        let mut conn = self.sqlite();
        let tx = conn.transaction()?;
        let current: Option<Vec<u8>> = tx
            .query_row(
                "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
                params![self.label, key],
                |row| row.get(0),
            )
            .optional()?;
        let number = match current {
            None => 0,
            Some(bytes) => i64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!("`{key}` does not hold an 8-byte integer (Spin's host would panic)")
            })?),
        };
        let sum = number + delta;
        tx.execute(
            "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            params![self.label, key, sum.to_le_bytes()],
        )?;
        tx.commit()?;
        Ok(sum)
    }

    /// Starts a `wasi:keyvalue/atomics.cas` on `key` (on Redis, with a connection of its own).
    pub async fn cas(&self, key: &str) -> Result<Cas> {
        let inner = match &self.backend {
            Backend::Sqlite(_) => CasInner::Sqlite {
                seen: Mutex::new(None),
            },
            Backend::Redis(redis) => CasInner::Redis(redis.cas(key).await?),
        };
        Ok(Cas {
            store: self.clone(),
            key: key.to_string(),
            inner,
        })
    }

    /// Every entry, for tests that check what is stored at rest (on Redis: every key of the database).
    pub async fn dump(&self) -> Result<Vec<(String, Vec<u8>)>> {
        match &self.backend {
            Backend::Redis(redis) => redis.dump().await,
            Backend::Sqlite(_) => {
                let conn = self.sqlite();
                let mut stmt = conn.prepare(
                    "SELECT key, value FROM spin_key_value WHERE store = ?1 ORDER BY key",
                )?;
                let rows = stmt
                    .query_map(params![self.label], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(rows)
            }
        }
    }
}

/// The largest key and value Fermyon Cloud accepts (Spin documents them); the host refuses more, so a
/// test catches a breach before a deployment does.
pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

fn check_limits(key: &str, value: &[u8]) -> Result<()> {
    anyhow::ensure!(
        key.len() <= MAX_KEY_BYTES,
        "the key is {} bytes; the store allows at most {MAX_KEY_BYTES}",
        key.len()
    );
    anyhow::ensure!(
        value.len() <= MAX_VALUE_BYTES,
        "the value is {} bytes; the store allows at most {MAX_VALUE_BYTES}",
        value.len()
    );
    Ok(())
}

/// A compare-and-swap as Spin's stores do it.
///
/// SQLite (spinframework/spin `crates/key-value-spin/src/store.rs`): `current` reads the value and
/// remembers it; `swap` updates only a row still holding that value — but when `current` saw no value (or
/// was never called), the swap is a plain upsert. So a swap is safe only on a key that exists.
///
/// Redis ([`redis_store`]): `current` watches the key; `swap` is a transaction that Redis aborts if the
/// key changed since — and then reports a failed CAS whether or not it was aborted.
pub struct Cas {
    store: KvStore,
    key: String,
    inner: CasInner,
}

enum CasInner {
    Sqlite { seen: Mutex<Option<Vec<u8>>> },
    Redis(RedisCas),
}

/// Why a swap did not happen (or, on Redis, is reported as not having happened).
pub enum SwapError {
    /// The value changed since `current` (Redis: or any swap, see [`redis_store`]).
    Failed,
    Store(anyhow::Error),
}

impl Cas {
    pub async fn current(&self) -> Result<Option<Vec<u8>>> {
        match &self.inner {
            CasInner::Sqlite { seen } => {
                let value = self.store.get(&self.key).await?;
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = value.clone();
                Ok(value)
            }
            CasInner::Redis(cas) => cas.current().await,
        }
    }

    pub async fn swap(&self, value: &[u8]) -> std::result::Result<(), SwapError> {
        check_limits(&self.key, value).map_err(SwapError::Store)?;
        let seen = match &self.inner {
            CasInner::Sqlite { seen } => seen.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            CasInner::Redis(cas) => return cas.swap(value).await.map_err(|_| SwapError::Failed),
        };
        let conn = self.store.sqlite();
        let changed = match seen {
            Some(old) => conn.execute(
                "UPDATE spin_key_value SET value = ?1 WHERE store = ?2 AND key = ?3 AND value = ?4",
                params![value, self.store.label, self.key, old],
            ),
            None => conn.execute(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                params![self.store.label, self.key, value],
            ),
        }
        .map_err(|e| SwapError::Store(e.into()))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(SwapError::Failed)
        }
    }

    pub fn store(&self) -> &KvStore {
        &self.store
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The stores an app may open, by label.
#[derive(Clone, Default)]
pub struct KvStores {
    stores: HashMap<String, KvStore>,
}

impl KvStores {
    pub fn insert(&mut self, store: KvStore) {
        self.stores.insert(store.label.clone(), store);
    }

    pub fn get(&self, label: &str) -> Option<&KvStore> {
        self.stores.get(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_server::RedisServer;

    #[tokio::test]
    async fn file_store_survives_reopen_and_keeps_labels_apart() {
        let dir = std::env::temp_dir().join(format!("kv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kv.db");
        let _ = std::fs::remove_file(&file);
        {
            let a = KvStore::open("default", Some(&file)).unwrap();
            a.set("k", b"v1").await.unwrap();
            a.set("k", b"v2").await.unwrap();
            a.set("gone", b"x").await.unwrap();
            a.delete("gone").await.unwrap();
            let b = KvStore::open("other", Some(&file)).unwrap();
            b.set("k", b"other").await.unwrap();
        }
        let a = KvStore::open("default", Some(&file)).unwrap();
        assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
        assert!(!a.exists("gone").await.unwrap());
        assert_eq!(a.keys().await.unwrap(), vec!["k".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn atomics_behave_as_spins_sqlite_store() {
        let store = KvStore::open("default", None).unwrap();
        assert_eq!(store.increment("n", 1).await.unwrap(), 1);
        assert_eq!(store.increment("n", 2).await.unwrap(), 3);
        assert_eq!(store.get("n").await.unwrap().unwrap(), 3i64.to_le_bytes());
        store.set("text", b"not a number").await.unwrap();
        assert!(store.increment("text", 1).await.is_err());

        store.set("r", b"one").await.unwrap();
        let cas = store.cas("r").await.unwrap();
        assert_eq!(cas.current().await.unwrap().as_deref(), Some(&b"one"[..]));
        store.set("r", b"two").await.unwrap();
        assert!(matches!(cas.swap(b"three").await, Err(SwapError::Failed)));
        let cas = store.cas("r").await.unwrap();
        cas.current().await.unwrap();
        assert!(cas.swap(b"three").await.is_ok());
        assert_eq!(
            store.get("r").await.unwrap().as_deref(),
            Some(&b"three"[..])
        );
        // An absent key, or a swap without `current`: a blind write, as in Spin.
        let blind = store.cas("r").await.unwrap();
        assert!(blind.swap(b"four").await.is_ok());
        assert_eq!(store.get("r").await.unwrap().as_deref(), Some(&b"four"[..]));
    }

    #[tokio::test]
    async fn keys_and_values_over_the_limits_are_refused() {
        let store = KvStore::open("default", None).unwrap();
        assert!(store
            .set(&"k".repeat(MAX_KEY_BYTES + 1), b"v")
            .await
            .is_err());
        assert!(store.set("k", &vec![0; MAX_VALUE_BYTES + 1]).await.is_err());
        assert!(store
            .set(&"k".repeat(MAX_KEY_BYTES), &vec![0; MAX_VALUE_BYTES])
            .await
            .is_ok());
    }

    /// A `redis-server` of the test's own on a free port, or `None` (the test is then skipped, saying
    /// so) when none is installed.
    fn redis_server(test: &str) -> Option<RedisServer> {
        if RedisServer::binary().is_none() {
            eprintln!("SKIPPED {test}: no redis-server (apt-get install redis-server)");
            return None;
        }
        Some(RedisServer::start_on_a_free_port().expect("redis-server starts"))
    }

    #[tokio::test]
    async fn redis_store_sends_spins_commands_and_shares_the_database_across_labels() {
        let Some(server) = redis_server("redis_store_sends_spins_commands...") else {
            return;
        };
        let store = KvStore::redis("default", &server.url()).unwrap();
        assert_eq!(store.kind(), "redis");
        assert_eq!(
            store.summary().unwrap(),
            format!("Redis at 127.0.0.1:{}", server.port())
        );
        store.connect().await.unwrap();
        assert_eq!(store.get("k").await.unwrap(), None);
        store.set("k", b"v1").await.unwrap();
        store.set("k", b"v2").await.unwrap();
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
        assert!(store.exists("k").await.unwrap());
        store.set("gone", b"x").await.unwrap();
        store.delete("gone").await.unwrap();
        assert!(!store.exists("gone").await.unwrap());
        // Labels do not partition Redis: another store on the same URL sees (and lists) the same keys.
        let other = KvStore::redis("other", &server.url()).unwrap();
        assert_eq!(other.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
        other.set("o", b"from other").await.unwrap();
        let mut keys = store.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, ["k", "o"]);
        assert_eq!(
            store.dump().await.unwrap(),
            [
                ("k".to_string(), b"v2".to_vec()),
                ("o".to_string(), b"from other".to_vec())
            ]
        );
        // The limits hold on Redis too.
        assert!(store
            .set(&"k".repeat(MAX_KEY_BYTES + 1), b"v")
            .await
            .is_err());
        assert!(store.set("k", &vec![0; MAX_VALUE_BYTES + 1]).await.is_err());
        store.set("big", &vec![7; MAX_VALUE_BYTES]).await.unwrap();
        // Batches: MSET and DEL as in Spin; get-many is Spin's `KEYS k...`, which cannot read values.
        store
            .set_many(vec![
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"2".to_vec()),
            ])
            .await
            .unwrap();
        assert_eq!(store.get("b").await.unwrap().as_deref(), Some(&b"2"[..]));
        assert!(store.get_many(vec!["a".into(), "b".into()]).await.is_err());
        store
            .delete_many(vec!["a".into(), "b".into()])
            .await
            .unwrap();
        assert!(!store.exists("a").await.unwrap() && !store.exists("b").await.unwrap());
    }

    #[tokio::test]
    async fn redis_increment_is_incrby_on_decimal_text() {
        let Some(server) = redis_server("redis_increment_is_incrby_on_decimal_text") else {
            return;
        };
        let store = KvStore::redis("default", &server.url()).unwrap();
        assert_eq!(store.increment("n", 5).await.unwrap(), 5);
        assert_eq!(store.increment("n", 0).await.unwrap(), 5);
        assert_eq!(store.increment("n", -7).await.unwrap(), -2);
        assert_eq!(store.get("n").await.unwrap().as_deref(), Some(&b"-2"[..]));
        store.set("text", b"41").await.unwrap();
        assert_eq!(store.increment("text", 1).await.unwrap(), 42);
        store.set("le", &3i64.to_le_bytes()).await.unwrap();
        let err = store.increment("le", 1).await.unwrap_err();
        assert!(format!("{err:#}").contains("not an integer"), "{err:#}");
    }

    #[tokio::test]
    async fn a_redis_swap_always_reports_a_failed_cas_applied_or_not() {
        let Some(server) = redis_server("a_redis_swap_always_reports_a_failed_cas") else {
            return;
        };
        let store = KvStore::redis("default", &server.url()).unwrap();
        store.set("r", b"one").await.unwrap();

        // Nobody interferes: the transaction runs, then `UNWATCH r` is refused, so the swap reports a
        // failed CAS although the value was swapped.
        let cas = store.cas("r").await.unwrap();
        assert_eq!(cas.current().await.unwrap().as_deref(), Some(&b"one"[..]));
        assert!(matches!(cas.swap(b"two").await, Err(SwapError::Failed)));
        assert_eq!(store.get("r").await.unwrap().as_deref(), Some(&b"two"[..]));

        // Someone writes between `current` and `swap`: Redis aborts the transaction (nil EXEC), and the
        // swap reports the same failed CAS; the other writer's value stays.
        let cas = store.cas("r").await.unwrap();
        assert_eq!(cas.current().await.unwrap().as_deref(), Some(&b"two"[..]));
        store.set("r", b"other").await.unwrap();
        assert!(matches!(cas.swap(b"three").await, Err(SwapError::Failed)));
        assert_eq!(
            store.get("r").await.unwrap().as_deref(),
            Some(&b"other"[..])
        );

        // Without `current` nothing is watched: a blind write, reported as failed all the same.
        let blind = store.cas("absent").await.unwrap();
        assert!(matches!(blind.swap(b"x").await, Err(SwapError::Failed)));
        assert_eq!(
            store.get("absent").await.unwrap().as_deref(),
            Some(&b"x"[..])
        );

        // The limits are checked before anything is sent.
        let cas = store.cas("r").await.unwrap();
        cas.current().await.unwrap();
        assert!(matches!(
            cas.swap(&vec![0; MAX_VALUE_BYTES + 1]).await,
            Err(SwapError::Store(_))
        ));
        assert_eq!(
            store.get("r").await.unwrap().as_deref(),
            Some(&b"other"[..])
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_retried_when_opened_not_refused_when_configured() {
        assert!(KvStore::redis("default", "http://127.0.0.1:1").is_err());
        // A port nothing listens on (just released): configuring the store does not connect; opening it
        // waits while the connection manager retries (for minutes: redis 0.32's backoff starts at 1 s
        // and grows to 60 s, 6 times), as a request to Spin 3.6.3 does.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = KvStore::redis("default", &format!("redis://127.0.0.1:{port}")).unwrap();
        let open = tokio::time::timeout(std::time::Duration::from_secs(2), store.connect()).await;
        assert!(open.is_err(), "still retrying after 2 s: {open:?}");
    }
}
