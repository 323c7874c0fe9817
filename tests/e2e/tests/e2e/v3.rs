//! Blue Button v3 end to end (`cms_api_version=v3`): the real components against `cms-sandbox`'s v3,
//! whose EOB pages lie about `total`, whose errors are OperationOutcomes, and whose beneficiaries have
//! other ids than on v2.

use cms_sandbox::{ApiVersion, BBUSER09001_PATIENT, BBUSER09001_PATIENT_V3};
use e2e::beneficiary;
use e2e::Stack;
use serde_json::{json, Value};

const PILOT: &str = "BBUser09001";

fn v3(extra: &[&str]) -> Vec<String> {
    let mut variables = vec!["cms_api_version=v3".to_string()];
    variables.extend(extra.iter().map(|v| v.to_string()));
    variables
}

async fn get(stack: &Stack, session: &str, path_and_query: &str) -> reqwest::Response {
    beneficiary::client()
        .get(format!("{}/bluebutton/{path_and_query}", stack.base_url()))
        .bearer_auth(session)
        .send()
        .await
        .unwrap()
}

/// The ids of a 200 Bundle's entries, in order.
async fn entry_ids(resp: reqwest::Response) -> Vec<String> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// What a bare reader following `next` gets from CMS's v3 for the pilot's claims: the reference.
async fn next_reader_ids(stack: &Stack, query: &str) -> Vec<String> {
    let token = stack
        .cms
        .issue_tokens_for(ApiVersion::V3, PILOT, None)
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let first = format!(
        "{}/v3/fhir/ExplanationOfBenefit?patient={BBUSER09001_PATIENT_V3}&_count=50{query}",
        stack.cms.base_url()
    );
    e2e::next_link_ids(&first, &token).await.unwrap()
}

