//! `bench`: the figures behind the app's performance claims, all measured in one run against
//! `cms-sandbox` (no arguments; a minute or two on two cores). It prints one line per figure, then one
//! JSON object with every figure as its last line.
//!
//! Run it with `cargo run -p e2e --bin bench` (followed by words to run only the measurements whose
//! names hold one, e.g. `-- audit`): it builds the components and `spin-host` itself (with
//! cargo's progress shown) and runs the app as a child process, as the end-to-end suite does: on
//! `spin-host`, or on the real Spin CLI when `SPIN_BIN` names it. The instantiation figure counts
//! instances, so it runs `spin_host` in this process.
//!
//! Each measurement is an entry of [`MEASUREMENTS`] contributing its own keys; add a figure by adding an
//! entry.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cms_sandbox::{CmsSandbox, Options};
use e2e::beneficiary::sign_in;
use e2e::{build_wasm, token_key, workspace_root, HostBinary, Stack, CLIENT_ID, CLIENT_SECRET};
use futures::future::LocalBoxFuture;
use reqwest::Client;
use serde_json::Value;

/// The beneficiary whose EOB list the emulator grows to `eob_count`.
const USER: &str = "BBUser29999";
/// The emulator's delay per FHIR and token response for the paging figures.
const LATENCY_MS: u64 = 50;
const PAGE_SIZE: usize = 50;
const CONCURRENCY: usize = 4;
/// Timed runs of each 1,000-EOB fetch (after one warm-up); the median is reported.
const FETCH_RUNS: Sampling = Sampling {
    max: 5,
    budget: Duration::from_secs(30),
};
/// Requests (per side) for the overhead and instantiation figures.
const REQUESTS: Sampling = Sampling {
    max: 200,
    budget: Duration::from_secs(30),
};
/// The app also delivers what it fetches to connect unless told not to; these figures are about the
/// fetch from CMS (what the floor and the direct call compare with), so every fetch here skips that.
const NO_PUSH: &str = "push=false";
/// Untimed requests first, so connection set-up and first-use costs stay out of the figures.
const WARM_UP: usize = 3;

/// How many samples a timing takes: `max`, unless `budget` runs out first (then at least one), so
/// that even a pathologically slow build finishes the whole run within five minutes. Notes report the
/// count actually taken.
struct Sampling {
    max: usize,
    budget: Duration,
}

impl Sampling {
    fn wants_more(&self, started: Instant, taken: usize) -> bool {
        taken == 0 || (taken < self.max && started.elapsed() < self.budget)
    }
}

/// One reported figure: its JSON key, its value, and what a person needs to read it.
struct Figure {
    key: &'static str,
    value: f64,
    note: String,
}

fn figure(key: &'static str, value: f64, note: impl Into<String>) -> Figure {
    Figure {
        key,
        value,
        note: note.into(),
    }
}

type Measurement = fn() -> LocalBoxFuture<'static, Result<Vec<Figure>>>;

