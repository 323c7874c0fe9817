//! The accounting of disclosures end to end: what a beneficiary's `GET /bluebutton/audit` lists after they
//! authorize, fetch with delivery through a connect outage and its replay, and revoke; what it never
//! shows; that it survives a restart sealed; and that the AuditEvents are valid R4 that connect accepts.

use std::collections::HashSet;

use cms_sandbox::{BBUSER00001_PATIENT, BBUSER29999_PATIENT};
use e2e::beneficiary;
use e2e::{Stack, ADMIN_KEY};
use serde_json::Value;

async fn get(stack: &Stack, bearer: &str, path_and_query: &str) -> (u16, Value) {
    let resp = beneficiary::client()
        .get(format!("{}{path_and_query}", stack.base_url()))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    }
    (status, resp.json().await.unwrap())
}

/// Every AuditEvent of an accounting, following its `next` links.
async fn accounting(stack: &Stack, bearer: &str, query: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut url = format!("/bluebutton/audit{query}");
    loop {
        let (status, bundle) = get(stack, bearer, &url).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["type"], "searchset");
        let entries = bundle["entry"].as_array().unwrap();
        events.extend(entries.iter().map(|e| e["resource"].clone()));
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next");
        match next {
            Some(link) => {
                let next = url::Url::parse(link["url"].as_str().unwrap()).unwrap();
                url = format!("{}?{}", next.path(), next.query().unwrap());
            }
            None => return events,
        }
    }
}

/// An event's own code (the last `subtype`) and its outcome.
fn kind(event: &Value) -> (String, String) {
    let code = event["subtype"].as_array().unwrap().last().unwrap()["code"]
        .as_str()
        .unwrap();
    (
        code.to_string(),
        event["outcome"].as_str().unwrap().to_string(),
    )
}

fn has(events: &[Value], code: &str, outcome: &str) -> bool {
    events
        .iter()
        .any(|e| kind(e) == (code.to_string(), outcome.to_string()))
}

fn patient_of(event: &Value) -> Option<String> {
    event["entity"].as_array()?.iter().find_map(|e| {
        e["what"]["reference"]
            .as_str()?
            .strip_prefix("Patient/")
            .map(str::to_string)
    })
}