#[tokio::test]
async fn a_pilot_beneficiary_signs_in_on_v3_and_everything_arrives_and_is_delivered() {
    let stack = Stack::start(|_| {}, &v3(&[])).await.unwrap();
    let granted = beneficiary::sign_in(&stack.base_url(), PILOT)
        .await
        .unwrap();
    assert_eq!(granted["patient"], BBUSER09001_PATIENT_V3);
    let session = granted["session"].as_str().unwrap();

    assert_eq!(
        entry_ids(get(&stack, session, "fhir/Patient").await).await,
        [BBUSER09001_PATIENT_V3]
    );
    // Coverage is not paged on v3: one answer, every part.
    let coverage = entry_ids(get(&stack, session, "fhir/Coverage").await).await;
    assert_eq!(coverage.len(), 3, "{coverage:?}");
    let claims = entry_ids(get(&stack, session, "fhir/ExplanationOfBenefit").await).await;
    assert_eq!(claims, next_reader_ids(&stack, "&_source=NCH,DDPS").await);
    assert_eq!(claims.len(), 30, "the final action claims, CMS's default");

    // Each resource went on to connect, and only v3's paths were asked at CMS.
    let delivered = e2e::resources_in(&stack.connect);
    assert_eq!(delivered.len(), 1 + 3 + 30);
    let counters = stack.cms_counters().await;
    let paths: Vec<&String> = counters["by_path"].as_object().unwrap().keys().collect();
    assert!(
        paths.iter().any(|p| p.starts_with("/v3/o/token")),
        "{paths:?}"
    );
    assert!(
        paths.iter().all(|p| !p.starts_with("/v2/")),
        "a v2 path was used: {paths:?}"
    );

    // A new sign-in replaces the earlier tokens at CMS; the earlier session is told to authorize again.
    let again = stack.session(PILOT).await;
    let resp = get(&stack, session, "fhir/Patient?push=false").await;
    assert_eq!(resp.status(), 401, "{}", resp.text().await.unwrap());
    assert_eq!(
        get(&stack, &again, "fhir/Patient?push=false")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_thousand_v3_claims_arrive_complete_and_in_order_despite_misleading_totals() {
    let stack = Stack::start(|_| {}, &v3(&[])).await.unwrap();
    let session = stack.session(PILOT).await;
    stack
        .cms_control(
            &format!("patients/{BBUSER09001_PATIENT_V3}/eob-count"),
            json!({"count": 1000}),
        )
        .await;
    let expected = next_reader_ids(&stack, "&_source=NCH,DDPS").await;
    assert_eq!(expected.len(), 1000);
    let resp = get(&stack, &session, "fhir/ExplanationOfBenefit?push=false").await;
    assert_eq!(entry_ids(resp).await, expected);
}

#[tokio::test]
async fn partially_adjudicated_claims_give_way_to_their_final_versions() {
    let sources = "cms_eob_sources=NCH,DDPS,FISS,MCS,VMS";
    let stack = Stack::start(|_| {}, &v3(&[sources])).await.unwrap();
    let session = stack.session(PILOT).await;
    let every = next_reader_ids(&stack, "&_source=NCH,DDPS,FISS,MCS,VMS").await;
    let finals = next_reader_ids(&stack, "&_source=NCH,DDPS").await;
    let partials = next_reader_ids(&stack, "&_source=FISS,MCS,VMS").await;
    assert_eq!(every.len(), finals.len() + partials.len());

    let claims =
        entry_ids(get(&stack, &session, "fhir/ExplanationOfBenefit?push=false").await).await;
    // Every final claim, in CMS's order, then the partial claims that have no final version yet.
    assert_eq!(claims[..finals.len()], finals[..]);
    let kept = &claims[finals.len()..];
    assert_eq!(kept.len(), 2, "{kept:?} of {partials:?}");
    assert!(kept.iter().all(|id| partials.contains(id)));

    // Asked for partial claims alone, the caller gets them all: no final version is in that answer.
    let resp = get(
        &stack,
        &session,
        "fhir/ExplanationOfBenefit?push=false&_source=FISS,MCS",
    )
    .await;
    assert_eq!(entry_ids(resp).await, partials);
    // A claim labelled 42 CFR Part 2 is left out on request.
    let resp = get(
        &stack,
        &session,
        "fhir/ExplanationOfBenefit?push=false&_security:not=42CFRPart2&_source=NCH,DDPS",
    )
    .await;
    assert_eq!(entry_ids(resp).await.len(), finals.len() - 1);
    // A source CMS does not know is the caller's 400, before CMS is asked.
    let resp = get(&stack, &session, "fhir/ExplanationOfBenefit?_source=RIF").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn v3_operation_outcomes_reach_the_caller_with_their_status_and_diagnostics() {
    let stack = Stack::start(|_| {}, &v3(&[])).await.unwrap();
    let session = stack.session(PILOT).await;
    for status in [404, 422] {
        stack
            .cms_control("faults/next", json!({"count": 1, "status": status}))
            .await;
        let resp = get(&stack, &session, "fhir/ExplanationOfBenefit?push=false").await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["status"], status);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("error: "), "the diagnostics: {detail}");
        assert!(!detail.contains("bfd.internal"), "{detail}");
    }
}

#[tokio::test]
async fn the_insurance_card_is_answered_and_delivered_to_connect() {
    let stack = Stack::start(|_| {}, &v3(&[])).await.unwrap();
    let session = stack.session(PILOT).await;
    let resp = get(&stack, &session, "fhir/insurance-card").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    let card: Value = resp.json().await.unwrap();
    assert_eq!(card["type"], "collection");
    let types: Vec<&str> = card["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    for expected in ["Patient", "Coverage", "Organization"] {
        assert!(types.contains(&expected), "{types:?}");
    }
    let delivered = e2e::resources_in(&stack.connect);
    assert_eq!(delivered.len(), types.len(), "each of the card's resources");
    assert!(delivered
        .iter()
        .any(|r| r["resourceType"] == "Organization"));
}

#[tokio::test]
async fn sessions_and_beneficiaries_of_the_other_version_are_refused_clearly() {
    // A v2 session, then the operator moves the app to v3 on the same store.
    let mut stack = Stack::start(|_| {}, &[]).await.unwrap();
    let granted = beneficiary::sign_in(&stack.base_url(), PILOT)
        .await
        .unwrap();
    assert_eq!(granted["patient"], BBUSER09001_PATIENT);
    let v2_session = granted["session"].as_str().unwrap().to_string();
    stack.app.restart(false, &v3(&[])).await.unwrap();
    let resp = get(&stack, &v2_session, "fhir/Patient").await;
    assert_eq!(resp.status(), 401);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("issued on Blue Button v2, and this app now uses v3"),
        "{detail}"
    );
    // The v2 documentation is gone with it: this deployment documents v3's routes.
    let doc: Value = reqwest::get(format!("{}/openapi.json", stack.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/bluebutton/fhir/insurance-card"].is_object());

    // A beneficiary CMS has no v3 record for cannot sign in on v3, and is told why.
    let callback =
        beneficiary::authorize_at_cms(&stack.base_url(), "BBUser29999", beneficiary::Consent::All)
            .await
            .unwrap();
    let resp = beneficiary::client().get(callback).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no Blue Button v3 record"),
        "{problem}"
    );
}

#[tokio::test]
async fn the_admin_sync_runs_on_v3_and_moves_its_own_cursors() {
    let stack = Stack::start(|_| {}, &v3(&[])).await.unwrap();
    let _ = stack.session(PILOT).await;
    let sync = || async {
        let resp = beneficiary::client()
            .post(format!("{}/bluebutton/sync", stack.base_url()))
            .bearer_auth(e2e::ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    let first = sync().await;
    let patient = &first["patients"][0];
    assert_eq!(patient["patient"], BBUSER09001_PATIENT_V3);
    let delivered = |report: &Value, resource: &str| {
        report["patients"][0]["types"][resource]["delivery"]["delivered"].clone()
    };
    assert_eq!(delivered(&first, "Patient"), 1);
    assert_eq!(delivered(&first, "Coverage"), 3);
    assert_eq!(delivered(&first, "ExplanationOfBenefit"), 30);
    // The cursor moved past everything delivered: nothing again.
    let second = sync().await;
    assert_eq!(delivered(&second, "ExplanationOfBenefit"), 0);
    assert_eq!(e2e::resources_in(&stack.connect).len(), 34);
}

#[tokio::test]
async fn a_v3_fetch_survives_busy_pages_and_a_token_expiring_midway() {
    // Answered whole (not streamed), so that the answer carries its retry count.
    let whole = "response_buffer_bytes=67108864";
    let stack = Stack::start(|o| o.latency_ms = 100, &v3(&[whole]))
        .await
        .unwrap();
    let session = stack.session(PILOT).await;
    stack
        .cms_control(
            &format!("patients/{BBUSER09001_PATIENT_V3}/eob-count"),
            json!({"count": 500}),
        )
        .await;
    let expected = next_reader_ids(&stack, "&_source=NCH,DDPS").await;
    // The page at offset 100 answers 503 twice (an OperationOutcome), then serves.
    stack
        .cms_control(
            "faults/start-index",
            json!({"start_index": 100, "count": 2, "status": 503,
                   "resource": "ExplanationOfBenefit"}),
        )
        .await;
    stack.cms_control("counters/reset", json!({})).await;
    let base = stack.cms.base_url();
    let expire = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(350)).await;
        reqwest::Client::new()
            .post(format!("{base}/_emulator/tokens/expire"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
    });
    let resp = get(&stack, &session, "fhir/ExplanationOfBenefit?push=false").await;
    expire.await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let retries: u32 = resp.headers()["x-upstream-retries"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // (A retry made before the token's renewal is counted at CMS, not in this header.)
    assert!(retries >= 1, "the busy page was retried: {retries}");
    assert_eq!(entry_ids(resp).await, expected);
    let counters = stack.cms_counters().await;
    assert_eq!(counters["by_status"]["503"], 2, "{counters}");
    assert!(
        counters["by_status"]["401"].as_u64().unwrap_or(0) > 0,
        "the expiry did not hit the fetch: {counters}"
    );
    let renewals = &counters["by_path"]["/v3/o/token/"];
    assert!(renewals["200"].as_u64().unwrap_or(0) >= 1, "{counters}");
}
