//! Every key of the key-value store, formatted in one place. One store (`default`) holds them all; the
//! prefixes keep the kinds apart.

/// A pending authorization: `state:{state}`.
pub fn state(state: &str) -> String {
    format!("state:{state}")
}

/// A session, by the SHA-256 of its bearer value: `session:{hash}`.
pub fn session(hash: &str) -> String {
    format!("session:{hash}")
}

const PATIENT_SESSIONS: (&str, &str) = ("patient:", ":sessions");

/// The session hashes of one patient: `patient:{id}:sessions`.
pub fn patient_sessions(patient: &str) -> String {
    format!("{}{patient}{}", PATIENT_SESSIONS.0, PATIENT_SESSIONS.1)
}

/// The patient a [`patient_sessions`] key belongs to.
pub fn patient_of_sessions_key(key: &str) -> Option<&str> {
    key.strip_prefix(PATIENT_SESSIONS.0)?
        .strip_suffix(PATIENT_SESSIONS.1)
}

/// The newest `meta.lastUpdated` of a patient's last complete fetch of a type: `watermark:{patient}:{type}`.
pub fn watermark(patient: &str, resource_type: &str) -> String {
    format!("watermark:{patient}:{resource_type}")
}

pub const OUTBOX_PREFIX: &str = "outbox:";

/// A queued batch's record (what the outbox lists): `outbox:{id}`.
pub fn outbox(id: &str) -> String {
    format!("{OUTBOX_PREFIX}{id}")
}

/// A queued batch's payload, kept apart so listing the outbox reads none: `outbox-payload:{id}`.
pub fn outbox_payload(id: &str) -> String {
    format!("outbox-payload:{id}")
}

pub const DEAD_LETTER_PREFIX: &str = "deadletter:";

/// A refused resource's record: `deadletter:{patient}:{type}:{id}`.
pub fn dead_letter(patient: &str, resource_type: &str, id: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{patient}:{resource_type}:{id}")
}

/// The refused resource itself, kept apart from its record: `deadletter-resource:{…}`.
pub fn dead_letter_resource(record_key: &str) -> String {
    format!(
        "deadletter-resource:{}",
        record_key
            .strip_prefix(DEAD_LETTER_PREFIX)
            .unwrap_or(record_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_do_not_share_prefixes() {
        assert!(!outbox_payload("x").starts_with(OUTBOX_PREFIX));
        assert!(!dead_letter_resource(&dead_letter("-1", "Patient", "p"))
            .starts_with(DEAD_LETTER_PREFIX));
        assert_eq!(patient_of_sessions_key(&patient_sessions("-1")), Some("-1"));
        assert_eq!(patient_of_sessions_key("session:abc"), None);
    }
}
