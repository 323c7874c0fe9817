//! Key-value stores kept by the host (never in a component's memory), on SQLite as Spin's `spin` store type:
//! in memory without a state directory, else in `<state dir>/sqlite_key_value.db` so values survive a
//! restart. The table, its statements and the journal mode (SQLite's default rollback journal, no WAL)
//! are Spin 3.6's own, so a file written here opens in `spin up` and back, and another process (a test)
//! can read and write it while the host runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// Spin's table (spinframework/spin `crates/key-value-spin/src/store.rs`, verified against a file that
/// `spin up` 3.6.3 wrote).
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS spin_key_value (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,

    PRIMARY KEY (store, key)
)";

#[derive(Clone)]
pub struct KvStore {
    label: String,
    conn: Arc<Mutex<Connection>>,
}

impl KvStore {
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
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each statement is atomic).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
                params![self.label, key],
                |row| row.get(0),
            )
            .optional()?)
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        check_limits(key, value)?;
        self.conn().execute(
            "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            params![self.label, key, value],
        )?;
        Ok(())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2",
            params![self.label, key],
        )?;
        Ok(())
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    pub fn keys(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
        let keys = stmt
            .query_map(params![self.label], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(keys)
    }

    /// `wasi:keyvalue/atomics.increment` as Spin's SQLite store does it: in a transaction, the value read
    /// as an 8-byte little-endian integer (an absent key is 0) and written back the same way. A value of
    /// another length makes Spin's host panic; here it is an error.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        check_limits(key, &[])?;
        let mut conn = self.conn();
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

    /// Starts a `wasi:keyvalue/atomics.cas` on `key`.
    pub fn cas(&self, key: &str) -> Cas {
        Cas {
            store: self.clone(),
            key: key.to_string(),
            seen: Mutex::new(None),
        }
    }

    /// Every entry, for tests that check what is stored at rest.
    pub fn dump(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT key, value FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
        let rows = stmt
            .query_map(params![self.label], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
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

/// A compare-and-swap as Spin's SQLite store does it (spinframework/spin
/// `crates/key-value-spin/src/store.rs`): `current` reads the value and remembers it; `swap` updates
/// only a row still holding that value — but when `current` saw no value (or was never called), the
/// swap is a plain upsert. So a swap is safe only on a key that exists.
pub struct Cas {
    store: KvStore,
    key: String,
    seen: Mutex<Option<Vec<u8>>>,
}

/// Why a swap did not happen.
pub enum SwapError {
    /// The value changed since `current`.
    Failed,
    Store(anyhow::Error),
}

impl Cas {
    pub fn current(&self) -> Result<Option<Vec<u8>>> {
        let value = self.store.get(&self.key)?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = value.clone();
        Ok(value)
    }

    pub fn swap(&self, value: &[u8]) -> std::result::Result<(), SwapError> {
        check_limits(&self.key, value).map_err(SwapError::Store)?;
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let conn = self.store.conn();
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

    #[test]
    fn file_store_survives_reopen_and_keeps_labels_apart() {
        let dir = std::env::temp_dir().join(format!("kv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kv.db");
        let _ = std::fs::remove_file(&file);
        {
            let a = KvStore::open("default", Some(&file)).unwrap();
            a.set("k", b"v1").unwrap();
            a.set("k", b"v2").unwrap();
            a.set("gone", b"x").unwrap();
            a.delete("gone").unwrap();
            let b = KvStore::open("other", Some(&file)).unwrap();
            b.set("k", b"other").unwrap();
        }
        let a = KvStore::open("default", Some(&file)).unwrap();
        assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"v2"[..]));
        assert!(!a.exists("gone").unwrap());
        assert_eq!(a.keys().unwrap(), vec!["k".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomics_behave_as_spins_sqlite_store() {
        let store = KvStore::open("default", None).unwrap();
        assert_eq!(store.increment("n", 1).unwrap(), 1);
        assert_eq!(store.increment("n", 2).unwrap(), 3);
        assert_eq!(store.get("n").unwrap().unwrap(), 3i64.to_le_bytes());
        store.set("text", b"not a number").unwrap();
        assert!(store.increment("text", 1).is_err());

        store.set("r", b"one").unwrap();
        let cas = store.cas("r");
        assert_eq!(cas.current().unwrap().as_deref(), Some(&b"one"[..]));
        store.set("r", b"two").unwrap();
        assert!(matches!(cas.swap(b"three"), Err(SwapError::Failed)));
        let cas = store.cas("r");
        cas.current().unwrap();
        assert!(cas.swap(b"three").is_ok());
        assert_eq!(store.get("r").unwrap().as_deref(), Some(&b"three"[..]));
        // An absent key, or a swap without `current`: a blind write, as in Spin.
        let blind = store.cas("r");
        assert!(blind.swap(b"four").is_ok());
        assert_eq!(store.get("r").unwrap().as_deref(), Some(&b"four"[..]));
    }

    #[test]
    fn keys_and_values_over_the_limits_are_refused() {
        let store = KvStore::open("default", None).unwrap();
        assert!(store.set(&"k".repeat(MAX_KEY_BYTES + 1), b"v").is_err());
        assert!(store.set("k", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert!(store
            .set(&"k".repeat(MAX_KEY_BYTES), &vec![0; MAX_VALUE_BYTES])
            .is_ok());
    }
}