async fn fetch(stack: &Stack, session: &str, query: &str) -> reqwest::Response {
    beneficiary::client()
        .get(format!("{}/bluebutton/fhir/{query}", stack.base_url()))
        .bearer_auth(session)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_beneficiary_sees_every_disclosure_of_theirs_and_nothing_else() {
    // Connect is first a server that answers 404 to everything (an outage), then the real one.
    let wrong = cms_sandbox::CmsSandbox::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        cms_sandbox::Options::default(),
    )
    .await
    .unwrap();
    let mut stack = Stack::start(
        |o| o.eob_count = Some(120),
        &[format!("connect_url={}", wrong.base_url())],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let other = stack.session("BBUser00001").await;

    // A full fetch with delivery, in the outage: everything is queued.
    let resp = fetch(&stack, &session, "ExplanationOfBenefit?return_cms=false").await;
    assert_eq!(resp.status(), 202);
    let claims: Value = fetch(&stack, &session, "ExplanationOfBenefit?push=false")
        .await
        .json()
        .await
        .unwrap();
    // The operator fixes connect; the app restarts on the same store and the replay delivers.
    let right = format!("connect_url={}", stack.connect.base_url());
    stack.app.restart(false, &[right]).await.unwrap();
    let resp = beneficiary::client()
        .post(format!(
            "{}/bluebutton/connect/outbox/replay",
            stack.base_url()
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A fetch delivered at once, then the revoke.
    let resp = fetch(&stack, &session, "Coverage?return_cms=false").await;
    assert_eq!(resp.status(), 200);
    let cms_secrets = stack.cms.secrets_seen();
    let resp = beneficiary::client()
        .delete(format!("{}/bluebutton/session", stack.base_url()))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = get(&stack, &session, "/bluebutton/audit").await;
    assert_eq!(status, 401, "the revoked session reads nothing");

    // The beneficiary signs in again and reads their accounting, two events a page.
    let again = stack.session("BBUser29999").await;
    let events = accounting(&stack, &again, "?_count=2").await;
    let kinds: Vec<(String, String)> = events.iter().map(kind).collect();
    for (code, outcome) in [
        ("authorization-granted", "0"),
        ("cms-read", "0"),
        ("delivered", "4"),
        ("replayed", "0"),
        ("delivered", "0"),
        ("revoked", "0"),
        ("session-ended", "0"),
    ] {
        assert!(has(&events, code, outcome), "{code} {outcome} in {kinds:?}");
    }
    let granted = kinds
        .iter()
        .filter(|k| k.0 == "authorization-granted")
        .count();
    assert_eq!(granted, 2, "both sign-ins");
    assert_eq!(kinds[0].0, "authorization-granted", "newest first");
    let recorded: Vec<&str> = events
        .iter()
        .map(|e| e["recorded"].as_str().unwrap())
        .collect();
    assert!(recorded.windows(2).all(|w| w[0] >= w[1]), "{recorded:?}");
    assert!(events
        .iter()
        .all(|e| patient_of(e).as_deref() == Some(BBUSER29999_PATIENT)));
    let read = events
        .iter()
        .find(|e| {
            kind(e).0 == "cms-read" && e["entity"][1]["description"] == "ExplanationOfBenefit"
        })
        .unwrap();
    let details = read["entity"][1]["detail"].to_string();
    assert!(details.contains(r#""valueString":"120""#), "{details}");
    // The replay names connect's record.
    let replayed = events.iter().find(|e| kind(e).0 == "replayed").unwrap();
    assert!(replayed["entity"][1]["detail"]
        .to_string()
        .contains("dataRecordLocation"));

    // No token, no session, no claim content.
    let text = serde_json::to_string(&events).unwrap();
    for secret in cms_secrets.iter().chain([&session, &again, &other]) {
        assert!(
            !text.contains(secret.as_str()),
            "a secret in the accounting"
        );
    }
    let claim_ids: Vec<&str> = claims["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(claim_ids.len(), 120);
    for id in &claim_ids {
        assert!(!text.contains(&format!("\"{id}\"")), "claim {id} named");
    }
    assert!(!text.contains("\"resourceType\":\"ExplanationOfBenefit\""));

    // Every event is R4 as connect validates it.
    for event in &events {
        connect_sandbox::validate_fhir("AuditEvent", event)
            .unwrap_or_else(|e| panic!("{e}\n{event}"));
    }

    // The other beneficiary sees only their own.
    let theirs = accounting(&stack, &other, "").await;
    assert!(!theirs.is_empty());
    assert!(theirs
        .iter()
        .all(|e| patient_of(e).as_deref() == Some(BBUSER00001_PATIENT)));
    let (status, _) = get(
        &stack,
        &other,
        &format!("/bluebutton/audit?patient={BBUSER29999_PATIENT}"),
    )
    .await;
    assert_eq!(status, 403);

    // The operator reads anyone's, and `_since` narrows it.
    let by_admin = accounting(
        &stack,
        ADMIN_KEY,
        &format!("?patient={BBUSER29999_PATIENT}"),
    )
    .await;
    let ids = |events: &[Value]| -> HashSet<String> {
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(ids(&events).is_subset(&ids(&by_admin)));
    let future = accounting(&stack, ADMIN_KEY, "?_since=2999-01-01").await;
    assert!(future.is_empty());

    // Sealed at rest.
    let stored = stack.store_dump();
    for plain in ["AuditEvent", BBUSER29999_PATIENT, "outcomeDesc"] {
        assert!(!stored.contains(plain), "{plain} readable in the store");
    }
    let health: Value = reqwest::get(format!("{}/bluebutton/healthz", stack.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["audit_write_failures"], 0, "{health}");
}

#[tokio::test]
async fn with_audit_to_connect_the_audit_trail_reaches_connect_through_the_outbox() {
    let stack = Stack::start(
        |o| o.eob_count = Some(30),
        &["audit_to_connect=true".into()],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    // The callback could not call connect: its AuditEvent waits in the outbox.
    let outbox = stack.admin_get("/bluebutton/connect/outbox").await;
    assert_eq!(outbox["count"], 1, "{outbox}");
    let resp = fetch(&stack, &session, "ExplanationOfBenefit?return_cms=false").await;
    assert_eq!(resp.status(), 200);
    let events: Vec<Value> = e2e::resources_in(&stack.connect)
        .into_iter()
        .filter(|r| r["resourceType"] == "AuditEvent")
        .collect();
    let kinds: Vec<(String, String)> = events.iter().map(kind).collect();
    for (code, outcome) in [
        ("authorization-granted", "0"),
        ("cms-read", "0"),
        ("delivered", "0"),
    ] {
        assert!(has(&events, code, outcome), "{code} in {kinds:?}");
    }
    assert!(stack.connect.errors().is_empty(), "connect refused none");
    assert_eq!(
        stack.admin_get("/bluebutton/connect/outbox").await["count"],
        0
    );
}
