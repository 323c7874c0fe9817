//! Fetching claims data end to end: the real `fhir-fetch` component on `spin-host` against `cms-sandbox`.

use std::collections::HashSet;

use cms_sandbox::{BBUSER00001_PATIENT, BBUSER29999_PATIENT};
use e2e::beneficiary;
use e2e::Stack;
use serde_json::{json, Value};

async fn fetch(stack: &Stack, session: &str, path_and_query: &str) -> reqwest::Response {
    beneficiary::client()
        .get(format!(
            "{}/bluebutton/fhir/{path_and_query}",
            stack.base_url()
        ))
        .bearer_auth(session)
        .send()
        .await
        .unwrap()
}

/// The Bundle and its distinct resource ids (asserting there are no duplicates).
async fn bundle(resp: reqwest::Response) -> (Value, Vec<String>) {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/fhir+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "Bundle");
    assert_eq!(body["type"], "searchset");
    let ids: Vec<String> = body["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an entry appears twice");
    assert_eq!(body["total"], ids.len());
    (body, ids)
}

/// What CMS holds for a patient, read directly with a fresh token and the emulator's own paging.
async fn cms_ids(
    stack: &Stack,
    user: &str,
    resource: &str,
    param: &str,
    patient: &str,
) -> Vec<String> {
    let token = stack.cms.issue_tokens(user, None).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let first = format!(
        "{}/v2/fhir/{resource}?{param}={patient}&_count=50",
        stack.cms.base_url()
    );
    e2e::next_link_ids(&first, &token).await.unwrap()
}

