//! The parts of Spin's runtime config (`spin up --runtime-config-file`) that this app relies on:
//! `[key_value_store.<label>]` of type `spin` (SQLite, `path`) or `redis` (`url`), and `[[client_tls]]`
//! for private CAs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::outbound::tls_config;

#[derive(Debug, Default)]
pub struct RuntimeConfig {
    /// Stores of type `spin`: label → SQLite file (None: in memory).
    pub kv_stores: Vec<(String, Option<PathBuf>)>,
    /// Stores of type `redis`: label → URL (`redis://host:port`).
    pub redis_stores: Vec<(String, String)>,
    client_tls: Vec<ClientTlsEntry>,
    /// `state_dir = "..."`: used when `--state-dir` is not given (empty: unset), as in Spin.
    pub state_dir: Option<PathBuf>,
    /// `log_dir = "..."`: where component logs go instead of `<state dir>/logs` (empty: none).
    pub log_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    key_value_store: BTreeMap<String, RawKvStore>,
    #[serde(default)]
    client_tls: Vec<RawClientTls>,
    state_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct RawKvStore {
    #[serde(rename = "type")]
    kind: String,
    path: Option<PathBuf>,
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientTls {
    component_ids: Vec<String>,
    hosts: Vec<String>,
    #[serde(default = "yes")]
    ca_use_webpki_roots: bool,
    ca_roots_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug)]
struct ClientTlsEntry {
    component_ids: Vec<String>,
    hosts: Vec<String>,
    use_web_roots: bool,
    ca_pem: Vec<Vec<u8>>,
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<RuntimeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read runtime config {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        RuntimeConfig::parse(&text, dir)
            .with_context(|| format!("invalid runtime config {}", path.display()))
    }

    pub fn parse(text: &str, dir: &Path) -> Result<RuntimeConfig> {
        let raw: RawConfig = toml::from_str(text)?;
        let mut kv_stores = Vec::new();
        let mut redis_stores = Vec::new();
        for (label, store) in raw.key_value_store {
            match store.kind.as_str() {
                "spin" => kv_stores.push((label, store.path.map(|p| dir.join(p)))),
                "redis" => {
                    let url = store
                        .url
                        .with_context(|| format!("key_value_store.{label}: missing field `url`"))?;
                    redis::parse_redis_url(&url)
                        .with_context(|| format!("key_value_store.{label}: Invalid Redis URL"))?;
                    redis_stores.push((label, url));
                }
                other => bail!(
                    "key_value_store.{label}: type {other:?} is not available in this test host \
                     (only \"spin\", SQLite, and \"redis\"); Spin itself supports it"
                ),
            }
        }
        let client_tls = raw
            .client_tls
            .into_iter()
            .map(|entry| {
                let ca_pem = match &entry.ca_roots_file {
                    Some(file) => vec![std::fs::read(dir.join(file))
                        .with_context(|| format!("client_tls: cannot read {}", file.display()))?],
                    None => Vec::new(),
                };
                Ok(ClientTlsEntry {
                    component_ids: entry.component_ids,
                    hosts: entry.hosts,
                    use_web_roots: entry.ca_use_webpki_roots,
                    ca_pem,
                })
            })
            .collect::<Result<_>>()?;
        Ok(RuntimeConfig {
            kv_stores,
            redis_stores,
            client_tls,
            state_dir: raw.state_dir,
            log_dir: raw.log_dir,
        })
    }

    /// The TLS trust of one component: web roots by default, and per host what `[[client_tls]]` says.
    pub fn client_tls(&self, component: &str) -> Result<ClientTls> {
        let default = tls_config(true, &[])?;
        let mut per_host = Vec::new();
        for entry in self
            .client_tls
            .iter()
            .filter(|e| e.component_ids.iter().any(|c| c == component))
        {
            let config = tls_config(entry.use_web_roots, &entry.ca_pem)?;
            for host in &entry.hosts {
                per_host.push((host.to_ascii_lowercase(), config.clone()));
            }
        }
        Ok(ClientTls { default, per_host })
    }
}

#[derive(Clone)]
pub struct ClientTls {
    default: Arc<rustls::ClientConfig>,
    per_host: Vec<(String, Arc<rustls::ClientConfig>)>,
}

impl ClientTls {
    pub fn for_host(&self, host: &str, port: Option<u16>) -> Arc<rustls::ClientConfig> {
        let with_port = port.map(|p| format!("{host}:{p}"));
        self.per_host
            .iter()
            .find(|(h, _)| h == host || Some(h) == with_port.as_ref())
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| self.default.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stores_and_refuses_unknown_types() {
        let rc = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n",
            Path::new("/app"),
        )
        .unwrap();
        assert_eq!(
            rc.kv_stores,
            vec![("default".to_string(), Some(PathBuf::from("/app/kv.db")))]
        );
        assert!(rc.redis_stores.is_empty());
        let rc = RuntimeConfig::parse(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://x:6379\"\n",
            Path::new("/app"),
        )
        .unwrap();
        assert!(rc.kv_stores.is_empty());
        assert_eq!(
            rc.redis_stores,
            vec![("default".to_string(), "redis://x:6379".to_string())]
        );
        for (text, why) in [
            ("type = \"redis\"\n", "missing field `url`"),
            (
                "type = \"redis\"\nurl = \"http://x\"\n",
                "Invalid Redis URL",
            ),
            (
                "type = \"azure_cosmos\"\n",
                "not available in this test host",
            ),
        ] {
            let err = RuntimeConfig::parse(
                &format!("[key_value_store.default]\n{text}"),
                Path::new("/app"),
            )
            .unwrap_err();
            assert!(format!("{err:#}").contains(why), "{err:#}");
        }
    }
}
