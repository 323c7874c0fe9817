//! Helpers for the end-to-end tests and the benchmark: build the `.wasm` once, start the app in-process or
//! as the `spin-host` binary, and make keys.

pub mod beneficiary;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};

use spin_host::{serve, App, HostOptions, RunningHost, StateDir};

/// The workspace root (where `spin.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/e2e sits in the workspace")
        .to_path_buf()
}

/// Builds the app's components and the probe for `wasm32-wasip2`, once per test process (cargo's own lock
/// serialises concurrent test binaries; an up-to-date build takes a fraction of a second).
pub fn build_wasm() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--target",
                "wasm32-wasip2",
                "--release",
                "-p",
                "authorize",
                "-p",
                "callback",
                "-p",
                "fhir-fetch",
                "-p",
                "connect-push",
                "-p",
                "docs",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the components failed");
    });
}

/// The folder this build's binaries are in (`target/debug`): the running executable's, or its parent's
/// when that is `deps/` (test binaries).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable");
    let dir = exe.parent().expect("a folder");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("target/debug").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Builds the binaries of `packages` (e.g. `spin-host`) into [`bin_dir`], once per process per set;
/// cargo's output is shown only if the build fails.
pub fn build_bins(packages: &[&str]) {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = packages.join(" ");
    if built.contains(&key) {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).arg("build");
    for package in packages {
        cmd.args(["-p", package]);
    }
    let out = cmd.arg("--bins").output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building {key} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    built.push(key);
}

/// The `spin-host` binary of this build, built on demand.
pub fn spin_host_binary() -> PathBuf {
    build_bins(&["spin-host"]);
    bin_dir().join("spin-host")
}

