//! Delivery to LinuxForHealth connect end to end: `spin-host` running the real components, CMS and
//! connect played by their emulators, and every record read back through connect's own `/data` API.

use std::collections::HashSet;

use base64::Engine;
use cms_sandbox::BBUSER29999_PATIENT;
use e2e::beneficiary;
use e2e::{Stack, ADMIN_KEY};
use serde_json::{json, Value};

async fn deliver_type(stack: &Stack, session: &str, resource: &str) -> (u16, Value) {
    let resp = beneficiary::client()
        .get(format!(
            "{}/bluebutton/fhir/{resource}?return_cms=false",
            stack.base_url()
        ))
        .bearer_auth(session)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Every resource connect stored, read back through `GET /data`, as `Type/id` in arrival order.
async fn stored_in_connect(stack: &Stack) -> Vec<String> {
    let http = reqwest::Client::new();
    let base = stack.connect.base_url();
    let listing: Value = http
        .get(format!("{base}/_emulator/records"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut keys = Vec::new();
    for record in listing["records"].as_array().unwrap() {
        let envelope: Value = loop {
            let resp = http
                .get(format!("{base}/data"))
                .query(&[
                    ("dataformat", record["topic"].as_str().unwrap().to_string()),
                    ("partition", record["partition"].to_string()),
                    ("offset", record["offset"].to_string()),
                ])
                .send()
                .await
                .unwrap();
            // Connect rate-limits reads too.
            if resp.status() == 429 {
                tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
                continue;
            }
            assert_eq!(resp.status(), 200);
            break resp.json().await.unwrap();
        };
        let data = base64::engine::general_purpose::STANDARD
            .decode(envelope["data"].as_str().unwrap())
            .unwrap();
        let resource: Value = serde_json::from_slice(&data).unwrap();
        let resources: Vec<Value> = if resource["resourceType"] == "Bundle" {
            resource["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"].clone())
                .collect()
        } else {
            vec![resource]
        };
        for r in resources {
            keys.push(format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ));
        }
    }
    keys
}

async fn admin(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", stack.base_url()));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_thousand_claims_arrive_in_connect_complete_in_bounded_batches() {
    let stack = Stack::start(|o| o.eob_count = Some(1000), &[])
        .await
        .unwrap();
    let session = stack.session("BBUser29999").await;
    let started = std::time::Instant::now();
    let (status, result) = deliver_type(&stack, &session, "ExplanationOfBenefit").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["delivered"], 1000);
    assert_eq!(result["rejected"], 0);
    assert!(result["queued"].as_array().unwrap().is_empty());
    let batches = result["batches"].as_array().unwrap();
    assert!(batches.len() > 1, "1,000 EOBs cannot fit one batch");
    for envelope in batches {
        assert_eq!(envelope["consuming_endpoint_url"], "/fhir/Bundle");
        assert!(envelope["uuid"].is_string());
    }
    eprintln!(
        "delivered 1000 EOBs in {} batches in {elapsed:?} ({:.0} resources/s)",
        batches.len(),
        1000.0 / elapsed.as_secs_f64()
    );

    let stored = stored_in_connect(&stack).await;
    let distinct: HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "a resource arrived twice");
    let expected: Vec<String> = {
        let token = stack.cms.issue_tokens("BBUser29999", None).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        let mut ids = Vec::new();
        for start in (0..1000).step_by(50) {
            let page: Value = reqwest::Client::new()
                .get(format!(
                    "{}/v2/fhir/ExplanationOfBenefit?patient={BBUSER29999_PATIENT}&_count=50&startIndex={start}",
                    stack.cms.base_url()
                ))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for e in page["entry"].as_array().unwrap() {
                ids.push(format!(
                    "ExplanationOfBenefit/{}",
                    e["resource"]["id"].as_str().unwrap()
                ));
            }
        }
        ids
    };
    assert_eq!(stored, expected, "every EOB, once, in CMS order");

    // Every posted Bundle stayed under connect_batch_bytes (700,000 by default).
    for record in stack.connect.records() {
        let size = serde_json::to_vec(&record.resource).unwrap().len();
        assert!(size <= 700_000, "a batch of {size} bytes");
    }
}

