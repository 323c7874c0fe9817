//! Callers hold an opaque session; the store keeps only its SHA-256, next to the CMS token set sealed under
//! `token_key`. A session reaches only the patient CMS named when the beneficiary consented.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::crypto::{hex, Sealed, TokenKey};
use crate::error::Error;
use crate::keys;
use crate::ports::{Clock, KeyValue, Random};

/// What CMS granted. Never leaves the server, never logged (Debug hides the secrets).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
    pub scope: String,
    pub patient: String,
    pub access_grant_expiration: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("patient", &self.patient)
            .finish_non_exhaustive()
    }
}

/// `session:{sha256(session)}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub patient: String,
    pub scope: String,
    pub created_at: i64,
    pub refreshed_at: i64,
    pub tokens: Sealed,
}

/// A caller's session, authenticated.
#[derive(Debug, Clone)]
pub struct Session {
    pub hash: String,
    pub record: SessionRecord,
    pub tokens: TokenSet,
}

pub fn session_hash(session: &str) -> String {
    hex(&Sha256::digest(session.as_bytes()))
}

/// Stores a new session for `tokens` and returns the bearer value to hand to the caller (once).
pub fn create<P: KeyValue + Clock + Random>(
    platform: &P,
    key: &TokenKey,
    tokens: &TokenSet,
) -> Result<String, Error> {
    let mut raw = [0u8; 32];
    platform.fill(&mut raw);
    let session = URL_SAFE_NO_PAD.encode(raw);
    let hash = session_hash(&session);
    let now = platform.now().unix_timestamp();
    let record = SessionRecord {
        patient: tokens.patient.clone(),
        scope: tokens.scope.clone(),
        created_at: now,
        refreshed_at: now,
        tokens: seal_tokens(platform, key, &hash, tokens),
    };
    store_record(platform, &hash, &record)?;
    let list_key = keys::patient_sessions(&tokens.patient);
    let mut hashes = read_list(platform, &list_key)?;
    hashes.push(hash);
    platform.set(
        &list_key,
        &serde_json::to_vec(&hashes).expect("serializable"),
    )?;
    Ok(session)
}

pub fn seal_tokens(random: &impl Random, key: &TokenKey, hash: &str, tokens: &TokenSet) -> Sealed {
    let plain = serde_json::to_vec(tokens).expect("serializable");
    key.seal(random, &plain, keys::session(hash).as_bytes())
}

pub fn store_record(
    platform: &impl KeyValue,
    hash: &str,
    record: &SessionRecord,
) -> Result<(), Error> {
    platform.set(
        &keys::session(hash),
        &serde_json::to_vec(record).expect("serializable"),
    )?;
    Ok(())
}

fn read_list(platform: &impl KeyValue, key: &str) -> Result<Vec<String>, Error> {
    Ok(platform
        .get(key)?
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default())
}

/// The sessions of a patient (for the admin sync).
pub fn sessions_of(platform: &impl KeyValue, patient: &str) -> Result<Vec<String>, Error> {
    read_list(platform, &keys::patient_sessions(patient))
}

/// Every patient with at least one session (for the admin sync).
pub fn patients(platform: &impl KeyValue) -> Result<Vec<String>, Error> {
    let mut patients: Vec<String> = platform
        .keys()?
        .into_iter()
        .filter_map(|k| keys::patient_of_sessions_key(&k).map(str::to_string))
        .collect();
    patients.sort();
    Ok(patients)
}

/// Reads a session by its hash and opens its tokens.
pub fn load(platform: &impl KeyValue, key: &TokenKey, hash: &str) -> Result<Session, Error> {
    let stored = platform
        .get(&keys::session(hash))?
        .ok_or_else(|| Error::Unauthorized("unknown or revoked session".into()))?;
    let record: SessionRecord = serde_json::from_slice(&stored)
        .map_err(|_| Error::Unauthorized("unreadable session record; authorize again".into()))?;
    let plain = key
        .open(&record.tokens, keys::session(hash).as_bytes())
        .map_err(|why| {
            Error::Unauthorized(format!(
                "this session's tokens cannot be opened: {why}; authorize again"
            ))
        })?;
    let tokens: TokenSet = serde_json::from_slice(&plain)
        .map_err(|_| Error::Unauthorized("unreadable session tokens; authorize again".into()))?;
    Ok(Session {
        hash: hash.to_string(),
        record,
        tokens,
    })
}

