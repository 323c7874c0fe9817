//! Delivery to LinuxForHealth connect, losing nothing. Resources go in CMS order, repaired where R4 needs
//! it, in Bundles kept under a byte budget (connect produces each to Kafka, base64-inflated, under a 1 MB
//! cap), paced under connect's rate limit. Every batch is written to the outbox before it is posted and
//! leaves it only when connect confirms it, so a crash at any point leaves each resource delivered or
//! queued. What connect refuses as invalid is isolated — by the entries its answer names, else by
//! halving — and kept as a dead letter; everything else connect says is an outage, and waits. Before
//! new batches go out, what already waits is replayed, oldest first, so connect never receives an older
//! version after a newer one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::audit::{ids_hash, Action, Audit, Data, Event, Outcome as Ended, Peer, Recorded};
use crate::config::{ConnectMode, ConnectSettings, Repair};
use crate::connect::dead_letters::{self, Refusal};
use crate::connect::outbox::{self, Claim, NewBatch, OutboxEntry};
use crate::connect::outcome::{post, Outcome, Pacer};
use crate::connect::repair;
use crate::crypto::hex;
use crate::error::Error;
use crate::fhir::{self, Resource};
use crate::ports::Platform;
use crate::retry::RetryPolicy;
use crate::store::Vault;

/// What a delivery did; `fhir-fetch?return_cms=false`, `connect-push` and the sync answer with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryResult {
    /// Resources connect accepted.
    pub delivered: usize,
    /// Connect's envelopes, as it sent them (either variant).
    #[schema(value_type = Vec<Object>)]
    pub batches: Vec<Value>,
    /// Outbox ids of batches kept for later: connect was unavailable.
    pub queued: Vec<String>,
    /// Resources connect refused (each kept as a dead letter).
    pub rejected: usize,
    /// Their dead letters' ids.
    pub dead_letters: Vec<String>,
    /// Resources that went out with missing required elements marked absent.
    pub repaired: usize,
    /// Resources delivered from the outbox (older batches) before this delivery's own.
    pub replayed: usize,
}

impl DeliveryResult {
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
    /// Repair marked elements absent in it.
    repaired: bool,
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

/// What a new delivery does first about the batches already waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Before {
    /// Replays them, oldest first, until then (Unix seconds; `None`: all of them). Whatever is still
    /// waiting after that makes this delivery queue behind it.
    Drain(Option<i64>),
    /// Queues behind them without trying: it is known that connect is unavailable.
    QueueBehind(String),
}

/// How long a claim on a batch lasts; the delivery posting it renews it before every attempt, so a
/// batch whose delivery crashed waits no longer than this.
const CLAIM_SECS: i64 = 30;

/// Delivers resources as they come (page by page), keeping at most one batch in memory.
pub struct Delivery<'a, P: Platform> {
    vault: &'a Vault<'a, P>,
    /// Where each batch's fate is recorded (none: this delivery carries the audit trail itself).
    audit: Option<&'a Audit<'a, P>>,
    settings: ConnectSettings,
    patient: String,
    /// Who this delivery is, in the claims it makes.
    me: String,
    pending: Vec<Item>,
    pending_bytes: usize,
    /// Set when connect is unavailable, or older batches still wait: later batches are queued behind
    /// them, untried, so order holds.
    queue_only: Option<String>,
    pacer: Pacer,
    retries: RetryPolicy,
    pub result: DeliveryResult,
}

