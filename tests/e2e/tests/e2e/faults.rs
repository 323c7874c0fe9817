//! Faults: a flaky CMS, an unavailable connect, tokens expiring mid-fetch, broken and oversized pages, a
//! failing key-value store. Each ends in the exact complete result or a clear error, with nothing lost.

use std::collections::HashSet;
use std::time::Duration;

use e2e::beneficiary;
use e2e::Stack;
use serde_json::{json, Value};

async fn fetch(stack: &Stack, session: &str, query: &str) -> reqwest::Response {
    beneficiary::client()
        .get(format!(
            "{}/bluebutton/fhir/ExplanationOfBenefit{query}",
            stack.base_url()
        ))
        .bearer_auth(session)
        .send()
        .await
        .unwrap()
}

async fn ids(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let ids: Vec<String> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    ids
}

#[tokio::test]
async fn a_flaky_cms_and_a_failing_connect_still_give_the_exact_result_everywhere() {
    let stack = Stack::start_with(
        |o| {
            o.eob_count = Some(1000);
            o.fault_rate = 0.2;
            o.latency_ms = 20;
            o.seed = 11;
        },
        |c| {
            c.rate_limit_per_sec = 0;
            c.fail_first = 3;
        },
        &["response_buffer_bytes=67108864".into()],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let resp = fetch(&stack, &session, "").await;
    assert_eq!(resp.headers()["x-connect-queued"], "0");
    assert_eq!(resp.headers()["x-connect-delivered"], "1000");
    let got = ids(resp).await;
    assert_eq!(got.len(), 1000);
    let in_connect: Vec<String> = stack
        .connect
        .records()
        .iter()
        .flat_map(|r| r.resource["entry"].as_array().cloned().unwrap_or_default())
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        in_connect, got,
        "connect holds exactly what CMS had, in order"
    );
}

#[tokio::test]
async fn a_connect_outage_leaves_the_outbox_holding_exactly_the_failed_batches() {
    let stack = Stack::start_with(
        |o| o.eob_count = Some(300),
        |c| {
            c.rate_limit_per_sec = 0;
            c.fail_first = u32::MAX;
        },
        &["connect_batch_bytes=300000".into()],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let resp = fetch(&stack, &session, "?return_cms=false").await;
    assert_eq!(resp.status(), 202);
    let result: Value = resp.json().await.unwrap();
    let outbox: Value = stack.admin_get("/bluebutton/connect/outbox").await;
    assert_eq!(outbox["count"], result["queued"].as_array().unwrap().len());
    let queued = e2e::queued_resources(&outbox);
    assert_eq!(queued + result["delivered"].as_u64().unwrap(), 300);
}

#[tokio::test]
async fn tokens_expiring_mid_fetch_are_renewed_and_the_fetch_completes() {
    let stack = Stack::start(
        |o| {
            o.eob_count = Some(1000);
            o.latency_ms = 150;
        },
        &[],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let base = stack.cms.base_url();
    let expire = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        reqwest::Client::new()
            .post(format!("{base}/_emulator/tokens/expire"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
    });
    let resp = fetch(&stack, &session, "?push=false").await;
    expire.await.unwrap();
    assert_eq!(ids(resp).await.len(), 1000);
    let counters = stack.cms_counters().await;
    let unauthorized = counters["by_status"]["401"].as_u64().unwrap_or(0);
    assert!(
        unauthorized > 0,
        "the expiry did not hit the fetch: {counters}"
    );
    let token_calls = e2e::token_requests(&counters);
    assert!(token_calls >= 2, "no refresh after the expiry");
}

#[tokio::test]
async fn a_truncated_or_malformed_page_is_fetched_again_or_refused_clearly() {
    let stack = Stack::start(|o| o.eob_count = Some(200), &[])
        .await
        .unwrap();
    let session = stack.session("BBUser29999").await;
    stack
        .cms_control(
            "faults/start-index",
            json!({"start_index": 50, "count": 1, "body": "truncated"}),
        )
        .await;
    stack
        .cms_control(
            "faults/start-index",
            json!({"start_index": 100, "count": 1, "body": "malformed"}),
        )
        .await;
    let resp = fetch(&stack, &session, "?push=false").await;
    assert_eq!(resp.headers()["x-upstream-retries"], "2");
    assert_eq!(ids(resp).await.len(), 200);

    stack
        .cms_control(
            "faults/start-index",
            json!({"start_index": 150, "count": 10, "body": "truncated"}),
        )
        .await;
    let resp = fetch(&stack, &session, "?push=false").await;
    assert_eq!(resp.status(), 502);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("page 4") && detail.contains("unusable"),
        "{detail}"
    );
}

#[tokio::test]
async fn an_absurdly_large_page_is_refused_not_swallowed() {
    let stack = Stack::start(|o| o.eob_count = Some(100), &[])
        .await
        .unwrap();
    let session = stack.session("BBUser29999").await;
    stack
        .cms_control(
            "faults/start-index",
            json!({"start_index": 50, "count": 5, "body": "huge", "bytes": 200_000_000u64}),
        )
        .await;
    let resp = fetch(&stack, &session, "?push=false").await;
    assert_eq!(resp.status(), 502);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("larger than"),
        "{problem}"
    );
    // The app is still there.
    let resp = fetch(&stack, &session, "?push=false&_lastUpdated=gt2100-01-01").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_failing_key_value_store_is_a_clear_error_and_nothing_is_claimed() {
    let stack = Stack::start_with(
        |_| {},
        |c| {
            c.rate_limit_per_sec = 0;
            c.fail_first = u32::MAX;
        },
        &[],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    stack.fail_store_writes(true);
    // Connect is down and the outbox cannot be written: the answer must not claim the batch is safe.
    let resp = fetch(&stack, &session, "?return_cms=false").await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("key-value store"));
    // A sign-in cannot start without storing its state: a clear 500, no redirect to CMS.
    let resp = beneficiary::client()
        .get(format!("{}/bluebutton/authorize", stack.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().get("location").is_none());
    let problem: Value = resp.json().await.unwrap();
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("key-value store"));
    stack.fail_store_writes(false);
    assert_eq!(
        fetch(&stack, &session, "?push=false").await.status(),
        200,
        "recovers once the store does"
    );
}