#[tokio::test]
async fn an_outage_queues_batches_and_replay_delivers_exactly_the_missing_ones() {
    let stack = Stack::start_with(
        |o| o.eob_count = Some(200),
        |c| {
            c.rate_limit_per_sec = 0;
            c.fail_first = 1000;
        },
        &["connect_batch_bytes=200000".into()],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let (status, result) = deliver_type(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(status, 202, "{result}");
    assert_eq!(result["delivered"], 0);
    let queued: Vec<String> = result["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(queued.len() > 1);

    let listing: Value = stack.admin_get("/bluebutton/connect/outbox").await;
    assert_eq!(listing["count"], queued.len());
    let items = listing["items"].as_array().unwrap();
    assert_eq!(e2e::queued_resources(&listing), 200);
    for item in items {
        assert!(item.get("payload").is_none(), "listings carry no payloads");
        assert!(
            item["last_error"].as_str().unwrap().contains("500"),
            "{item}"
        );
        assert!(queued.contains(&item["id"].as_str().unwrap().to_string()));
    }
    assert!(stack.connect.records().is_empty());

    // Connect is back: the emulator's outage ends after its first N requests; exhaust them.
    let outage_left = 1000 - stack.connect.request_count();
    for _ in 0..outage_left {
        let _ = reqwest::Client::new()
            .post(format!("{}/fhir/Patient", stack.connect.base_url()))
            .json(&json!({"resourceType": "Patient"}))
            .send()
            .await;
    }
    let resp = admin(
        &stack,
        reqwest::Method::POST,
        "/bluebutton/connect/outbox/replay",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let replay: Value = resp.json().await.unwrap();
    assert_eq!(replay["replayed"], 200, "{replay}");
    assert_eq!(replay["batches"].as_array().unwrap().len(), queued.len());
    assert!(replay["queued"].as_array().unwrap().is_empty());
    let stored = stored_in_connect(&stack).await;
    let eobs: Vec<&String> = stored
        .iter()
        .filter(|k| k.starts_with("ExplanationOfBenefit/"))
        .collect();
    assert_eq!(eobs.len(), 200);
    assert_eq!(eobs.iter().collect::<HashSet<_>>().len(), 200);
    let listing: Value = stack.admin_get("/bluebutton/connect/outbox").await;
    assert_eq!(listing["count"], 0);
}

#[tokio::test]
async fn refused_resources_are_isolated_and_dead_lettered_while_the_rest_is_delivered() {
    // Without repair, connect refuses CMS's real claims (they lack elements R4 requires).
    let stack = Stack::start(|_| {}, &["connect_repair=off".into()])
        .await
        .unwrap();
    // BBUser00001's 52 EOBs are real CMS captures that connect's R4 model refuses (no provider, or items
    // without productOrService); BBUser29999's PDE claims are valid. Interleave them.
    let invalid = stack.cms.issue_tokens("BBUser00001", None).unwrap();
    let valid = stack.cms.issue_tokens("BBUser29999", None).unwrap();
    let eobs = |token: &Value, patient: &str| {
        let url = format!(
            "{}/v2/fhir/ExplanationOfBenefit?patient={patient}&_count=6",
            stack.cms.base_url()
        );
        let token = token["access_token"].as_str().unwrap().to_string();
        async move {
            let page: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            page["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"].clone())
                .collect::<Vec<_>>()
        }
    };
    let bad = eobs(&invalid, "-19990000000001").await;
    let good = eobs(&valid, BBUSER29999_PATIENT).await;
    let mixed: Vec<Value> = good
        .iter()
        .zip(&bad)
        .flat_map(|(g, b)| [g.clone(), b.clone()])
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "collection",
                        "entry": mixed.iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()});
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/bluebutton/connect/deliver?patient=mixed",
            stack.base_url()
        ))
        .bearer_auth(ADMIN_KEY)
        .json(&bundle)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let result: Value = resp.json().await.unwrap();
    assert_eq!(result["delivered"], good.len());
    assert_eq!(result["rejected"], bad.len());

    let stored = stored_in_connect(&stack).await;
    let expected: Vec<String> = good
        .iter()
        .map(|r| format!("ExplanationOfBenefit/{}", r["id"].as_str().unwrap()))
        .collect();
    assert_eq!(stored, expected, "every valid EOB, in order, once");

    let letters: Value = stack.admin_get("/bluebutton/connect/dead-letters").await;
    let mut ids: Vec<String> = letters["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["resource_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected_bad: Vec<String> = bad
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    expected_bad.sort();
    assert_eq!(ids, expected_bad);
    for letter in letters["items"].as_array().unwrap() {
        assert_eq!(letter["status"], 500);
        let detail = letter["detail"].as_str().unwrap();
        assert!(
            detail.contains("provider") || detail.contains("productOrService"),
            "{detail}"
        );
    }
}

