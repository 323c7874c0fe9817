//! `GET /bluebutton/healthz`: is each setting usable, and can CMS and connect be reached — two separate
//! questions. Each component checks the settings it has (it is given no others) and the services it may
//! call; the `docs` component asks each of them over Spin's local service chaining and adds it up. Values
//! are never shown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{self, AuditSettings, ConnectSettings, OAuthClient};
use crate::crypto::TokenKey;
use crate::error::Error;
use crate::http::{json_response, no_store, Response};
use crate::ports::{HttpError, Platform};

/// The path every component answers its own health on (reached only through chaining, except `docs`).
pub const PATH: &str = "/bluebutton/healthz";

/// What `GET /bluebutton/healthz` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`; `degraded` when CMS or connect cannot be reached (settings are fine, so still 200); or
    /// `misconfigured` when a setting is unusable or a component did not answer (503).
    pub status: String,
    /// Per setting: `ok`, `unset: …` or why it is unusable.
    pub checks: BTreeMap<String, String>,
    /// Per service (`cms`, `connect`): `ok`, or why it could not be reached.
    pub reachable: BTreeMap<String, String>,
    /// Per component: `ok`, or why it did not answer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, String>,
    /// AuditEvents that could not be written since the store began (each is in the component's log);
    /// any makes the app `degraded`.
    #[serde(default)]
    pub audit_write_failures: i64,
}

/// A group of settings a component reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    OAuthClient,
    ClientSecret,
    TokenKey,
    StateTtl,
    SessionLimits,
    FetchLimits,
    Connect,
    AdminKey,
    /// The audit settings, and whether every AuditEvent was written.
    Audit,
}

/// A service a component may call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Upstream {
    Cms,
    Connect,
}

const OK: &str = "ok";

fn verdict(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => OK.to_string(),
        Err(err) => err.to_string(),
    }
}

fn check_settings(platform: &impl Platform, check: Check, health: &mut Health) {
    let out = &mut health.checks;
    let mut put = |name: &str, result: Result<(), Error>| {
        out.insert(name.to_string(), verdict(result));
    };
    match check {
        Check::OAuthClient => {
            put(
                "cms_base_url",
                config::origin(platform, "cms_base_url").map(drop),
            );
            put(
                "cms_client_id",
                config::required(platform, "cms_client_id").map(drop),
            );
            put(
                "cms_api_version",
                config::ApiVersion::load(platform).map(drop),
            );
            put("redirect_uri", OAuthClient::load(platform).map(drop));
        }
        Check::ClientSecret => put(
            "cms_client_secret",
            config::client_secret(platform).map(drop),
        ),
        Check::TokenKey => put("token_key", TokenKey::load(platform).map(drop)),
        Check::StateTtl => put(
            config::STATE_TTL_SECS.name,
            config::STATE_TTL_SECS.load(platform).map(drop),
        ),
        Check::SessionLimits => {
            for setting in [config::SESSION_IDLE_SECS, config::SESSION_MAX_SECS] {
                put(setting.name, setting.load(platform).map(drop));
            }
        }
        Check::FetchLimits => {
            for setting in [
                config::PAGE_SIZE,
                config::FETCH_CONCURRENCY,
                config::RESPONSE_BUFFER_BYTES,
            ] {
                put(setting.name, setting.load(platform).map(drop));
            }
        }
        Check::Connect => put("connect", ConnectSettings::load(platform).map(drop)),
        Check::AdminKey => {
            // Optional: without a usable key only the admin routes are off (a warning, not a fault).
            let text = match crate::auth::admin::admin_key(platform) {
                Ok(Ok(_)) => OK.to_string(),
                Ok(Err(why)) => format!("warning: {why}"),
                Err(err) => err.to_string(),
            };
            out.insert("admin_api_key".into(), text);
        }
        Check::Audit => {
            put("audit", AuditSettings::load(platform).map(drop));
            match platform.increment(crate::keys::AUDIT_FAILURES, 0) {
                Ok(failures) => health.audit_write_failures = failures,
                Err(err) => {
                    let why = format!("the failure count cannot be read: {}", Error::Store(err));
                    out.insert("audit".into(), why);
                }
            }
        }
    }
}

/// Any HTTP answer means the service is there; only a failed connection (or a refused host) does not.
async fn reach(platform: &impl Platform, upstream: Upstream) -> String {
    let (variable, path) = match upstream {
        // Public, cheap, and what CMS serves to anyone.
        Upstream::Cms => match config::ApiVersion::load(platform) {
            Ok(version) => ("cms_base_url", version.path("/fhir/metadata")),
            Err(err) => return format!("not checked: {err}"),
        },
        Upstream::Connect => ("connect_url", "/status".to_string()),
    };
    let origin = match config::origin(platform, variable) {
        Ok(origin) => origin,
        Err(err) => return format!("not checked: {err}"),
    };
    let request = http::Request::get(format!("{origin}{path}"))
        .body(Vec::new())
        .expect("a URL from a validated origin");
    match platform.send(request).await {
        Ok(_) => OK.to_string(),
        Err(HttpError::Denied) => {
            format!("not allowed: `{variable}` is not in this component's allowed_outbound_hosts")
        }
        Err(err) => format!("unreachable: {err}"),
    }
}