/// A fresh random `token_key` (base64 of 32 bytes).
pub fn token_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Starts an app from a manifest in this process on a free loopback port. `variables` are `name=value`;
/// the process environment is not consulted, so tests do not depend on it.
pub async fn start(
    manifest: &Path,
    variables: &[String],
    state_dir: Option<&Path>,
) -> Result<RunningHost> {
    build_wasm();
    let app = App::load(&HostOptions {
        manifest: manifest.to_path_buf(),
        variables: variables.to_vec(),
        state_dir: state_dir.map_or(StateDir::Unset, |d| StateDir::Dir(d.to_path_buf())),
        runtime_config: None,
        env: Some(Default::default()),
        ..Default::default()
    })?;
    serve(app, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// A child process (one of this crate's binaries) that is killed when dropped.
pub struct Child {
    pub process: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Runs a binary and waits for its "listening on http://ADDR" / "Serving http://ADDR" line.
pub fn spawn_until_listening(binary: &Path, args: &[String]) -> Result<Child> {
    use std::io::{BufRead, BufReader};
    let mut process = Command::new(binary)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = process.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .context("the process exited before listening")??;
        if let Some(rest) = line
            .strip_prefix("listening on ")
            .or_else(|| line.strip_prefix("Serving "))
        {
            let url = url::Url::parse(rest.trim())?;
            let host = url
                .host_str()
                .context("host")?
                .trim_matches(|c| c == '[' || c == ']');
            break SocketAddr::new(host.parse()?, url.port().context("port")?);
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ensure!(addr.ip().is_loopback(), "listening off loopback");
    Ok(Child { process, addr })
}

/// A free loopback port (bound and released: the caller binds it again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub const CLIENT_ID: &str = "bluebuttonspinTestClient0123456789abcdef";
pub const CLIENT_SECRET: &str = "test-client-secret-for-the-emulator";
pub const ADMIN_KEY: &str = "admin-key-for-the-tests";

/// The app under test on `spin-host`, wired to a `cms-sandbox` and a `connect-sandbox`.
pub struct Stack {
    pub cms: cms_sandbox::CmsSandbox,
    pub connect: connect_sandbox::ConnectSandbox,
    pub host: RunningHost,
}

impl Stack {
    /// `configure` adjusts the CMS emulator's options; `extra` adds or overrides app variables. Connect's
    /// rate limit is off here (tests of 429 handling use [`Stack::start_with`]).
    pub async fn start(
        configure: impl FnOnce(&mut cms_sandbox::Options),
        extra: &[String],
    ) -> Result<Stack> {
        Stack::start_with(configure, |c| c.rate_limit_per_sec = 0, extra).await
    }

    pub async fn start_with(
        configure: impl FnOnce(&mut cms_sandbox::Options),
        configure_connect: impl FnOnce(&mut connect_sandbox::Options),
        extra: &[String],
    ) -> Result<Stack> {
        Stack::start_full(configure, configure_connect, extra, None).await
    }

    /// As [`Stack::start_with`], with a Spin runtime config file (e.g. `[[client_tls]]`).
    pub async fn start_full(
        configure: impl FnOnce(&mut cms_sandbox::Options),
        configure_connect: impl FnOnce(&mut connect_sandbox::Options),
        extra: &[String],
        runtime_config: Option<&Path>,
    ) -> Result<Stack> {
        let port = free_port();
        let redirect_uri = format!("http://127.0.0.1:{port}/bluebutton/callback");
        let mut options = cms_sandbox::Options {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            redirect_uri: redirect_uri.clone(),
            ..Default::default()
        };
        configure(&mut options);
        let cms =
            cms_sandbox::CmsSandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), options).await?;
        let mut connect_options = connect_sandbox::Options::default();
        configure_connect(&mut connect_options);
        let connect = connect_sandbox::ConnectSandbox::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            connect_options,
        )
        .await?;
        let mut variables = vec![
            format!("cms_base_url={}", cms.base_url()),
            format!("connect_url={}", connect.base_url()),
            format!("cms_client_id={CLIENT_ID}"),
            format!("cms_client_secret={CLIENT_SECRET}"),
            format!("redirect_uri={redirect_uri}"),
            format!("token_key={}", token_key()),
            format!("admin_api_key={ADMIN_KEY}"),
        ];
        variables.extend_from_slice(extra);
        build_wasm();
        let app = App::load(&HostOptions {
            manifest: workspace_root().join("spin.toml"),
            variables,
            runtime_config: runtime_config.map(Path::to_path_buf),
            env: Some(Default::default()),
            ..Default::default()
        })?;
        let host = serve(app, SocketAddr::from(([127, 0, 0, 1], port))).await?;
        Ok(Stack { cms, connect, host })
    }

    pub fn base_url(&self) -> String {
        self.host.base_url()
    }

    /// Signs `user` in through the emulator's forms and returns the session.
    pub async fn session(&self, user: &str) -> String {
        crate::beneficiary::sign_in(&self.base_url(), user)
            .await
            .expect("sign-in")["session"]
            .as_str()
            .expect("a session")
            .to_string()
    }

    /// `POST {cms}/_emulator/{path}` with a JSON body (test control of the CMS emulator).
    pub async fn cms_control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .post(format!("{}/_emulator/{path}", self.cms.base_url()))
            .json(&body)
            .send()
            .await
            .expect("the CMS emulator answers");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.expect("JSON")
    }

    /// `GET {app}{path}` with the admin key, as JSON.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base_url()))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("the app answers")
            .json()
            .await
            .expect("JSON")
    }

    /// The CMS emulator's request counters (`by_path`, `by_status`, `total`).
    pub async fn cms_counters(&self) -> serde_json::Value {
        reqwest::get(format!("{}/_emulator/counters", self.cms.base_url()))
            .await
            .expect("the CMS emulator answers")
            .json()
            .await
            .expect("JSON")
    }

    /// Every key and value in the app's default store, as text (for at-rest checks).
    pub fn store_dump(&self) -> String {
        self.host
            .app
            .kv_store("default")
            .expect("default store")
            .dump()
            .expect("dump")
            .into_iter()
            .map(|(k, v)| format!("{k} = {}\n", String::from_utf8_lossy(&v)))
            .collect()
    }
}

/// A private CA and a server certificate for localhost (connect's mkcert set-up).
pub use connect_sandbox::{pki, Pki};
