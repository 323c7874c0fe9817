use std::cell::RefCell;
use std::rc::Rc;

use futures::executor::block_on;
use serde_json::{json, Value};

use super::*;
use crate::audit::{self, Agent, Audit};
use crate::config::{AuditSettings, Repair};
use crate::connect::dead_letters;
use crate::crypto::TokenKey;
use crate::testing::FakePlatform;

fn eob(id: &str, valid: bool, pad: usize) -> Value {
    json!({"resourceType": "ExplanationOfBenefit", "id": id, "valid": valid, "pad": "x".repeat(pad)})
}

fn resources(values: &[Value]) -> Vec<Resource> {
    values
        .iter()
        .map(|v| Resource::from_value(v).unwrap())
        .collect()
}

fn settings(mode: ConnectMode, batch_bytes: usize) -> ConnectSettings {
    ConnectSettings {
        url: "https://connect.test".into(),
        batch_bytes,
        mode,
        rate_limit: 0,
        repair: Repair::Off,
        retention_days: 30,
    }
}

const AUDIT: AuditSettings = AuditSettings {
    retention_days: 1,
    to_connect: false,
};

/// The audit trail of patient `-1`, oldest first: each event's own code and its outcome.
fn trail(p: &FakePlatform) -> Vec<(String, String)> {
    let k = key();
    let vault = Vault::new(p, &k);
    let query = audit::Query {
        patient: Some("-1".into()),
        count: 500,
        ..audit::Query::default()
    };
    let listing = audit::list(&vault, &query).unwrap();
    listing
        .events
        .iter()
        .rev()
        .map(|e| {
            let e: Value = serde_json::from_str(e).unwrap();
            let code = e["subtype"].as_array().unwrap().last().unwrap()["code"].clone();
            (
                code.as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn key() -> TokenKey {
    TokenKey::parse(&"42".repeat(32)).unwrap()
}

fn reply(status: u16, body: Value) -> Result<http::Response<Vec<u8>>, crate::ports::HttpError> {
    Ok(http::Response::builder()
        .status(status)
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap())
}

/// Connect: refuses any Bundle holding an invalid resource (500, pydantic's text naming the entries),
/// like the real one; `down` makes its Kafka fail (an LFHError).
#[derive(Clone, Default)]
struct Connect {
    down: Rc<RefCell<bool>>,
    received: Rc<RefCell<Vec<String>>>,
    posts: Rc<RefCell<usize>>,
}

impl Connect {
    fn install(&self, p: &FakePlatform) {
        let this = self.clone();
        p.on_send(move |req| {
            *this.posts.borrow_mut() += 1;
            if *this.down.borrow() {
                let lfh = json!({"uuid": "u", "error_msg": "KafkaError{code=_MSG_TIMED_OUT}"});
                return reply(500, json!({"detail": lfh.to_string()}));
            }
            let body: Value = serde_json::from_slice(req.body()).unwrap();
            let resources: Vec<Value> = match body["resourceType"].as_str() {
                Some("Bundle") => body["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["resource"].clone())
                    .collect(),
                _ => vec![body.clone()],
            };
            let bundle = body["resourceType"] == "Bundle";
            let errors: Vec<String> = resources
                .iter()
                .enumerate()
                .filter(|(_, r)| r["valid"] == false)
                .map(|(i, _)| {
                    if bundle {
                        format!("entry -> {i} -> resource -> provider\n  field required")
                    } else {
                        "provider\n  field required".to_string()
                    }
                })
                .collect();
            if !errors.is_empty() {
                let text = format!(
                    "{} validation errors for Bundle\n{}",
                    errors.len(),
                    errors.join("\n")
                );
                return reply(500, json!({"detail": text}));
            }
            this.received.borrow_mut().extend(
                resources
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().to_string()),
            );
            reply(
                200,
                json!({"uuid": "e", "data_format": "FHIR-R4", "data_record_location": null}),
            )
        });
    }
}

fn deliver(p: &FakePlatform, settings: ConnectSettings, values: &[Value]) -> DeliveryResult {
    let k = key();
    let vault = Vault::new(p, &k);
    block_on(async {
        let audit = Audit::new(&vault, AUDIT, Agent::App);
        let mut d =
            Delivery::start(&vault, Some(&audit), settings, "-1", Before::Drain(None)).await?;
        d.add(&resources(values)).await?;
        d.finish().await
    })
    .unwrap()
}

#[test]
fn batches_stay_under_the_budget_keep_order_and_leave_the_outbox_empty() {
    let p = FakePlatform::new();
    let connect = Connect::default();
    connect.install(&p);
    let values: Vec<Value> = (0..40).map(|i| eob(&format!("e{i}"), true, 900)).collect();
    let result = deliver(&p, settings(ConnectMode::Bundle, 10_000), &values);
    assert_eq!(result.delivered, 40);
    assert_eq!(result.status(), 200);
    let expected: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    assert_eq!(*connect.received.borrow(), expected);
    for sent in p.sent.borrow().iter() {
        assert!(sent.body().len() <= 10_000, "{} bytes", sent.body().len());
        assert_eq!(sent.uri().path(), "/fhir/Bundle");
    }
    let k = key();
    assert!(outbox::list(&Vault::new(&p, &k)).unwrap().is_empty());
}

#[test]
fn refused_resources_named_by_connect_cost_one_post_each_at_most() {
    let p = FakePlatform::new();
    let connect = Connect::default();
    connect.install(&p);
    let values: Vec<Value> = (0..20)
        .map(|i| eob(&format!("e{i}"), i != 3 && i != 11 && i != 12, 10))
        .collect();
    let result = deliver(&p, settings(ConnectMode::Bundle, 1_000_000), &values);
    assert_eq!((result.delivered, result.rejected), (17, 3));
    let expected: Vec<String> = (0..20)
        .filter(|i| ![3, 11, 12].contains(i))
        .map(|i| format!("e{i}"))
        .collect();
    assert_eq!(
        *connect.received.borrow(),
        expected,
        "order kept, none twice"
    );
    assert_eq!(
        *connect.posts.borrow(),
        2,
        "the refused entries were named, not searched for"
    );
    let k = key();
    let letters = dead_letters::list(&Vault::new(&p, &k)).unwrap();
    let ids: Vec<&str> = letters.iter().map(|l| l.resource_id.as_str()).collect();
    assert_eq!(ids, ["e3", "e11", "e12"]);
    assert!(letters[0].detail.contains("validation error"));
    assert_eq!(letters[0].status, 500);
    assert_ne!(letters[0].id, letters[1].id);
    let dead = ("dead-lettered".to_string(), "8".to_string());
    let delivered = ("delivered".to_string(), "0".to_string());
    assert_eq!(trail(&p), [dead.clone(), dead.clone(), dead, delivered]);
}

#[test]
fn an_outage_queues_everything_in_order_and_the_next_delivery_drains_it_first() {
    let p = FakePlatform::new();
    let connect = Connect::default();
    connect.install(&p);
    *connect.down.borrow_mut() = true;
    let first: Vec<Value> = (0..10).map(|i| eob(&format!("a{i}"), true, 900)).collect();
    let result = deliver(&p, settings(ConnectMode::Bundle, 5_000), &first);
    assert_eq!((result.delivered, result.status()), (0, 202));
    let k = key();
    let vault = Vault::new(&p, &k);
    let queued = outbox::list(&vault).unwrap();
    assert_eq!(queued.len(), result.queued.len());
    assert_eq!(queued.iter().map(|e| e.resources).sum::<usize>(), 10);
    assert!(queued[0].last_error.contains("KafkaError"));
    assert_eq!(
        *connect.posts.borrow(),
        5,
        "one batch met the outage; the rest queued untried"
    );
    assert!(queued.iter().all(|e| e.claim.is_none()));

    *connect.down.borrow_mut() = false;
    let second: Vec<Value> = (0..3).map(|i| eob(&format!("b{i}"), true, 900)).collect();
    let result = deliver(&p, settings(ConnectMode::Bundle, 5_000), &second);
    assert_eq!((result.replayed, result.delivered), (10, 3));
    let expected: Vec<String> = (0..10)
        .map(|i| format!("a{i}"))
        .chain((0..3).map(|i| format!("b{i}")))
        .collect();
    assert_eq!(
        *connect.received.borrow(),
        expected,
        "the older batches went first"
    );
    assert!(outbox::list(&vault).unwrap().is_empty());
    let trail = trail(&p);
    let count = |code: &str, outcome: &str| {
        trail
            .iter()
            .filter(|(c, o)| c == code && o == outcome)
            .count()
    };
    assert_eq!(count("delivered", "4"), queued.len(), "each queued batch");
    assert_eq!(count("replayed", "0"), queued.len(), "each replayed batch");
    assert_eq!(trail.last().unwrap(), &("delivered".into(), "0".into()));
}

#[test]
fn repair_lets_invalid_claims_through_and_tags_them() {
    let p = FakePlatform::new();
    let connect = Connect::default();
    connect.install(&p);
    let mut s = settings(ConnectMode::Bundle, 1_000_000);
    s.repair = Repair::DataAbsentReason;
    let claim = json!({"resourceType": "ExplanationOfBenefit", "id": "c1", "status": "active",
        "type": {"text": "carrier"}, "use": "claim", "patient": {"reference": "Patient/-1"},
        "created": "2024-01-01", "outcome": "complete", "insurer": {"display": "CMS"},
        "insurance": [{"focal": true, "coverage": {"reference": "Coverage/x"}}]});
    let result = deliver(&p, s, &[claim]);
    assert_eq!(
        (result.delivered, result.repaired, result.rejected),
        (1, 1, 0)
    );
    let sent: Value = serde_json::from_slice(p.sent.borrow()[0].body()).unwrap();
    let resource = &sent["entry"][0]["resource"];
    assert_eq!(
        resource["provider"]["extension"][0]["url"],
        repair::DATA_ABSENT_REASON
    );
    assert_eq!(resource["meta"]["tag"][0]["code"], repair::REPAIR_TAG_CODE);
}

#[test]
fn batch_ids_are_stable_and_content_addressed() {
    let item = |id: &str, pad| Item {
        resource_type: "ExplanationOfBenefit".into(),
        id: id.into(),
        json: serde_json::to_vec(&eob(id, true, pad)).unwrap(),
        repaired: false,
    };
    let a = [item("1", 1), item("2", 1)];
    let b = [item("1", 1), item("2", 1)];
    let c = [item("1", 2), item("2", 1)];
    assert_eq!(batch_id("-1", &a), batch_id("-1", &b));
    assert_ne!(batch_id("-1", &a), batch_id("-1", &c));
    assert_ne!(batch_id("-1", &a), batch_id("-2", &a));
}

#[test]
fn resource_mode_posts_each_to_its_type() {
    let p = FakePlatform::new();
    let connect = Connect::default();
    connect.install(&p);
    let result = deliver(
        &p,
        settings(ConnectMode::Resource, 700_000),
        &[eob("a", true, 1), eob("b", false, 1)],
    );
    assert_eq!((result.delivered, result.rejected), (1, 1));
    assert!(p
        .sent
        .borrow()
        .iter()
        .all(|r| r.uri().path() == "/fhir/ExplanationOfBenefit"));
}

#[test]
fn a_busy_connect_is_waited_for_and_a_misconfigured_one_queues() {
    let p = FakePlatform::new();
    let calls = Rc::new(RefCell::new(0));
    let c = calls.clone();
    p.on_send(move |_| {
        *c.borrow_mut() += 1;
        if *c.borrow() <= 3 {
            return reply(
                429,
                json!({"error": "Rate limit exceeded: 10 per 1 second"}),
            );
        }
        reply(200, json!({"uuid": "e"}))
    });
    let result = deliver(
        &p,
        settings(ConnectMode::Bundle, 700_000),
        &[eob("a", true, 1)],
    );
    assert_eq!((result.delivered, result.status()), (1, 200));

    let p = FakePlatform::new();
    p.on_send(|_| reply(404, json!({"detail": "Not Found"})));
    let result = deliver(
        &p,
        settings(ConnectMode::Bundle, 700_000),
        &[eob("a", false, 1)],
    );
    assert_eq!(
        (result.rejected, result.queued.len()),
        (0, 1),
        "a 404 is never the resource's fault"
    );
}

#[test]
fn two_replays_at_once_post_each_batch_once_and_in_order() {
    let p = FakePlatform::new();
    let connect = Connect::default();
    connect.install(&p);
    *connect.down.borrow_mut() = true;
    let values: Vec<Value> = (0..12).map(|i| eob(&format!("q{i}"), true, 900)).collect();
    let queued = deliver(&p, settings(ConnectMode::Bundle, 3_000), &values);
    assert!(queued.queued.len() >= 4);
    *connect.down.borrow_mut() = false;
    *connect.posts.borrow_mut() = 0;
    let k = key();
    let vault = Vault::new(&p, &k);
    let (a, b) = block_on(futures::future::join(
        replay_outbox(&vault, None, settings(ConnectMode::Bundle, 3_000)),
        replay_outbox(&vault, None, settings(ConnectMode::Bundle, 3_000)),
    ));
    let (a, b) = (a.unwrap(), b.unwrap());
    // The second waits behind the first's claims rather than skipping ahead: order over speed.
    assert_eq!(a.replayed + b.replayed, 12, "every resource once");
    assert_eq!(
        *connect.posts.borrow(),
        queued.queued.len(),
        "no batch posted twice"
    );
    let expected: Vec<String> = (0..12).map(|i| format!("q{i}")).collect();
    assert_eq!(
        *connect.received.borrow(),
        expected,
        "in the order they were queued"
    );
    assert!(outbox::list(&vault).unwrap().is_empty());
}

#[test]
fn a_crashed_deliverys_claim_lapses_and_its_batch_is_replayed() {
    let p = FakePlatform::new();
    let connect = Connect::default();
    connect.install(&p);
    let k = key();
    let vault = Vault::new(&p, &k);
    // A delivery wrote its batch ahead and claimed it, then its instance died before posting.
    let payload = serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "collection",
        "entry": [{"resource": eob("lost", true, 1)}]}))
    .unwrap();
    outbox::put(
        &vault,
        NewBatch {
            patient: "-1",
            target: "/fhir/Bundle".into(),
            resources: 1,
            payload: &payload,
            claim: Some(Claim {
                by: "gone".into(),
                until: vault.now() + CLAIM_SECS,
            }),
            waiting_because: None,
        },
    )
    .unwrap();
    let replayed = block_on(replay_outbox(
        &vault,
        None,
        settings(ConnectMode::Bundle, 3_000),
    ))
    .unwrap();
    assert_eq!(replayed.replayed, 1, "replayed once the claim lapsed");
    assert_eq!(*connect.received.borrow(), ["lost"]);
}
