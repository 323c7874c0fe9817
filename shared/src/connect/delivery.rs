//! Delivery to LinuxForHealth connect: resources in CMS order, in Bundles kept under a byte budget (connect
//! produces each to Kafka, base64-inflated, under a 1 MB cap), retried when connect is busy or down, queued
//! in the outbox when it stays down, and split until the culprits are alone when connect refuses a batch
//! (one invalid resource fails a whole Bundle there) — refused resources go to dead letters, never nowhere.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::crypto::hex;
use crate::config::{ConnectMode, ConnectSettings};
use crate::connect::{dead_letters, outbox};
use crate::error::Error;
use crate::fhir::Resource;
use crate::ports::Platform;
use crate::retry::{self, RetryPolicy};

/// What a delivery did; `fhir-fetch?return_cms=false` and `connect-push` answer with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryResult {
    /// Resources connect accepted.
    pub delivered: usize,
    /// Connect's envelopes, as it sent them (either variant).
    #[schema(value_type = Vec<Object>)]
    pub batches: Vec<Value>,
    /// Outbox ids of batches that could not be delivered now and are kept for replay.
    pub queued: Vec<String>,
    /// Resources connect refused (each kept as a dead letter).
    pub rejected: usize,
    pub dead_letters: Vec<String>,
}

impl DeliveryResult {
    pub fn merge(&mut self, other: DeliveryResult) {
        self.delivered += other.delivered;
        self.batches.extend(other.batches);
        self.queued.extend(other.queued);
        self.rejected += other.rejected;
        self.dead_letters.extend(other.dead_letters);
    }

    /// 202 while anything waits in the outbox, else 200.
    pub fn status(&self) -> u16 {
        if self.queued.is_empty() {
            200
        } else {
            202
        }
    }
}

/// A resource ready to send: its identity and its JSON text.
#[derive(Debug, Clone)]
struct Item {
    resource_type: String,
    id: String,
    json: Vec<u8>,
}

impl Item {
    fn new(resource: &Resource) -> Item {
        Item {
            resource_type: resource.resource_type.clone(),
            id: resource.id.clone(),
            json: resource.json.get().as_bytes().to_vec(),
        }
    }
}

const BUNDLE_OVERHEAD: usize = 128;