/// Every measurement, in the order they run.
const MEASUREMENTS: &[(&str, Measurement)] = &[
    ("the paged 1,000-EOB fetch", || Box::pin(paged_fetch())),
    ("the v3 1,000-EOB fetch by next links", || {
        Box::pin(v3_next_fetch())
    }),
    ("the original client's way", || Box::pin(seed_way())),
    ("the sync into connect", || Box::pin(sync_into_connect())),
    ("the real CMS claims", || Box::pin(real_claims())),
    ("the audit trail's cost", || Box::pin(audit_overhead())),
    ("abandoned authorizations", || {
        Box::pin(abandoned_authorizations())
    }),
    ("the refresh after expiry", || {
        Box::pin(refresh_after_expiry())
    }),
    ("the per-request overhead", || Box::pin(overhead())),
    ("the peak RSS of the host", || Box::pin(peak_rss())),
    ("the component sizes", || Box::pin(wasm_size())),
    ("the instantiation cost", || Box::pin(instantiation())),
];

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("bench: error: {err:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    e2e::show_build_progress();
    build_wasm();
    let host = HostBinary::from_env();
    // spin-host is built in cargo's dev profile (its own crate at opt-level 1, dependencies at 2): say
    // which build made the figures.
    let profile = if cfg!(debug_assertions) {
        "unoptimised (dev profile)"
    } else {
        "optimised"
    };
    println!(
        "bench: the app on {} ({}, a child process per measurement, {profile} build of the bench); \
         cms-sandbox and connect-sandbox in-process",
        host.name(),
        host.path().display()
    );
    let mut json = serde_json::Map::new();
    // `bench audit paged`: only the measurements whose names hold one of the words.
    let only: Vec<String> = std::env::args().skip(1).collect();
    let chosen = MEASUREMENTS
        .iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|w| name.contains(w.as_str())));
    for (name, measure) in chosen {
        let figures = measure()
            .await
            .with_context(|| format!("measuring {name}"))?;
        for f in figures {
            let number = json_number(f.value)
                .with_context(|| format!("{} is not a finite number", f.key))?;
            println!("{:<26} {:>12}  {}", f.key, number.to_string(), f.note);
            json.insert(f.key.to_string(), Value::Number(number));
        }
    }
    println!("{}", Value::Object(json));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Measurements.

/// `fetch_1000_ms` (concurrency 4), `sequential_1000_ms` (concurrency 1, the SDKs' way), the floor the
/// latency allows, and the two ratios.
async fn paged_fetch() -> Result<Vec<Figure>> {
    let eobs = 1000;
    let concurrent = median_fetch(eobs, CONCURRENCY).await?;
    let sequential = median_fetch(eobs, 1).await?;
    let pages = concurrent.pages;
    ensure!(
        pages == eobs.div_ceil(PAGE_SIZE) && sequential.pages == pages,
        "expected {} pages, the app fetched {pages} and {}",
        eobs.div_ceil(PAGE_SIZE),
        sequential.pages
    );
    // The app only learns `total` from page 1, so page 1 is one latency on its own; the other pages then
    // go out `concurrency` at a time: (1 + ceil((pages - 1) / concurrency)) round trips.
    let floor_ms = (1 + (pages - 1).div_ceil(CONCURRENCY)) as f64 * LATENCY_MS as f64;
    let setup = format!("page_size={PAGE_SIZE}, {pages} pages, latency {LATENCY_MS} ms");
    Ok(vec![
        figure(
            "fetch_1000_ms",
            concurrent.ms,
            format!(
                "ms, fetch_concurrency={CONCURRENCY}, {setup}, median of {}",
                concurrent.runs
            ),
        ),
        figure(
            "sequential_1000_ms",
            sequential.ms,
            format!(
                "ms, fetch_concurrency=1, {setup}, median of {}",
                sequential.runs
            ),
        ),
        figure(
            "floor_1000_ms",
            floor_ms,
            format!("ms, (1 + ceil(({pages}-1)/{CONCURRENCY})) x {LATENCY_MS} ms"),
        ),
        figure(
            "fetch_1000_vs_sequential",
            sequential.ms / concurrent.ms,
            "x faster than sequential (target >= 3)",
        ),
        figure(
            "fetch_1000_vs_floor",
            concurrent.ms / floor_ms,
            "x the floor (target <= 1.3)",
        ),
    ])
}

