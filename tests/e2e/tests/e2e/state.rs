//! The app's memory stays small, sealed and single-flight: abandoned authorizations and idle sessions are
//! swept, a token refresh happens once however many requests need it, a huge body is refused before it
//! is read, and nothing readable — nor anything over the store's limits — is at rest.

use std::time::{Duration, Instant};

use cms_sandbox::BBUSER29999_PATIENT;
use e2e::beneficiary;
use e2e::{Stack, ADMIN_KEY};
use futures::StreamExt;
use serde_json::Value;

/// The keys of the app's store.
fn keys(stack: &Stack) -> Vec<String> {
    // Not `store_dump`: a sealed value may hold a newline.
    stack
        .store_dump_sizes()
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

async fn sync(stack: &Stack) -> Value {
    let resp = beneficiary::client()
        .post(format!("{}/bluebutton/sync", stack.base_url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn authorize(base: &str) -> u16 {
    beneficiary::client()
        .get(format!("{base}/bluebutton/authorize"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_authorizations_leave_nothing_once_their_ttl_passed() {
    let stack = Stack::start(|_| {}, &["state_ttl_secs=2".into()])
        .await
        .unwrap();
    let base = stack.base_url();
    // One authorization and a sweep first: the store's bookkeeping exists, this is "before".
    assert_eq!(authorize(&base).await, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sync(&stack).await;
    let before = keys(&stack);

    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..10_000)
        .map(|_| authorize(&base))
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    let flooded = keys(&stack).len();
    eprintln!(
        "10,000 authorizations in {:?}; {flooded} keys right after",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = sync(&stack).await;
    assert!(report["swept_states"].as_u64().unwrap() > 0);
    assert_eq!(
        keys(&stack),
        before,
        "the store is back to its size before the flood"
    );
}

#[tokio::test]
async fn a_session_unused_past_its_idle_limit_is_refused_and_leaves_nothing() {
    let stack = Stack::start(|_| {}, &["session_idle_secs=2".into()])
        .await
        .unwrap();
    let session = stack.session("BBUser29999").await;
    let fetch = || async {
        beneficiary::client()
            .get(format!(
                "{}/bluebutton/fhir/Patient?push=false",
                stack.base_url()
            ))
            .bearer_auth(&session)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(fetch().await.status(), 200);
    let session_keys = || {
        keys(&stack)
            .into_iter()
            .filter(|k| {
                k.starts_with("session")
                    && !k.starts_with("sessions:n")
                    && !k.starts_with("sessions:head")
            })
            .collect::<Vec<_>>()
    };
    assert!(!session_keys().is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resp = fetch().await;
    assert_eq!(resp.status(), 401);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("unused"),
        "{problem}"
    );
    assert_eq!(session_keys(), Vec::<String>::new(), "its records are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_calls_after_expiry_make_one_token_request() {
    // Tokens live 62 s: one minute before they expire the app refreshes, so that is at once.
    let stack = Stack::start(|o| o.token_ttl_secs = 62, &[]).await.unwrap();
    let session = stack.session("BBUser29999").await;
    let token_requests = || async { e2e::token_requests(&stack.cms_counters().await) };
    let before = token_requests().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = (0..8).map(|_| {
        let (base, session) = (stack.base_url(), session.clone());
        async move {
            beneficiary::client()
                .get(format!("{base}/bluebutton/fhir/Patient?push=false"))
                .bearer_auth(session)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(statuses, [200; 8]);
    assert_eq!(token_requests().await - before, 1, "exactly one refresh");
    let counters = stack.cms_counters().await;
    assert!(
        counters["by_status"].get("400").is_none(),
        "no spent refresh token was tried: {counters}"
    );
}

/// A body of `mb` megabytes, sent as it is made (never held whole by the client either).
fn huge_body(mb: usize) -> reqwest::Body {
    let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    reqwest::Body::wrap_stream(futures::stream::iter(
        (0..mb).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ))
}

#[tokio::test]
async fn a_huge_body_is_refused_before_it_is_read() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let url = format!("{}/bluebutton/sync", stack.base_url());
    let rss_before = stack.app.peak_rss_mb().ok();
    for (key, expected) in [(None, 401), (Some(ADMIN_KEY), 413)] {
        let started = Instant::now();
        let mut req = beneficiary::client()
            .post(&url)
            .header("content-type", "application/json")
            .body(huge_body(100));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        // The app answers at once; the client may still be sending when the connection closes.
        match req.send().await {
            Ok(resp) => assert_eq!(resp.status().as_u16(), expected),
            Err(err) => assert!(
                err.is_request() || err.is_body(),
                "the app closed early, as it may: {err}"
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "answered at once"
        );
    }
    if let (Some(before), Ok(after)) = (rss_before, stack.app.peak_rss_mb()) {
        assert!(
            after - before < 50.0,
            "the app's memory stayed flat: {before} -> {after} MB"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_nothing_at_rest_is_readable_or_over_the_limits() {
    let stack = Stack::start_with(
        |o| o.eob_count = Some(1000),
        |c| {
            c.rate_limit_per_sec = 0;
            c.fail_first = 100_000;
        },
        &[],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let resp = beneficiary::client()
        .get(format!(
            "{}/bluebutton/fhir/ExplanationOfBenefit?return_cms=false",
            stack.base_url()
        ))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "all queued");
    let outbox = stack.admin_get("/bluebutton/connect/outbox").await;
    let queued = e2e::queued_resources(&outbox);
    assert_eq!(queued, 1000);
    let file = std::fs::read(stack.app.store_file()).unwrap();
    let text = String::from_utf8_lossy(&file);
    for readable in [
        BBUSER29999_PATIENT,
        // Resource text (a key may name a resource type, as the cursors' do; never a resource).
        "\"resourceType\"",
        "\"billablePeriod\"",
        "pde--",
        "Bearer",
        &session,
    ] {
        assert!(
            !text.contains(readable),
            "{readable} readable in the store's file; keys: {:?}",
            keys(&stack)
                .iter()
                .filter(|k| k.contains(readable))
                .collect::<Vec<_>>()
        );
    }
    for secret in stack.cms.secrets_seen() {
        assert!(
            !text.contains(&secret),
            "a CMS token readable in the store's file"
        );
    }
    let largest = stack
        .store_dump_sizes()
        .into_iter()
        .map(|(_, len)| len)
        .max()
        .unwrap();
    assert!(largest <= 1_000_000, "a value of {largest} bytes");
}

#[tokio::test]
async fn a_weak_or_placeholder_admin_key_keeps_the_admin_routes_off() {
    for weak in [
        "short-key",
        "REPLACE_WITH_A_LONG_RANDOM_ADMIN_KEY_FROM_OPENSSL",
    ] {
        let stack = Stack::start(|_| {}, &[format!("admin_api_key={weak}")])
            .await
            .unwrap();
        let resp = beneficiary::client()
            .get(format!("{}/bluebutton/connect/outbox", stack.base_url()))
            .bearer_auth(weak)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{weak}");
        let health: Value = beneficiary::client()
            .get(format!("{}/bluebutton/healthz", stack.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            health["checks"]["admin_api_key"]
                .as_str()
                .unwrap()
                .starts_with("warning"),
            "{health}"
        );
    }
}

#[tokio::test]
async fn edges_return_to_and_store_failures_tell_strangers_nothing_inside() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let http = beneficiary::client();
    for target in [
        "/%09/evil.example",
        "//evil.example",
        "/a%5Cb",
        "https://evil.example",
    ] {
        let resp = http
            .get(format!(
                "{}/bluebutton/authorize?return_to={target}",
                stack.base_url()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{target}");
    }
    stack.fail_store_writes(true);
    let resp = http
        .get(format!("{}/bluebutton/authorize", stack.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        !detail.contains("injected") && !detail.contains("SQL"),
        "{detail}"
    );
    stack.fail_store_writes(false);
}