/// `{"resourceType":"Bundle","id":…,"type":"collection","entry":[{"resource":…},…]}`.
fn bundle_bytes(id: &str, items: &[Item]) -> Vec<u8> {
    let mut out = format!(r#"{{"resourceType":"Bundle","id":"{id}","type":"collection","entry":["#)
        .into_bytes();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"resource":"#);
        out.extend_from_slice(&item.json);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A stable id for a batch: the same resources (and versions) give the same id, so a replay shows as one.
fn batch_id(patient: &str, items: &[Item]) -> String {
    let mut hash = Sha256::new();
    hash.update(patient.as_bytes());
    for item in items {
        hash.update(b"\0");
        hash.update(item.resource_type.as_bytes());
        hash.update(b"/");
        hash.update(item.id.as_bytes());
        hash.update(b"\0");
        hash.update(Sha256::digest(&item.json));
    }
    format!("bbspin-{}", hex(&hash.finalize()[..16]))
}

/// How connect answered one POST.
pub(crate) enum Outcome {
    Delivered(Value),
    /// Connect will not take it as it is (invalid FHIR, type mismatch, too large): split or dead-letter.
    Refused {
        status: u16,
        detail: String,
    },
    /// Connect is down or busy beyond our retries: keep it in the outbox.
    Failed(String),
}

/// Connect's 500 is either a refusal (a FHIR validation error, a message over Kafka's cap) or a
/// workflow failure (Kafka unreachable): only the latter is worth retrying. Its `detail` tells them apart:
/// a workflow failure carries an LFHError (`{"uuid", "error_msg", ...}`) as a JSON string.
fn lfh_error(resp: &http::Response<Vec<u8>>) -> Option<String> {
    let body: Value = serde_json::from_slice(resp.body()).ok()?;
    let detail = body.get("detail")?;
    let parsed: Value = match detail {
        Value::String(text) => serde_json::from_str(text).ok()?,
        other => other.clone(),
    };
    parsed
        .get("error_msg")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn is_too_large(error_msg: &str) -> bool {
    error_msg.contains("MSG_SIZE_TOO_LARGE")
}

fn retryable(resp: &http::Response<Vec<u8>>) -> bool {
    match resp.status().as_u16() {
        429 | 502 | 503 | 504 => true,
        500 => lfh_error(resp).is_some_and(|msg| !is_too_large(&msg)),
        _ => false,
    }
}

fn detail_of(resp: &http::Response<Vec<u8>>) -> String {
    let text = String::from_utf8_lossy(resp.body());
    let detail = serde_json::from_slice::<Value>(resp.body())
        .ok()
        .and_then(|v| v.get("detail").cloned())
        .map(|d| match d {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_else(|| text.into_owned());
    // Keep dead letters and outbox entries readable: connect's answers can quote whole resources.
    detail.chars().take(2000).collect()
}

pub(crate) async fn post(platform: &impl Platform, url: &str, body: Vec<u8>) -> Outcome {
    let request = match http::Request::post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body)
    {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("cannot form the request: {e}")),
    };
    let retried = retry::send_with(platform, &request, &RetryPolicy::default(), retryable).await;
    match retried.result {
        Ok(resp) if resp.status().is_success() => {
            match serde_json::from_slice::<Value>(resp.body()) {
                Ok(envelope) => Outcome::Delivered(envelope),
                Err(_) => Outcome::Failed(format!(
                    "connect answered {} with a body that is not JSON",
                    resp.status().as_u16()
                )),
            }
        }
        Ok(resp) if retryable(&resp) => Outcome::Failed(format!(
            "connect answered {} after retries: {}",
            resp.status().as_u16(),
            detail_of(&resp)
        )),
        Ok(resp) => Outcome::Refused {
            status: resp.status().as_u16(),
            detail: detail_of(&resp),
        },
        Err(e) => Outcome::Failed(format!("connect could not be reached: {e}")),
    }
}

pub(crate) fn now_text(platform: &impl Platform) -> String {
    platform
        .now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Delivers resources as they come (page by page), keeping at most one batch in memory.
pub struct Delivery<'a, P: Platform> {
    platform: &'a P,
    config: ConnectSettings,
    patient: String,
    pending: Vec<Item>,
    pending_bytes: usize,
    /// Set once a batch failed for good: connect is down, so later batches go straight to the outbox
    /// instead of each waiting out its own retries.
    outage: Option<String>,
    pub result: DeliveryResult,
}

impl<'a, P: Platform> Delivery<'a, P> {
    pub fn new(platform: &'a P, config: ConnectSettings, patient: &str) -> Self {
        Delivery {
            platform,
            config,
            patient: patient.to_string(),
            pending: Vec::new(),
            pending_bytes: BUNDLE_OVERHEAD,
            outage: None,
            result: DeliveryResult::default(),
        }
    }

    pub async fn add(&mut self, resources: &[Resource]) -> Result<(), Error> {
        for resource in resources {
            let item = Item::new(resource);
            if self.config.mode == ConnectMode::Resource {
                self.send(vec![item]).await?;
                continue;
            }
            let size = item.json.len() + 16;
            if !self.pending.is_empty() && self.pending_bytes + size > self.config.batch_bytes {
                let batch = std::mem::take(&mut self.pending);
                self.pending_bytes = BUNDLE_OVERHEAD;
                self.send(batch).await?;
            }
            self.pending_bytes += size;
            self.pending.push(item);
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<DeliveryResult, Error> {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.send(batch).await?;
        }
        Ok(self.result)
    }

    fn target(&self, items: &[Item]) -> String {
        match self.config.mode {
            ConnectMode::Resource => format!("/fhir/{}", items[0].resource_type),
            ConnectMode::Bundle => "/fhir/Bundle".to_string(),
        }
    }

    fn payload(&self, id: &str, items: &[Item]) -> Vec<u8> {
        match self.config.mode {
            ConnectMode::Resource => items[0].json.clone(),
            ConnectMode::Bundle => bundle_bytes(id, items),
        }
    }

    /// Sends one batch; a refused batch is halved until each refused resource stands alone.
    async fn send(&mut self, items: Vec<Item>) -> Result<(), Error> {
        let mut work = vec![items];
        while let Some(items) = work.pop() {
            let id = batch_id(&self.patient, &items);
            let target = self.target(&items);
            let payload = self.payload(&id, &items);
            let url = format!("{}{target}", self.config.url);
            let outcome = match &self.outage {
                Some(error) => Outcome::Failed(format!(
                    "not attempted: an earlier batch of this delivery found connect down ({error})"
                )),
                None => post(self.platform, &url, payload.clone()).await,
            };
            match outcome {
                Outcome::Delivered(envelope) => {
                    self.result.delivered += items.len();
                    self.result.batches.push(envelope);
                }
                Outcome::Refused { .. } if items.len() > 1 => {
                    let mut first = items;
                    let second = first.split_off(first.len() / 2);
                    // Pushed in reverse so the first half goes first: order is kept.
                    work.push(second);
                    work.push(first);
                }
                Outcome::Refused { status, detail } => {
                    let item = &items[0];
                    let letter = dead_letters::DeadLetter {
                        patient: self.patient.clone(),
                        resource_type: item.resource_type.clone(),
                        id: item.id.clone(),
                        status,
                        detail,
                        time: now_text(self.platform),
                    };
                    let key = dead_letters::put(self.platform, &letter, &item.json)?;
                    self.result.rejected += 1;
                    self.result.dead_letters.push(key);
                }
                Outcome::Failed(error) => {
                    let attempts = u32::from(self.outage.is_none());
                    self.outage.get_or_insert_with(|| error.clone());
                    let entry = outbox::OutboxEntry {
                        id: id.clone(),
                        patient: self.patient.clone(),
                        target,
                        resources: items.len(),
                        bytes: payload.len(),
                        attempts,
                        last_error: error,
                        queued_at: now_text(self.platform),
                        updated_at: now_text(self.platform),
                        seq: self.result.queued.len(),
                    };
                    outbox::put(self.platform, &entry, &payload)?;
                    self.result.queued.push(id);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::dead_letters;
    use crate::connect::outbox;
    use crate::connect::replay::replay;
    use crate::testing::FakePlatform;
    use futures::executor::block_on;
    use serde_json::json;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn eob(id: &str, valid: bool, pad: usize) -> Value {
        json!({"resourceType": "ExplanationOfBenefit", "id": id, "valid": valid, "pad": "x".repeat(pad)})
    }

    /// Resources given as JSON values.
    async fn add_values<P: Platform>(
        d: &mut Delivery<'_, P>,
        values: &[Value],
    ) -> Result<(), Error> {
        let resources: Vec<Resource> = values
            .iter()
            .map(|v| Resource::from_value(v).unwrap())
            .collect();
        d.add(&resources).await
    }

    fn item(value: &Value) -> Item {
        Item::new(&Resource::from_value(value).unwrap())
    }

    fn config(mode: ConnectMode, batch_bytes: usize) -> ConnectSettings {
        ConnectSettings {
            url: "https://connect.test".into(),
            batch_bytes,
            mode,
        }
    }

    fn reply(status: u16, body: Value) -> Result<http::Response<Vec<u8>>, crate::ports::HttpError> {
        Ok(http::Response::builder()
            .status(status)
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap())
    }

    /// Connect: refuses any Bundle holding an invalid resource (500, pydantic text), like the real one.
    fn connect(p: &FakePlatform, down: Rc<RefCell<bool>>, received: Rc<RefCell<Vec<String>>>) {
        p.on_send(move |req| {
            if *down.borrow() {
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
            if resources.iter().any(|r| r["valid"] == false) {
                return reply(500, json!({"detail": "1 validation error for ExplanationOfBenefit\nprovider\n  field required"}));
            }
            received
                .borrow_mut()
                .extend(resources.iter().map(|r| r["id"].as_str().unwrap().to_string()));
            reply(200, json!({"uuid": "e", "data_format": "FHIR-R4", "data_record_location": null}))
        });
    }

    #[test]
    fn batches_stay_under_the_budget_and_keep_order() {
        let p = FakePlatform::new();
        let received = Rc::default();
        connect(&p, Rc::default(), Rc::clone(&received));
        let mut d = Delivery::new(&p, config(ConnectMode::Bundle, 10_000), "-1");
        let resources: Vec<Value> = (0..40).map(|i| eob(&format!("e{i}"), true, 900)).collect();
        block_on(add_values(&mut d, &resources[..25])).unwrap();
        block_on(add_values(&mut d, &resources[25..])).unwrap();
        let result = block_on(d.finish()).unwrap();
        assert_eq!(result.delivered, 40);
        assert_eq!(result.status(), 200);
        let expected: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
        assert_eq!(*received.borrow(), expected);
        for sent in p.sent.borrow().iter() {
            assert!(sent.body().len() <= 10_000, "{} bytes", sent.body().len());
            assert_eq!(sent.uri().path(), "/fhir/Bundle");
        }
        assert!(p.sent.borrow().len() >= 4);
    }

    #[test]
    fn refused_resources_are_isolated_and_dead_lettered() {
        let p = FakePlatform::new();
        let received = Rc::default();
        connect(&p, Rc::default(), Rc::clone(&received));
        let mut d = Delivery::new(&p, config(ConnectMode::Bundle, 1_000_000), "-1");
        let resources: Vec<Value> = (0..20)
            .map(|i| eob(&format!("e{i}"), i != 3 && i != 11 && i != 12, 10))
            .collect();
        block_on(add_values(&mut d, &resources)).unwrap();
        let result = block_on(d.finish()).unwrap();
        assert_eq!(result.delivered, 17);
        assert_eq!(result.rejected, 3);
        let expected: Vec<String> = (0..20)
            .filter(|i| ![3, 11, 12].contains(i))
            .map(|i| format!("e{i}"))
            .collect();
        assert_eq!(*received.borrow(), expected, "order kept, none twice");
        let letters = dead_letters::list(&p).unwrap();
        let mut ids: Vec<&str> = letters.iter().map(|l| l.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["e11", "e12", "e3"]);
        assert!(letters[0].detail.contains("validation error"));
        assert_eq!(letters[0].status, 500);
    }

    #[test]
    fn an_outage_queues_batches_and_replay_delivers_exactly_them() {
        let p = FakePlatform::new();
        let down = Rc::new(RefCell::new(true));
        let received = Rc::default();
        connect(&p, Rc::clone(&down), Rc::clone(&received));
        let mut d = Delivery::new(&p, config(ConnectMode::Bundle, 5_000), "-1");
        let resources: Vec<Value> = (0..10).map(|i| eob(&format!("e{i}"), true, 900)).collect();
        block_on(add_values(&mut d, &resources)).unwrap();
        let result = block_on(d.finish()).unwrap();
        assert_eq!(result.delivered, 0);
        assert_eq!(result.status(), 202);
        let queued = outbox::list(&p).unwrap();
        assert_eq!(queued.len(), result.queued.len());
        assert_eq!(queued.iter().map(|e| e.resources).sum::<usize>(), 10);
        assert!(queued.iter().any(|e| e.last_error.contains("500")));
        let tried = p.sent.borrow().len();
        assert_eq!(
            tried, 5,
            "one batch met the outage (5 attempts); the rest were queued untried"
        );

        // Still down: one more attempt (then the rest wait), nothing is lost.
        let attempts = |p: &FakePlatform| {
            outbox::list(p)
                .unwrap()
                .iter()
                .map(|e| e.attempts)
                .sum::<u32>()
        };
        let before = attempts(&p);
        let again = block_on(replay(&p, &config(ConnectMode::Bundle, 5_000))).unwrap();
        assert!(again.replayed.is_empty());
        assert_eq!(again.result.queued.len(), queued.len());
        assert_eq!(attempts(&p), before + 1);

        *down.borrow_mut() = false;
        let replayed = block_on(replay(&p, &config(ConnectMode::Bundle, 5_000))).unwrap();
        assert_eq!(replayed.result.delivered, 10);
        assert!(outbox::list(&p).unwrap().is_empty());
        let expected: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
        assert_eq!(*received.borrow(), expected);
    }

    #[test]
    fn batch_ids_are_stable_and_content_addressed() {
        let a = [item(&eob("1", true, 1)), item(&eob("2", true, 1))];
        let b = [item(&eob("1", true, 1)), item(&eob("2", true, 1))];
        let c = [item(&eob("1", true, 2)), item(&eob("2", true, 1))];
        assert_eq!(batch_id("-1", &a), batch_id("-1", &b));
        assert_ne!(batch_id("-1", &a), batch_id("-1", &c));
        assert_ne!(batch_id("-1", &a), batch_id("-2", &a));
    }

    #[test]
    fn resource_mode_posts_each_to_its_type() {
        let p = FakePlatform::new();
        connect(&p, Rc::default(), Rc::default());
        let mut d = Delivery::new(&p, config(ConnectMode::Resource, 700_000), "-1");
        block_on(add_values(&mut d, &[eob("a", true, 1), eob("b", false, 1)])).unwrap();
        let result = block_on(d.finish()).unwrap();
        assert_eq!((result.delivered, result.rejected), (1, 1));
        assert!(p
            .sent
            .borrow()
            .iter()
            .all(|r| r.uri().path() == "/fhir/ExplanationOfBenefit"));
    }

    #[test]
    fn connects_500s_are_told_apart() {
        let refusal = http::Response::builder()
            .status(500)
            .body(br#"{"detail":"1 validation error for Bundle"}"#.to_vec())
            .unwrap();
        assert!(!retryable(&refusal));
        let lfh = json!({"error_msg": "KafkaError{code=_MSG_TIMED_OUT}"}).to_string();
        let outage = http::Response::builder()
            .status(500)
            .body(serde_json::to_vec(&json!({"detail": lfh})).unwrap())
            .unwrap();
        assert!(retryable(&outage));
        let lfh = json!({"error_msg": "KafkaError{code=MSG_SIZE_TOO_LARGE}"}).to_string();
        let too_large = http::Response::builder()
            .status(500)
            .body(serde_json::to_vec(&json!({"detail": lfh})).unwrap())
            .unwrap();
        assert!(!retryable(&too_large));
    }
}
