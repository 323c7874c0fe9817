//! The test host behaves like Spin, proven with the probe component (`probe/`, in `probe/probe.toml`).
//! The real app on the host is tested end to end in `tests/e2e`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use spin_host::{serve, App, HostOptions, RunningHost};

fn probe_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/probe.toml")
}

/// Builds the probe for `wasm32-wasip2` once per test process; cargo's output is shown only if it fails.
fn build_probe() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
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

/// Starts an app from a manifest in this process on a free loopback port. `variables` are `name=value`;
/// the process environment is not consulted, so tests do not depend on it.
async fn start(
    manifest: &Path,
    variables: &[String],
    kv_file: Option<&Path>,
) -> anyhow::Result<RunningHost> {
    build_probe();
    let app = App::load(&HostOptions {
        manifest: manifest.to_path_buf(),
        variables: variables.to_vec(),
        kv_file: kv_file.map(Path::to_path_buf),
        runtime_config: None,
        env: Some(Default::default()),
    })?;
    serve(app, SocketAddr::from(([127, 0, 0, 1], 0))).await
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
    let host = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
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
    let file = dir.join("kv.db");
    {
        let host = start(&probe_manifest(), &vars, Some(&file)).await.unwrap();
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
    let host = start(&probe_manifest(), &vars, Some(&file)).await.unwrap();
    assert_eq!(
        get(format!(
            "{}/probe/kv/get?label=default&key=k",
            host.base_url()
        ))
        .await,
        (200, "v1".into()),
        "--kv-file keeps values across restarts"
    );
    let stored = host.app.kv_store("default").unwrap().dump().unwrap();
    assert_eq!(stored, vec![("k".to_string(), b"v1".to_vec())]);
}

#[tokio::test]
async fn key_value_labels_are_enforced() {
    let up = upstream().await;
    let host = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    let base = host.base_url();
    let (status, body) = get(format!("{base}/probe/kv/get?label=cache&key=k")).await;
    assert_eq!((status, body.as_str()), (403, "Error::AccessDenied"));
    // `chained` lists no store at all.
    let (status, body) = get(format!("{base}/chained/kv/get?label=default&key=k")).await;
    assert_eq!((status, body.as_str()), (403, "Error::AccessDenied"));
}

#[tokio::test]
async fn outbound_calls_are_limited_to_the_allow_list() {
    let up = upstream().await;
    let other = upstream().await;
    let host = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
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
    let host = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
        .await
        .unwrap();
    let (status, body) = get(format!(
        "{}/probe/fetch?url=http://chained.spin.internal/chained/memory",
        host.base_url()
    ))
    .await;
    assert_eq!((status, body.as_str()), (200, "200 1"));
}

#[tokio::test]
async fn variables_are_templated_and_scoped_per_component() {
    let up = upstream().await;
    let host = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
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
}

#[tokio::test]
async fn spin_headers_and_routing() {
    let up = upstream().await;
    let host = start(&probe_manifest(), &[format!("upstream=http://{up}")], None)
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
    assert_eq!(get(format!("{base}/nowhere")).await.0, 404);
    // A trapping component is a 500, and the host keeps serving.
    assert_eq!(get(format!("{base}/probe/panic")).await.0, 500);
    assert_eq!(get(format!("{base}/probe/memory")).await.0, 200);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bluebutton-spin-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
