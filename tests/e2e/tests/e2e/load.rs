//! Load: 200 beneficiaries' sessions at once, each fetching its Patient and its 100 claims through
//! `spin-host` (a fresh component instance per request). Zero errors allowed; latency and throughput
//! printed for the record (never asserted: timing is the benchmark's business).

use std::time::{Duration, Instant};

use e2e::beneficiary::{self, sign_in};
use e2e::Stack;
use futures::stream::{self, StreamExt};
use serde_json::Value;

const SESSIONS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions_fetch_without_a_single_error() {
    // 200 sessions of one synthetic user stand in for 200 beneficiaries: the emulator has a handful of
    // users, and CMS would let one beneficiary's new sign-in end their earlier tokens.
    let stack = Stack::start(
        |o| {
            o.eob_count = Some(100);
            o.new_authorization_replaces_tokens = false;
        },
        &[],
    )
    .await
    .unwrap();
    let base = stack.base_url();
    let deadline = Instant::now() + Duration::from_secs(240);

    let sessions: Vec<String> = stream::iter(0..SESSIONS)
        .map(|_| {
            let base = base.clone();
            async move {
                sign_in(&base, "BBUser29999").await.unwrap()["session"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(sessions.len(), SESSIONS);

    let client = beneficiary::client();
    let started = Instant::now();
    let requests = sessions.iter().flat_map(|session| {
        ["Patient", "ExplanationOfBenefit"].map(|resource| {
            let client = client.clone();
            let url = format!("{base}/bluebutton/fhir/{resource}?push=false");
            let session = session.clone();
            async move {
                let sent = Instant::now();
                let resp = client.get(url).bearer_auth(session).send().await;
                let outcome = match resp {
                    Ok(resp) if resp.status() == 200 => {
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        let expected = if resource == "Patient" { 1 } else { 100 };
                        if body["total"] == expected {
                            Ok(())
                        } else {
                            Err(format!("{resource}: total {}", body["total"]))
                        }
                    }
                    Ok(resp) => Err(format!("{resource}: {}", resp.status())),
                    Err(e) => Err(format!("{resource}: {e}")),
                };
                (sent.elapsed(), outcome)
            }
        })
    });
    let results: Vec<(Duration, Result<(), String>)> = futures::future::join_all(requests).await;
    let wall = started.elapsed();
    assert!(Instant::now() < deadline, "the load test overran its bound");

    let errors: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    eprintln!(
        "load: {} requests from {SESSIONS} sessions in {wall:?}: {:.1} req/s, p50 {:?}, p99 {:?}, max {:?}, errors {}",
        results.len(),
        results.len() as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}
