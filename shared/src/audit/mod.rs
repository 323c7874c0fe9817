//! The accounting of disclosures (HIPAA, 45 CFR 164.528): every authorization, every read from CMS and
//! every delivery to connect, recorded as a FHIR `AuditEvent` ([`event`]) by the request that did it.
//!
//! Records are sealed like the tokens, in the `audit` log (oldest first, so the retention sweep only
//! ever looks at its head), each kept `audit_retention_days`. An event that names a patient is also
//! pointed to from that patient's own log (`audit-of:{patient hidden}`), so their accounting is read
//! newest first without scanning anyone else's. A record that cannot be written never fails the
//! request it describes: it is logged and counted (`/bluebutton/healthz`).

pub mod event;

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};

pub use event::{ids_hash, Action, Agent, Data, Event, IdsHash, Outcome, Peer};

use crate::config::AuditSettings;
use crate::crypto::hex;
use crate::error::Error;
use crate::keys::{self, logs};
use crate::store::log::{Log, WRITE_GRACE_SECS};
use crate::store::{Backing, Lifetime, Vault};

/// Expired records each new one sweeps on its way (the trail ages one record at a time, so this keeps
/// ahead of it).
const SWEEP_PER_RECORD: usize = 8;

/// A record in the `audit` log.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The patient's own log, and the slot pointing here in it.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    index: Option<(String, u64)>,
    #[serde(rename = "t")]
    recorded: i64,
    #[serde(rename = "x")]
    expires_at: i64,
    /// The AuditEvent's JSON.
    #[serde(rename = "e")]
    event: String,
}

/// An entry of a patient's log: the slot of their record in the `audit` log.
#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    #[serde(rename = "s")]
    slot: u64,
}

/// A patient's own log, by the keyed hash of their id.
fn patient_log<'v, 'a, P: Backing>(vault: &'v Vault<'a, P>, hidden: &str) -> Log<'v, 'a, P> {
    Log::new(vault, format!("{}:{hidden}", logs::AUDIT_OF_PATIENT))
}

/// An event recorded in this request, for `audit_to_connect`.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub patient: Option<String>,
    pub json: String,
}

/// One request's recorder: who acts in it, and what it recorded.
pub struct Audit<'a, P: Backing> {
    vault: &'a Vault<'a, P>,
    settings: AuditSettings,
    agent: Agent,
    recorded: RefCell<Vec<Recorded>>,
    /// Events recorded, and the time that took (for the request's log line and the bench).
    cost: Cell<(u32, time::Duration)>,
}

impl<'a, P: Backing> Audit<'a, P> {
    pub fn new(vault: &'a Vault<'a, P>, settings: AuditSettings, agent: Agent) -> Self {
        Audit {
            vault,
            settings,
            agent,
            recorded: RefCell::new(Vec::new()),
            cost: Cell::new((0, time::Duration::ZERO)),
        }
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The same recorder, acting for someone else from now on (the callback, once a session exists).
    pub fn act_as(&mut self, agent: Agent) {
        self.agent = agent;
    }

    /// Records `event`. Never fails: a record that cannot be written is logged and counted.
    pub fn record(&self, event: Event) {
        let started = self.vault.platform.now();
        let written = self.write(&event);
        let (count, spent) = self.cost.get();
        self.cost
            .set((count + 1, spent + (self.vault.platform.now() - started)));
        match written {
            Ok(json) => {
                if self.settings.to_connect {
                    self.recorded.borrow_mut().push(Recorded {
                        patient: event.patient.clone(),
                        json,
                    });
                }
            }
            Err(err) => {
                eprintln!(
                    "audit: the `{}` event (outcome {}) could not be recorded: {err}",
                    event.action.code(),
                    event.outcome.code()
                );
                if let Err(err) = self.vault.platform.increment(keys::AUDIT_FAILURES, 1) {
                    eprintln!("audit: the failure could not be counted either: {err}");
                }
            }
        }
    }

    /// How many events this request recorded, and how long writing them took.
    pub fn cost(&self) -> (u32, time::Duration) {
        self.cost.get()
    }

    /// What this request recorded, to deliver to connect (empty unless `audit_to_connect`).
    pub fn take_recorded(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.recorded.borrow_mut())
    }

