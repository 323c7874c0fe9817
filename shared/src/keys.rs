//! Every key of the key-value store, formatted in one place. One store (`default`) holds them all; the
//! prefixes keep the kinds apart. No key holds a patient id, a resource id or a secret: those parts are
//! keyed hashes ([`crate::crypto::TokenKey::hide`]), passed in here as `hidden`.

/// The ordered logs ([`crate::store::log::Log`]), by name.
pub mod logs {
    /// Pending authorizations, for the sweep of abandoned ones.
    pub const STATES: &str = "states";
    /// Sessions, for the admin sync and the sweep of expired ones.
    pub const SESSIONS: &str = "sessions";
    /// Batches waiting for connect, oldest first.
    pub const OUTBOX: &str = "outbox";
    /// Resources connect refused.
    pub const DEAD_LETTERS: &str = "deadletters";
    /// The accounting of disclosures: every AuditEvent, oldest first.
    pub const AUDIT: &str = "audit";
    /// A family of logs, one per patient (`audit-of:{patient hidden}`), pointing into [`AUDIT`].
    pub const AUDIT_OF_PATIENT: &str = "audit-of";
}

/// How many audit records could not be written (a counter, shown by `/bluebutton/healthz`).
pub const AUDIT_FAILURES: &str = "audit-failures";

/// A pending authorization, by the keyed hash of its `state`.
pub fn state(hidden: &str) -> String {
    format!("state:{hidden}")
}

/// A session, by the keyed hash of its bearer value.
pub fn session(hidden: &str) -> String {
    format!("session:{hidden}")
}

/// When a session was last used (its idle clock), apart from the record so that touching it never
/// races a token refresh.
pub fn session_seen(hidden: &str) -> String {
    format!("session-seen:{hidden}")
}

/// Delivery's cursor for one patient (hidden) and resource type.
pub fn cursor(hidden_patient: &str, resource_type: &str) -> String {
    format!("cursor:{hidden_patient}:{resource_type}")
}

/// The blob beside a log entry (an outbox batch's payload, a dead letter's resource).
pub fn attachment(entry_key: &str) -> String {
    format!("{entry_key}:body")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_stays_far_under_the_limit() {
        let hidden = "0123456789abcdef0123456789abcdef";
        for key in [
            state(hidden),
            session(hidden),
            session_seen(hidden),
            cursor(hidden, "ExplanationOfBenefit"),
            attachment("deadletters:000000000001"),
        ] {
            assert!(key.len() < 100, "{key}");
        }
    }
}
