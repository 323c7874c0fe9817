//! The accounting of disclosures (HIPAA, 45 CFR 164.528): every authorization, every read from CMS and
//! every delivery to connect, recorded as a FHIR `AuditEvent` ([`event`]) by the request that did it.
//!
//! Records are sealed like the tokens, in the `audit` log (oldest first, so the retention sweep only
//! ever looks at its head), each kept `audit_retention_days`. Each request that records events about a
//! patient also leaves one pointer in that patient's own log (`audit-of:{patient hidden}`): the range of
//! `audit` slots its events took. A patient's accounting is read newest first through those ranges,
//! never by scanning everyone's, and a record costs two store writes, not four. A record that cannot be
//! written never fails the request it describes: it is logged and counted (`/bluebutton/healthz`).

pub mod event;

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};

pub use event::{ids_hash, Action, Agent, Data, Event, IdsHash, Outcome, Peer};

use crate::config::AuditSettings;
use crate::crypto::hex;
use crate::error::Error;
use crate::keys::{self, logs};
use crate::store::log::{Log, WRITE_GRACE_SECS};
use crate::store::{Backing, Lifetime, RecordError, Vault};

/// Every this many reservations of slots, the request that makes it sweeps expired records on its way
/// (a sweep costs a few store calls: most requests do without).
const SWEEP_EVERY_RESERVATIONS: u64 = 8;

/// Expired records one sweep removes at most: more than the reservations between two sweeps hold, so
/// the sweep keeps ahead of the trail.
const SWEEP_LIMIT: usize = 256;

/// Pointers of a patient's log a listing reads before it reads their ranges (a page usually needs the
/// newest few).
const POINTERS_PER_BATCH: usize = 64;

/// Slots a request takes at once in the `audit` log (one store write for up to this many records).
const SLOTS_PER_RESERVATION: u64 = 8;

/// How long reserved slots may wait to be filled: well inside [`WRITE_GRACE_SECS`], after which a walk
/// takes an empty slot for one that will never be filled.
const RESERVATION_SECS: i64 = 10;

/// How far past its first slot a range is read when the request that made it never closed it (it
/// crashed): farther than any one request records for one patient.
const OPEN_RANGE_SLOTS: u64 = 10_000;

/// A record in the `audit` log.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The patient's own log, and the slot pointing here in it.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    index: Option<(String, u64)>,
    /// Unix milliseconds.
    #[serde(rename = "t")]
    recorded_ms: i64,
    #[serde(rename = "x")]
    expires_at: i64,
    /// The AuditEvent's JSON.
    #[serde(rename = "e")]
    event: String,
}

/// An entry of a patient's log: the `audit` slots one request's events about them took, `from` to `to`
/// (other requests' records may lie between). `to` is written when the request ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pointer {
    #[serde(rename = "f")]
    from: u64,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    to: Option<u64>,
}

impl Pointer {
    /// The last slot the range may hold.
    fn last(&self) -> u64 {
        self.to.unwrap_or(self.from + OPEN_RANGE_SLOTS)
    }
}

/// A range this request is filling in a patient's log.
struct OpenRange {
    hidden: String,
    /// Its pointer's slot in the patient's log.
    at: u64,
    /// The pointer as the store holds it.
    stored: Pointer,
    /// The pointer as it must end: up to the last record written (`to` none: not one was).
    pointer: Pointer,
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
    ranges: RefCell<Vec<OpenRange>>,
    /// Slots reserved and not used yet, and when they were reserved.
    reserved: RefCell<(std::ops::Range<u64>, i64)>,
}

