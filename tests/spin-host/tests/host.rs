//! The test host behaves like Spin, proven with the probe component (`probe/`, in `probe/probe.toml`).
//! The real app on the host is tested end to end in `tests/e2e`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use spin_host::{serve, App, Captured, HostOptions, Output, RunningHost, StateDir};

fn probe_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/probe.toml")
}

/// Builds the probe for `wasm32-wasip2` once per test process; cargo's output is shown only if it fails.
fn build_probe() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Not the variables cargo sets for this test process (CARGO_PKG_NAME, ...): build scripts rerun
        // when they change, so the next `cargo test` would rebuild them.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
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
                cmd.env_remove(name);
            }
        }
        let out = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--target",
                "wasm32-wasip2",
                "--release",
                "-p",
                "probe",
            ])
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building the probe failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Starts an app from a manifest in this process on a free loopback port, its state in `state_dir` (in
/// memory without). `variables` are `name=value`; neither the process environment nor any `.env` is
/// consulted, so tests do not depend on them. Component output and the host's error lines are captured,
/// not printed.
async fn start(
    manifest: &Path,
    variables: &[String],
    state_dir: Option<&Path>,
) -> anyhow::Result<(RunningHost, Captured)> {
    start_with(manifest, variables, state_dir, None).await
}

/// [`start`] with a runtime config file.
async fn start_with(
    manifest: &Path,
    variables: &[String],
    state_dir: Option<&Path>,
    runtime_config: Option<&Path>,
) -> anyhow::Result<(RunningHost, Captured)> {
    build_probe();
    let captured = Captured::default();
    let app = App::load(&HostOptions {
        manifest: manifest.to_path_buf(),
        variables: variables.to_vec(),
        state_dir: state_dir.map_or(StateDir::Unset, |d| StateDir::Dir(d.to_path_buf())),
        runtime_config: runtime_config.map(Path::to_path_buf),
        env: Some(Default::default()),
        dotenv: None,
        output: Output::Capture(captured.clone()),
    })?;
    let host = serve(app, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    Ok((host, captured))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A plain upstream on loopback that answers every request with "upstream says hi".
async fn upstream() -> SocketAddr {
    let app = axum::Router::new().fallback(|| async { "upstream says hi" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn get(url: String) -> (u16, String) {
    let resp = client().get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let up = upstream().await;
    let (host, _) = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    let before = host.app.instantiations();
    for _ in 0..3 {
        assert_eq!(
            get(format!("{}/probe/memory", host.base_url())).await,
            (200, "1".to_string()),
            "a static in the component survived a request"
        );
    }
    assert_eq!(host.app.instantiations() - before, 3);
}

#[tokio::test]
async fn key_value_persists_across_requests_and_restarts() {
    let up = upstream().await;
    let vars = [format!("upstream=http://{up}")];
    let dir = tempdir();
    {
        let (host, _) = start(&probe_manifest(), &vars, Some(&dir)).await.unwrap();
        let base = host.base_url();
        assert_eq!(
            get(format!("{base}/probe/kv/set?label=default&key=k&value=v1")).await,
            (200, "stored".into())
        );
        assert_eq!(
            get(format!("{base}/probe/kv/get?label=default&key=k")).await,
            (200, "v1".into())
        );
        assert_eq!(
            get(format!("{base}/probe/kv/get?label=default&key=other")).await,
            (404, "absent".into())
        );
    }
    let (host, _) = start(&probe_manifest(), &vars, Some(&dir)).await.unwrap();
    assert_eq!(
        get(format!(
            "{}/probe/kv/get?label=default&key=k",
            host.base_url()
        ))
        .await,
        (200, "v1".into()),
        "--state-dir keeps values across restarts"
    );
    let stored = host.app.kv_store("default").unwrap().dump().await.unwrap();
    assert_eq!(stored, vec![("k".to_string(), b"v1".to_vec())]);
    // Where Spin keeps them: `<state dir>/sqlite_key_value.db`, Spin's table, no WAL; and the logs of the
    // components that ran (only those), in `<state dir>/logs/`.
    let db = rusqlite::Connection::open(dir.join("sqlite_key_value.db")).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let row: (String, String, Vec<u8>) = db
        .query_row("SELECT store, key, value FROM spin_key_value", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(row, ("default".into(), "k".into(), b"v1".to_vec()));
    let mut logs: Vec<String> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    logs.sort();
    assert_eq!(logs, ["probe_stderr.txt", "probe_stdout.txt"]);
}

#[tokio::test]
async fn key_value_labels_are_enforced() {
    let up = upstream().await;
    let (host, _) = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    let base = host.base_url();
    let (status, body) = get(format!("{base}/probe/kv/get?label=cache&key=k")).await;
    assert_eq!((status, body.as_str()), (403, "Error::AccessDenied"));
    // `chained` lists no store at all.
    let (status, body) = get(format!("{base}/chained/kv/get?label=default&key=k")).await;
    assert_eq!((status, body.as_str()), (403, "Error::AccessDenied"));
}

/// Requests to the probe and what Spin 3.6.3 answered to each (recorded from `spin up` with the same
/// runtime configs), in order: `wasi:keyvalue` compare-and-swap, get-many and increment.
const ATOMICS_ON_REDIS: &[(&str, &str)] = &[
    ("kv/set?key=k&value=one", "stored"),
    // Every swap reports a failed CAS: `UNWATCH k` (Spin sends the key) is refused by Redis after the
    // transaction ran, whether it was applied ...
    ("kv/cas?key=k&value=two", "current=one swap=cas-failed stored=two"),
    // ... or aborted by the watch.
    ("kv/cas?key=k&value=three&interfere=other", "current=two swap=cas-failed stored=other"),
    ("kv/cas?key=absent&value=x", "current=none swap=cas-failed stored=x"),
    ("kv/cas?key=k&value=blind&skip_current=1", "current=skipped swap=cas-failed stored=blind"),
    // The fresh CAS handed back (already `current`) swaps too, and reports failure too.
    ("kv/cas?key=k&value=four&interfere=five&retry=six", "current=blind swap=cas-failed retry=cas-failed stored=six"),
    ("kv/cas?key=k&value=seven&retry=eight", "current=six swap=cas-failed retry=cas-failed stored=eight"),
    ("kv/set?key=a&value=1", "stored"),
    // get-many is `KEYS a`: key names, not pairs, so nothing; `KEYS a k` is an arity error.
    ("kv/get-many?keys=a", ""),
    ("kv/get-many?keys=a,k", "Error::Other(\"An error was signalled by the server - ResponseError: wrong number of arguments for 'keys' command\")"),
    ("kv/incr?key=n&delta=5", "5"),
    ("kv/incr?key=n&delta=0", "5"),
    ("kv/get?key=n", "5"),
    ("kv/incr?key=k&delta=1", "Error::Other(\"An error was signalled by the server - ResponseError: value is not an integer or out of range\")"),
];

const ATOMICS_ON_SQLITE: &[(&str, &str)] = &[
    ("kv/set?key=k&value=one", "stored"),
    ("kv/cas?key=k&value=two", "current=one swap=ok stored=two"),
    (
        "kv/cas?key=k&value=three&interfere=other",
        "current=two swap=cas-failed stored=other",
    ),
    // No value seen (absent key, or no `current`): a blind write.
    ("kv/cas?key=absent&value=x", "current=none swap=ok stored=x"),
    (
        "kv/cas?key=k&value=blind&skip_current=1",
        "current=skipped swap=ok stored=blind",
    ),
    // The fresh CAS handed back has seen `five`, so its swap is conditional, and succeeds.
    (
        "kv/cas?key=k&value=four&interfere=five&retry=six",
        "current=blind swap=cas-failed retry=ok stored=six",
    ),
    (
        "kv/cas?key=k&value=seven&retry=eight",
        "current=six swap=ok stored=seven",
    ),
    ("kv/set?key=a&value=1", "stored"),
    ("kv/get-many?keys=a", "a=1"),
    ("kv/get-many?keys=a,k", "a=1,k=seven"),
    // Keys that do not exist are left out.
    ("kv/get-many?keys=a,nope", "a=1"),
    ("kv/incr?key=n&delta=5", "5"),
];

async fn answers_as_spin(base: &str, script: &[(&str, &str)]) {
    for (query, expected) in script {
        let (_, body) = get(format!("{base}/probe/{query}&label=default")).await;
        assert_eq!(body, *expected, "{query}");
    }
}

#[tokio::test]
async fn wasi_keyvalue_answers_as_spin_3_6_3_does_on_sqlite() {
    let up = upstream().await;
    let dir = tempdir();
    let config = dir.join("runtime-config.toml");
    std::fs::write(
        &config,
        "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n",
    )
    .unwrap();
    let (host, _) = start_with(
        &probe_manifest(),
        &[format!("upstream=http://{up}")],
        Some(&dir.join("state")),
        Some(&config),
    )
    .await
    .unwrap();
    answers_as_spin(&host.base_url(), ATOMICS_ON_SQLITE).await;
    assert!(dir.join("kv.db").exists());
}

#[tokio::test]
async fn wasi_keyvalue_answers_as_spin_3_6_3_does_on_redis() {
    if spin_host::redis_server::RedisServer::binary().is_none() {
        eprintln!("SKIPPED wasi_keyvalue_answers_as_spin_3_6_3_does_on_redis: no redis-server (apt-get install redis-server)");
        return;
    }
    let redis = spin_host::redis_server::RedisServer::start_on_a_free_port().unwrap();
    let up = upstream().await;
    let dir = tempdir();
    let config = dir.join("runtime-config.toml");
    std::fs::write(
        &config,
        format!(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let vars = [format!("upstream=http://{up}")];
    let (host, _) = start_with(
        &probe_manifest(),
        &vars,
        Some(&dir.join("state")),
        Some(&config),
    )
    .await
    .unwrap();
    answers_as_spin(&host.base_url(), ATOMICS_ON_REDIS).await;
    // A second host on the same Redis sees the first one's values; neither made a SQLite file.
    let (second, _) = start_with(
        &probe_manifest(),
        &vars,
        Some(&dir.join("state2")),
        Some(&config),
    )
    .await
    .unwrap();
    assert_eq!(
        get(format!(
            "{}/probe/kv/get?label=default&key=k",
            second.base_url()
        ))
        .await,
        (200, "eight".into())
    );
    assert!(!dir.join("state").join("sqlite_key_value.db").exists());
    assert!(!dir.join("state2").join("sqlite_key_value.db").exists());
}

#[tokio::test]
async fn outbound_calls_are_limited_to_the_allow_list() {
    let up = upstream().await;
    let other = upstream().await;
    let (host, _) = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    let base = host.base_url();
    assert_eq!(
        get(format!("{base}/probe/fetch?url=http://{up}/x")).await,
        (200, "200 upstream says hi".into())
    );
    // Same host, another port: refused inside the component, before any connection.
    assert_eq!(
        get(format!("{base}/probe/fetch?url=http://{other}/x")).await,
        (502, "HttpRequestDenied".into())
    );
    assert_eq!(
        get(format!("{base}/probe/fetch?url=https://example.com/")).await,
        (502, "HttpRequestDenied".into())
    );
    // `chained` has no allow-list at all.
    assert_eq!(
        get(format!("{base}/chained/fetch?url=http://{up}/x")).await,
        (502, "HttpRequestDenied".into())
    );
}

#[tokio::test]
async fn local_service_chaining_reaches_a_component_in_a_fresh_instance() {
    let up = upstream().await;
    let (host, _) = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    // As in Spin, the target is reached whatever its routes: the whole path is its path info.
    let (status, body) = get(format!(
        "{}/probe/fetch?url=http://chained.spin.internal/memory",
        host.base_url()
    ))
    .await;
    assert_eq!((status, body.as_str()), (200, "200 1"));
    let (status, body) = get(format!(
        "{}/probe/fetch?url=http://chained.spin.internal/headers",
        host.base_url()
    ))
    .await;
    assert_eq!(status, 200);
    for expected in [
        "spin-path-info=/headers",
        "spin-matched-route=/...",
        "spin-component-route=\n",
        "spin-client-addr=0.0.0.0:0",
        "spin-full-url=http://localhost/headers",
    ] {
        assert!(body.contains(expected), "{expected} missing in\n{body}");
    }
}

#[tokio::test]
async fn variables_are_templated_and_scoped_per_component() {
    let up = upstream().await;
    let (host, _) = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    let base = host.base_url();
    assert_eq!(
        get(format!("{base}/probe/variable?name=greeting")).await,
        (200, "hello, world".into())
    );
    let (status, body) = get(format!("{base}/probe/variable?name=hidden")).await;
    assert_eq!(status, 404);
    assert!(body.starts_with("Error::Undefined"), "{body}");
    let (status, body) = get(format!("{base}/probe/variable?name=Bad-Name")).await;
    assert_eq!(status, 404);
    assert!(body.starts_with("Error::InvalidName"), "{body}");
    assert!(
        body.contains("invalid character 'B'"),
        "Spin's wording: {body}"
    );
}

#[tokio::test]
async fn spin_headers_and_routing() {
    let up = upstream().await;
    let (host, captured) = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    let base = host.base_url();
    let (status, headers) = get(format!("{base}/probe/headers?x=1")).await;
    assert_eq!(status, 200);
    for expected in [
        "spin-path-info=/headers",
        "spin-matched-route=/probe/...",
        "spin-component-route=/probe",
        &format!("spin-full-url={base}/probe/headers?x=1"),
    ] {
        assert!(
            headers.contains(expected),
            "{expected} missing in\n{headers}"
        );
    }
    assert!(headers.contains("spin-client-addr=127.0.0.1:"));
    // No route: Spin's empty 404.
    assert_eq!(get(format!("{base}/nowhere")).await, (404, String::new()));
    // A trapping component is Spin's empty 500, and the host keeps serving.
    assert_eq!(
        get(format!("{base}/probe/panic")).await,
        (500, String::new())
    );
    assert_eq!(get(format!("{base}/probe/memory")).await.0, 200);
    // What the component printed, and the host's line about it, were captured rather than printed.
    let output = captured.text();
    assert!(
        output.contains("the probe was asked to trap"),
        "the guest's panic message: {output}"
    );
    assert!(
        output.contains("spin-host: component probe failed"),
        "{output}"
    );
}

/// The `spin-host` binary (or the real Spin CLI when `SPIN_BIN` names it, to check that it does the same),
/// run from `cwd` with `args` after `up`, as a child that is killed when dropped.
struct Binary {
    child: std::process::Child,
    /// What it printed on stdout up to its `Serving` line.
    startup: Vec<String>,
    base: String,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and waits (at most a minute) for its `Serving http://…` line; `Err` with its stderr
/// if it exits first.
fn run_binary(cwd: &Path, args: &[String]) -> Result<Binary, String> {
    use std::io::{BufRead, BufReader, Read};
    build_probe();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let binary = std::env::var_os("SPIN_BIN")
        .filter(|b| !b.is_empty())
        .map(|b| std::path::absolute(b).unwrap())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_spin-host").into());
    let mut child = Command::new(binary)
        .current_dir(cwd)
        .env_clear()
        .envs(["PATH", "HOME"].map(|v| (v, std::env::var_os(v).unwrap_or_default())))
        .arg("up")
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, stdout) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut startup = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match stdout.recv_timeout(left) {
            Ok(line) if line.starts_with("Serving http://") => break,
            Ok(line) => startup.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return Err(err);
            }
        }
    }
    Ok(Binary {
        child,
        startup,
        base: format!("http://127.0.0.1:{port}"),
    })
}

/// Spin 3.6.3 reads `.env` from its current directory only, and keeps state in `.spin/` beside the
/// manifest unless told otherwise (`--state-dir DIR`, or `--state-dir ""` for memory): so does the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_dotenv_from_its_current_directory_and_keeps_state_as_spin_does() {
    let root = tempdir();
    let (app, cwd, elsewhere) = (root.join("app"), root.join("cwd"), root.join("elsewhere"));
    for dir in [&app, &cwd, &elsewhere] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // The probe's manifest beside a `.env` that must not be read, its sources made absolute.
    let wasm =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/release/probe.wasm");
    let manifest = std::fs::read_to_string(probe_manifest()).unwrap().replace(
        "../../../target/wasm32-wasip2/release/probe.wasm",
        &wasm.display().to_string(),
    );
    std::fs::write(app.join("spin.toml"), manifest).unwrap();
    std::fs::write(
        app.join(".env"),
        "SPIN_VARIABLE_UPSTREAM=http://127.0.0.1:9\nSPIN_VARIABLE_GREETING=\"beside the manifest\"\n",
    )
    .unwrap();
    std::fs::write(cwd.join(".env"), "SPIN_VARIABLE_UPSTREAM=http://127.0.0.1:9\nSPIN_VARIABLE_GREETING=\"from the current directory\"\n").unwrap();
    // Spin (dotenvy) refuses a whole file for one unquoted space: nothing of it is used.
    std::fs::write(
        elsewhere.join(".env"),
        "SPIN_VARIABLE_UPSTREAM=http://127.0.0.1:9\nSPIN_VARIABLE_GREETING=two words\n",
    )
    .unwrap();
    let from = |m: &Path| vec!["--from".to_string(), m.display().to_string()];

    // From a folder with a malformed `.env`: neither it nor the one beside the manifest is read, so
    // `upstream` is missing.
    let err = run_binary(&elsewhere, &from(&app.join("spin.toml")))
        .err()
        .expect("no start-up");
    assert!(
        err.contains("required variable(s)") && err.contains("upstream"),
        "{err}"
    );

    // From the folder with `.env`; no --state-dir: `.spin/` beside the manifest.
    let host = run_binary(&cwd, &from(&app.join("spin.toml"))).unwrap();
    let store = app.join(".spin/sqlite_key_value.db");
    assert!(
        host.startup.contains(&format!(
            "Storing default key-value data to \"{}\".",
            store.display()
        )),
        "{:?}",
        host.startup
    );
    assert_eq!(
        get(format!("{}/probe/variable?name=greeting", host.base)).await,
        (200, "from the current directory, world".into())
    );
    assert_eq!(
        get(format!(
            "{}/probe/kv/set?label=default&key=k&value=v",
            host.base
        ))
        .await,
        (200, "stored".into())
    );
    drop(host);
    assert!(app.join(".spin/sqlite_key_value.db").is_file());
    assert!(app.join(".spin/logs/probe_stderr.txt").is_file());

    // `--state-dir ""`: in memory, said so at start-up, nothing written.
    let mut args = from(&app);
    args.extend(["--state-dir".to_string(), String::new()]);
    std::fs::remove_dir_all(app.join(".spin")).unwrap();
    let host = run_binary(&cwd, &args).unwrap();
    assert_eq!(
        get(format!("{}/probe/kv/get?label=default&key=k", host.base)).await,
        (404, "absent".into())
    );
    assert!(
        host.startup
            .iter()
            .any(|l| l == "Storing default key-value data to a temporary in-memory store."),
        "{:?}",
        host.startup
    );
    drop(host);
    assert!(!app.join(".spin").exists());
}

/// A temp folder, removed when dropped (also when the test fails).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "spin-host-test-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