/// `fetch_1000_v3_vs_next_reader`: on v3, where `total` cannot plan the pages, the app's fetch (offset
/// pages fetched ahead, each used only once the chain names it) against a bare reader following `next`
/// one page at a time on the same emulator, both checked to return the same 1,000 ids in order.
async fn v3_next_fetch() -> Result<Vec<Figure>> {
    const PILOT: &str = "BBUser09001";
    let eobs = 1000;
    let stack = Stack::start(
        |o| o.latency_ms = LATENCY_MS,
        &[
            "cms_api_version=v3".to_string(),
            format!("fetch_concurrency={CONCURRENCY}"),
            format!("page_size={PAGE_SIZE}"),
        ],
    )
    .await?;
    let signed_in = sign_in(&stack.base_url(), PILOT).await?;
    let session = signed_in["session"].as_str().context("no session")?;
    let patient = signed_in["patient"].as_str().context("no patient")?;
    let path = format!("patients/{patient}/eob-count");
    stack
        .cms_control(&path, serde_json::json!({"count": eobs}))
        .await;
    let token = stack
        .cms
        .issue_tokens_for(cms_sandbox::ApiVersion::V3, PILOT, None)?["access_token"]
        .as_str()
        .context("no token")?
        .to_string();
    let first = format!(
        "{}/v3/fhir/ExplanationOfBenefit?patient={patient}&_count={PAGE_SIZE}&_source=NCH,DDPS",
        stack.cms.base_url()
    );
    let http = Client::new();
    let app_url = format!(
        "{}/bluebutton/fhir/ExplanationOfBenefit?{NO_PUSH}",
        stack.base_url()
    );
    let (expected, _) = next_reader(&first, &token).await?;
    ensure!(expected.len() == eobs, "the reader got {}", expected.len());
    ids_of_app(&http, &app_url, session, &expected).await?;
    let (mut app_times, mut reader_times) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while FETCH_RUNS.wants_more(started, app_times.len()) {
        let begun = Instant::now();
        ids_of_app(&http, &app_url, session, &expected).await?;
        app_times.push(begun.elapsed().as_secs_f64() * 1000.0);
        let (ids, ms) = next_reader(&first, &token).await?;
        ensure!(ids == expected, "the reader's answer changed");
        reader_times.push(ms);
    }
    let runs = app_times.len();
    let app_ms = percentile(&mut app_times, 50.0);
    let reader_ms = percentile(&mut reader_times, 50.0);
    let setup = format!(
        "{} pages of {PAGE_SIZE}, latency {LATENCY_MS} ms, median of {runs}",
        eobs / PAGE_SIZE
    );
    Ok(vec![
        figure(
            "fetch_1000_v3_ms",
            app_ms,
            format!("ms, the app on v3, fetch_concurrency={CONCURRENCY}, {setup}"),
        ),
        figure(
            "next_reader_1000_v3_ms",
            reader_ms,
            format!("ms, a bare reader following `next`, {setup}"),
        ),
        figure(
            "fetch_1000_v3_vs_next_reader",
            app_ms / reader_ms,
            "x the bare next-link reader's time (target <= 1.3; below 1 is faster)",
        ),
    ])
}

/// A bare reader following `next` from `first`: the ids in order, and the time it took.
async fn next_reader(first: &str, token: &str) -> Result<(Vec<String>, f64)> {
    let begun = Instant::now();
    let ids = e2e::next_link_ids(first, token).await?;
    Ok((ids, begun.elapsed().as_secs_f64() * 1000.0))
}

/// The app's answer must be exactly `expected`, in order.
async fn ids_of_app(http: &Client, url: &str, session: &str, expected: &[String]) -> Result<()> {
    let resp = http.get(url).bearer_auth(session).send().await?;
    let status = resp.status();
    let bundle: Value = resp.json().await?;
    ensure!(status == 200, "the app answered {status}: {bundle}");
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    ensure!(
        ids == expected,
        "the app's {} ids differ from the reader's {}",
        ids.len(),
        expected.len()
    );
    Ok(())
}