impl<'a, P: Backing> Audit<'a, P> {
    pub fn new(vault: &'a Vault<'a, P>, settings: AuditSettings, agent: Agent) -> Self {
        Audit {
            vault,
            settings,
            agent,
            recorded: RefCell::new(Vec::new()),
            cost: Cell::new((0, time::Duration::ZERO)),
            ranges: RefCell::new(Vec::new()),
            reserved: RefCell::new((0..0, 0)),
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
        self.outcome(&event, written);
    }

    fn outcome(&self, event: &Event, written: Result<String, Error>) {
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
                self.count_failure();
            }
        }
    }

    fn count_failure(&self) {
        if let Err(err) = self.vault.platform.increment(keys::AUDIT_FAILURES, 1) {
            eprintln!("audit: the failure could not be counted either: {err}");
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
        let (slot, sweeps) = self.next_slot(&trail, now.unix_timestamp())?;
        let index = match &event.patient {
            Some(patient) => Some(self.range_for(&vault.hide_patient(patient), slot)?),
            None => None,
        };
        let entry = Entry {
            index: index.clone(),
            recorded_ms: (now.unix_timestamp_nanos() / 1_000_000) as i64,
            expires_at: now.unix_timestamp() + self.settings.retention_days as i64 * 86_400,
            event: json,
        };
        vault.put(&trail.key(slot), &entry, Lifetime::Forever)?;
        if let Some((hidden, _)) = index {
            self.reached(&hidden, slot);
        }
        if sweeps {
            // The record is written: a failing sweep is the store's trouble, said in the log.
            if let Err(err) = sweep(vault, SWEEP_LIMIT) {
                eprintln!("audit: the retention sweep failed: {err}");
            }
        }
        Ok(entry.event)
    }

    /// A record of the patient's is at `slot` now: the range ends there, for the moment.
    fn reached(&self, hidden: &str, slot: u64) {
        let mut ranges = self.ranges.borrow_mut();
        if let Some(range) = ranges.iter_mut().find(|r| r.hidden == hidden) {
            range.pointer.to = Some(slot);
        }
    }

    /// The next of this request's reserved slots, reserving more when they are used up or old; and
    /// whether this reservation is the one that sweeps.
    fn next_slot(&self, trail: &Log<'_, '_, P>, now: i64) -> Result<(u64, bool), Error> {
        let mut reserved = self.reserved.borrow_mut();
        let mut sweeps = false;
        if reserved.0.is_empty() || now - reserved.1 > RESERVATION_SECS {
            let block = trail.reserve(SLOTS_PER_RESERVATION)?;
            let nth = (block.start - 1) / SLOTS_PER_RESERVATION;
            sweeps = nth.is_multiple_of(SWEEP_EVERY_RESERVATIONS);
            *reserved = (block, now);
        }
        let slot = reserved.0.start;
        reserved.0.start += 1;
        Ok((slot, sweeps))
    }

    /// The patient's pointer to this request's range, which is about to reach `slot`. The pointer is
    /// stored closed at the first record (a request that records one event about a
    /// patient writes it once); before a second record is written it is stored open, so a crash
    /// leaves it open, and the end of the request closes it again.
    fn range_for(&self, hidden: &str, slot: u64) -> Result<(String, u64), Error> {
        let mut ranges = self.ranges.borrow_mut();
        if let Some(range) = ranges.iter_mut().find(|r| r.hidden == hidden) {
            if range.stored.to.is_some_and(|to| to < slot) {
                let open = Pointer {
                    from: range.stored.from,
                    to: None,
                };
                let key = patient_log(self.vault, hidden).key(range.at);
                self.vault.put(&key, &open, Lifetime::Forever)?;
                range.stored = open;
            }
            return Ok((hidden.to_string(), range.at));
        }
        let log = patient_log(self.vault, hidden);
        let at = log.append()?;
        let stored = Pointer {
            from: slot,
            to: Some(slot),
        };
        self.vault.put(&log.key(at), &stored, Lifetime::Forever)?;
        ranges.push(OpenRange {
            hidden: hidden.to_string(),
            at,
            stored,
            pointer: Pointer {
                from: slot,
                to: None,
            },
        });
        Ok((hidden.to_string(), at))
    }
}

/// The request is over: its ranges are closed, so that a listing reads no slot past them.
impl<P: Backing> Drop for Audit<'_, P> {
    fn drop(&mut self) {
        for range in std::mem::take(self.ranges.get_mut()) {
            let key = patient_log(self.vault, &range.hidden).key(range.at);
            let closed = match range.pointer.to {
                Some(to) if range.stored.to == Some(to) => Ok(()),
                Some(_) => self.vault.put(&key, &range.pointer, Lifetime::Forever),
                // Not one record of the range was written: it points at nothing.
                None => self.vault.delete(&key),
            };
            if let Err(err) = closed {
                eprintln!("audit: a patient's range could not be closed: {err}");
                self.count_failure();
            }
        }
    }
}