    fn write(&self, event: &Event) -> Result<String, Error> {
        let vault = self.vault;
        let now = vault.platform.now();
        let recorded = instant(now);
        let mut id = [0u8; 16];
        vault.platform.fill(&mut id);
        let json = event.to_fhir(&hex(&id), &self.agent, &recorded).to_string();
        let trail = Log::new(vault, logs::AUDIT);
        let slot = trail.append()?;
        let index = match &event.patient {
            Some(patient) => {
                let hidden = vault.hide("patient", patient);
                let own = patient_log(vault, &hidden).append()?;
                Some((hidden, own))
            }
            None => None,
        };
        let entry = Entry {
            index: index.clone(),
            recorded: now.unix_timestamp(),
            expires_at: now.unix_timestamp() + self.settings.retention_days as i64 * 86_400,
            event: json,
        };
        vault.put(&trail.key(slot), &entry, Lifetime::Forever)?;
        if let Some((hidden, own)) = index {
            let log = patient_log(vault, &hidden);
            vault.put(&log.key(own), &Pointer { slot }, Lifetime::Forever)?;
        }
        sweep(vault, SWEEP_PER_RECORD)?;
        Ok(entry.event)
    }
}

/// An `instant`, to the millisecond, in UTC.
fn instant(at: time::OffsetDateTime) -> String {
    let at = at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// How many records could not be written, since the store began.
pub fn failures<P: Backing>(vault: &Vault<'_, P>) -> Result<i64, Error> {
    Ok(vault.platform.increment(keys::AUDIT_FAILURES, 0)?)
}

/// Removes up to `limit` records past their retention, oldest first (with their patients' pointers);
/// returns how many.
pub fn sweep<P: Backing>(vault: &Vault<'_, P>, limit: usize) -> Result<usize, Error> {
    let trail = Log::new(vault, logs::AUDIT);
    let mut walk = trail.walk()?;
    let now = vault.now();
    let mut swept = 0;
    for slot in walk.span.clone().take(limit.saturating_mul(16)) {
        if swept >= limit {
            break;
        }
        let key = trail.key(slot);
        match vault.get::<Entry>(&key)? {
            Some(entry) if entry.expires_at <= now => {
                if let Some((hidden, own)) = &entry.index {
                    vault.delete(&patient_log(vault, hidden).key(*own))?;
                }
                vault.delete(&key)?;
                walk.removed(slot);
                swept += 1;
            }
            // The oldest live record: every later one was recorded after it.
            Some(_) => {
                walk.kept();
                break;
            }
            None => walk.hole(slot),
        }
    }
    trail.finish(walk)?;
    // The patients' logs lose their entries with the records; their heads move past them when read.
    Ok(swept)
}

/// Which records a listing shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// One patient's (else everyone's: the operator's view).
    pub patient: Option<String>,
    /// Recorded at or after (Unix seconds).
    pub since: Option<i64>,
    pub count: usize,
    /// Only records before this position (the previous page's `next`).
    pub before: Option<u64>,
}

/// A page of records, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// The AuditEvents' JSON.
    pub events: Vec<String>,
    /// Where the next (older) page starts, if there is one.
    pub next: Option<u64>,
}

/// Slots a listing reads at most per event it shows: records swept away leave holes.
const READS_PER_EVENT: usize = 64;

/// The records `query` asks for, newest first.
pub fn list<P: Backing>(vault: &Vault<'_, P>, query: &Query) -> Result<Listing, Error> {
    let trail = Log::new(vault, logs::AUDIT);
    let own = query
        .patient
        .as_ref()
        .map(|patient| patient_log(vault, &vault.hide("patient", patient)));
    let walk = match &own {
        Some(log) => log.walk()?,
        None => trail.walk()?,
    };
    let end = query.before.map_or(walk.span.end, |b| b.min(walk.span.end));
    let now = vault.now();
    let mut listing = Listing::default();
    let mut budget = (query.count + 1).saturating_mul(READS_PER_EVENT);
    for position in (walk.span.start..end).rev() {
        if budget == 0 {
            // A long stretch of swept records: the next page goes on from here.
            listing.next = Some(position + 1);
            break;
        }
        budget -= 1;
        let slot = match &own {
            Some(log) => match vault.get::<Pointer>(&log.key(position))? {
                Some(pointer) => pointer.slot,
                None => continue,
            },
            None => position,
        };
        let Some(entry) = vault.get::<Entry>(&trail.key(slot))? else {
            continue;
        };
        if entry.expires_at <= now {
            continue;
        }
        if let Some(since) = query.since {
            // Slots are taken in time order, give or take a slow writer.
            if entry.recorded < since - WRITE_GRACE_SECS {
                break;
            }
            if entry.recorded < since {
                continue;
            }
        }
        if listing.events.len() == query.count {
            listing.next = Some(position + 1);
            break;
        }
        listing.events.push(entry.event);
    }
    if let Some(log) = own {
        // Moves the head of the patient's log past what the sweep removed.
        let mut walk = log.walk()?;
        for position in walk.span.clone().take(READS_PER_EVENT) {
            match vault.get::<Pointer>(&log.key(position))? {
                Some(_) => {
                    walk.kept();
                    break;
                }
                None => walk.hole(position),
            }
        }
        log.finish(walk)?;
    }
    Ok(listing)
}

#[cfg(test)]
mod tests;