/// Authenticates `Authorization: Bearer <session>`.
pub fn authenticate(
    platform: &impl KeyValue,
    key: &TokenKey,
    bearer: Option<&str>,
) -> Result<Session, Error> {
    let bearer = bearer.ok_or_else(|| {
        Error::Unauthorized(
            "send the session from /bluebutton/callback as `Authorization: Bearer <session>`"
                .into(),
        )
    })?;
    load(platform, key, &session_hash(bearer))
}

/// Removes a session (and its entry in the patient's list).
pub fn delete(platform: &impl KeyValue, session: &Session) -> Result<(), Error> {
    platform.delete(&keys::session(&session.hash))?;
    let list_key = keys::patient_sessions(&session.record.patient);
    let hashes: Vec<String> = read_list(platform, &list_key)?
        .into_iter()
        .filter(|h| h != &session.hash)
        .collect();
    if hashes.is_empty() {
        platform.delete(&list_key)?;
    } else {
        platform.set(
            &list_key,
            &serde_json::to_vec(&hashes).expect("serializable"),
        )?;
    }
    Ok(())
}

impl Session {
    /// A `patient` parameter, when given, must name this session's patient.
    pub fn check_patient(&self, requested: Option<&str>) -> Result<(), Error> {
        match requested {
            Some(p)
                if p != self.record.patient && p != format!("Patient/{}", self.record.patient) =>
            {
                Err(Error::Forbidden(format!(
                    "this session reaches only its own patient; `patient` {p} is not it"
                )))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    pub(crate) fn tokens(patient: &str) -> TokenSet {
        TokenSet {
            access_token: "ACCESS-TOKEN-PLAINTEXT-123456".into(),
            refresh_token: Some("REFRESH-TOKEN-PLAINTEXT-12345".into()),
            expires_at: 1_790_003_600,
            scope: "patient/Patient.rs".into(),
            patient: patient.into(),
            access_grant_expiration: None,
        }
    }

    fn key() -> TokenKey {
        TokenKey::parse(&"42".repeat(32)).unwrap()
    }

    #[test]
    fn sessions_are_opaque_and_stored_only_as_hashes() {
        let p = FakePlatform::new();
        let session = create(&p, &key(), &tokens("-1")).unwrap();
        assert!(session.len() >= 43, "≥ 128 bits");
        let dump = format!("{:?}", p.store.borrow());
        assert!(!dump.contains(&session));
        assert!(!dump.contains("PLAINTEXT"));
        let s = authenticate(&p, &key(), Some(&session)).unwrap();
        assert_eq!(s.tokens, tokens("-1"));
        assert_eq!(sessions_of(&p, "-1").unwrap(), vec![s.hash.clone()]);
        assert!(!format!("{:?}", s.tokens).contains("PLAINTEXT"));
    }

    #[test]
    fn unknown_missing_and_deleted_sessions_are_401() {
        let p = FakePlatform::new();
        assert_eq!(authenticate(&p, &key(), None).unwrap_err().status(), 401);
        assert_eq!(
            authenticate(&p, &key(), Some("nope")).unwrap_err().status(),
            401
        );
        let session = create(&p, &key(), &tokens("-1")).unwrap();
        let s = authenticate(&p, &key(), Some(&session)).unwrap();
        delete(&p, &s).unwrap();
        assert_eq!(
            authenticate(&p, &key(), Some(&session))
                .unwrap_err()
                .status(),
            401
        );
        assert!(p.keys().unwrap().is_empty());
    }

    #[test]
    fn a_session_reaches_only_its_patient() {
        let p = FakePlatform::new();
        let session = create(&p, &key(), &tokens("-1")).unwrap();
        let s = authenticate(&p, &key(), Some(&session)).unwrap();
        assert!(s.check_patient(None).is_ok());
        assert!(s.check_patient(Some("-1")).is_ok());
        assert!(s.check_patient(Some("Patient/-1")).is_ok());
        assert_eq!(s.check_patient(Some("-2")).unwrap_err().status(), 403);
    }
}
