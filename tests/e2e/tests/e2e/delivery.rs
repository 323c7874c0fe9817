//! Delivery that loses nothing, against the emulators with their defaults (connect rate-limits every
//! client to 10 requests a second): honest cursors, withheld types, a misconfigured connect, and the
//! app killed again and again in the middle of a sync.

use std::collections::HashSet;
use std::time::Duration;

use e2e::beneficiary::{self, authorize_at_cms, Consent};
use e2e::{Stack, ADMIN_KEY};
use serde_json::Value;

/// `POST /bluebutton/sync` with the admin key: its status and report.
async fn sync(stack: &Stack) -> (u16, Value) {
    let resp = beneficiary::client()
        .post(format!("{}/bluebutton/sync", stack.base_url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Every resource connect stored, `Type/id` in arrival order (a repeated one appears twice).
fn in_connect(stack: &Stack) -> Vec<String> {
    e2e::resources_in(&stack.connect)
        .into_iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn eobs_in(keys: &[String]) -> Vec<&String> {
    keys.iter()
        .filter(|k| k.starts_with("ExplanationOfBenefit/"))
        .collect()
}

/// The delivery report of one type in a sync report.
fn delivered(report: &Value, resource_type: &str) -> u64 {
    report["patients"][0]["types"][resource_type]["delivery"]["delivered"]
        .as_u64()
        .unwrap_or_else(|| panic!("no delivery of {resource_type} in the report"))
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
async fn a_thousand_claims_reach_a_rate_limited_connect_with_nothing_queued() {
    // connect's own defaults, its 10/s rate limit included.
    let stack = Stack::start_with(|o| o.eob_count = Some(1000), |_| {}, &[])
        .await
        .unwrap();
    let _ = stack.session("BBUser29999").await;
    let (status, report) = sync(&stack).await;
    assert_eq!(status, 200, "nothing queued");
    assert_eq!(delivered(&report, "ExplanationOfBenefit"), 1000);
    let stored = in_connect(&stack);
    let eobs = eobs_in(&stored);
    assert_eq!(eobs.len(), 1000);
    assert_eq!(eobs.iter().collect::<HashSet<_>>().len(), 1000, "each once");
    let empty = stack.admin_get("/bluebutton/connect/outbox").await;
    assert_eq!(empty["count"], 0);
}

#[tokio::test]
async fn a_fetch_without_push_and_a_filtered_fetch_leave_the_sync_everything_to_deliver() {
    // 10 claims from CMS's sample data and 20 older ones.
    let stack = Stack::start(|o| o.eob_count = Some(30), &[]).await.unwrap();
    let session = stack.session("BBUser29999").await;
    // What the docs page does: look, deliver nothing.
    let resp = fetch(&stack, &session, "ExplanationOfBenefit?push=false").await;
    assert_eq!(resp.status(), 200);
    let bundle: Value = resp.json().await.unwrap();
    let all = bundle["total"].as_u64().unwrap();
    assert!(all > 1);
    assert!(in_connect(&stack).is_empty());
    // Only the newest claims, delivered: the cursor of every claim must not move past the older ones.
    let resp = fetch(
        &stack,
        &session,
        "ExplanationOfBenefit?since=last&_lastUpdated=ge2021-06-08T01:00:00Z",
    )
    .await;
    assert_eq!(resp.status(), 200);
    let newer: Value = resp.json().await.unwrap();
    assert_eq!(
        (newer["total"].as_u64(), all),
        (Some(10), 30),
        "a narrower fetch"
    );
    let (status, report) = sync(&stack).await;
    assert_eq!(status, 200);
    assert_eq!(
        delivered(&report, "ExplanationOfBenefit"),
        all,
        "every claim, once the sync runs"
    );
    let (_, again) = sync(&stack).await;
    assert_eq!(
        delivered(&again, "ExplanationOfBenefit"),
        0,
        "and then the cursor has moved"
    );
}

#[tokio::test]
async fn a_patient_who_withheld_demographics_still_gets_coverage_and_claims_delivered() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let callback = authorize_at_cms(&stack.base_url(), "BBUser29999", Consent::NoDemographics)
        .await
        .unwrap();
    let resp = beneficiary::client().get(callback).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let granted: Value = resp.json().await.unwrap();
    assert!(!granted["scope"]
        .as_str()
        .unwrap()
        .contains("patient/Patient"));
    let session = granted["session"].as_str().unwrap();
    // The session cannot fetch the withheld type (CMS is not even asked).
    assert_eq!(
        fetch(&stack, session, "Patient?push=false").await.status(),
        403
    );

    let (status, report) = sync(&stack).await;
    assert_eq!(status, 200);
    let patient = &report["patients"][0];
    assert_eq!(patient["status"], "ok", "{patient}");
    assert_eq!(patient["types"]["Patient"]["status"], "withheld");
    assert_eq!(delivered(&report, "Coverage"), 4);
    assert!(delivered(&report, "ExplanationOfBenefit") > 0);
    let stored = in_connect(&stack);
    assert!(!stored.iter().any(|k| k.starts_with("Patient/")));
    assert!(stored.iter().any(|k| k.starts_with("Coverage/")));
}

#[tokio::test]
async fn a_wrong_connect_url_queues_everything_and_the_right_one_drains_it_in_order() {
    // A server that answers 404 to everything connect would be asked: another CMS emulator.
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
    let resp = fetch(&stack, &session, "ExplanationOfBenefit?return_cms=false").await;
    assert_eq!(resp.status(), 202);
    let result: Value = resp.json().await.unwrap();
    assert_eq!(result["rejected"], 0, "a 404 is never the resources' fault");
    let outbox = stack.admin_get("/bluebutton/connect/outbox").await;
    let queued = e2e::queued_resources(&outbox);
    assert_eq!(queued, 120);
    // The wrong server answers 404 without reading the body, so a large batch may instead see the
    // connection closed mid-request (hyper's behaviour, and many servers'): either is recorded.
    let why = outbox["items"][0]["last_error"].as_str().unwrap();
    assert!(
        why.contains("connect answered 404") || why.contains("connect could not be reached"),
        "the first batch waits because: {why}"
    );
    assert_eq!(
        stack.admin_get("/bluebutton/connect/dead-letters").await["count"],
        0
    );

    // The operator fixes the URL; the next sync drains the outbox first, in order.
    let right = format!("connect_url={}", stack.connect.base_url());
    stack.app.restart(false, &[right]).await.unwrap();
    let expected: Vec<String> = {
        let resp = fetch(&stack, &session, "ExplanationOfBenefit?push=false").await;
        let bundle: Value = resp.json().await.unwrap();
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "ExplanationOfBenefit/{}",
                    e["resource"]["id"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (status, report) = sync(&stack).await;
    assert_eq!(status, 200);
    assert_eq!(report["outbox"]["replayed"], 120);
    let stored = in_connect(&stack);
    let eobs: Vec<String> = eobs_in(&stored).into_iter().cloned().collect();
    assert_eq!(
        eobs.len(),
        120,
        "each once: the sync's own fetch found nothing new to send"
    );
    assert_eq!(eobs, expected, "in CMS's order");
    assert_eq!(
        stack.admin_get("/bluebutton/connect/outbox").await["count"],
        0
    );
}

/// The app is killed at random points of a 1,000-claim sync, again and again, and started again on
/// the same store; then one clean sync. Connect must hold every claim: nothing lost, and no cursor
/// moved past a claim that was not delivered, queued or a dead letter.
#[tokio::test]
async fn killed_mid_sync_again_and_again_nothing_is_lost() {
    let mut stack = Stack::start_with(|o| o.eob_count = Some(1000), |_| {}, &[])
        .await
        .unwrap();
    let _ = stack.session("BBUser29999").await;
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (CRASH_SEED={seed} repeats it)");
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut kills = Vec::new();
    for _ in 0..4 {
        let base = stack.base_url();
        let running = tokio::spawn(async move {
            let _ = beneficiary::client()
                .post(format!("{base}/bluebutton/sync"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await;
        });
        let after = Duration::from_millis(rand::Rng::gen_range(&mut rng, 100..2500));
        tokio::time::sleep(after).await;
        kills.push((after.as_millis(), in_connect(&stack).len()));
        stack.app.restart(true, &[]).await.unwrap();
        running.abort();
    }
    let (status, report) = sync(&stack).await;
    assert_eq!(status, 200, "the clean sync queues nothing");
    let stored = in_connect(&stack);
    let eobs: HashSet<&String> = eobs_in(&stored).into_iter().collect();
    eprintln!(
        "killed after (ms, records in connect): {kills:?}; finally {} EOB records, {} distinct; the \
         clean sync replayed {} and delivered {}",
        eobs_in(&stored).len(),
        eobs.len(),
        report["outbox"]["replayed"],
        delivered(&report, "ExplanationOfBenefit")
    );
    assert_eq!(eobs.len(), 1000, "every claim reached connect");
    let letters = stack.admin_get("/bluebutton/connect/dead-letters").await;
    assert_eq!(letters["count"], 0);
    // The cursor now stands at the newest claim: a further sync finds nothing.
    let (_, after) = sync(&stack).await;
    assert_eq!(delivered(&after, "ExplanationOfBenefit"), 0);
}
