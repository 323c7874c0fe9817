//! The test host behaves like Spin: proven with the probe component, and with the real app's `spin.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;

use testkit::support::{self, start, token_key, workspace_root};

fn probe_manifest() -> PathBuf {
    workspace_root().join("tests/fixtures/apps/probe.toml")
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

#[test]
fn a_missing_required_variable_stops_start_up() {
    support::build_wasm();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spin-host"))
        .args(["up", "--from"])
        .arg(workspace_root().join("spin.toml"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("SPIN_VARIABLE_CMS_CLIENT_ID")
        .env_remove("SPIN_VARIABLE_CMS_CLIENT_SECRET")
        .env_remove("SPIN_VARIABLE_TOKEN_KEY")
        .env("SPIN_VARIABLE_CMS_CLIENT_SECRET", "from-the-environment")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing required variable(s): cms_client_id, token_key"),
        "{stderr}"
    );
    assert!(!stderr.contains("from-the-environment"));
}

#[tokio::test]
async fn the_binary_serves_the_real_app_with_variables_from_flags_and_environment() {
    support::build_wasm();
    let child = support::spawn_until_listening(
        std::path::Path::new(env!("CARGO_BIN_EXE_spin-host")),
        &[
            "up".into(),
            "--from".into(),
            workspace_root().join("spin.toml").display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--variable".into(),
            "cms_client_id=client-from-flag".into(),
            "--variable".into(),
            "cms_client_secret=secret".into(),
            "--variable".into(),
            format!("token_key={}", token_key()),
        ],
    )
    .unwrap();
    let resp = client()
        .get(format!(
            "http://{}/bluebutton/authorize?lang=en",
            child.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("https://sandbox.bluebutton.cms.gov/v2/o/authorize/?"));
    assert!(location.contains("client_id=client-from-flag"));
}

/// Every route of the real app answers through the host (the features behind them have their own tests).
#[tokio::test]
async fn every_route_of_the_real_app_answers() {
    let host = start(
        &workspace_root().join("spin.toml"),
        &[
            "cms_client_id=abc".into(),
            "cms_client_secret=def".into(),
            format!("token_key={}", token_key()),
            "admin_api_key=admin-key-for-tests".into(),
        ],
        None,
    )
    .await
    .unwrap();
    let base = host.base_url();
    let c = client();

    let resp = c
        .get(format!("{base}/bluebutton/authorize"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 600);

    for (method, path, status) in [
        ("GET", "/bluebutton/callback", 400),
        (
            "GET",
            "/bluebutton/callback?state=forged-state-0123456789&code=x",
            400,
        ),
        ("GET", "/bluebutton/fhir/Patient", 401),
        ("GET", "/bluebutton/fhir/Encounter", 404),
        ("GET", "/bluebutton/connect/outbox", 401),
        ("POST", "/bluebutton/authorize", 405),
    ] {
        let resp = c
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let p: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(p["status"], status);
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    let resp = c
        .get(format!("{base}/bluebutton/connect/outbox"))
        .bearer_auth("admin-key-for-tests")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["count"], 0);
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
