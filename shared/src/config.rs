//! Spin variables, read and validated per request into typed settings. Every setting's name, default and
//! bounds are written here once; a missing or malformed one is an `Error::Config` naming it (a clear
//! 500), never a panic.

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::Error;
use crate::fhir::CLAIM_SOURCES;
use crate::ports::Variables;

/// Reads a variable the component must have.
pub fn required(vars: &impl Variables, name: &str) -> Result<String, Error> {
    match optional(vars, name)? {
        Some(value) => Ok(value),
        None => Err(Error::Config(format!("the variable `{name}` is not set"))),
    }
}

/// Reads a variable that may be empty (then `None`).
pub fn optional(vars: &impl Variables, name: &str) -> Result<Option<String>, Error> {
    match vars.variable(name) {
        Ok(value) => Ok(value.filter(|v| !v.trim().is_empty())),
        Err(err) => Err(Error::Config(format!("cannot read `{name}`: {err}"))),
    }
}

/// An origin (`scheme://host[:port]`) without a trailing slash, as allow-lists and URL joins need.
pub fn origin(vars: &impl Variables, name: &str) -> Result<String, Error> {
    let value = required(vars, name)?;
    let url =
        Url::parse(&value).map_err(|e| Error::Config(format!("`{name}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Config(format!(
            "`{name}` must be an http(s) origin such as https://sandbox.bluebutton.cms.gov"
        )));
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// A whole-number setting: its variable, its default and its bounds, declared once.
pub struct NumberSetting {
    pub name: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

impl NumberSetting {
    pub fn load(&self, vars: &impl Variables) -> Result<u64, Error> {
        match optional(vars, self.name)? {
            None => Ok(self.default),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (self.min..=self.max).contains(n))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "`{}` must be a whole number from {} to {}",
                        self.name, self.min, self.max
                    ))
                }),
        }
    }
}

pub const PAGE_SIZE: NumberSetting = NumberSetting {
    name: "page_size",
    default: 50,
    min: 1,
    // CMS refuses a `_count` over 50.
    max: 50,
};
pub const FETCH_CONCURRENCY: NumberSetting = NumberSetting {
    name: "fetch_concurrency",
    default: 4,
    min: 1,
    max: 16,
};
pub const RESPONSE_BUFFER_BYTES: NumberSetting = NumberSetting {
    name: "response_buffer_bytes",
    default: 8 << 20,
    min: 0,
    max: 1 << 30,
};
pub const CONNECT_BATCH_BYTES: NumberSetting = NumberSetting {
    name: "connect_batch_bytes",
    default: 700_000,
    min: 10_000,
    max: 10_000_000,
};
pub const CONNECT_RATE_LIMIT: NumberSetting = NumberSetting {
    name: "connect_rate_limit",
    // connect's own default (slowapi, `CONNECT_RATE_LIMIT`): 10 requests a second per client.
    default: 10,
    min: 0,
    max: 10_000,
};

pub const STATE_TTL_SECS: NumberSetting = NumberSetting {
    name: "state_ttl_secs",
    default: 600,
    min: 1,
    max: 3600,
};
pub const SESSION_IDLE_SECS: NumberSetting = NumberSetting {
    name: "session_idle_secs",
    default: 30 * DAY,
    min: 1,
    max: 400 * DAY,
};
pub const SESSION_MAX_SECS: NumberSetting = NumberSetting {
    name: "session_max_secs",
    // CMS's own grants last 13 months.
    default: 396 * DAY,
    min: 1,
    max: 400 * DAY,
};
pub const RETENTION_DAYS: NumberSetting = NumberSetting {
    name: "retention_days",
    default: 30,
    min: 1,
    max: 3650,
};

pub const AUDIT_RETENTION_DAYS: NumberSetting = NumberSetting {
    name: "audit_retention_days",
    // Six years: HIPAA's retention period for an accounting of disclosures' documentation.
    default: 2190,
    min: 1,
    max: 36_500,
};

const DAY: u64 = 86_400;

/// How the accounting of disclosures is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditSettings {
    pub retention_days: u64,
    /// Also deliver each AuditEvent to connect (through the outbox).
    pub to_connect: bool,
}

impl AuditSettings {
    pub fn load(vars: &impl Variables) -> Result<AuditSettings, Error> {
        let to_connect = match optional(vars, "audit_to_connect")?.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Error::Config(format!(
                    "`audit_to_connect` must be `true` or `false`, not `{other}`"
                )))
            }
        };
        Ok(AuditSettings {
            retention_days: AUDIT_RETENTION_DAYS.load(vars)?,
            to_connect,
        })
    }
}

/// When sessions end: unused for `idle_secs` (by their holder or the sync), or `max_secs` after they
/// began — and never after CMS's grant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionLimits {
    pub idle_secs: i64,
    pub max_secs: i64,
}

