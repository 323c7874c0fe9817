//! The real app on its host (`spin-host`, or Spin with `SPIN_BIN`): every route answers, the host serves
//! it with variables from flags and the environment, and a missing required variable stops start-up.

use e2e::{token_key, AppHost, AppOptions, StartFailure};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_missing_required_variable_stops_start_up() {
    let err = AppHost::start(AppOptions {
        env: vec![(
            "SPIN_VARIABLE_CMS_CLIENT_SECRET".into(),
            "from-the-environment".into(),
        )],
        ..Default::default()
    })
    .await
    .err()
    .expect("the host must not start");
    let failure = err
        .downcast_ref::<StartFailure>()
        .unwrap_or_else(|| panic!("{err:#}"));
    assert!(failure.status.is_some_and(|s| !s.success()), "{failure}");
    let stderr = &failure.log;
    // Spin: `no provider resolved required variable(s): [Key("cms_client_id"), Key("token_key")]`.
    assert!(
        stderr.contains("required variable(s)")
            && stderr.contains("cms_client_id")
            && stderr.contains("token_key")
            && !stderr.contains("cms_client_secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("from-the-environment"));
    // And it was the host asked for: each words it its own way.
    if e2e::on_real_spin() {
        assert!(stderr.contains("Key(\"cms_client_id\")"), "{stderr}");
    } else {
        assert!(stderr.contains("cms_client_id, token_key;"), "{stderr}");
    }
}

#[tokio::test]
async fn the_binary_serves_the_real_app_with_variables_from_flags_and_environment() {
    let host = AppHost::start(AppOptions {
        variables: vec![
            "cms_client_id=client-from-flag".into(),
            format!("token_key={}", token_key()),
        ],
        // A flag beats the environment; the environment gives what no flag does (the secret).
        env: vec![
            (
                "SPIN_VARIABLE_CMS_CLIENT_ID".into(),
                "client-from-env".into(),
            ),
            ("SPIN_VARIABLE_CMS_CLIENT_SECRET".into(), "secret".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let resp = client()
        .get(format!("{}/bluebutton/authorize?lang=en", host.base_url()))
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
    let host = AppHost::start(AppOptions {
        variables: vec![
            "cms_client_id=abc".into(),
            "cms_client_secret=def".into(),
            format!("token_key={}", token_key()),
            format!("admin_api_key={}", e2e::ADMIN_KEY),
        ],
        ..Default::default()
    })
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
            403,
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
        .bearer_auth(e2e::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["count"], 0);
}
