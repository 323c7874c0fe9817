//! The app under test as a child process: the real Spin CLI when `SPIN_BIN` names it, else this build's
//! `spin-host`, started with the same command line either way —
//! `<bin> up --from <workspace>/spin.toml --listen 127.0.0.1:<port> --state-dir <temp>/state
//! [--runtime-config-file F] --variable k=v ...` — hermetically: its current directory is an empty temp
//! folder (so no `.env` is read), its environment has no `SPIN_VARIABLE_*` (nor the other variables Spin
//! reads). Its output goes to `<temp>/app.log`, shown only when the test fails; every wait is bounded;
//! the process group is stopped and the temp folder removed on drop.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{build_wasm, spin_host_binary, workspace_root, TempDir};

/// How long a host may take to start serving (real Spin compiles every component on its first start).
pub const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stopped host may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// No test keeps an app this long: past it the app is killed, so a request stuck on it fails instead of
/// waiting for ever.
pub const MAX_LIFETIME: Duration = Duration::from_secs(20 * 60);
/// Environment variables Spin reads besides `SPIN_VARIABLE_*`: none may leak from the caller's shell.
const SPIN_ENVIRONMENT: &[&str] = &[
    "RUNTIME_CONFIG_FILE",
    "SPIN_LOG_DIR",
    "SPIN_ALWAYS_BUILD",
    "SPIN_MAX_INSTANCE_MEMORY",
    "WASMTIME_CACHE_FILE",
    "DISABLE_WASMTIME_CACHE",
];

/// Which host runs the app.
#[derive(Debug, Clone, PartialEq)]
pub enum HostBinary {
    /// The real Spin CLI (`SPIN_BIN`).
    Spin(PathBuf),
    /// This build's `spin-host`.
    SpinHost(PathBuf),
}

impl HostBinary {
    /// `SPIN_BIN` if set (made absolute), else `spin-host`, built on demand.
    pub fn from_env() -> HostBinary {
        match std::env::var_os("SPIN_BIN").filter(|v| !v.is_empty()) {
            Some(bin) => HostBinary::Spin(std::path::absolute(bin).expect("an absolute SPIN_BIN")),
            None => HostBinary::SpinHost(spin_host_binary()),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            HostBinary::Spin(p) | HostBinary::SpinHost(p) => p,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            HostBinary::Spin(_) => "spin",
            HostBinary::SpinHost(_) => "spin-host",
        }
    }
}

/// Whether the suite runs on the real Spin CLI (`SPIN_BIN` is set).
pub fn on_real_spin() -> bool {
    std::env::var_os("SPIN_BIN").is_some_and(|v| !v.is_empty())
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Default: the workspace's `spin.toml`.
    pub manifest: Option<PathBuf>,
    /// Default: a free loopback port.
    pub port: Option<u16>,
    /// `name=value`, each passed as `--variable`.
    pub variables: Vec<String>,
    pub runtime_config: Option<PathBuf>,
    /// Extra environment for the child (e.g. a `SPIN_VARIABLE_*` a test sets on purpose).
    pub env: Vec<(String, String)>,
}

/// The running app; stopped (process group) and cleaned up when dropped, its log shown if the test failed.
pub struct AppHost {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub binary: HostBinary,
    dir: TempDir,
    /// What it was started with (a restart starts it the same way).
    options: AppOptions,
    /// Dropping it tells the watchdog the app stopped in time.
    _watchdog: std::sync::mpsc::Sender<()>,
}

/// A host that stopped before it served: its exit status and everything it printed.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<std::process::ExitStatus>,
    pub log: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the app did not start ({}); its output:\n{}",
            self.status
                .map_or("still running".to_string(), |s| s.to_string()),
            self.log
        )
    }
}

impl std::error::Error for StartFailure {}

impl AppHost {
    /// Builds what is needed (once per process), starts the host and waits (at most
    /// [`START_TIMEOUT`]) until it serves; a host that exits first is a [`StartFailure`] with its log.
    pub async fn start(mut options: AppOptions) -> Result<AppHost> {
        build_wasm();
        let binary = HostBinary::from_env();
        let dir = TempDir::new("app");
        let port = *options.port.get_or_insert_with(crate::free_port);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (watchdog, stopped) = std::sync::mpsc::channel::<()>();
        let mut host = AppHost {
            child: None,
            addr,
            binary,
            dir,
            options,
            _watchdog: watchdog,
        };
        host.launch(stopped).await?;
        Ok(host)
    }

    /// Stops the app — at once with SIGKILL when `crash`, as a crash would stop it — and starts it
    /// again on the same port and state, with `extra` variables after its own.
    pub async fn restart(&mut self, crash: bool, extra: &[String]) -> Result<()> {
        if crash {
            if let Some(mut child) = self.child.take() {
                kill_group(child.id(), "-KILL");
                let _ = child.wait();
            }
        } else {
            self.stop();
        }
        self.options.variables.extend_from_slice(extra);
        // The killed group's last process can hold the listening socket for a moment after the
        // group leader is reaped: Spin refuses a port in use, so wait until it is free.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(self.addr).is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (watchdog, stopped) = std::sync::mpsc::channel::<()>();
        self._watchdog = watchdog;
        self.launch(stopped).await
    }

