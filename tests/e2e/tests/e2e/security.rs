//! Security: states that are forged, replayed or expired; one patient's session against another;
//! admin routes; no secret in any log line, response or stored value; outbound calls only where allowed.

use std::collections::HashMap;
use std::time::Duration;

use cms_sandbox::{BBUSER00001_PATIENT, BBUSER29999_PATIENT};
use e2e::beneficiary::{self, authorize_at_cms, sign_in, Consent};
use e2e::{token_key, workspace_root, Stack, ADMIN_KEY, CLIENT_SECRET};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_a_response_or_the_store_in_plain_text() {
    let key = token_key();
    // The host's whole output (component output included, as Spin shows it by default), the component
    // log files and the store file are all scanned.
    let stack = Stack::start_with(
        |o| o.token_ttl_secs = 62,
        |c| {
            c.rate_limit_per_sec = 0;
            c.fail_first = 1;
        },
        &[format!("token_key={key}")],
    )
    .await
    .unwrap();
    let (cms, base) = (&stack.cms, stack.base_url());

    // Everything a client sees, kept for the scan.
    let mut seen = String::new();
    let signed_in = sign_in(&base, "BBUser29999").await.unwrap();
    let session = signed_in["session"].as_str().unwrap().to_string();
    seen.push_str(&signed_in.to_string());
    let http = beneficiary::client();
    // Past the refresh margin, so refreshed tokens are in play too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for path in [
        "/bluebutton/fhir/Patient",
        "/bluebutton/fhir/Coverage",
        "/bluebutton/fhir/ExplanationOfBenefit?return_cms=false",
        "/bluebutton/fhir/ExplanationOfBenefit?patient=-19990000000001",
        "/bluebutton/fhir/Nope",
        "/bluebutton/healthz",
        "/bluebutton/callback?state=forged-state-0123456789abcdef&code=x",
    ] {
        let resp = http
            .get(format!("{base}{path}"))
            .bearer_auth(&session)
            .send()
            .await
            .unwrap();
        seen.push_str(&format!("{:?}", resp.headers()));
        seen.push_str(&resp.text().await.unwrap());
    }
    for (path, key) in [
        ("/bluebutton/connect/outbox", Some(ADMIN_KEY)),
        ("/bluebutton/connect/dead-letters", Some(ADMIN_KEY)),
        ("/bluebutton/connect/outbox", Some("wrong")),
        ("/bluebutton/connect/outbox", None),
    ] {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.unwrap();
        seen.push_str(&resp.text().await.unwrap());
    }
    // Revoking deletes CMS's tokens: note them first.
    let cms_secrets = cms.secrets_seen();
    let resp = http
        .delete(format!("{base}/bluebutton/session"))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    assert!(
        cms_secrets.len() >= 4,
        "tokens, refreshed tokens and the verifier: {}",
        cms_secrets.len()
    );
    let log = stack.logs();
    assert!(
        log.contains("Serving http://"),
        "the log is the host's: {log}"
    );
    let stored = stack.store_dump();
    assert!(!stored.is_empty());
    let mut secrets: Vec<(&str, String)> = cms_secrets
        .iter()
        .map(|s| ("a CMS token, code or verifier", s.clone()))
        .collect();
    secrets.push(("the client secret", CLIENT_SECRET.into()));
    secrets.push(("token_key", key.clone()));
    secrets.push(("the admin key", ADMIN_KEY.into()));
    for (what, secret) in &secrets {
        assert!(!log.contains(secret.as_str()), "{what} in the log:\n{log}");
        assert!(!seen.contains(secret.as_str()), "{what} in a response");
        assert!(
            !stored.contains(secret.as_str()),
            "{what} stored in plain text"
        );
    }
    assert!(!log.contains(&session), "the session in the log");
    assert!(
        !stored.contains(&session),
        "the session stored in plain text"
    );
}

