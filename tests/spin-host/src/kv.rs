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
}
