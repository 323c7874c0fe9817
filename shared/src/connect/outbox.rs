//! Batches connect could not take now, kept — sealed, oldest first — until it confirms them. Each batch is
//! an entry in the `outbox` log (what the admin listing shows) with its payload beside it, chunked
//! under the store's value limit, so listing the outbox reads no payload.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keys::{self, logs};
use crate::store::log::Log;
use crate::store::{Backing, Lifetime, Vault, Versioned};

/// A queued batch, as stored and as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxEntry {
    /// Its place in the outbox: ids sort as batches were queued.
    pub id: String,
    pub patient: String,
    /// Where on connect it goes, e.g. `/fhir/Bundle`.
    pub target: String,
    pub resources: usize,
    pub bytes: usize,
    pub attempts: u32,
    pub last_error: String,
    pub queued_at: String,
    pub updated_at: String,
    /// Set while one delivery posts it: no other delivers it at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

/// Who is delivering a batch, and until when (past it, the claim is abandoned: a crash, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claim {
    pub by: String,
    pub until: i64,
}

impl OutboxEntry {
    pub fn slot(&self) -> u64 {
        self.id.parse().expect("outbox ids are slots")
    }

    pub fn claimed_by_other(&self, me: &str, now: i64) -> bool {
        self.claim
            .as_ref()
            .is_some_and(|c| c.by != me && c.until > now)
    }
}

/// A batch about to be queued.
pub struct NewBatch<'a> {
    pub patient: &'a str,
    pub target: String,
    pub resources: usize,
    pub payload: &'a [u8],
    /// The delivery that will post it now (none: it waits for a replay).
    pub claim: Option<Claim>,
    /// Why it waits untried, when it does.
    pub waiting_because: Option<String>,
}

fn key<P: Backing>(vault: &Vault<'_, P>, slot: u64) -> String {
    Log::new(vault, logs::OUTBOX).key(slot)
}

/// Queues a batch at the end of the outbox (write-ahead: before it is posted): its payload first, so
/// an entry never points at nothing.
pub fn put<P: Backing>(vault: &Vault<'_, P>, batch: NewBatch<'_>) -> Result<OutboxEntry, Error> {
    let log = Log::new(vault, logs::OUTBOX);
    let slot = log.append()?;
    let key = log.key(slot);
    vault.put_blob(&keys::attachment(&key), batch.payload)?;
    let now = now_text(vault);
    let entry = OutboxEntry {
        id: slot.to_string(),
        patient: batch.patient.to_string(),
        target: batch.target,
        resources: batch.resources,
        bytes: batch.payload.len(),
        attempts: 0,
        last_error: batch.waiting_because.unwrap_or_default(),
        queued_at: now.clone(),
        updated_at: now,
        claim: batch.claim,
    };
    vault.put(&key, &entry, Lifetime::Forever)?;
    Ok(entry)
}

/// The entry in `slot`, as stored now.
pub fn get<P: Backing>(
    vault: &Vault<'_, P>,
    slot: u64,
) -> Result<Option<Versioned<OutboxEntry>>, Error> {
    Ok(vault.get_versioned(&key(vault, slot))?)
}

/// Claims an entry read as `seen` for the delivery `claim` names; `false` when another got there first.
pub async fn try_claim<P: Backing>(
    vault: &Vault<'_, P>,
    seen: &Versioned<OutboxEntry>,
    claim: Claim,
) -> Result<bool, Error> {
    let claimed = with_claim(seen, claim);
    vault
        .claim(
            &key(vault, seen.value.slot()),
            seen,
            &claimed,
            Lifetime::Forever,
        )
        .await
}

fn with_claim(seen: &Versioned<OutboxEntry>, claim: Claim) -> OutboxEntry {
    let mut claimed = seen.value.clone();
    claimed.claim = Some(claim);
    claimed
}

/// Extends this delivery's claim on the batch in `slot`; `false` when the claim is no longer its own.
pub fn renew<P: Backing>(vault: &Vault<'_, P>, slot: u64, claim: Claim) -> Result<bool, Error> {
    let Some(seen) = get(vault, slot)? else {
        return Ok(false);
    };
    if seen.value.claim.as_ref().is_none_or(|c| c.by != claim.by) {
        return Ok(false);
    }
    // Only the holder extends a claim, so no other claimant can race this swap.
    let claimed = with_claim(&seen, claim);
    vault.swap(&key(vault, slot), &seen, &claimed, Lifetime::Forever)
}

/// Gives a claimed batch back to the outbox, noting the attempt and why it failed.
pub fn release<P: Backing>(
    vault: &Vault<'_, P>,
    entry: &OutboxEntry,
    error: &str,
) -> Result<(), Error> {
    let mut released = entry.clone();
    released.claim = None;
    released.attempts += 1;
    released.last_error = error.to_string();
    released.updated_at = now_text(vault);
    vault.put(&key(vault, entry.slot()), &released, Lifetime::Forever)
}

pub fn payload<P: Backing>(vault: &Vault<'_, P>, entry: &OutboxEntry) -> Result<Vec<u8>, Error> {
    let key = key(vault, entry.slot());
    Ok(vault.get_blob(&keys::attachment(&key), entry.bytes)?)
}

/// Removes a batch connect has confirmed (or whose resources were all handed on again): its entry
/// first, so a payload is never listed without one.
pub fn remove<P: Backing>(vault: &Vault<'_, P>, entry: &OutboxEntry) -> Result<(), Error> {
    let key = key(vault, entry.slot());
    vault.delete(&key)?;
    vault.delete_blob(&keys::attachment(&key), entry.bytes)
}

/// The slots the outbox may hold, oldest first.
pub fn span<P: Backing>(vault: &Vault<'_, P>) -> Result<std::ops::Range<u64>, Error> {
    Ok(Log::new(vault, logs::OUTBOX).walk()?.span)
}

/// The queued batches, oldest first.
pub fn list<P: Backing>(vault: &Vault<'_, P>) -> Result<Vec<OutboxEntry>, Error> {
    let log = Log::new(vault, logs::OUTBOX);
    let mut walk = log.walk()?;
    let mut entries = Vec::new();
    for slot in walk.span.clone() {
        match vault.get::<OutboxEntry>(&log.key(slot))? {
            Some(entry) => {
                walk.kept();
                entries.push(entry);
            }
            None => walk.hole(slot),
        }
    }
    log.finish(walk)?;
    Ok(entries)
}

pub(crate) fn now_text<P: Backing>(vault: &Vault<'_, P>) -> String {
    vault
        .platform
        .now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