/// `seed_way_entries`: what the original Python client got of the same 1,000 EOBs: one search with the
/// access token straight at CMS, first page only, CMS's default `_count`.
async fn seed_way() -> Result<Vec<Figure>> {
    let cms = CmsSandbox::start(
        loopback(0),
        Options {
            eob_count: Some(1000),
            ..cms_options(String::new())
        },
    )
    .await?;
    let token = cms.issue_tokens(USER, None)?;
    let (access_token, patient) = token_and_patient(&token)?;
    let bundle: Value = Client::new()
        .get(format!(
            "{}/v2/fhir/ExplanationOfBenefit?patient={patient}",
            cms.base_url()
        ))
        .bearer_auth(access_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let entries = bundle["entry"].as_array().map_or(0, Vec::len);
    let total = bundle["total"]
        .as_u64()
        .context("the search has no total")?;
    Ok(vec![figure(
        "seed_way_entries",
        entries as f64,
        format!("EOBs of {total}: one GET, first page, default _count"),
    )])
}

/// One `POST /bluebutton/sync` of a 1,000-EOB patient (with its Patient and 4 Coverage) into
/// connect-sandbox with `rate_limit` posts per second (0 = off) on connect's side.
struct Sync1000 {
    delivered: u64,
    secs: f64,
    posts: u64,
    busy_answers: u64,
}

async fn sync_1000(rate_limit: u32) -> Result<Sync1000> {
    let stack = Stack::start_with(
        |o| o.eob_count = Some(1000),
        |c| c.rate_limit_per_sec = rate_limit,
        &[],
    )
    .await?;
    session_of(&stack.base_url()).await?;
    let started = Instant::now();
    let report: Value = Client::new()
        .post(format!("{}/bluebutton/sync", stack.base_url()))
        .bearer_auth(e2e::ADMIN_KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let types = &report["patients"][0]["types"];
    let delivered: u64 = ["Patient", "Coverage", "ExplanationOfBenefit"]
        .iter()
        .map(|t| types[t]["delivery"]["delivered"].as_u64().unwrap_or(0))
        .sum();
    ensure!(
        types["ExplanationOfBenefit"]["delivery"]["delivered"] == 1000,
        "the sync delivered {} of 1,000 EOBs (status {})",
        types["ExplanationOfBenefit"]["delivery"]["delivered"],
        types["ExplanationOfBenefit"]["status"]
    );
    let stats = stack.connect.stats();
    Ok(Sync1000 {
        delivered,
        secs,
        posts: stats.requests,
        busy_answers: stats.by_status.get(&429).copied().unwrap_or(0),
    })
}

/// `sync_1000_resources_per_s` with connect's rate limit off, then `paced_sync_1000_resources_per_s`
/// at connect's default limit (10 posts/s per client), how much of that limit the app used, and how
/// often connect had to say it was busy.
async fn sync_into_connect() -> Result<Vec<Figure>> {
    let free = sync_1000(0).await?;
    let limit = connect_sandbox::Options::default().rate_limit_per_sec;
    let paced = sync_1000(limit).await?;
    let posts_per_s = paced.posts as f64 / paced.secs;
    Ok(vec![
        figure(
            "sync_1000_resources_per_s",
            free.delivered as f64 / free.secs,
            format!(
                "{} resources in {:.2} s, {} POSTs; connect's rate limit off",
                free.delivered, free.secs, free.posts
            ),
        ),
        figure(
            "paced_sync_1000_resources_per_s",
            paced.delivered as f64 / paced.secs,
            format!(
                "{} resources in {:.2} s, {} POSTs; connect's default limit of {limit}/s",
                paced.delivered, paced.secs, paced.posts
            ),
        ),
        figure(
            "paced_share_of_limit",
            posts_per_s / f64::from(limit),
            format!("{posts_per_s:.2} POSTs/s of connect's {limit}/s"),
        ),
        figure(
            "paced_busy_answers",
            paced.busy_answers as f64,
            "429s connect answered the paced sync",
        ),
    ])
}

/// `real_capture_delivered_of_52`: the 52 EOBs of CMS's real sandbox capture (BBUser00001), which all
/// lack something fhir.resources requires, delivered to connect after repair; `..._without_repair`: as
/// connect's validation alone lets them through (the original client's outcome).
async fn real_claims() -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (key, repair) in [
        ("real_capture_delivered_of_52", "data-absent-reason"),
        ("real_capture_delivered_unrepaired", "off"),
    ] {
        let stack = Stack::start(|_| {}, &[format!("connect_repair={repair}")]).await?;
        let signed_in = sign_in(&stack.base_url(), "BBUser00001").await?;
        let session = signed_in["session"].as_str().context("a session")?;
        let result: Value = Client::new()
            .get(format!(
                "{}/bluebutton/fhir/ExplanationOfBenefit?return_cms=false",
                stack.base_url()
            ))
            .bearer_auth(session)
            .send()
            .await?
            .json()
            .await?;
        let delivered = result["delivered"].as_u64().unwrap_or(0);
        figures.push(figure(
            key,
            delivered as f64,
            format!(
                "EOBs in connect with connect_repair={repair}; {} repaired, {} dead letters",
                result["repaired"], result["rejected"]
            ),
        ));
    }
    Ok(figures)
}

/// `audit_overhead_pct`: of a 1,000-EOB fetch with delivery (connect's rate limit off), the share of
/// the request's own time it spent writing its AuditEvents, both by the component's clock, summed over
/// [`FETCH_RUNS`] fetches after a warm-up; and how many events one such fetch records.
async fn audit_overhead() -> Result<Vec<Figure>> {
    let stack = Stack::start(|o| o.eob_count = Some(1000), &[]).await?;
    let session = session_of(&stack.base_url()).await?;
    let http = Client::new();
    let url = format!(
        "{}/bluebutton/fhir/ExplanationOfBenefit?return_cms=false",
        stack.base_url()
    );
    let fetch = || async {
        let resp = http.get(&url).bearer_auth(&session).send().await?;
        ensure!(resp.status() == 200, "the fetch answered {}", resp.status());
        let result: Value = resp.json().await?;
        ensure!(
            result["delivered"] == 1000,
            "delivered {}",
            result["delivered"]
        );
        anyhow::Ok(())
    };
    fetch().await?;
    let (started, mut runs) = (Instant::now(), 0);
    while FETCH_RUNS.wants_more(started, runs) {
        fetch().await?;
        runs += 1;
    }
    // `fhir-fetch: ExplanationOfBenefit … us=… audit_events=… audit_us=…`, one line per fetch.
    let field = |line: &str, name: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    let logs = stack.logs();
    // The host's output and the component's log file may both hold a line: each fetch's is unique.
    let mut seen = HashSet::new();
    let timed: Vec<(f64, f64, f64)> = logs
        .lines()
        .filter(|l| l.contains("fhir-fetch: ExplanationOfBenefit") && seen.insert(*l))
        .filter_map(|l| {
            Some((
                field(l, "us")?,
                field(l, "audit_us")?,
                field(l, "audit_events")?,
            ))
        })
        .skip(1)
        .collect();
    ensure!(
        timed.len() == runs,
        "{} of {runs} fetches logged their timing",
        timed.len()
    );
    let total: f64 = timed.iter().map(|t| t.0).sum();
    let audit: f64 = timed.iter().map(|t| t.1).sum();
    let events = timed.iter().map(|t| t.2).sum::<f64>() / runs as f64;
    Ok(vec![
        figure(
            "audit_overhead_pct",
            100.0 * audit / total,
            format!(
                "{:.2} ms of {:.1} ms per fetch writing AuditEvents, over {runs} fetches; goal ≤ 3",
                audit / 1000.0 / runs as f64,
                total / 1000.0 / runs as f64
            ),
        ),
        figure(
            "audit_events_per_fetch",
            events,
            "one read, one per batch delivered to connect",
        ),
    ])
}

/// `kv_keys_after_10000_abandoned`: the store's keys once 10,000 authorizations nobody finished are past
/// their TTL and a sync swept them, against `kv_keys_before_abandoned`, the count before them.
async fn abandoned_authorizations() -> Result<Vec<Figure>> {
    use futures::StreamExt;
    let stack = Stack::start(|_| {}, &["state_ttl_secs=2".into()]).await?;
    let base = stack.base_url();
    let http = Client::new();
    let sweep = || async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        http.post(format!("{base}/bluebutton/sync"))
            .bearer_auth(e2e::ADMIN_KEY)
            .send()
            .await?
            .error_for_status()
            .map(drop)
    };
    let authorize = || async {
        http.get(format!("{base}/bluebutton/authorize"))
            .header("Accept", "application/json")
            .send()
            .await?
            .error_for_status()
            .map(drop)
    };
    authorize().await?;
    sweep().await?;
    let before = stack.store_dump_sizes().len();
    let started = Instant::now();
    let results: Vec<reqwest::Result<()>> = futures::stream::iter(0..10_000)
        .map(|_| authorize())
        .buffer_unordered(32)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    results.into_iter().collect::<reqwest::Result<Vec<()>>>()?;
    let flooded = stack.store_dump_sizes().len();
    sweep().await?;
    let after = stack.store_dump_sizes().len();
    Ok(vec![
        figure(
            "kv_keys_before_abandoned",
            before as f64,
            "keys of the store before the flood",
        ),
        figure(
            "kv_keys_after_10000_abandoned",
            after as f64,
            format!(
                "keys once their TTL passed and a sync swept ({flooded} right after the flood, \
                 {:.0} authorizations/s)",
                10_000.0 / secs
            ),
        ),
    ])
}

