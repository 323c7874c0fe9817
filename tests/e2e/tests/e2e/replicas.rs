//! Several replicas: two instances of the app on one Redis (`runtime-config/redis.toml`), as SpinKube runs
//! it — a callback landing on the other instance, concurrent refreshes split over both, an outbox
//! replayed from both at once, and what Redis holds at rest. Each instance runs on `spin-host` or, with
//! `SPIN_BIN`, on the real Spin CLI.

use std::collections::HashMap;
use std::time::Duration;

use cms_sandbox::BBUSER29999_PATIENT;
use e2e::beneficiary::{self, consent_at_cms, sign_in, Consent};
use e2e::{AppHost, Replicas, ADMIN_KEY};
use serde_json::{json, Value};

async fn fetch_patient(app: &AppHost, session: &str) -> reqwest::Response {
    beneficiary::client()
        .get(format!(
            "{}/bluebutton/fhir/Patient?push=false",
            app.base_url()
        ))
        .bearer_auth(session)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_issued_by_one_replica_is_redeemed_on_the_other_and_its_session_works_on_both() {
    let replicas = Replicas::start(|_| {}, |_| {}, &[]).await.unwrap();
    let (a, b) = (&replicas.a, &replicas.b);

    // An API client starts on A ...
    let resp = beneficiary::client()
        .get(format!("{}/bluebutton/authorize", a.base_url()))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let start: Value = resp.json().await.unwrap();
    let cms_authorize = url::Url::parse(start["authorization_url"].as_str().unwrap()).unwrap();
    // ... and CMS will send the beneficiary back to B.
    let redirect_uri = cms_authorize
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert_eq!(
        redirect_uri,
        format!("{}/bluebutton/callback", b.base_url())
    );
    let callback = consent_at_cms(cms_authorize, "BBUser29999", Consent::All)
        .await
        .unwrap();
    assert_eq!(callback.port(), Some(b.addr.port()), "{callback}");

    // B finds the state A wrote, and opens a session.
    let resp = beneficiary::client()
        .get(callback.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "B refused A's state: {body}");
    let signed_in: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(signed_in["patient"], BBUSER29999_PATIENT);
    let session = signed_in["session"].as_str().unwrap();

    // The state was single-use for both: the same callback on A is refused.
    let replay = callback.as_str().replace(
        &format!(":{}/", b.addr.port()),
        &format!(":{}/", a.addr.port()),
    );
    let resp = beneficiary::client().get(replay).send().await.unwrap();
    assert_eq!(resp.status(), 403, "A redeemed a state B already used");

    // The session works on both instances.
    for app in [a, b] {
        let resp = fetch_patient(app, session).await;
        assert_eq!(resp.status(), 200, "{}", app.base_url());
        let bundle: Value = resp.json().await.unwrap();
        assert_eq!(bundle["entry"][0]["resource"]["id"], BBUSER29999_PATIENT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_after_expiry_split_over_both_replicas_make_one_token_request() {
    // Tokens live 62 s: one minute before they expire the app refreshes, so that is at once.
    let replicas = Replicas::start(|o| o.token_ttl_secs = 62, |_| {}, &[])
        .await
        .unwrap();
    let signed_in = sign_in(&replicas.a.base_url(), "BBUser29999")
        .await
        .unwrap();
    let session = signed_in["session"].as_str().unwrap().to_string();
    let before = replicas.token_requests().await;
    assert_eq!(before, json!({"200": 1}).as_object().unwrap().clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let calls = (0..8).map(|i| {
        let app = if i % 2 == 0 { &replicas.a } else { &replicas.b };
        let session = session.clone();
        async move {
            let resp = fetch_patient(app, &session).await;
            let status = resp.status().as_u16();
            (app.base_url(), status, resp.text().await.unwrap())
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (app, status, body) in &answers {
        assert_eq!(*status, 200, "{app}: {body}");
    }

    let after = replicas.token_requests().await;
    let total: u64 = after.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(
        total - 1,
        1,
        "exactly one refresh for 8 calls on 2 replicas; token requests by status: {after:?}"
    );
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["200"],
        "no spent refresh token was tried (invalid_grant): {after:?}"
    );
    // The session still works on both after the race.
    for app in replicas.apps() {
        assert_eq!(fetch_patient(app, &session).await.status(), 200);
    }
}

/// An outage of connect with `eobs` EOBs queued by A: answers the session and the queued outbox ids.
async fn queued_during_an_outage(replicas: &Replicas, eobs: u64) -> (String, Vec<String>) {
    let signed_in = sign_in(&replicas.a.base_url(), "BBUser29999")
        .await
        .unwrap();
    let session = signed_in["session"].as_str().unwrap().to_string();
    let resp = beneficiary::client()
        .get(format!(
            "{}/bluebutton/fhir/ExplanationOfBenefit?return_cms=false",
            replicas.a.base_url()
        ))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "queued during the outage");
    let result: Value = resp.json().await.unwrap();
    assert_eq!(result["delivered"], 0, "{result}");
    let queued: Vec<String> = result["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(queued.len() > 1, "several batches to race over: {result}");
    // Both instances list the same outbox.
    for app in replicas.apps() {
        let listing = replicas.admin_get(app, "/bluebutton/connect/outbox").await;
        assert_eq!(listing["count"], queued.len(), "{}", app.base_url());
        let resources = e2e::queued_resources(&listing);
        assert_eq!(resources, eobs);
    }
    assert!(replicas.connect.records().is_empty());
    (session, queued)
}

/// How many EOBs are queued, and how many requests connect fails (more than the app makes while queuing).
const EOBS: u64 = 200;
const OUTAGE: u32 = 1000;

async fn outage() -> Replicas {
    Replicas::start(
        |o| o.eob_count = Some(EOBS as usize),
        |c| c.fail_first = OUTAGE,
        // Small batches: many outbox entries for the two replays to contend for.
        &["connect_batch_bytes=200000".into()],
    )
    .await
    .unwrap()
}

/// Every EOB id connect stored, once per time it was stored.
fn eobs_in_connect(replicas: &Replicas) -> Vec<String> {
    e2e::resources_in(&replicas.connect)
        .into_iter()
        .filter(|r| r["resourceType"] == "ExplanationOfBenefit")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_replayed_from_both_replicas_at_once_is_delivered_once() {
    let replicas = outage().await;
    let (_, queued) = queued_during_an_outage(&replicas, EOBS).await;

    // Connect is back: its outage ends after its first N requests; use them up.
    let http = reqwest::Client::new();
    while replicas.connect.request_count() < u64::from(OUTAGE) {
        let _ = http
            .post(format!("{}/fhir/Patient", replicas.connect.base_url()))
            .json(&json!({"resourceType": "Patient"}))
            .send()
            .await;
    }
    let replay = |app: &AppHost| {
        let url = format!("{}/bluebutton/connect/outbox/replay", app.base_url());
        async move {
            let resp = beneficiary::client()
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (on_a, on_b) = tokio::join!(replay(&replicas.a), replay(&replicas.b));
    for (status, result) in [&on_a, &on_b] {
        assert_eq!(*status, 200, "{result}");
    }
    let replayed = on_a.1["replayed"].as_u64().unwrap() + on_b.1["replayed"].as_u64().unwrap();

    let stored = eobs_in_connect(&replicas);
    let mut times: HashMap<&String, usize> = HashMap::new();
    for id in &stored {
        *times.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "EOBs delivered more than once: {} of {}, e.g. {:?}; replay on A: {}, on B: {}",
        twice.len(),
        times.len(),
        &twice[..twice.len().min(3)],
        on_a.1,
        on_b.1
    );
    assert_eq!(times.len() as u64, EOBS, "every EOB delivered");
    assert_eq!(
        replayed, EOBS,
        "between them the two replays delivered each queued EOB once ({} batches queued): A {}, B {}",
        queued.len(),
        on_a.1,
        on_b.1
    );
    for app in replicas.apps() {
        let listing = replicas.admin_get(app, "/bluebutton/connect/outbox").await;
        assert_eq!(listing["count"], 0, "{}: {listing}", app.base_url());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_nothing_in_redis_is_readable_or_over_a_megabyte() {
    let replicas = outage().await;
    let (session, _) = queued_during_an_outage(&replicas, EOBS).await;
    let entries = replicas.redis.dump().await.unwrap();
    assert!(!entries.is_empty(), "the app keeps its state in this Redis");

    let largest = entries.iter().map(|(_, v)| v.len()).max().unwrap();
    assert!(largest <= 1_000_000, "a value of {largest} bytes");
    let mut secrets: Vec<(String, String)> = vec![
        ("the patient id".into(), BBUSER29999_PATIENT.into()),
        ("the session".into(), session),
    ];
    for secret in replicas.cms.secrets_seen() {
        secrets.push(("a CMS token or verifier".into(), secret));
    }
    // Resource text: a key may name a resource type (a cursor's does), a value never.
    let resource_text = [
        "ExplanationOfBenefit",
        "\"resourceType\"",
        "\"billablePeriod\"",
        "pde--",
    ];
    for (key, value) in &entries {
        let value = String::from_utf8_lossy(value);
        for (what, secret) in &secrets {
            assert!(
                !key.contains(secret.as_str()) && !value.contains(secret.as_str()),
                "{what} is readable in Redis, at key {key}"
            );
        }
        for text in resource_text {
            assert!(
                !value.contains(text),
                "{text} readable in Redis at key {key}"
            );
            if text != "ExplanationOfBenefit" {
                assert!(
                    !key.contains(text),
                    "{text} readable in the Redis key {key}"
                );
            }
        }
    }
}