impl<'a, P: Platform> Delivery<'a, P> {
    /// A delivery for `patient`'s resources, which first deals with what the outbox holds (see
    /// [`Before`]), so nothing new overtakes what waits.
    pub async fn start(
        vault: &'a Vault<'a, P>,
        audit: Option<&'a Audit<'a, P>>,
        settings: ConnectSettings,
        patient: &str,
        before: Before,
    ) -> Result<Delivery<'a, P>, Error> {
        let mut delivery = Delivery::without_drain(vault, audit, settings, patient);
        match before {
            Before::Drain(until) => delivery.drain(until).await?,
            Before::QueueBehind(why) => delivery.queue_only = Some(why),
        }
        Ok(delivery)
    }

    fn without_drain(
        vault: &'a Vault<'a, P>,
        audit: Option<&'a Audit<'a, P>>,
        settings: ConnectSettings,
        patient: &str,
    ) -> Self {
        let mut me = [0u8; 9];
        vault.platform.fill(&mut me);
        Delivery {
            pacer: Pacer::new(settings.rate_limit),
            vault,
            audit,
            settings,
            patient: patient.to_string(),
            me: URL_SAFE_NO_PAD.encode(me),
            pending: Vec::new(),
            pending_bytes: BUNDLE_OVERHEAD,
            queue_only: None,
            retries: RetryPolicy::default(),
            result: DeliveryResult::default(),
        }
    }

    pub async fn add(&mut self, resources: &[Resource]) -> Result<(), Error> {
        for resource in resources {
            let item = self.prepare(resource)?;
            if self.settings.mode == ConnectMode::Resource {
                self.send(vec![item]).await?;
                continue;
            }
            let size = item.json.len() + 16;
            if !self.pending.is_empty() && self.pending_bytes + size > self.settings.batch_bytes {
                let batch = std::mem::take(&mut self.pending);
                self.pending_bytes = BUNDLE_OVERHEAD;
                self.send(batch).await?;
            }
            self.pending_bytes += size;
            self.pending.push(item);
        }
        Ok(())
    }

    /// Sends what is left. When this returns `Ok`, every resource handed in is delivered, queued or a
    /// dead letter: only then may a cursor move past them.
    pub async fn finish(mut self) -> Result<DeliveryResult, Error> {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.send(batch).await?;
        }
        Ok(self.result)
    }

    fn prepare(&mut self, resource: &Resource) -> Result<Item, Error> {
        let mut json = resource.json.get().as_bytes().to_vec();
        let mut repaired = false;
        if self.settings.repair == Repair::DataAbsentReason {
            let repaired_json = repair::repair(&json).map_err(|e| {
                Error::BadRequest(format!("{} is not FHIR: {e}", resource.resource_type))
            })?;
            if let Some(fixed) = repaired_json {
                json = fixed;
                repaired = true;
                self.result.repaired += 1;
            }
        }
        Ok(Item {
            resource_type: resource.resource_type.clone(),
            id: resource.id.clone(),
            json,
            repaired,
        })
    }

    fn envelope(&self, items: &[Item]) -> (String, Vec<u8>) {
        match self.settings.mode {
            ConnectMode::Resource => (
                format!("/fhir/{}", items[0].resource_type),
                items[0].json.clone(),
            ),
            ConnectMode::Bundle => (
                "/fhir/Bundle".to_string(),
                bundle_bytes(&batch_id(&self.patient, items), items),
            ),
        }
    }

    fn claim(&self) -> Claim {
        Claim {
            by: self.me.clone(),
            until: self.vault.now() + CLAIM_SECS,
        }
    }

    /// Sends one batch: into the outbox first, then to connect, and out of the outbox once connect has
    /// it. A refused batch is taken apart until each refused resource stands alone.
    async fn send(&mut self, items: Vec<Item>) -> Result<(), Error> {
        let mut work = vec![items];
        while let Some(items) = work.pop() {
            let (target, payload) = self.envelope(&items);
            let claim = self.queue_only.is_none().then(|| self.claim());
            let entry = outbox::put(
                self.vault,
                NewBatch {
                    patient: &self.patient,
                    target: target.clone(),
                    resources: items.len(),
                    payload: &payload,
                    claim,
                    waiting_because: self
                        .queue_only
                        .as_ref()
                        .map(|why| format!("not tried yet: {why}")),
                },
            )?;
            if let Some(why) = &self.queue_only {
                self.note_batch(
                    Action::Delivered,
                    Ended::MinorFailure,
                    format!("queued in the outbox as {}, not tried: {why}", entry.id),
                    &entry,
                    &items,
                    None,
                );
                self.result.queued.push(entry.id);
                continue;
            }
            let outcome = self.post(&entry, &payload).await?;
            self.settle(&entry, items, outcome, &mut work)?;
        }
        Ok(())
    }

    /// Posts a batch this delivery has claimed, renewing the claim before every attempt.
    async fn post(&mut self, entry: &OutboxEntry, payload: &[u8]) -> Result<Outcome, Error> {
        let url = format!("{}{}", self.settings.url, entry.target);
        let (vault, slot) = (self.vault, entry.slot());
        let me = self.me.clone();
        let renew = || {
            let claim = Claim {
                by: me.clone(),
                until: vault.now() + CLAIM_SECS,
            };
            outbox::renew(vault, slot, claim)
        };
        post(
            vault.platform,
            &mut self.pacer,
            &self.retries,
            &url,
            payload,
            renew,
        )
        .await
    }

    /// Acts on connect's answer for a batch in the outbox (`entry`, claimed by this delivery).
    fn settle(
        &mut self,
        entry: &OutboxEntry,
        mut items: Vec<Item>,
        outcome: Outcome,
        work: &mut Vec<Vec<Item>>,
    ) -> Result<(), Error> {
        match outcome {
            Outcome::Delivered(envelope) => {
                outbox::remove(self.vault, entry)?;
                let desc = format!("connect accepted {} resources", items.len());
                let location = record_location(&envelope);
                self.note_batch(
                    Action::Delivered,
                    Ended::Success,
                    desc,
                    entry,
                    &items,
                    location,
                );
                self.result.delivered += items.len();
                self.result.batches.push(envelope);
            }
            Outcome::Unavailable(why) => {
                outbox::release(self.vault, entry, &why)?;
                let desc = format!("queued in the outbox as {}: {why}", entry.id);
                self.note_batch(
                    Action::Delivered,
                    Ended::MinorFailure,
                    desc,
                    entry,
                    &items,
                    None,
                );
                self.result.queued.push(entry.id.clone());
                self.queue_only = Some(why);
            }
            Outcome::Invalid {
                status,
                detail,
                culprits,
            } if items.len() > 1
                && culprits.iter().all(|&i| i < items.len())
                && !culprits.is_empty() =>
            {
                // Connect named the refused entries: they are dead letters, the rest goes again.
                // Dead letters are written before the batch leaves the outbox.
                let mut refused: Vec<Item> =
                    culprits.iter().rev().map(|&i| items.remove(i)).collect();
                refused.reverse();
                for item in &refused {
                    self.dead_letter(item, status, &detail)?;
                }
                outbox::remove(self.vault, entry)?;
                if !items.is_empty() {
                    work.push(items);
                }
            }
            Outcome::Invalid { .. } | Outcome::TooLarge { .. } if items.len() > 1 => {
                let second = items.split_off(items.len() / 2);
                // The halves are queued again before the batch leaves the outbox; the first half
                // goes first, so order holds.
                outbox::remove(self.vault, entry)?;
                work.push(second);
                work.push(items);
            }
            Outcome::Invalid { status, detail, .. } | Outcome::TooLarge { status, detail } => {
                self.dead_letter(&items[0], status, &detail)?;
                outbox::remove(self.vault, entry)?;
            }
        }
        Ok(())
    }

    fn dead_letter(&mut self, item: &Item, status: u16, detail: &str) -> Result<(), Error> {
        let id = dead_letters::put(
            self.vault,
            self.settings.retention_days,
            Refusal {
                patient: &self.patient,
                resource_type: &item.resource_type,
                resource_id: &item.id,
                status,
                detail,
                resource: &item.json,
            },
        )?;
        if let Some(audit) = self.audit {
            let data = Data {
                resource_type: item.resource_type.clone(),
                ids_hash: ids_hash([(item.resource_type.as_str(), item.id.as_str())]),
                query: None,
                details: vec![
                    ("deadLetter", id.clone()),
                    ("connectStatus", status.to_string()),
                    ("repaired", u8::from(item.repaired).to_string()),
                ],
            };
            audit.record(
                Event::new(
                    Action::DeadLettered,
                    Ended::SeriousFailure,
                    format!("connect refused it ({status}); kept as dead letter {id}"),
                )
                .patient(&self.patient)
                .peer(Peer::Connect)
                .data(data),
            );
        }
        self.result.rejected += 1;
        self.result.dead_letters.push(id);
        Ok(())
    }

    /// Records what became of a batch of this delivery's own.
    fn note_batch(
        &self,
        action: Action,
        ended: Ended,
        desc: String,
        entry: &OutboxEntry,
        items: &[Item],
        location: Option<String>,
    ) {
        let Some(audit) = self.audit else { return };
        let mut types: Vec<&str> = items.iter().map(|i| i.resource_type.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        let mut details = vec![
            ("outbox", entry.id.clone()),
            ("resources", items.len().to_string()),
            (
                "repaired",
                items.iter().filter(|i| i.repaired).count().to_string(),
            ),
        ];
        if self.settings.mode == ConnectMode::Bundle {
            details.push(("batch", batch_id(&self.patient, items)));
        }
        if let Some(location) = location {
            details.push(("dataRecordLocation", location));
        }
        let data = Data {
            resource_type: types.join(","),
            ids_hash: ids_hash(
                items
                    .iter()
                    .map(|i| (i.resource_type.as_str(), i.id.as_str())),
            ),
            query: None,
            details,
        };
        audit.record(
            Event::new(action, ended, desc)
                .patient(&self.patient)
                .peer(Peer::Connect)
                .data(data),
        );
    }

    /// Records what became of a replayed outbox batch.
    fn note_replay(
        &self,
        entry: &OutboxEntry,
        ended: Ended,
        desc: String,
        location: Option<String>,
    ) {
        let Some(audit) = self.audit else { return };
        let mut details = vec![
            ("outbox", entry.id.clone()),
            ("resources", entry.resources.to_string()),
            ("attempts", (entry.attempts + 1).to_string()),
        ];
        if let Some(location) = location {
            details.push(("dataRecordLocation", location));
        }
        // What was posted: a Bundle, or (resource mode) the resource its target names.
        let resource_type = entry.target.rsplit('/').next().unwrap_or_default();
        let data = Data {
            resource_type: resource_type.to_string(),
            details,
            ..Data::default()
        };
        audit.record(
            Event::new(Action::Replayed, ended, desc)
                .patient(&entry.patient)
                .peer(Peer::Connect)
                .data(data),
        );
    }

    /// Replays the outbox, oldest first, each batch under a claim so no two deliveries post it at
    /// once. Stops when connect is unavailable (then this delivery only queues), or at `until`.
    async fn drain(&mut self, until: Option<i64>) -> Result<(), Error> {
        let span = outbox::span(self.vault)?;
        for slot in span {
            while let Some(seen) = outbox::get(self.vault, slot)? {
                let now = self.vault.now();
                if until.is_some_and(|until| now >= until) {
                    self.queue_only = Some("older batches still wait in the outbox".into());
                    return Ok(());
                }
                if seen.value.claimed_by_other(&self.me, now) {
                    // Another delivery is posting it: wait, so nothing behind it goes first (a crashed
                    // one's claim lapses within CLAIM_SECS).
                    self.vault
                        .platform
                        .sleep(std::time::Duration::from_millis(200))
                        .await;
                    continue;
                }
                if !outbox::try_claim(self.vault, &seen, self.claim()).await? {
                    continue;
                }
                self.replay(seen.value).await?;
                if self.queue_only.is_some() {
                    return Ok(());
                }
                break;
            }
        }
        Ok(())
    }

    /// Posts one claimed outbox batch again.
    async fn replay(&mut self, entry: OutboxEntry) -> Result<(), Error> {
        let payload = outbox::payload(self.vault, &entry)?;
        match self.post(&entry, &payload).await? {
            Outcome::Delivered(envelope) => {
                outbox::remove(self.vault, &entry)?;
                let desc = format!(
                    "connect accepted outbox batch {} ({} resources)",
                    entry.id, entry.resources
                );
                self.note_replay(&entry, Ended::Success, desc, record_location(&envelope));
                self.result.replayed += entry.resources;
                self.result.batches.push(envelope);
            }
            Outcome::Unavailable(why) => {
                outbox::release(self.vault, &entry, &why)?;
                let desc = format!("outbox batch {} still waits: {why}", entry.id);
                self.note_replay(&entry, Ended::MinorFailure, desc, None);
                self.result.queued.push(entry.id.clone());
                self.queue_only = Some(why);
            }
            // Some of it is refused now: its resources go again through the splitter, which keeps
            // each refused one as a dead letter and hands the rest on (repaired, if repair is on).
            refused => {
                let resources = fhir::resources_in(&payload).map_err(|e| {
                    Error::Store(crate::ports::StoreError::Backend(format!(
                        "the outbox entry {} holds an unreadable payload: {e}",
                        entry.id
                    )))
                })?;
                let items = resources
                    .iter()
                    .map(|r| self.prepare(r))
                    .collect::<Result<Vec<_>, _>>()?;
                let patient = std::mem::replace(&mut self.patient, entry.patient.clone());
                let mut work = Vec::new();
                self.settle(&entry, items, refused, &mut work)?;
                // `work` is a stack: the first batch to send is last.
                for batch in work.into_iter().rev() {
                    self.send(batch).await?;
                }
                self.patient = patient;
            }
        }
        Ok(())
    }
}

