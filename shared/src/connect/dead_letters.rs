//! Resources connect refused, each kept with connect's answer (and, apart from that record, the resource
//! itself) so an admin can see them; never dropped.

use serde::{Deserialize, Serialize};

use crate::connect::outbox::read_records;
use crate::error::Error;
use crate::keys;
use crate::ports::KeyValue;

/// A refused resource, as stored and as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub patient: String,
    pub resource_type: String,
    pub id: String,
    /// Connect's status and answer.
    pub status: u16,
    pub detail: String,
    pub time: String,
}

/// Keeps a refused resource; returns its record's key.
pub fn put(store: &impl KeyValue, letter: &DeadLetter, resource: &[u8]) -> Result<String, Error> {
    let key = keys::dead_letter(&letter.patient, &letter.resource_type, &letter.id);
    store.set(&keys::dead_letter_resource(&key), resource)?;
    store.set(&key, &serde_json::to_vec(letter).expect("serializable"))?;
    Ok(key)
}

pub fn list(store: &impl KeyValue) -> Result<Vec<DeadLetter>, Error> {
    read_records(store, keys::DEAD_LETTER_PREFIX)
}