/// `token_requests_per_expiry`: 8 concurrent calls of one session right after its access token expired,
/// counted at CMS's token endpoint (1 is single-flight; the original client made one per call).
async fn refresh_after_expiry() -> Result<Vec<Figure>> {
    // Tokens live 62 s and the app refreshes one minute before expiry: at once.
    let stack = Stack::start(|o| o.token_ttl_secs = 62, &[]).await?;
    let session = session_of(&stack.base_url()).await?;
    let token_requests = || async { e2e::token_requests(&stack.cms_counters().await) };
    let before = token_requests().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let http = Client::new();
    let url = format!("{}/bluebutton/fhir/Patient?{NO_PUSH}", stack.base_url());
    let calls = (0..8).map(|_| timed_get(&http, &url, &session, 200));
    futures::future::try_join_all(calls).await?;
    let refreshes = token_requests().await - before;
    Ok(vec![figure(
        "token_requests_per_expiry",
        refreshes as f64,
        "token requests for 8 concurrent calls of one session after expiry",
    )])
}

/// `overhead_p50_ms`, `overhead_p99_ms`: the app's GET /bluebutton/fhir/Patient against the very request
/// it makes upstream, sent straight to the emulator (no added latency).
async fn overhead() -> Result<Vec<Figure>> {
    let app = SignedIn::start(0, 0, &[]).await?;
    let token = app.stack.cms.issue_tokens(USER, None)?;
    let (access_token, patient) = token_and_patient(&token)?;
    let app_url = format!("{}/bluebutton/fhir/Patient?{NO_PUSH}", app.stack.base_url());
    // The same URL the app builds for page 1 (`_id` and its default `_count`).
    let direct_url = format!(
        "{}/v2/fhir/Patient/?_id={patient}&_count={PAGE_SIZE}",
        app.stack.cms.base_url()
    );
    let http = Client::new();
    for _ in 0..WARM_UP {
        timed_get(&http, &app_url, &app.session, 200).await?;
        timed_get(&http, &direct_url, access_token, 200).await?;
    }
    let mut through_app = Vec::new();
    let mut direct = Vec::new();
    // Interleaved, so a busy moment on this shared machine lands on both sides alike.
    let started = Instant::now();
    while REQUESTS.wants_more(started, through_app.len()) {
        through_app.push(timed_get(&http, &app_url, &app.session, 200).await?);
        direct.push(timed_get(&http, &direct_url, access_token, 200).await?);
    }
    let n = through_app.len();
    let p = |samples: &mut Vec<f64>, q| percentile(samples, q);
    let note =
        |q: f64, a: f64, d: f64| format!("ms, p{q} of {n}: app {a:.3} ms - direct {d:.3} ms");
    let (a50, d50) = (p(&mut through_app, 50.0), p(&mut direct, 50.0));
    let (a99, d99) = (p(&mut through_app, 99.0), p(&mut direct, 99.0));
    Ok(vec![
        figure("overhead_p50_ms", a50 - d50, note(50.0, a50, d50)),
        figure("overhead_p99_ms", a99 - d99, note(99.0, a99, d99)),
    ])
}

