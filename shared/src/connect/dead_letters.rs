//! Resources connect refused, each kept — sealed, with connect's answer — as an entry in the
//! `deadletters` log (what the admin listing shows), the resource itself beside it, for
//! `retention_days`; never dropped silently.

use serde::{Deserialize, Serialize};

use crate::connect::outbox::now_text;
use crate::error::Error;
use crate::keys::{self, logs};
use crate::store::log::Log;
use crate::store::{Backing, Lifetime, Vault};

/// A refused resource, as stored and as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Unique: the same resource refused twice is two dead letters.
    pub id: String,
    pub patient: String,
    pub resource_type: String,
    pub resource_id: String,
    /// Connect's status and answer.
    pub status: u16,
    pub detail: String,
    pub time: String,
    /// Kept until then (`retention_days`), unless replayed or deleted first.
    pub expires_at: i64,
    /// The kept resource's size.
    pub bytes: usize,
}

/// A resource connect refused.
pub struct Refusal<'a> {
    pub patient: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub status: u16,
    pub detail: &'a str,
    pub resource: &'a [u8],
}

/// Keeps a refused resource for `retention_days`; returns the dead letter's id.
pub fn put<P: Backing>(
    vault: &Vault<'_, P>,
    retention_days: u64,
    refusal: Refusal<'_>,
) -> Result<String, Error> {
    let log = Log::new(vault, logs::DEAD_LETTERS);
    let slot = log.append()?;
    let key = log.key(slot);
    vault.put_blob(&keys::attachment(&key), refusal.resource)?;
    let letter = DeadLetter {
        id: slot.to_string(),
        patient: refusal.patient.to_string(),
        resource_type: refusal.resource_type.to_string(),
        resource_id: refusal.resource_id.to_string(),
        status: refusal.status,
        detail: refusal.detail.to_string(),
        time: now_text(vault),
        expires_at: vault.now() + retention_days as i64 * 86_400,
        bytes: refusal.resource.len(),
    };
    // The record's own expiry is managed here, so that its resource always goes with it.
    vault.put(&key, &letter, Lifetime::Forever)?;
    Ok(letter.id)
}

/// The dead letters still within their retention, oldest first; expired ones are removed on the way.
pub fn list<P: Backing>(vault: &Vault<'_, P>) -> Result<Vec<DeadLetter>, Error> {
    let log = Log::new(vault, logs::DEAD_LETTERS);
    let mut walk = log.walk()?;
    let now = vault.now();
    let mut letters = Vec::new();
    for slot in walk.span.clone() {
        let key = log.key(slot);
        match vault.get::<DeadLetter>(&key)? {
            Some(letter) if letter.expires_at > now => {
                walk.kept();
                letters.push(letter);
            }
            Some(letter) => {
                remove_entry(vault, &key, &letter)?;
                walk.removed(slot);
            }
            None => walk.hole(slot),
        }
    }
    log.finish(walk)?;
    Ok(letters)
}

fn remove_entry<P: Backing>(
    vault: &Vault<'_, P>,
    key: &str,
    letter: &DeadLetter,
) -> Result<(), Error> {
    vault.delete(key)?;
    vault.delete_blob(&keys::attachment(key), letter.bytes)
}

fn key_of<P: Backing>(vault: &Vault<'_, P>, id: &str) -> Result<String, Error> {
    let slot: u64 = id
        .parse()
        .map_err(|_| Error::NotFound(format!("no dead letter `{id}`")))?;
    Ok(Log::new(vault, logs::DEAD_LETTERS).key(slot))
}

/// A dead letter and the resource it keeps.
pub fn get<P: Backing>(vault: &Vault<'_, P>, id: &str) -> Result<(DeadLetter, Vec<u8>), Error> {
    let key = key_of(vault, id)?;
    let letter = vault
        .get::<DeadLetter>(&key)?
        .filter(|l| l.expires_at > vault.now())
        .ok_or_else(|| Error::NotFound(format!("no dead letter `{id}`")))?;
    let resource = vault.get_blob(&keys::attachment(&key), letter.bytes)?;
    Ok((letter, resource))
}

/// Removes a dead letter and its resource (once replayed, or at an admin's request).
pub fn remove<P: Backing>(vault: &Vault<'_, P>, letter: &DeadLetter) -> Result<(), Error> {
    remove_entry(vault, &key_of(vault, &letter.id)?, letter)
}
