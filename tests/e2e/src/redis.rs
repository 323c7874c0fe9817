//! A Redis of the test's own for the app's `default` store: a `redis-server` child on a free loopback
//! port, nothing persisted, killed (and its temp folder removed) when dropped — never a system service.
//! The app reaches it through a copy of `runtime-config/redis.toml` whose `url` points at it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use spin_host::kv::KvStore;
use spin_host::redis_server::RedisServer;

use crate::{free_port, workspace_root, TempDir};

pub struct Redis {
    server: RedisServer,
    /// Holds the runtime config.
    dir: TempDir,
}

impl Redis {
    /// Starts a `redis-server` (Debian's package; `REDIS_SERVER` names another) on a free port and
    /// writes the runtime config that points the app at it.
    pub fn start() -> Result<Redis> {
        if RedisServer::binary().is_none() {
            bail!(
                "the multi-replica tests need redis-server: apt-get install redis-server \
                 (or set REDIS_SERVER)"
            );
        }
        let mut attempts = 0;
        let server = loop {
            // A port taken between the check and the server's bind: try another.
            match RedisServer::start(free_port()) {
                Ok(server) => break server,
                Err(err) if attempts < 3 => {
                    attempts += 1;
                    eprintln!("redis-server did not start, trying another port: {err:#}");
                }
                Err(err) => return Err(err),
            }
        };
        let dir = TempDir::new("redis");
        let redis = Redis { server, dir };
        let config = runtime_config_for(&redis.url())?;
        std::fs::write(redis.runtime_config(), config)?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `runtime-config/redis.toml` with its `url` pointing at this server, for `--runtime-config-file`.
    pub fn runtime_config(&self) -> PathBuf {
        self.dir.path().join("redis.toml")
    }

    /// Every key of the database and its value (`KEYS *`, then `GET` each), sorted by key.
    pub async fn dump(&self) -> Result<Vec<(String, Vec<u8>)>> {
        KvStore::redis("default", &self.url())?.dump().await
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        self.server.log()
    }

    pub fn dir(&self) -> &Path {
        self.server.dir()
    }
}

/// The text of `runtime-config/redis.toml` with `key_value_store.default.url` set to `url`; everything
/// else as the file has it (so the tests run the configuration that is deployed).
pub fn runtime_config_for(url: &str) -> Result<String> {
    let path = workspace_root().join("runtime-config/redis.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut config: toml::Table = text.parse().context("runtime-config/redis.toml")?;
    let store = config
        .get_mut("key_value_store")
        .and_then(|s| s.get_mut("default"))
        .and_then(toml::Value::as_table_mut)
        .context("runtime-config/redis.toml has no [key_value_store.default]")?;
    anyhow::ensure!(
        store.get("type").and_then(toml::Value::as_str) == Some("redis"),
        "runtime-config/redis.toml: the default store is not of type redis"
    );
    anyhow::ensure!(
        store.contains_key("url"),
        "runtime-config/redis.toml: no url to point at the test's Redis"
    );
    store.insert("url".into(), toml::Value::String(url.to_string()));
    Ok(toml::to_string(&config)?)
}

impl Drop for Redis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "\n---- redis-server (port {}), the end of its log ----\n{}\n---- end ----",
                self.port(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
