//! The `redis` store type, command for command as Spin 3.6.3's own (spinframework/spin
//! `crates/key-value-redis/src/store.rs`, on the same `redis` crate version, 0.32.5):
//!
//! - one connection manager per store, made when a component first opens it; every open sends `PING`
//!   (its failure ignored: the manager reconnects in the background);
//! - `get` = `GET`, `set` = `SET`, `delete` = `DEL`, `exists` = `EXISTS`, `get-keys` = `KEYS *` (every key of
//!   the Redis database, whatever the store's label), `increment` = `INCRBY` (decimal text values, not the
//!   8-byte integers of the SQLite store); batch `set-many` = `MSET`, `delete-many` = `DEL k...`, and
//!   `get-many` = `KEYS k...` (sic: Spin sends `KEYS`, not `MGET`, so it fails for more than one key and
//!   answers key names, not values, for one);
//! - a compare-and-swap gets its own connection: `current` sends `WATCH key` then `GET key`; `swap` sends
//!   `MULTI`, `SET key value`, `EXEC` (an `EXEC` aborted by the watch answers nil, which the crate's
//!   `query_async::<()>` takes as success), then `UNWATCH key` — which Redis refuses (`UNWATCH` takes no
//!   argument: "ERR wrong number of arguments"), so **every swap reports a failed CAS**, whether its
//!   `SET` was applied or not. Only reading the key back tells.
//!
//! Errors carry the crate's `Debug` text, as Spin's `log_error` does.

use anyhow::{Context, Result};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Client, RedisError};
use tokio::sync::OnceCell;

fn error(err: RedisError) -> anyhow::Error {
    anyhow::anyhow!("{err:?}")
}

pub struct RedisStore {
    url: String,
    connection: OnceCell<ConnectionManager>,
}

impl RedisStore {
    /// Checks the URL only, as Spin does at start-up; the connection is made on first use.
    pub fn new(url: &str) -> Result<RedisStore> {
        redis::parse_redis_url(url).context("Invalid Redis URL")?;
        Ok(RedisStore {
            url: url.to_string(),
            connection: OnceCell::new(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn connection(&self) -> Result<ConnectionManager> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                Client::open(self.url.as_str())?
                    .get_connection_manager()
                    .await
            })
            .await
            .map_err(error)?;
        Ok(connection.clone())
    }

    /// What a component's `open` does: the shared connection (made once), then a `PING` whose failure
    /// is ignored.
    pub async fn open(&self) -> Result<()> {
        let mut connection = self.connection().await?;
        let _ = redis::cmd("PING").query_async::<()>(&mut connection).await;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.connection()
            .await?
            .get::<_, Option<Vec<u8>>>(key)
            .await
            .map_err(error)
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.connection()
            .await?
            .set::<_, _, ()>(key, value)
            .await
            .map_err(error)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.connection()
            .await?
            .del::<_, ()>(key)
            .await
            .map_err(error)
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.connection()
            .await?
            .exists::<_, bool>(key)
            .await
            .map_err(error)
    }

    pub async fn keys(&self) -> Result<Vec<String>> {
        self.connection()
            .await?
            .keys::<_, Vec<String>>("*")
            .await
            .map_err(error)
    }

    /// Spin's `get_many` on Redis: `KEYS k1 k2 ...`, parsed as key/value pairs.
    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        self.connection()
            .await?
            .keys::<_, Vec<(String, Option<Vec<u8>>)>>(keys)
            .await
            .map_err(error)
    }

    pub async fn set_many(&self, key_values: &[(String, Vec<u8>)]) -> Result<()> {
        self.connection()
            .await?
            .mset::<_, _, ()>(key_values)
            .await
            .map_err(error)
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        self.connection()
            .await?
            .del::<_, ()>(keys)
            .await
            .map_err(error)
    }

    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        self.connection()
            .await?
            .incr::<_, _, i64>(key, delta)
            .await
            .map_err(error)
    }

    /// A compare-and-swap on its own connection: a Redis `WATCH` belongs to a connection, and ends with it.
    pub async fn cas(&self, key: &str) -> Result<RedisCas> {
        let connection = Client::open(self.url.as_str())
            .map_err(error)?
            .get_connection_manager()
            .await
            .map_err(error)?;
        Ok(RedisCas {
            key: key.to_string(),
            connection,
        })
    }

    /// Every key of the database with its value (`KEYS *`, then `GET` each), sorted by key.
    pub async fn dump(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut keys = self.keys().await?;
        keys.sort();
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.get(&key).await? {
                entries.push((key, value));
            }
        }
        Ok(entries)
    }
}

pub struct RedisCas {
    key: String,
    connection: ConnectionManager,
}

impl RedisCas {
    /// `WATCH key`, then `GET key`.
    pub async fn current(&self) -> Result<Option<Vec<u8>>> {
        redis::cmd("WATCH")
            .arg(&self.key)
            .exec_async(&mut self.connection.clone())
            .await
            .map_err(error)?;
        self.connection
            .clone()
            .get::<_, Option<Vec<u8>>>(&self.key)
            .await
            .map_err(error)
    }

    /// `MULTI`, `SET`, `EXEC`, then `UNWATCH key`. `Err(why)` is a failed CAS as Spin reports it — with
    /// Redis, always (see the module's documentation).
    pub async fn swap(&self, value: &[u8]) -> Result<(), String> {
        let transaction: Result<(), RedisError> = redis::pipe()
            .atomic()
            .set(&self.key, value)
            .query_async(&mut self.connection.clone())
            .await;
        redis::cmd("UNWATCH")
            .arg(&self.key)
            .exec_async(&mut self.connection.clone())
            .await
            .map_err(|err| format!("{err:?}"))?;
        transaction.map_err(|err| format!("{err:?}"))
    }
}