impl SessionLimits {
    pub fn load(vars: &impl Variables) -> Result<SessionLimits, Error> {
        Ok(SessionLimits {
            idle_secs: SESSION_IDLE_SECS.load(vars)? as i64,
            max_secs: SESSION_MAX_SECS.load(vars)? as i64,
        })
    }
}

/// Which Blue Button API the app talks to (`cms_api_version`). Paths, scopes, paging and error bodies
/// follow it, and everything stored about a patient is keyed by it: v2 and v3 name the same
/// beneficiary and claims by different ids, so their data never mix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    #[default]
    V2,
    V3,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V2 => "v2",
            ApiVersion::V3 => "v3",
        }
    }

    /// `rest` (which starts with `/`) under this version on CMS: `/v3/o/token/`, say.
    pub fn path(self, rest: &str) -> String {
        format!("/{}{rest}", self.as_str())
    }

    pub fn load(vars: &impl Variables) -> Result<ApiVersion, Error> {
        match optional(vars, "cms_api_version")?.as_deref() {
            None | Some("v2") => Ok(ApiVersion::V2),
            Some("v3") => Ok(ApiVersion::V3),
            Some(other) => Err(Error::Config(format!(
                "`cms_api_version` must be `v2` or `v3`, not `{other}`"
            ))),
        }
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The OAuth client settings that `authorize`, `callback` and `fhir-fetch` share.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthClient {
    pub cms_base_url: String,
    pub api_version: ApiVersion,
    pub client_id: String,
    pub redirect_uri: String,
    /// What `authorize` asks for (only that component reads `cms_scopes`).
    pub scopes: Option<String>,
}

impl OAuthClient {
    pub fn load(vars: &impl Variables) -> Result<OAuthClient, Error> {
        let redirect_uri = required(vars, "redirect_uri")?;
        Url::parse(&redirect_uri)
            .map_err(|e| Error::Config(format!("`redirect_uri` is not a URL ({e})")))?;
        Ok(OAuthClient {
            cms_base_url: origin(vars, "cms_base_url")?,
            api_version: ApiVersion::load(vars)?,
            client_id: required(vars, "cms_client_id")?,
            redirect_uri,
            scopes: optional(vars, "cms_scopes")?,
        })
    }
}

/// The confidential client's secret, read only by the components that talk to CMS's token endpoint.
pub fn client_secret(vars: &impl Variables) -> Result<String, Error> {
    required(vars, "cms_client_secret")
}

/// The systems whose claims a v3 fetch asks for when its caller names none (`cms_eob_sources`), as a
/// set over [`CLAIM_SOURCES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimSources(u8);

impl ClaimSources {
    /// Final action claims only: what CMS itself serves without `_source`.
    pub const FINAL_ACTION: ClaimSources = ClaimSources(0b11);

    pub fn load(vars: &impl Variables) -> Result<ClaimSources, Error> {
        let Some(text) = optional(vars, "cms_eob_sources")? else {
            return Ok(ClaimSources::FINAL_ACTION);
        };
        text.split(',')
            .map(|name| CLAIM_SOURCES.iter().position(|s| *s == name.trim()))
            .try_fold(0u8, |set, at| at.map(|i| set | 1 << i))
            .map(ClaimSources)
            .ok_or_else(|| {
                Error::Config(format!(
                    "`cms_eob_sources` must list some of {}, comma-separated; not `{text}`",
                    CLAIM_SOURCES.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for ClaimSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = (0..CLAIM_SOURCES.len())
            .filter(|i| self.0 & 1 << i != 0)
            .map(|i| CLAIM_SOURCES[i])
            .collect();
        f.write_str(&names.join(","))
    }
}

/// How a fetch pages through CMS and answers its caller: used by `fhir-fetch`'s route, the sync and
/// the health check alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchLimits {
    /// FHIR `_count` per page.
    pub page_size: u64,
    /// CMS pages fetched at once.
    pub concurrency: usize,
    /// A Bundle up to this many bytes is answered whole; a larger one streams.
    pub response_buffer_bytes: usize,
    /// v3's claim sources, when the caller names none.
    pub claim_sources: ClaimSources,
}

impl FetchLimits {
    pub fn load(vars: &impl Variables) -> Result<FetchLimits, Error> {
        Ok(FetchLimits {
            page_size: PAGE_SIZE.load(vars)?,
            concurrency: FETCH_CONCURRENCY.load(vars)? as usize,
            response_buffer_bytes: RESPONSE_BUFFER_BYTES.load(vars)? as usize,
            claim_sources: ClaimSources::load(vars)?,
        })
    }
}

/// How resources travel to connect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConnectMode {
    /// `collection` Bundles to `/fhir/Bundle`.
    Bundle,
    /// Each resource to `/fhir/{type}`.
    Resource,
}

/// Whether resources are repaired before delivery (see [`crate::connect::repair`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Repair {
    DataAbsentReason,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConnectSettings {
    pub url: String,
    /// The largest Bundle posted, in bytes of JSON.
    pub batch_bytes: usize,
    pub mode: ConnectMode,
    /// Posts per second at most (0: unpaced).
    pub rate_limit: u64,
    pub repair: Repair,
    /// How long dead letters are kept.
    pub retention_days: u64,
}

impl ConnectSettings {
    pub fn load(vars: &impl Variables) -> Result<ConnectSettings, Error> {
        let mode = match optional(vars, "connect_mode")?.as_deref() {
            None | Some("bundle") => ConnectMode::Bundle,
            Some("resource") => ConnectMode::Resource,
            Some(other) => {
                return Err(Error::Config(format!(
                    "`connect_mode` must be `bundle` or `resource`, not `{other}`"
                )))
            }
        };
        let repair = match optional(vars, "connect_repair")?.as_deref() {
            None | Some("data-absent-reason") => Repair::DataAbsentReason,
            Some("off") => Repair::Off,
            Some(other) => {
                return Err(Error::Config(format!(
                    "`connect_repair` must be `data-absent-reason` or `off`, not `{other}`"
                )))
            }
        };
        Ok(ConnectSettings {
            url: origin(vars, "connect_url")?,
            batch_bytes: CONNECT_BATCH_BYTES.load(vars)? as usize,
            mode,
            rate_limit: CONNECT_RATE_LIMIT.load(vars)?,
            repair,
            retention_days: RETENTION_DAYS.load(vars)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let p = FakePlatform::new().with_var("cms_base_url", "not a url");
        let err = OAuthClient::load(&p).unwrap_err();
        assert!(err.to_string().contains("redirect_uri"), "{err}");
        let p = p.with_var("redirect_uri", "http://127.0.0.1:3000/bluebutton/callback");
        let err = OAuthClient::load(&p).unwrap_err();
        assert!(err.to_string().contains("cms_base_url"), "{err}");
        assert!(matches!(err, Error::Config(_)));
    }

    #[test]
    fn v3_needs_scopes_and_versions_are_named() {
        let p = FakePlatform::new()
            .with_var("cms_base_url", "https://sandbox.bluebutton.cms.gov")
            .with_var("redirect_uri", "http://127.0.0.1:3000/bluebutton/callback")
            .with_var("cms_client_id", "id");
        assert_eq!(OAuthClient::load(&p).unwrap().api_version, ApiVersion::V2);
        let p = p.with_var("cms_api_version", "v3");
        assert_eq!(OAuthClient::load(&p).unwrap().api_version, ApiVersion::V3);
        let p = p.with_var("cms_api_version", "v4");
        assert!(OAuthClient::load(&p)
            .unwrap_err()
            .to_string()
            .contains("`v4`"));
        assert_eq!(ApiVersion::V3.path("/o/token/"), "/v3/o/token/");
    }

    #[test]
    fn claim_sources_are_a_set_of_cms_names() {
        let p = FakePlatform::new();
        assert_eq!(ClaimSources::load(&p).unwrap().to_string(), "NCH,DDPS");
        let p = p.with_var("cms_eob_sources", "FISS, NCH,DDPS,MCS,VMS");
        assert_eq!(
            ClaimSources::load(&p).unwrap().to_string(),
            "NCH,DDPS,FISS,MCS,VMS"
        );
        let p = p.with_var("cms_eob_sources", "NCH,RIF");
        let err = ClaimSources::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("cms_eob_sources") && err.contains("NCH,RIF"),
            "{err}"
        );
    }

    #[test]
    fn numbers_are_bounded() {
        let p = FakePlatform::new().with_var("page_size", "51");
        assert!(PAGE_SIZE.load(&p).is_err());
        let p = p.with_var("page_size", "20");
        assert_eq!(PAGE_SIZE.load(&p).unwrap(), 20);
        assert_eq!(FETCH_CONCURRENCY.load(&p).unwrap(), 4);
        let limits = FetchLimits::load(&p).unwrap();
        assert_eq!((limits.page_size, limits.concurrency), (20, 4));
    }

    #[test]
    fn origins_lose_their_trailing_slash() {
        let p = FakePlatform::new().with_var("cms_base_url", "https://sandbox.bluebutton.cms.gov/");
        assert_eq!(
            origin(&p, "cms_base_url").unwrap(),
            "https://sandbox.bluebutton.cms.gov"
        );
        let p = p.with_var("cms_base_url", "ftp://x");
        assert!(origin(&p, "cms_base_url").is_err());
    }

    #[test]
    fn connect_settings_name_a_bad_mode() {
        let p = FakePlatform::new()
            .with_var("connect_url", "https://127.0.0.1:5000")
            .with_var("connect_mode", "kafka");
        let err = ConnectSettings::load(&p).unwrap_err();
        assert!(err.to_string().contains("connect_mode"), "{err}");
        let p = p.with_var("connect_mode", "resource");
        assert_eq!(
            ConnectSettings::load(&p).unwrap().mode,
            ConnectMode::Resource
        );
    }
}