#[tokio::test]
async fn each_resource_type_is_fetched_whole_with_its_own_search_parameter() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let session = stack.session("BBUser29999").await;
    for (resource, param) in [
        ("Patient", "_id"),
        ("Coverage", "beneficiary"),
        ("ExplanationOfBenefit", "patient"),
    ] {
        let resp = fetch(&stack, &session, resource).await;
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let (body, ids) = bundle(resp).await;
        let truth = cms_ids(&stack, "BBUser29999", resource, param, BBUSER29999_PATIENT).await;
        assert_eq!(ids, truth, "{resource}: every entry, in CMS order");
        assert!(!ids.is_empty());
        assert!(body["link"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/bluebutton/fhir/{resource}", stack.base_url())));
    }
}

#[tokio::test]
async fn a_thousand_claims_arrive_exactly_once() {
    let stack = Stack::start(|o| o.eob_count = Some(1000), &[])
        .await
        .unwrap();
    let session = stack.session("BBUser29999").await;
    let resp = fetch(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(resp.headers()["x-pages-fetched"], "20");
    let (_, ids) = bundle(resp).await;
    assert_eq!(ids.len(), 1000);
    let truth = cms_ids(
        &stack,
        "BBUser29999",
        "ExplanationOfBenefit",
        "patient",
        BBUSER29999_PATIENT,
    )
    .await;
    assert_eq!(ids, truth);
}

#[tokio::test]
async fn without_total_the_next_links_are_followed() {
    let stack = Stack::start(|_| {}, &["page_size=10".into()])
        .await
        .unwrap();
    stack.cms_control("omit-total", json!({"omit": true})).await;
    let session = stack.session("BBUser00001").await;
    let resp = fetch(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(resp.headers()["x-pages-fetched"], "6");
    let (_, ids) = bundle(resp).await;
    assert_eq!(ids.len(), 52);
}

#[tokio::test]
async fn filters_pass_through_and_unknown_parameters_are_refused() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let session = stack.session("BBUser00001").await;
    let (_, all) = bundle(fetch(&stack, &session, "ExplanationOfBenefit").await).await;
    let (_, carrier) =
        bundle(fetch(&stack, &session, "ExplanationOfBenefit?type=carrier").await).await;
    assert!(!carrier.is_empty() && carrier.len() < all.len());
    assert!(carrier.iter().all(|id| id.starts_with("carrier-")));
    let (_, none) = bundle(
        fetch(
            &stack,
            &session,
            "ExplanationOfBenefit?_lastUpdated=gt2100-01-01",
        )
        .await,
    )
    .await;
    assert!(none.is_empty());
    let resp = fetch(&stack, &session, "Patient?type=carrier").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn a_session_cannot_reach_another_patient() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let session = stack.session("BBUser29999").await;
    let resp = fetch(
        &stack,
        &session,
        &format!("ExplanationOfBenefit?patient={BBUSER00001_PATIENT}"),
    )
    .await;
    assert_eq!(resp.status(), 403);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 403);
    let resp = fetch(
        &stack,
        &session,
        &format!("ExplanationOfBenefit?patient={BBUSER29999_PATIENT}"),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn faults_are_retried_into_the_exact_complete_result() {
    let stack = Stack::start(
        |o| {
            o.eob_count = Some(1000);
            o.fault_rate = 0.1;
            o.seed = 7;
        },
        // Held whole, so the answer's headers can count the retries.
        &["response_buffer_bytes=67108864".into()],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let resp = fetch(&stack, &session, "ExplanationOfBenefit").await;
    let retries: u32 = resp.headers()["x-upstream-retries"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, ids) = bundle(resp).await;
    assert_eq!(ids.len(), 1000);
    assert!(retries > 0, "the seeded faults never hit");
    let counters = stack.cms_counters().await;
    let failed: u64 = ["429", "500", "502", "503"]
        .iter()
        .filter_map(|s| counters["by_status"][s].as_u64())
        .sum();
    assert_eq!(
        failed,
        u64::from(retries),
        "every failed call was retried once more"
    );
}

#[tokio::test]
async fn a_page_that_keeps_failing_is_a_502_naming_it() {
    let stack = Stack::start(|_| {}, &["page_size=10".into()])
        .await
        .unwrap();
    let session = stack.session("BBUser00001").await;
    stack.cms_control("faults/start-index",
        json!({"start_index": 30, "status": 500, "count": 100, "resource": "ExplanationOfBenefit"}),
    )
    .await;
    let resp = fetch(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(resp.status(), 502);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("page 4"),
        "{problem}"
    );
}

#[tokio::test]
async fn large_results_stream_and_a_late_failure_breaks_the_body() {
    let stack = Stack::start(
        |o| o.eob_count = Some(300),
        &["response_buffer_bytes=1000".into()],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let resp = fetch(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(resp.headers()["x-streamed"], "true");
    let (_, ids) = bundle(resp).await;
    assert_eq!(ids.len(), 300);

    stack
        .cms_control(
            "faults/start-index",
            json!({"start_index": 200, "status": 503, "count": 100}),
        )
        .await;
    let resp = fetch(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(resp.status(), 200, "streaming had started");
    let body = resp.bytes().await;
    let whole = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    assert!(
        whole.is_none(),
        "a broken stream must not parse as a whole Bundle"
    );
}

#[tokio::test]
async fn since_last_returns_only_what_changed() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let session = stack.session("BBUser29999").await;
    let (_, first) = bundle(fetch(&stack, &session, "ExplanationOfBenefit?since=last").await).await;
    assert!(!first.is_empty(), "no watermark yet: everything");
    let (_, nothing) =
        bundle(fetch(&stack, &session, "ExplanationOfBenefit?since=last").await).await;
    assert!(nothing.is_empty());
    let added: Value = stack
        .cms_control(
            &format!("patients/{BBUSER29999_PATIENT}/eobs"),
            json!({"count": 3}),
        )
        .await;
    let (_, new) = bundle(fetch(&stack, &session, "ExplanationOfBenefit?since=last").await).await;
    let expected: Vec<String> = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(new, expected);
    let (_, again) = bundle(fetch(&stack, &session, "ExplanationOfBenefit?since=last").await).await;
    assert!(again.is_empty());
}

#[tokio::test]
async fn unknown_resource_types_are_404_listing_the_three() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let resp = fetch(&stack, "whatever", "Encounter").await;
    assert_eq!(resp.status(), 404);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    for t in ["Patient", "Coverage", "ExplanationOfBenefit"] {
        assert!(detail.contains(t));
    }
}