/// `peak_rss_mb_5000`, `peak_rss_mb_500` and their ratio: a fresh host child per size, one fetch.
async fn peak_rss() -> Result<Vec<Figure>> {
    let big = child_peak_rss_mb(5000).await?;
    let small = child_peak_rss_mb(500).await?;
    let host = HostBinary::from_env().name();
    Ok(vec![
        figure(
            "peak_rss_mb_5000",
            big,
            format!("MB VmHWM of a fresh {host} after fetching 5,000 EOBs"),
        ),
        figure(
            "peak_rss_mb_500",
            small,
            format!("MB VmHWM of a fresh {host} after fetching 500 EOBs"),
        ),
        figure("peak_rss_mb_5000_vs_500", big / small, "x (10x the data)"),
    ])
}

/// `wasm_bytes_max`: the largest of the app's four components.
async fn wasm_size() -> Result<Vec<Figure>> {
    let dir = workspace_root().join("target/wasm32-wasip2/release");
    let mut largest = (0, "");
    for name in ["authorize", "callback", "fhir_fetch", "connect_push"] {
        let path = dir.join(format!("{name}.wasm"));
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("no {}", path.display()))?
            .len();
        largest = largest.max((bytes, name));
    }
    Ok(vec![figure(
        "wasm_bytes_max",
        largest.0 as f64,
        format!("bytes, {}.wasm", largest.1),
    )])
}

