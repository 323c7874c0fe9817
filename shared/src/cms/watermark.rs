//! `since=last`: per patient and type, the newest `meta.lastUpdated` of the last complete fetch.

use crate::error::Error;
use crate::fhir::ResourceType;
use crate::keys;
use crate::ports::KeyValue;

pub fn load(
    store: &impl KeyValue,
    patient: &str,
    resource_type: ResourceType,
) -> Result<Option<String>, Error> {
    Ok(store
        .get(&keys::watermark(patient, resource_type.as_str()))?
        .and_then(|v| String::from_utf8(v).ok()))
}

pub fn store(
    store: &impl KeyValue,
    patient: &str,
    resource_type: ResourceType,
    newest: time::OffsetDateTime,
) -> Result<(), Error> {
    let stamp = newest
        .format(&time::format_description::well_known::Rfc3339)
        .expect("an OffsetDateTime formats as RFC 3339");
    store.set(
        &keys::watermark(patient, resource_type.as_str()),
        stamp.as_bytes(),
    )?;
    Ok(())
}

/// The filter that asks CMS for what changed since the watermark, when there is one.
pub fn since_filter(
    store: &impl KeyValue,
    patient: &str,
    resource_type: ResourceType,
) -> Result<Option<(String, String)>, Error> {
    Ok(load(store, patient, resource_type)?
        .map(|mark| ("_lastUpdated".into(), format!("gt{mark}"))))
}