#[tokio::test]
async fn forged_replayed_and_expired_states_never_reach_cms() {
    // States live 2 seconds here: the beneficiary "takes too long" at CMS.
    let stack = Stack::start(|_| {}, &["state_ttl_secs=2".into()])
        .await
        .unwrap();
    let callback = authorize_at_cms(&stack.base_url(), "BBUser29999", Consent::All)
        .await
        .unwrap();
    let q: HashMap<String, String> = callback.query_pairs().into_owned().collect();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let token_calls = || async {
        let counters = stack.cms_counters().await;
        counters["by_path"]["/v2/o/token/"].clone()
    };
    let before = token_calls().await;
    for url in [
        callback.to_string(),
        callback.to_string(),
        format!(
            "{}/bluebutton/callback?code={}&state=forged-but-long-enough-0123456789",
            stack.base_url(),
            q["code"]
        ),
    ] {
        let resp = beneficiary::client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(token_calls().await, before, "CMS was asked anyway");
}

#[tokio::test]
async fn one_patients_session_cannot_read_another_patient() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let a = sign_in(&stack.base_url(), "BBUser29999").await.unwrap();
    let b = sign_in(&stack.base_url(), "BBUser00001").await.unwrap();
    assert_eq!(b["patient"], BBUSER00001_PATIENT);
    for resource in ["Patient", "Coverage", "ExplanationOfBenefit"] {
        for other in [
            BBUSER00001_PATIENT,
            &format!("Patient/{BBUSER00001_PATIENT}"),
        ] {
            let resp = beneficiary::client()
                .get(format!(
                    "{}/bluebutton/fhir/{resource}?patient={other}&push=false",
                    stack.base_url()
                ))
                .bearer_auth(a["session"].as_str().unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 403, "{resource} {other}");
        }
    }
    // And each session's data is its own.
    let resp = beneficiary::client()
        .get(format!(
            "{}/bluebutton/fhir/Patient?push=false",
            stack.base_url()
        ))
        .bearer_auth(a["session"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let bundle: Value = resp.json().await.unwrap();
    assert_eq!(bundle["entry"][0]["resource"]["id"], BBUSER29999_PATIENT);
}

#[test]
fn each_component_may_call_only_what_it_needs() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(workspace_root().join("spin.toml")).unwrap())
            .unwrap();
    let hosts = |component: &str| -> Vec<String> {
        manifest["component"][component]
            .get("allowed_outbound_hosts")
            .and_then(|h| h.as_array())
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert!(hosts("authorize").is_empty());
    // The docs component asks the others for their health, over local service chaining only.
    assert_eq!(
        hosts("docs"),
        [
            "http://authorize.spin.internal",
            "http://callback.spin.internal",
            "http://fhir-fetch.spin.internal",
            "http://connect-push.spin.internal",
        ]
    );
    assert_eq!(hosts("callback"), ["{{ cms_base_url }}"]);
    assert_eq!(hosts("connect-push"), ["{{ connect_url }}"]);
    assert_eq!(
        hosts("fhir-fetch"),
        ["{{ cms_base_url }}", "{{ connect_url }}"]
    );
    for component in manifest["component"].as_table().unwrap().keys() {
        for host in hosts(component) {
            assert!(!host.contains('*'), "{component} allows a wildcard: {host}");
        }
    }
    // Secrets are readable only by components that use them.
    let readers = |variable: &str| -> Vec<String> {
        manifest["component"]
            .as_table()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.get("variables").and_then(|v| v.get(variable)).is_some())
            .map(|(id, _)| id.clone())
            .collect()
    };
    let exactly = |variable: &str, expected: &[&str]| {
        let mut got = readers(variable);
        got.sort();
        assert_eq!(got, expected, "who reads {variable}");
    };
    exactly("cms_client_secret", &["callback", "fhir-fetch"]);
    // Everything at rest is sealed with it: each component that stores something.
    exactly(
        "token_key",
        &["authorize", "callback", "connect-push", "fhir-fetch"],
    );
    exactly("admin_api_key", &["connect-push", "fhir-fetch"]);
    assert!(
        readers("cms_client_id").iter().all(|c| c != "docs"),
        "docs holds no settings"
    );
    // The docs component holds no setting but the API version, which picks its OpenAPI document.
    let docs: Vec<&String> = manifest["component"]["docs"]["variables"]
        .as_table()
        .map(|t| t.keys().collect())
        .unwrap_or_default();
    assert_eq!(docs, ["cms_api_version"], "the docs component's variables");
}