/// An `instant`, to the millisecond, in UTC, always with three decimals (so instants sort as text too).
fn instant(at: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
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
        let entry = match vault.get::<Entry>(&key) {
            Ok(entry) => entry,
            Err(RecordError::Store(err)) => return Err(err.into()),
            Err(unreadable) => {
                // Sealed under another `token_key`, say: kept, and the sweep goes on past it.
                eprintln!("audit: the retention sweep skips a record: {unreadable}");
                walk.kept();
                continue;
            }
        };
        match entry {
            Some(entry) if entry.expires_at <= now => {
                if let Some((hidden, at)) = &entry.index {
                    // A range goes with its last record; one never closed (its request crashed)
                    // with its first.
                    let key = patient_log(vault, hidden).key(*at);
                    let done = |pointer: Pointer| pointer.to.unwrap_or(pointer.from) <= slot;
                    if vault.get::<Pointer>(&key)?.is_none_or(done) {
                        vault.delete(&key)?;
                    }
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
    let span = trail.walk()?.span;
    let end = query.before.map_or(span.end, |b| b.min(span.end));
    let mut page = Page {
        vault,
        trail: &trail,
        query,
        hidden: None,
        found: Vec::new(),
        listing: Listing::default(),
        budget: (query.count + 1).saturating_mul(READS_PER_EVENT),
        now: vault.now(),
    };
    let Some(patient) = &query.patient else {
        page.read(span.start, end)?;
        return Ok(page.finish());
    };
    let hidden = vault.hide_patient(patient);
    page.hidden = Some(hidden.clone());
    let own = patient_log(vault, &hidden);
    let mut walk = own.walk()?;
    // Newest first, a batch of pointers at a time; within a batch by their ranges' ends (concurrent
    // requests' ranges interleave), each slot read once.
    let mut below = end;
    let positions: Vec<u64> = walk.span.clone().rev().collect();
    'batches: for batch in positions.chunks(POINTERS_PER_BATCH) {
        let mut ranges = Vec::new();
        for at in batch {
            match vault.get::<Pointer>(&own.key(*at))? {
                Some(pointer) if pointer.to.is_none() && pointer.from < span.start => {
                    // Never closed, and its first record already swept: its request crashed.
                    vault.delete(&own.key(*at))?;
                }
                Some(pointer) => ranges.push(pointer),
                None => {}
            }
        }
        ranges.sort_by_key(|r| std::cmp::Reverse(r.last()));
        for range in ranges {
            let hi = (range.last() + 1).min(below);
            if hi <= range.from {
                continue;
            }
            if page.read(range.from, hi)? {
                break 'batches;
            }
            below = range.from;
        }
    }
    // Moves the head of the patient's log past the ranges the sweep removed.
    for at in walk.span.clone().take(READS_PER_EVENT) {
        match vault.get::<Pointer>(&own.key(at))? {
            Some(_) => {
                walk.kept();
                break;
            }
            None => walk.hole(at),
        }
    }
    own.finish(walk)?;
    Ok(page.finish())
}

/// A listing being read.
struct Page<'p, 'v, 'a, P: Backing> {
    vault: &'p Vault<'a, P>,
    trail: &'p Log<'v, 'a, P>,
    query: &'p Query,
    /// Only this patient's records (their ranges also hold others').
    hidden: Option<String>,
    /// Each record found, with when it was recorded (Unix milliseconds).
    found: Vec<(i64, String)>,
    listing: Listing,
    budget: usize,
    now: i64,
}

impl<P: Backing> Page<'_, '_, '_, P> {
    /// Reads slots `from..to`, newest first; `true` once the page is full or must stop.
    fn read(&mut self, from: u64, to: u64) -> Result<bool, Error> {
        for slot in (from..to).rev() {
            if self.budget == 0 {
                // A long stretch of swept or others' records: the next page goes on from here.
                self.listing.next = Some(slot + 1);
                return Ok(true);
            }
            self.budget -= 1;
            let entry = match self.vault.get::<Entry>(&self.trail.key(slot)) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(RecordError::Store(err)) => return Err(err.into()),
                Err(unreadable) => {
                    eprintln!("audit: a listing skips a record: {unreadable}");
                    continue;
                }
            };
            let theirs = match &self.hidden {
                Some(hidden) => entry.index.as_ref().is_some_and(|(h, _)| h == hidden),
                None => true,
            };
            if !theirs || entry.expires_at <= self.now {
                continue;
            }
            if let Some(since) = self.query.since {
                // Slots are taken in time order, give or take a slow writer.
                let recorded = entry.recorded_ms.div_euclid(1000);
                if recorded < since - RESERVATION_SECS - WRITE_GRACE_SECS {
                    return Ok(true);
                }
                if recorded < since {
                    continue;
                }
            }
            if self.found.len() == self.query.count {
                self.listing.next = Some(slot + 1);
                return Ok(true);
            }
            self.found.push((entry.recorded_ms, entry.event));
        }
        Ok(false)
    }

    /// The page, newest first: slots follow the order requests reserved them in, so records of
    /// requests that ran at the same time are put in time order here.
    fn finish(mut self) -> Listing {
        self.found.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        self.listing.events = self.found.into_iter().map(|(_, event)| event).collect();
        self.listing
    }
}

#[cfg(test)]
mod tests;