fn upstream_name(upstream: Upstream) -> &'static str {
    match upstream {
        Upstream::Cms => "cms",
        Upstream::Connect => "connect",
    }
}

impl Health {
    fn settle(mut self) -> Health {
        let misconfigured = self
            .checks
            .values()
            .any(|v| v != OK && !v.starts_with("warning"))
            || self.components.values().any(|v| v != OK);
        let unreachable = self.reachable.values().any(|v| v != OK) || self.audit_write_failures > 0;
        self.status = if misconfigured {
            "misconfigured"
        } else if unreachable {
            "degraded"
        } else {
            OK
        }
        .to_string();
        self
    }

    pub fn response(&self) -> Response {
        let status = if self.status == "misconfigured" {
            503
        } else {
            200
        };
        no_store(json_response(status, self))
    }
}

/// One component's own health: the settings it reads and the services it may call.
pub async fn component(
    platform: &impl Platform,
    checks: &[Check],
    upstreams: &[Upstream],
) -> Health {
    let mut health = Health::default();
    for check in checks {
        check_settings(platform, *check, &mut health);
    }
    for upstream in upstreams {
        health.reachable.insert(
            upstream_name(*upstream).into(),
            reach(platform, *upstream).await,
        );
    }
    health.settle()
}

/// The app's health: each component asked over Spin's local service chaining, the answers merged (where
/// two components judge the same setting or service, the worse verdict stands).
pub async fn app(platform: &impl Platform, components: &[&str]) -> Health {
    let answers = futures::future::join_all(components.iter().map(|id| async move {
        let request = http::Request::get(format!("http://{id}.spin.internal{PATH}"))
            .body(Vec::new())
            .expect("a valid URL");
        let answer = match platform.send(request).await {
            Ok(resp) => serde_json::from_slice::<Health>(resp.body())
                .map_err(|e| format!("answered {} with no health report ({e})", resp.status())),
            Err(err) => Err(format!("did not answer: {err}")),
        };
        (*id, answer)
    }))
    .await;
    let mut health = Health::default();
    for (id, answer) in answers {
        match answer {
            Ok(part) => {
                health.components.insert(id.into(), OK.into());
                merge(&mut health.checks, part.checks);
                merge(&mut health.reachable, part.reachable);
                health.audit_write_failures =
                    health.audit_write_failures.max(part.audit_write_failures);
            }
            Err(why) => {
                health.components.insert(id.into(), why);
            }
        }
    }
    health.settle()
}

fn merge(into: &mut BTreeMap<String, String>, from: BTreeMap<String, String>) {
    for (name, verdict) in from {
        let keep_existing = into.get(&name).is_some_and(|v| v != OK);
        if !keep_existing {
            into.insert(name, verdict);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;
    use futures::executor::block_on;

    #[test]
    fn settings_and_reachability_are_separate_questions() {
        let p = FakePlatform::new()
            .with_var("connect_url", "https://connect.test")
            .with_var("admin_api_key", "");
        p.on_send(|_| Err(HttpError::Connection("refused".into())));
        let health = block_on(component(
            &p,
            &[Check::Connect, Check::AdminKey],
            &[Upstream::Connect],
        ));
        assert_eq!(health.checks["connect"], "ok");
        assert!(health.checks["admin_api_key"].starts_with("warning: unset"));
        assert!(health.reachable["connect"].starts_with("unreachable"));
        assert_eq!(health.status, "degraded");
        assert_eq!(health.response().status(), 200);

        let p = p.with_var("page_size", "500");
        let health = block_on(component(&p, &[Check::FetchLimits], &[]));
        assert!(health.checks["page_size"].contains("1 to 50"));
        assert_eq!(health.status, "misconfigured");
        assert_eq!(health.response().status(), 503);
    }

    #[test]
    fn the_app_merges_its_components_and_names_the_silent_one() {
        let p = FakePlatform::new();
        p.on_send(|req| {
            let host = req.uri().host().unwrap_or_default().to_string();
            if host.starts_with("callback") {
                return Err(HttpError::Connection("no such component".into()));
            }
            let part = Health {
                status: OK.into(),
                checks: [("cms_base_url".to_string(), OK.to_string())].into(),
                reachable: [("cms".to_string(), format!("unreachable from {host}"))].into(),
                components: BTreeMap::new(),
                audit_write_failures: 0,
            };
            Ok(http::Response::new(serde_json::to_vec(&part).unwrap()))
        });
        let health = block_on(app(&p, &["authorize", "callback"]));
        assert_eq!(health.components["authorize"], "ok");
        assert!(health.components["callback"].starts_with("did not answer"));
        assert_eq!(health.checks["cms_base_url"], "ok");
        assert_eq!(health.status, "misconfigured");
    }
}
