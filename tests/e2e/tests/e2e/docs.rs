//! The user's side: the OpenAPI document, the offline Swagger UI, the health check, and problem+json for
//! anything unknown.

use e2e::{workspace_root, Stack, ADMIN_KEY};
use serde_json::Value;

#[tokio::test]
async fn the_openapi_document_describes_every_route_of_the_manifest() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let spec: Value = reqwest::get(format!("{}/openapi.json", stack.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = spec["paths"].as_object().unwrap();
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(workspace_root().join("spin.toml")).unwrap())
            .unwrap();
    for trigger in manifest["trigger"]["http"].as_array().unwrap() {
        let route = trigger["route"].as_str().unwrap();
        let documented = match route {
            // The catch-all only answers 404s; the docs UI is not an API operation.
            "/..." | "/docs/..." => continue,
            "/bluebutton/fhir/..." => ["Patient", "Coverage", "ExplanationOfBenefit"]
                .iter()
                .all(|t| paths.contains_key(&format!("/bluebutton/fhir/{t}"))),
            "/bluebutton/connect/..." => {
                paths.keys().any(|p| p.starts_with("/bluebutton/connect/"))
            }
            exact => paths.contains_key(exact),
        };
        assert!(documented, "{route} is not in /openapi.json");
    }
    let schemes = spec["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("session") && schemes.contains_key("admin_key"));
    assert!(spec["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_component_itself() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let client = e2e::beneficiary::client();
    let resp = client
        .get(format!("{}/docs", stack.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let resp = client
        .get(format!("{}/docs/", stack.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let init = client
        .get(format!("{}/docs/swagger-initializer.js", stack.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"));
    let bundle = client
        .get(format!("{}/docs/swagger-ui-bundle.js", stack.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
}

/// `GET /bluebutton/healthz`: its status code and body, checked to carry no setting's value.
async fn healthz(stack: &Stack, secrets: &[&str]) -> (u16, Value) {
    let resp = reqwest::get(format!("{}/bluebutton/healthz", stack.base_url()))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let text = resp.text().await.unwrap();
    for secret in secrets {
        assert!(!text.contains(secret), "a value leaked: {text}");
    }
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn health_reports_settings_and_reachability_without_values() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let (status, health) = healthz(&stack, &[ADMIN_KEY, &e2e::token_key()]).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["checks"]["token_key"], "ok");
    assert_eq!(health["checks"]["admin_api_key"], "ok");
    assert_eq!(health["reachable"]["cms"], "ok");
    assert_eq!(health["reachable"]["connect"], "ok");
    // Every component answered for itself, over local service chaining.
    for component in ["authorize", "callback", "fhir-fetch", "connect-push"] {
        assert_eq!(health["components"][component], "ok", "{health}");
    }

    // Connect down: the settings are fine, so the app is degraded, not misconfigured.
    let closed_port = e2e::free_port();
    let stack = Stack::start(
        |_| {},
        &[format!("connect_url=http://127.0.0.1:{closed_port}")],
    )
    .await
    .unwrap();
    let (status, health) = healthz(&stack, &[]).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["reachable"]["cms"], "ok");
    assert!(
        health["reachable"]["connect"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{health}"
    );

    let stack = Stack::start(
        |_| {},
        &["token_key=tooshort".into(), "admin_api_key=".into()],
    )
    .await
    .unwrap();
    let (status, health) = healthz(&stack, &["tooshort"]).await;
    assert_eq!(status, 503);
    assert_eq!(health["status"], "misconfigured");
    assert!(health["checks"]["token_key"]
        .as_str()
        .unwrap()
        .contains("256-bit"));
    assert!(health["checks"]["admin_api_key"]
        .as_str()
        .unwrap()
        .contains("disabled"));
}

#[tokio::test]
async fn unknown_paths_are_problem_json() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    for path in ["/nope", "/bluebutton", "/bluebutton/unknown/x"] {
        let resp = reqwest::get(format!("{}{path}", stack.base_url()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["status"], 404);
        assert!(problem["title"].is_string() && problem["type"].is_string());
    }
}
