//! Helpers for the end-to-end tests and the benchmark: build the `.wasm` once, start the app in-process or
//! as the `spin-host` binary, and make keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};

use crate::host::{serve, App, HostOptions, RunningHost};

/// The workspace root (where `spin.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
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
                "probe",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the components failed");
    });
}

/// A fresh random `token_key` (base64 of 32 bytes).
pub fn token_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Starts an app from a manifest in this process on a free loopback port. `variables` are `name=value`;
/// the process environment is not consulted, so tests do not depend on it.
pub async fn start(manifest: &Path, variables: &[String], kv_file: Option<&Path>) -> Result<RunningHost> {
    build_wasm();
    let app = App::load(&HostOptions {
        manifest: manifest.to_path_buf(),
        variables: variables.to_vec(),
        kv_file: kv_file.map(Path::to_path_buf),
        runtime_config: None,
        env: Some(Default::default()),
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
            let host = url.host_str().context("host")?.trim_matches(|c| c == '[' || c == ']');
            break SocketAddr::new(host.parse()?, url.port().context("port")?);
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ensure!(addr.ip().is_loopback(), "listening off loopback");
    Ok(Child { process, addr })
}