/// The data-absent-reason extension connect accepts for a required element CMS left out.
const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// What connect stored, decoded: each resource as JSON.
fn resources_in_connect(stack: &Stack) -> Vec<Value> {
    stack
        .connect
        .records()
        .iter()
        .flat_map(|r| {
            let bundle = r.resource.clone();
            match bundle["resourceType"].as_str() {
                Some("Bundle") => bundle["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["resource"].clone())
                    .collect(),
                _ => vec![bundle],
            }
        })
        .collect()
}

#[tokio::test]
async fn cms_real_claims_are_repaired_and_all_52_delivered() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let session = stack.session("BBUser00001").await;
    let (status, result) = deliver_type(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["delivered"], 52, "{result}");
    assert_eq!(result["rejected"], 0);
    assert_eq!(
        result["repaired"], 52,
        "every real claim lacked something R4 requires"
    );
    let eobs: Vec<Value> = resources_in_connect(&stack)
        .into_iter()
        .filter(|r| r["resourceType"] == "ExplanationOfBenefit")
        .collect();
    assert_eq!(eobs.len(), 52);
    for eob in &eobs {
        let text = eob.to_string();
        assert!(text.contains(DATA_ABSENT_REASON), "{}", eob["id"]);
        assert!(
            eob["meta"]["tag"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["code"] == "data-absent-reason"),
            "{} is tagged as repaired",
            eob["id"]
        );
        // Only what was missing is marked: where CMS gave a provider, it stays.
        if let Some(provider) = eob.get("provider") {
            assert!(provider.get("reference").is_some() || provider.get("extension").is_some());
        }
    }
    let letters = stack.admin_get("/bluebutton/connect/dead-letters").await;
    assert_eq!(letters["count"], 0);
}

#[tokio::test]
async fn without_repair_real_claims_are_dead_letters_and_replay_once_repair_is_on() {
    let mut stack = Stack::start(|_| {}, &["connect_repair=off".into()])
        .await
        .unwrap();
    let session = stack.session("BBUser00001").await;
    let (status, result) = deliver_type(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (result["delivered"].as_u64(), result["rejected"].as_u64()),
        (Some(0), Some(52))
    );
    let posts = stack.connect.request_count();
    assert!(
        posts <= 1 + 52,
        "one POST per batch plus one per refused resource at most, not a search: {posts}"
    );
    let letters = stack.admin_get("/bluebutton/connect/dead-letters").await;
    assert_eq!(letters["count"], 52);

    // The operator turns repair on and replays the dead letters.
    stack
        .app
        .restart(false, &["connect_repair=data-absent-reason".into()])
        .await
        .unwrap();
    let resp = admin(
        &stack,
        reqwest::Method::POST,
        "/bluebutton/connect/dead-letters/replay",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let replay: Value = resp.json().await.unwrap();
    assert_eq!(
        replay["replayed_letters"].as_array().map(Vec::len),
        Some(52)
    );
    assert_eq!(
        (replay["delivered"].as_u64(), replay["rejected"].as_u64()),
        (Some(52), Some(0))
    );
    assert_eq!(
        stack.admin_get("/bluebutton/connect/dead-letters").await["count"],
        0
    );
    let eobs = resources_in_connect(&stack)
        .into_iter()
        .filter(|r| r["resourceType"] == "ExplanationOfBenefit")
        .count();
    assert_eq!(eobs, 52);
}

#[tokio::test]
async fn admin_routes_refuse_without_the_key_and_vanish_without_the_variable() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    for (method, path) in [
        (reqwest::Method::GET, "/bluebutton/connect/outbox"),
        (reqwest::Method::POST, "/bluebutton/connect/outbox/replay"),
        (reqwest::Method::GET, "/bluebutton/connect/dead-letters"),
        (reqwest::Method::POST, "/bluebutton/connect/deliver"),
        (reqwest::Method::POST, "/bluebutton/sync"),
    ] {
        assert_eq!(
            admin(&stack, method.clone(), path, None).await.status(),
            401,
            "{path}"
        );
        assert_eq!(
            admin(&stack, method.clone(), path, Some("wrong"))
                .await
                .status(),
            401,
            "{path}"
        );
    }
    let stack = Stack::start(|_| {}, &["admin_api_key=".into()])
        .await
        .unwrap();
    assert_eq!(
        admin(
            &stack,
            reqwest::Method::GET,
            "/bluebutton/connect/outbox",
            Some(ADMIN_KEY)
        )
        .await
        .status(),
        404
    );
}

