//! The real app on its host: every route answers, the binary serves it with variables from flags and
//! the environment, and a missing required variable stops start-up.

use e2e::{build_wasm, spawn_until_listening, spin_host_binary, start, token_key, workspace_root};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn a_missing_required_variable_stops_start_up() {
    build_wasm();
    let out = std::process::Command::new(spin_host_binary())
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
    // Spin: `no provider resolved required variable(s): [Key("cms_client_id"), Key("token_key")]`.
    assert!(
        stderr.contains("required variable(s)")
            && stderr.contains("cms_client_id")
            && stderr.contains("token_key")
            && !stderr.contains("cms_client_secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("from-the-environment"));
}

#[tokio::test]
async fn the_binary_serves_the_real_app_with_variables_from_flags_and_environment() {
    build_wasm();
    let child = spawn_until_listening(
        &spin_host_binary(),
        &[
            "up".into(),
            "--from".into(),
            workspace_root().join("spin.toml").display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            String::new(),
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
