//! Two instances of the app, as two replicas behind a load balancer: the same variables (one
//! `token_key`, one CMS client, one redirect URI), one `default` store on a Redis of the test's own
//! (`runtime-config/redis.toml` pointed at it), one CMS and one connect emulator. Each instance is a
//! child process as [`AppHost`] starts it, on `spin-host` or the real Spin CLI (`SPIN_BIN`).

use anyhow::Result;

use crate::{emulators, free_port, http, AppHost, AppOptions, Redis};

pub struct Replicas {
    pub cms: cms_sandbox::CmsSandbox,
    pub connect: connect_sandbox::ConnectSandbox,
    pub redis: Redis,
    /// One instance.
    pub a: AppHost,
    /// The other, where CMS sends beneficiaries back: the redirect URI (of both) is B's callback.
    pub b: AppHost,
}

impl Replicas {
    /// `configure` adjusts the CMS emulator's options, `configure_connect` connect's (its rate limit is
    /// off unless set here); `extra` adds or overrides app variables, on both instances.
    pub async fn start(
        configure: impl FnOnce(&mut cms_sandbox::Options),
        configure_connect: impl FnOnce(&mut connect_sandbox::Options),
        extra: &[String],
    ) -> Result<Replicas> {
        let redis = Redis::start()?;
        let port_b = free_port();
        let (cms, connect, variables) = emulators(
            configure,
            |c| {
                c.rate_limit_per_sec = 0;
                configure_connect(c)
            },
            extra,
            port_b,
        )
        .await?;
        let options = |port| AppOptions {
            port: Some(port),
            variables: variables.clone(),
            runtime_config: Some(redis.runtime_config()),
            ..Default::default()
        };
        let (a, b) = tokio::try_join!(
            AppHost::start(options(free_port())),
            AppHost::start(options(port_b))
        )?;
        Ok(Replicas {
            cms,
            connect,
            redis,
            a,
            b,
        })
    }

    /// Both instances, A first.
    pub fn apps(&self) -> [&AppHost; 2] {
        [&self.a, &self.b]
    }

    /// The CMS emulator's request counters (`by_path`, `by_status`, `total`).
    pub async fn cms_counters(&self) -> serde_json::Value {
        crate::cms_counters(&self.cms).await
    }

    /// Requests to CMS's token endpoint so far, by status (`{"200": n, ...}`).
    pub async fn token_requests(&self) -> serde_json::Map<String, serde_json::Value> {
        self.cms_counters().await["by_path"]["/v2/o/token/"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    /// `GET {app}{path}` with the admin key, as JSON.
    pub async fn admin_get(&self, app: &AppHost, path: &str) -> serde_json::Value {
        http()
            .get(format!("{}{path}", app.base_url()))
            .bearer_auth(crate::ADMIN_KEY)
            .send()
            .await
            .expect("the app answers")
            .json()
            .await
            .expect("JSON")
    }
}