#[tokio::test]
async fn the_admin_sync_delivers_what_changed_and_only_that() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let _ = stack.session("BBUser29999").await;
    let sync = || async {
        let resp = admin(
            &stack,
            reqwest::Method::POST,
            "/bluebutton/sync",
            Some(ADMIN_KEY),
        )
        .await;
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    let first = sync().await;
    let patient = &first["patients"][0];
    assert_eq!(patient["patient"], BBUSER29999_PATIENT);
    assert_eq!(patient["status"], "ok");
    assert_eq!(patient["types"]["Patient"]["delivery"]["delivered"], 1);
    assert_eq!(patient["types"]["Coverage"]["delivery"]["delivered"], 4);
    assert_eq!(
        patient["types"]["ExplanationOfBenefit"]["delivery"]["delivered"],
        10
    );
    let before = stored_in_connect(&stack).await.len();

    let second = sync().await;
    assert_eq!(
        second["patients"][0]["types"]["ExplanationOfBenefit"]["delivery"]["delivered"],
        0
    );
    assert_eq!(stored_in_connect(&stack).await.len(), before);

    let added: Value = stack
        .cms_control(
            &format!("patients/{BBUSER29999_PATIENT}/eobs"),
            json!({"count": 4}),
        )
        .await;
    let third = sync().await;
    assert_eq!(
        third["patients"][0]["types"]["ExplanationOfBenefit"]["delivery"]["delivered"],
        4
    );
    let stored = stored_in_connect(&stack).await;
    let new: Vec<String> = stored[before..].to_vec();
    let expected: Vec<String> = added["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| format!("ExplanationOfBenefit/{}", id.as_str().unwrap()))
        .collect();
    assert_eq!(new, expected);

    // A patient whose grant is gone is reported, and the sync still answers.
    reqwest::Client::new()
        .post(format!(
            "{}/_emulator/grants/{BBUSER29999_PATIENT}/expire",
            stack.cms.base_url()
        ))
        .send()
        .await
        .unwrap();
    let fourth = sync().await;
    assert_eq!(fourth["patients"][0]["status"], "error");
    assert!(fourth["patients"][0]["error"]
        .as_str()
        .unwrap()
        .contains("authorize again"));
}

#[tokio::test]
async fn connects_rate_limit_is_waited_out() {
    // Unpaced, the app runs into connect's limit (10/s): each 429 is waited out, none is an outage.
    let stack = Stack::start_with(
        |o| o.eob_count = Some(40),
        |c| c.rate_limit_per_sec = 10,
        &[
            "connect_mode=resource".into(),
            "connect_rate_limit=0".into(),
        ],
    )
    .await
    .unwrap();
    let session = stack.session("BBUser29999").await;
    let (status, result) = deliver_type(&stack, &session, "ExplanationOfBenefit").await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["delivered"], 40);
    let stats: Value = reqwest::get(format!("{}/_emulator/stats", stack.connect.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        stats["by_status"]["429"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert_eq!(stored_in_connect(&stack).await.len(), 40);
}

#[tokio::test]
async fn connect_over_tls_is_trusted_only_through_client_tls() {
    let pki = e2e::pki();
    let tls = |c: &mut connect_sandbox::Options| {
        c.rate_limit_per_sec = 0;
        c.tls = Some(connect_sandbox::TlsFiles::from_pem(
            pki.cert_pem.clone(),
            pki.key_pem.clone(),
        ));
    };
    let dir = e2e::TempDir::new("client-tls");
    let dir = dir.path();
    std::fs::write(dir.join("lfh-root-ca.pem"), &pki.ca_pem).unwrap();
    let config = dir.join("runtime-config.toml");
    std::fs::write(
        &config,
        "[[client_tls]]\ncomponent_ids = [\"fhir-fetch\", \"connect-push\"]\nhosts = [\"localhost\"]\n\
         ca_roots_file = \"lfh-root-ca.pem\"\nca_use_webpki_roots = false\n",
    )
    .unwrap();
    let patient = json!({"resourceType": "Patient", "id": "tls-check"});
    let deliver = |stack: &Stack| {
        let url = format!("{}/bluebutton/connect/deliver", stack.base_url());
        let body = patient.clone();
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };

    // connect_url is https://localhost:PORT (the certificate's name); the allow-list follows it.
    let trusted = Stack::start_full(|_| {}, tls, &[], Some(&config))
        .await
        .unwrap();
    assert!(trusted.connect.base_url().starts_with("https://localhost:"));
    let (status, result) = deliver(&trusted).await;
    assert_eq!(
        (status, result["delivered"].as_u64()),
        (200, Some(1)),
        "{result}"
    );

    // Without the CA the certificate is not trusted: nothing is sent in the clear, the batch is kept.
    let untrusted = Stack::start_full(|_| {}, tls, &[], None).await.unwrap();
    let (status, result) = deliver(&untrusted).await;
    assert_eq!(status, 202, "{result}");
    assert_eq!(result["delivered"], 0);
    assert!(untrusted.connect.records().is_empty());
    let outbox: Value = untrusted.admin_get("/bluebutton/connect/outbox").await;
    let error = outbox["items"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("Tls") || error.contains("TLS") || error.contains("certificate"),
        "{error}"
    );
}