    async fn launch(&mut self, stopped: std::sync::mpsc::Receiver<()>) -> Result<()> {
        let (options, dir, binary, addr) = (&self.options, &self.dir, &self.binary, self.addr);
        let cwd = dir.path().join("cwd");
        std::fs::create_dir_all(&cwd)?;
        // Its temp files too (`spin up` keeps the locked app in a `spinup-*` folder, left behind if it is
        // killed): they go with the folder.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let manifest = options
            .manifest
            .clone()
            .unwrap_or_else(|| workspace_root().join("spin.toml"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.path().join("app.log"))?;
        // A restart appends to the same log: only what this launch prints says it serves.
        let log_start = log.metadata()?.len() as usize;
        let mut cmd = Command::new(binary.path());
        cmd.arg("up")
            .arg("--from")
            .arg(&manifest)
            .args(["--listen", &addr.to_string()])
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        if let Some(rc) = &options.runtime_config {
            cmd.arg("--runtime-config-file").arg(rc);
        }
        for v in &options.variables {
            cmd.args(["--variable", v]);
        }
        cmd.current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("SPIN_VARIABLE_") || SPIN_ENVIRONMENT.contains(&name.as_ref()) {
                cmd.env_remove(name.as_ref());
            }
        }
        cmd.env("TMPDIR", &tmp);
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        // Its own process group: `spin up` runs the app in a child process (`spin trigger http`), and
        // both must stop with the test.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", binary.path().display()))?;
        let group = child.id();
        let note = dir.path().join("app.log");
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(MAX_LIFETIME)
            {
                let _ = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&note)
                    .and_then(|mut f| {
                        std::io::Write::write_all(
                            &mut f,
                            b"\n(e2e: killed after its maximum lifetime)\n",
                        )
                    });
                kill_group(group, "-KILL");
            }
        });
        self.child = Some(child);
        self.wait_until_serving(log_start).await
    }

    /// Waits for this launch's `Serving http://` line (the log from `log_start` on) and an accepted
    /// connection, the child's exit, or the timeout.
    async fn wait_until_serving(&mut self, log_start: usize) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Whatever it started (Spin's trigger process) goes with it.
                self.stop();
                bail!(StartFailure {
                    status: Some(status),
                    log: self.output(),
                });
            }
            let printed = std::fs::read(self.dir.path().join("app.log")).unwrap_or_default();
            let serving = printed
                .get(log_start..)
                .is_some_and(|new| String::from_utf8_lossy(new).contains("Serving http://"));
            if serving && TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(StartFailure {
                    status: None,
                    log: format!(
                        "(did not serve within {START_TIMEOUT:?})\n{}",
                        self.output()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The state directory given to the host (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The `default` key-value store at rest (Spin's file in the state directory).
    pub fn store_file(&self) -> PathBuf {
        self.state_dir().join(spin_host::DEFAULT_STORE_FILE)
    }

    /// What the host printed (stdout and stderr; with Spin's defaults that includes component output).
    pub fn output(&self) -> String {
        std::fs::read(self.dir.path().join("app.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Everything logged: the host's output, then each component log file in `<state dir>/logs/`.
    pub fn logs(&self) -> String {
        let mut logs = format!("== {} output\n{}", self.binary.name(), self.output());
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.state_dir().join("logs"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let mut text = String::new();
            if File::open(&file)
                .and_then(|mut f| f.read_to_string(&mut text))
                .is_ok()
                && !text.is_empty()
            {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                logs.push_str(&format!("== {name}\n{text}"));
            }
        }
        logs
    }

    /// The peak resident set (`VmHWM`, MB) of the host's processes (the largest one: with Spin, the
    /// `spin trigger http` child that serves).
    pub fn peak_rss_mb(&self) -> Result<f64> {
        let pgid = self.child.as_ref().context("stopped")?.id();
        let mut peak = 0.0f64;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Field 5 (after the parenthesised name) is the process group.
            let group = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|g| g.parse::<u32>().ok());
            if group != Some(pgid) {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let kb: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse().ok())
                .context("no VmHWM in /proc/<pid>/status")?;
            peak = peak.max(kb / 1024.0);
        }
        Ok(peak)
    }

    /// Stops the process group: SIGTERM, then SIGKILL if it has not exited in [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = child.id();
        kill_group(group, "-TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the group (the child, or a grandchild it left behind).
        kill_group(group, "-KILL");
        let _ = child.wait();
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to every process of a process group.
fn kill_group(group: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
}

impl Drop for AppHost {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "\n---- the app's logs ({} {}) ----\n{}---- end of the app's logs ----",
                self.binary.name(),
                self.base_url(),
                self.logs()
            );
        }
    }
}
