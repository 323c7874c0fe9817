//! Batches connect could not take now, kept until it confirms them. Each batch is a record (what the
//! outbox lists) and, apart from it, its payload.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keys;
use crate::ports::KeyValue;

/// A queued batch, as stored and as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxEntry {
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
    /// Position within its delivery, so a replay keeps the original order.
    #[serde(default)]
    pub seq: usize,
}

/// Queues a batch: its payload first, so a record never points at nothing.
pub fn put(store: &impl KeyValue, entry: &OutboxEntry, payload: &[u8]) -> Result<(), Error> {
    store.set(&keys::outbox_payload(&entry.id), payload)?;
    update(store, entry)
}

/// Rewrites a batch's record (its attempts and last error).
pub fn update(store: &impl KeyValue, entry: &OutboxEntry) -> Result<(), Error> {
    store.set(
        &keys::outbox(&entry.id),
        &serde_json::to_vec(entry).expect("serializable"),
    )?;
    Ok(())
}

pub fn payload(store: &impl KeyValue, id: &str) -> Result<Option<Vec<u8>>, Error> {
    Ok(store.get(&keys::outbox_payload(id))?)
}

/// Removes a batch connect has confirmed: its record first, so a payload is never listed without one.
pub fn remove(store: &impl KeyValue, id: &str) -> Result<(), Error> {
    store.delete(&keys::outbox(id))?;
    store.delete(&keys::outbox_payload(id))?;
    Ok(())
}

/// The queued batches, oldest first.
pub fn list(store: &impl KeyValue) -> Result<Vec<OutboxEntry>, Error> {
    let mut entries: Vec<OutboxEntry> = read_records(store, keys::OUTBOX_PREFIX)?;
    entries.sort_by(|a, b| (&a.queued_at, a.seq).cmp(&(&b.queued_at, b.seq)));
    Ok(entries)
}

/// Every record under a prefix. An unreadable record is an error, not a silent gap.
pub(crate) fn read_records<T: serde::de::DeserializeOwned>(
    store: &impl KeyValue,
    prefix: &str,
) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    for key in store.keys()?.into_iter().filter(|k| k.starts_with(prefix)) {
        if let Some(value) = store.get(&key)? {
            let record = serde_json::from_slice(&value).map_err(|e| {
                crate::ports::StoreError::Backend(format!("the record `{key}` is unreadable: {e}"))
            })?;
            out.push(record);
        }
    }
    Ok(out)
}
