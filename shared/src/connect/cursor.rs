//! The sync's cursor, per patient and resource type: the newest `meta.lastUpdated` of a complete
//! delivery. It belongs to delivery, not to fetching: it moves only once every resource up to it is
//! delivered, queued in the outbox or a dead letter — never on a fetch that did not push, never on a
//! filtered one, never backwards.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::Error;
use crate::fhir::ResourceType;
use crate::keys;
use crate::store::{Backing, Lifetime, Vault};

/// A cursor outlives a grant's 13 months a little, so a re-authorizing patient is not sent again.
const KEEP_SECS: i64 = 400 * 86_400;

#[derive(Serialize, Deserialize)]
struct Cursor {
    newest: String,
}

fn key<P: Backing>(vault: &Vault<'_, P>, patient: &str, resource_type: ResourceType) -> String {
    keys::cursor(&vault.hide_patient(patient), resource_type.as_str())
}

pub fn load<P: Backing>(
    vault: &Vault<'_, P>,
    patient: &str,
    resource_type: ResourceType,
) -> Result<Option<OffsetDateTime>, Error> {
    Ok(vault
        .get::<Cursor>(&key(vault, patient, resource_type))?
        .and_then(|c| OffsetDateTime::parse(&c.newest, &Rfc3339).ok()))
}

/// Moves the cursor to `newest`, unless it already stands later.
pub fn advance<P: Backing>(
    vault: &Vault<'_, P>,
    patient: &str,
    resource_type: ResourceType,
    newest: OffsetDateTime,
) -> Result<(), Error> {
    if load(vault, patient, resource_type)?.is_some_and(|at| at >= newest) {
        return Ok(());
    }
    let cursor = Cursor {
        newest: newest.format(&Rfc3339).expect("an OffsetDateTime formats"),
    };
    vault.put(
        &key(vault, patient, resource_type),
        &cursor,
        Lifetime::Until(vault.now() + KEEP_SECS),
    )
}

/// The filter that asks CMS for what changed since the cursor, when there is one.
pub fn since_filter<P: Backing>(
    vault: &Vault<'_, P>,
    patient: &str,
    resource_type: ResourceType,
) -> Result<Option<(String, String)>, Error> {
    Ok(load(vault, patient, resource_type)?.map(|at| {
        (
            "_lastUpdated".to_string(),
            format!(
                "gt{}",
                at.format(&Rfc3339).expect("an OffsetDateTime formats")
            ),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenKey;
    use crate::testing::FakePlatform;
    use time::macros::datetime;

    #[test]
    fn cursors_only_move_forward_and_name_no_patient() {
        let p = FakePlatform::new();
        let k = TokenKey::parse(&"42".repeat(32)).unwrap();
        let vault = Vault::new(&p, &k);
        let t = ResourceType::ExplanationOfBenefit;
        assert_eq!(since_filter(&vault, "-20140000010000", t).unwrap(), None);
        advance(&vault, "-20140000010000", t, datetime!(2024-05-01 0:00 UTC)).unwrap();
        advance(&vault, "-20140000010000", t, datetime!(2024-01-01 0:00 UTC)).unwrap();
        assert_eq!(
            since_filter(&vault, "-20140000010000", t).unwrap(),
            Some(("_lastUpdated".into(), "gt2024-05-01T00:00:00Z".into()))
        );
        assert!(!format!("{:?}", p.store.borrow()).contains("2014"));
    }
}