/// `instantiate_ms`: the mean wall time of a request to a component that does next to nothing
/// (`/bluebutton/connect/outbox` with the admin routes disabled answers 404 without touching the store).
/// It includes the loopback HTTP round trip, routing, a fresh wasmtime store and instance (as Spin
/// makes per request) and the guest's few microseconds of work.
async fn instantiation() -> Result<Vec<Figure>> {
    // spin-host in this process, to count the instances it makes.
    let app = spin_host::App::load(&spin_host::HostOptions {
        manifest: workspace_root().join("spin.toml"),
        variables: vec![
            format!("cms_client_id={CLIENT_ID}"),
            format!("cms_client_secret={CLIENT_SECRET}"),
            format!("token_key={}", token_key()),
            "admin_api_key=".to_string(),
        ],
        env: Some(Default::default()),
        output: spin_host::Output::Quiet,
        ..Default::default()
    })?;
    let host = spin_host::serve(app, loopback(0)).await?;
    let url = format!("{}/bluebutton/connect/outbox", host.base_url());
    let http = Client::new();
    for _ in 0..WARM_UP {
        timed_get(&http, &url, "", 404).await?;
    }
    let before = host.app.instantiations();
    let mut times = Vec::new();
    let started = Instant::now();
    while REQUESTS.wants_more(started, times.len()) {
        times.push(timed_get(&http, &url, "", 404).await?);
    }
    let (n, instances) = (times.len(), host.app.instantiations() - before);
    ensure!(
        instances == n as u64,
        "{n} requests made {instances} instances, not one each"
    );
    Ok(vec![figure(
        "instantiate_ms",
        times.iter().sum::<f64>() / n as f64,
        format!("ms mean of {n} requests, one fresh instance each (round trip included)"),
    )])
}

// ---------------------------------------------------------------------------------------------------
// Helpers.

/// The in-process app on a CMS emulator, with a signed-in beneficiary.
struct SignedIn {
    stack: Stack,
    session: String,
}

impl SignedIn {
    async fn start(latency_ms: u64, eobs: usize, extra: &[String]) -> Result<SignedIn> {
        let stack = Stack::start(
            |o| {
                o.latency_ms = latency_ms;
                o.eob_count = (eobs > 0).then_some(eobs);
            },
            extra,
        )
        .await?;
        let session = session_of(&stack.base_url()).await?;
        Ok(SignedIn { stack, session })
    }
}

async fn session_of(app_base: &str) -> Result<String> {
    let signed_in = sign_in(app_base, USER).await?;
    Ok(signed_in["session"]
        .as_str()
        .context("the callback gave no session")?
        .to_string())
}

struct Fetched {
    ms: f64,
    /// `x-pages-fetched` (a streamed answer may not know it up front).
    pages: Option<usize>,
}