/// `POST /bluebutton/connect/outbox/replay`: the whole outbox, oldest first.
pub async fn replay_outbox<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: Option<&'a Audit<'a, P>>,
    settings: ConnectSettings,
) -> Result<DeliveryResult, Error> {
    let mut delivery = Delivery::without_drain(vault, audit, settings, "-");
    delivery.drain(None).await?;
    Ok(delivery.result)
}

/// `audit_to_connect`: the AuditEvents this request recorded go to connect through the outbox, like any
/// batch (the longitudinal record then holds its own provenance). `post` is false where connect may not
/// be called (the callback): they are queued, and the next delivery replays them. Their own delivery is
/// not audited, or it would never end.
async fn deliver_audit_trail<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    recorded: Vec<Recorded>,
    settings: ConnectSettings,
    post: bool,
) -> Result<(), Error> {
    let mut by_patient: Vec<(String, Vec<Resource>)> = Vec::new();
    for recorded in recorded {
        let patient = recorded.patient.unwrap_or_else(|| "-".into());
        let raw = serde_json::value::RawValue::from_string(recorded.json)
            .map_err(|e| Error::BadRequest(format!("an AuditEvent is not JSON: {e}")))?;
        let resource = Resource::from_raw(raw)
            .map_err(|e| Error::BadRequest(format!("an AuditEvent is not FHIR: {e}")))?;
        match by_patient.iter_mut().find(|(p, _)| *p == patient) {
            Some((_, events)) => events.push(resource),
            None => by_patient.push((patient, vec![resource])),
        }
    }
    for (patient, events) in by_patient {
        let before = match post {
            true => Before::Drain(Some(vault.now())),
            false => Before::QueueBehind("recorded where connect is not called".into()),
        };
        let mut delivery = Delivery::start(vault, None, settings.clone(), &patient, before).await?;
        delivery.add(&events).await?;
        delivery.finish().await?;
    }
    Ok(())
}

/// Hands the AuditEvents this request recorded to connect, when `audit_to_connect` is on (`post`: now;
/// else queued in the outbox). A failure is logged: the events stay in the trail either way.
pub async fn audit_to_connect<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: &Audit<'a, P>,
    post: bool,
) {
    let recorded = audit.take_recorded();
    if recorded.is_empty() {
        return;
    }
    let delivered = match ConnectSettings::load(vault.platform) {
        Ok(settings) => deliver_audit_trail(vault, recorded, settings, post).await,
        Err(err) => Err(err),
    };
    if let Err(err) = delivered {
        eprintln!("audit: the AuditEvents could not be handed to connect: {err}");
    }
}

/// Where connect put the record (`data_record_location`), from either envelope variant.
fn record_location(envelope: &Value) -> Option<String> {
    match envelope {
        Value::Object(map) => match map.get("data_record_location") {
            Some(Value::String(location)) => Some(location.clone()),
            _ => map.values().find_map(record_location),
        },
        Value::Array(items) => items.iter().find_map(record_location),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
