//! Support for the end-to-end suite and the bench: the app under test as a child process on `spin-host`
//! or the real Spin CLI ([`host`]), wired to in-process emulators of CMS and LinuxForHealth connect
//! ([`Stack`]), or two instances of it sharing a Redis of the test's own ([`Replicas`], [`Redis`]); a
//! beneficiary's sign-in ([`beneficiary`]); the builds they need, done once per process with cargo's
//! output shown only when one fails.
//!
//! Quiet by default, loud on failure: what the app printed is kept in a temp folder and shown when the
//! test panics; nothing is left behind (temp folders are removed on drop).

pub mod beneficiary;
pub mod host;
pub mod redis;
pub mod replicas;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::Result;

pub use host::{on_real_spin, AppHost, AppOptions, HostBinary, StartFailure};
pub use redis::Redis;
pub use replicas::Replicas;

/// The workspace root (where `spin.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/e2e sits in the workspace")
        .to_path_buf()
}

static SHOW_BUILDS: AtomicBool = AtomicBool::new(false);

/// Lets cargo's progress through to the terminal (the bench, run by hand); tests keep it captured.
pub fn show_build_progress() {
    SHOW_BUILDS.store(true, Ordering::Relaxed);
}

/// A `cargo` command as a user would run it in the workspace. Cargo gives the processes it runs (this test
/// binary, the bench) variables describing the running package (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`,
/// ...); a nested cargo must not inherit them: build scripts such as ring's rerun when they change, so
/// the next `cargo test` would rebuild ring and everything above it, and this build again.
pub fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_package = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        if per_package || name == "OUT_DIR" {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cargo <args>` in the workspace; its output is shown only if it fails (or if
/// [`show_build_progress`] was called).
fn cargo(args: &[&str], what: &str) {
    let mut cmd = cargo_command();
    cmd.args(args);
    if SHOW_BUILDS.load(Ordering::Relaxed) {
        eprintln!("building {what}: cargo {}", args.join(" "));
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building {what} failed");
    } else {
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "building {what} failed (cargo {}):\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Builds the app's components for `wasm32-wasip2` (release), once per process; cargo's own lock
/// serialises concurrent builds, and an up-to-date build takes a fraction of a second.
pub fn build_wasm() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(
            &[
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
            ],
            "the components",
        );
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

/// Builds the binaries of `packages` (e.g. `spin-host`) into [`bin_dir`], once per process per set.
pub fn build_bins(packages: &[&str]) {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = packages.join(" ");
    if built.contains(&key) {
        return;
    }
    let mut args = vec!["build"];
    for package in packages {
        args.extend(["-p", package]);
    }
    args.push("--bins");
    // Into the profile this executable was built with (the bench may run as `--release`).
    if bin_dir().file_name().is_some_and(|name| name == "release") {
        args.push("--release");
    }
    cargo(&args, &key);
    built.push(key);
}

/// The `spin-host` binary of this build, built on demand.
pub fn spin_host_binary() -> PathBuf {
    build_bins(&["spin-host"]);
    bin_dir().join("spin-host")
}

/// Every resource `connect` stored, in arrival order, a Bundle's entries one by one (a resource stored
/// twice appears twice).
pub fn resources_in(connect: &connect_sandbox::ConnectSandbox) -> Vec<serde_json::Value> {
    connect
        .records()
        .iter()
        .flat_map(|r| match r.resource["resourceType"].as_str() {
            Some("Bundle") => r.resource["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"].clone())
                .collect(),
            _ => vec![r.resource.clone()],
        })
        .collect()
}

/// What a bare reader gets from CMS: every page from `first` by its `next` link, one at a time, with
/// `token`; the entries' ids in order. The reference the app's answers are held to.
pub async fn next_link_ids(first: &str, token: &str) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    // One client, so its connection is kept from page to page as any reader's would be.
    let client = http();
    let mut ids = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(url) = next {
        let page: serde_json::Value = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        for entry in page["entry"].as_array().into_iter().flatten() {
            ids.push(
                entry["resource"]["id"]
                    .as_str()
                    .context("an entry without id")?
                    .to_string(),
            );
        }
        next = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
    }
    Ok(ids)
}

/// The CMS emulator's request counters (`by_path`, `by_status`, `total`).
pub async fn cms_counters(cms: &cms_sandbox::CmsSandbox) -> serde_json::Value {
    http()
        .get(format!("{}/_emulator/counters", cms.base_url()))
        .send()
        .await
        .expect("the CMS emulator answers")
        .json()
        .await
        .expect("JSON")
}

/// The resources an outbox listing (`GET /bluebutton/connect/outbox`) holds, over all its batches.
pub fn queued_resources(listing: &serde_json::Value) -> u64 {
    listing["items"]
        .as_array()
        .expect("an outbox listing")
        .iter()
        .map(|i| i["resources"].as_u64().expect("a resource count"))
        .sum()
}

/// Requests to CMS's token endpoint, of any status, in the CMS emulator's counters.
pub fn token_requests(counters: &serde_json::Value) -> u64 {
    counters["by_path"]["/v2/o/token/"]
        .as_object()
        .map_or(0, |by_status| {
            by_status
                .values()
                .filter_map(serde_json::Value::as_u64)
                .sum()
        })
}

/// A fresh random `token_key` (base64 of 32 bytes).
pub fn token_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A free loopback port for a process to listen on (checked by binding it, then released).
///
/// It is chosen below the kernel's ephemeral range: a port from that range (what binding port 0 gives)
/// can be handed out again, once released, to the next socket bound to port 0 (an emulator starting
/// meanwhile) or to an outgoing connection, before the process meant to listen on it does. Ports
/// handed out here are never handed out twice in a process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 {
        (10_000, ephemeral_low)
    } else {
        (ephemeral_low, u16::MAX)
    };
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = low + rand::random::<u16>() % (high - low);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// A folder under the system temp dir, removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<tmp>/bb-e2e-<what>-<pid>-<random>`, created. Short: Chromium puts a Unix socket (path at most
    /// 107 bytes) two levels down.
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "bb-e2e-{what}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("a temp folder");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const CLIENT_ID: &str = "bluebuttonspinTestClient0123456789abcdef";
pub const CLIENT_SECRET: &str = "test-client-secret-for-the-emulator";
pub const ADMIN_KEY: &str = "admin-key-for-the-tests-0123456789abcdef";

/// The app under test (a child process on `spin-host` or Spin, see [`host`]), wired to a `cms-sandbox`
/// and a `connect-sandbox` running in this process.
pub struct Stack {
    pub cms: cms_sandbox::CmsSandbox,
    pub connect: connect_sandbox::ConnectSandbox,
    pub app: AppHost,
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

    /// As [`Stack::start_with`], with a Spin runtime config file (e.g. `[[client_tls]]`). `extra` comes
    /// after the defaults, and the last `--variable` of a name wins (in Spin as in `spin-host`).
    pub async fn start_full(
        configure: impl FnOnce(&mut cms_sandbox::Options),
        configure_connect: impl FnOnce(&mut connect_sandbox::Options),
        extra: &[String],
        runtime_config: Option<&Path>,
    ) -> Result<Stack> {
        let port = free_port();
        let (cms, connect, variables) =
            emulators(configure, configure_connect, extra, port).await?;
        let app = AppHost::start(AppOptions {
            port: Some(port),
            variables,
            runtime_config: runtime_config.map(Path::to_path_buf),
            ..Default::default()
        })
        .await?;
        Ok(Stack { cms, connect, app })
    }

    pub fn base_url(&self) -> String {
        self.app.base_url()
    }

    /// What the app logged so far: the host's output and the component log files.
    pub fn logs(&self) -> String {
        self.app.logs()
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
        let resp = http()
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
        http()
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
        crate::cms_counters(&self.cms).await
    }

    /// The app's `default` store at rest: Spin's SQLite file in the state directory, opened from this
    /// process while the host runs (both use SQLite's locking; the host keeps no transaction open). The
    /// table is created if the host has not touched the store yet (Spin opens it lazily).
    fn store(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(self.app.store_file()).expect("the store file opens");
        db.busy_timeout(std::time::Duration::from_secs(10))
            .expect("a busy timeout");
        db.execute_batch(spin_host::kv::CREATE_TABLE)
            .expect("Spin's table");
        db
    }

    /// Every key and value in the app's default store, as text (for at-rest checks).
    pub fn store_dump(&self) -> String {
        let db = self.store();
        let mut stmt = db
            .prepare("SELECT key, value FROM spin_key_value WHERE store = 'default' ORDER BY key")
            .expect("a query");
        stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .expect("rows")
        .map(|r| r.expect("a row"))
        .map(|(k, v)| format!("{k} = {}\n", String::from_utf8_lossy(&v)))
        .collect()
    }

    /// Every key of the app's default store with its value's size in bytes.
    pub fn store_dump_sizes(&self) -> Vec<(String, usize)> {
        let db = self.store();
        let mut stmt = db
            .prepare("SELECT key, length(value) FROM spin_key_value WHERE store = 'default' ORDER BY key")
            .expect("a query");
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .expect("rows")
            .map(|r| r.expect("a row"))
            .collect()
    }

    /// One value of the default store.
    pub fn store_get(&self, key: &str) -> Option<Vec<u8>> {
        use rusqlite::OptionalExtension;
        self.store()
            .query_row(
                "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()
            .expect("a read")
    }

    /// Writes one value of the default store behind the app's back (e.g. to age a record).
    pub fn store_set(&self, key: &str, value: &[u8]) {
        self.store()
            .execute(
                "INSERT INTO spin_key_value (store, key, value) VALUES ('default', ?1, ?2)
                 ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                rusqlite::params![key, value],
            )
            .expect("a write");
    }

    /// Makes every write to the store fail (or work again), as a broken backend would: SQLite triggers
    /// that abort each INSERT, UPDATE and DELETE on Spin's table with "injected failure". Works the same
    /// under `spin-host` and Spin, which see the error from their own statements.
    pub fn fail_store_writes(&self, failing: bool) {
        let db = self.store();
        for op in ["INSERT", "UPDATE", "DELETE"] {
            let sql = if failing {
                format!(
                    "CREATE TRIGGER IF NOT EXISTS e2e_fail_{op} BEFORE {op} ON spin_key_value \
                     BEGIN SELECT RAISE(ABORT, 'injected failure: the store refuses writes'); END"
                )
            } else {
                format!("DROP TRIGGER IF EXISTS e2e_fail_{op}")
            };
            db.execute_batch(&sql).expect("a trigger");
        }
    }
}

/// Builds what the app needs, starts the CMS and connect emulators, and answers the app's variables:
/// CMS's registered redirect URI is `http://127.0.0.1:<callback_port>/bluebutton/callback`, `extra`
/// comes after the defaults (the last `--variable` of a name wins, in Spin as in `spin-host`).
pub(crate) async fn emulators(
    configure: impl FnOnce(&mut cms_sandbox::Options),
    configure_connect: impl FnOnce(&mut connect_sandbox::Options),
    extra: &[String],
    callback_port: u16,
) -> Result<(
    cms_sandbox::CmsSandbox,
    connect_sandbox::ConnectSandbox,
    Vec<String>,
)> {
    // The builds come first: they block, and the emulators should not wait on them.
    build_wasm();
    let _ = HostBinary::from_env();
    let redirect_uri = format!("http://127.0.0.1:{callback_port}/bluebutton/callback");
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
    Ok((cms, connect, variables))
}

/// A client whose requests time out ([`beneficiary::REQUEST_TIMEOUT`]).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(beneficiary::REQUEST_TIMEOUT)
        .build()
        .expect("a client")
}

/// A private CA and a server certificate for localhost (connect's mkcert set-up).
pub use connect_sandbox::{pki, Pki};