/// The median of a few fetches.
struct MedianFetch {
    ms: f64,
    pages: usize,
    runs: usize,
}

/// The median of [`FETCH_RUNS`] fetches of `eobs` EOBs at `concurrency`, after a warm-up.
async fn median_fetch(eobs: usize, concurrency: usize) -> Result<MedianFetch> {
    let app = SignedIn::start(
        LATENCY_MS,
        eobs,
        &[
            format!("fetch_concurrency={concurrency}"),
            format!("page_size={PAGE_SIZE}"),
        ],
    )
    .await?;
    let http = Client::new();
    let base = app.stack.base_url();
    fetch_eobs(&http, &base, &app.session, eobs).await?;
    let mut times = Vec::new();
    let mut pages = 0;
    let started = Instant::now();
    while FETCH_RUNS.wants_more(started, times.len()) {
        let run = fetch_eobs(&http, &base, &app.session, eobs).await?;
        times.push(run.ms);
        pages = run.pages.context("the answer has no x-pages-fetched")?;
    }
    Ok(MedianFetch {
        runs: times.len(),
        ms: percentile(&mut times, 50.0),
        pages,
    })
}

/// One GET /bluebutton/fhir/ExplanationOfBenefit, timed to the last byte of the body, then checked: a
/// benchmark of a wrong answer is worthless.
async fn fetch_eobs(http: &Client, base: &str, session: &str, eobs: usize) -> Result<Fetched> {
    let start = Instant::now();
    let resp = http
        .get(format!(
            "{base}/bluebutton/fhir/ExplanationOfBenefit?{NO_PUSH}"
        ))
        .bearer_auth(session)
        .send()
        .await?;
    let status = resp.status();
    let pages = resp
        .headers()
        .get("x-pages-fetched")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = resp.bytes().await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        status == 200,
        "the fetch answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let bundle: Value = serde_json::from_slice(&body)?;
    let entries = bundle["entry"].as_array().context("no entries")?;
    let ids: HashSet<&str> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "ExplanationOfBenefit")
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    ensure!(
        ids.len() == eobs && entries.len() == eobs && bundle["total"] == eobs,
        "wrong result: {} distinct EOB ids in {} entries, total {}, expected {eobs}",
        ids.len(),
        entries.len(),
        bundle["total"]
    );
    Ok(Fetched { ms, pages })
}

/// One GET with a bearer token (none if empty), timed to the last byte; fails on another status.
async fn timed_get(http: &Client, url: &str, bearer: &str, expect: u16) -> Result<f64> {
    let mut req = http.get(url);
    if !bearer.is_empty() {
        req = req.bearer_auth(bearer);
    }
    let start = Instant::now();
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        status.as_u16() == expect,
        "GET {url} answered {status}, not {expect}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(ms)
}

/// Counts and sizes as integers; anything else to three decimals, beyond the noise of these figures.
fn json_number(value: f64) -> Option<serde_json::Number> {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return Some((value as i64).into());
    }
    serde_json::Number::from_f64((value * 1000.0).round() / 1000.0)
}

/// Nearest-rank percentile (sorts `samples`).
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn cms_options(redirect_uri: String) -> Options {
    Options {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uri,
        ..Default::default()
    }
}

fn token_and_patient(token: &Value) -> Result<(&str, &str)> {
    Ok((
        token["access_token"].as_str().context("no access_token")?,
        token["patient"].as_str().context("no patient")?,
    ))
}

/// Runs the app as a fresh child on its own emulator, fetches `eobs` EOBs once and reads the child's peak
/// resident set (`VmHWM`, the largest of its processes), in MB.
async fn child_peak_rss_mb(eobs: usize) -> Result<f64> {
    let app = SignedIn::start(
        0,
        eobs,
        &[
            format!("fetch_concurrency={CONCURRENCY}"),
            format!("page_size={PAGE_SIZE}"),
        ],
    )
    .await?;
    fetch_eobs(&Client::new(), &app.stack.base_url(), &app.session, eobs).await?;
    app.stack.app.peak_rss_mb()
}
