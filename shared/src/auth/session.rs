//! Callers hold an opaque session; the store keys it by a keyed hash of the bearer value, next to the CMS
//! token set — all of it sealed under `token_key`, the patient included. A session reaches only the
//! patient CMS named at consent, and it ends: after `session_idle_secs` unused (by its holder or the
//! sync), after `session_max_secs`, and never later than CMS's own grant.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::audit::{Action, Audit, Event, Outcome};
use crate::config::{ApiVersion, SessionLimits};
use crate::error::Error;
use crate::keys::{self, logs};
use crate::store::log::Log;
use crate::store::{Backing, Lifetime, RecordError, Vault, Versioned};

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
    /// The API that issued them: CMS knows the beneficiary by another id on the other one.
    #[serde(default)]
    pub api_version: ApiVersion,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

/// A session as stored, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub tokens: TokenSet,
    pub created_at: i64,
    pub refreshed_at: i64,
    /// Set while one request refreshes the tokens: the others wait for its result instead of spending
    /// the same single-use refresh token.
    pub refreshing: Option<Refreshing>,
    /// Its entry in the `sessions` log.
    slot: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refreshing {
    /// Past this (Unix seconds) the claim is abandoned and another request may take it over.
    pub until: i64,
    pub by: String,
}

/// A `sessions` log entry.
#[derive(Serialize, Deserialize)]
struct SessionEntry {
    hidden: String,
}

/// A caller's session, authenticated.
#[derive(Debug, Clone)]
pub struct Session {
    pub hidden: String,
    pub record: Versioned<SessionRecord>,
}

impl Session {
    pub fn key(&self) -> String {
        keys::session(&self.hidden)
    }

    pub fn tokens(&self) -> &TokenSet {
        &self.record.value.tokens
    }

    pub fn patient(&self) -> &str {
        &self.record.value.tokens.patient
    }

    /// Whether the beneficiary let this app search their `resource_type` (`patient/{Type}.read`, `.s`
    /// or `.rs`); a type un-ticked at consent answers 403 at CMS.
    pub fn may_search(&self, resource_type: crate::fhir::ResourceType) -> bool {
        self.granted(resource_type, &["read", "s", "rs"])
    }

    /// Whether the beneficiary let this app read their `resource_type` by id (`.read`, `.r` or `.rs`).
    pub fn may_read(&self, resource_type: crate::fhir::ResourceType) -> bool {
        self.granted(resource_type, &["read", "r", "rs"])
    }

    fn granted(&self, resource_type: crate::fhir::ResourceType, accesses: &[&str]) -> bool {
        let prefix = format!("patient/{resource_type}.");
        self.tokens()
            .scope
            .split_whitespace()
            .filter_map(|s| s.strip_prefix(&prefix))
            .any(|access| accesses.contains(&access))
    }

    /// A `patient` parameter, when given, must name this session's patient.
    pub fn check_patient(&self, requested: Option<&str>) -> Result<(), Error> {
        let own = self.patient();
        match requested {
            Some(p) if p != own && p != format!("Patient/{own}") => Err(Error::Forbidden(format!(
                "this session reaches only its own patient; `patient` {p} is not it"
            ))),
            _ => Ok(()),
        }
    }
}

fn unknown() -> Error {
    Error::Unauthorized("unknown, ended or expired session: authorize again".into())
}

fn unreadable(err: RecordError) -> Error {
    match err {
        RecordError::Store(e) => Error::Store(e),
        other => Error::Unauthorized(format!("{other}; authorize again")),
    }
}

/// When a session made now for `tokens` must end: its maximum age, or CMS's grant, whichever is first;
/// a ONE_TIME grant (no refresh token) ends with its access token.
pub fn end_of(limits: &SessionLimits, now: i64, tokens: &TokenSet) -> i64 {
    let max = match tokens.refresh_token {
        Some(_) => now + limits.max_secs,
        None => tokens.expires_at.min(now + limits.max_secs),
    };
    let grant = tokens
        .access_grant_expiration
        .as_deref()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| t.unix_timestamp());
    grant.map_or(max, |grant| grant.min(max))
}

/// Stores a new session for `tokens` and returns the bearer value to hand to the caller (once).
pub fn create<P: Backing>(
    vault: &Vault<'_, P>,
    limits: &SessionLimits,
    tokens: &TokenSet,
) -> Result<String, Error> {
    let mut raw = [0u8; 32];
    vault.platform.fill(&mut raw);
    let bearer = URL_SAFE_NO_PAD.encode(raw);
    let hidden = hide_bearer(vault, &bearer);
    let now = vault.now();
    let log = Log::new(vault, logs::SESSIONS);
    let slot = log.append()?;
    let record = SessionRecord {
        tokens: tokens.clone(),
        created_at: now,
        refreshed_at: now,
        refreshing: None,
        slot,
    };
    let lifetime = Lifetime::Until(end_of(limits, now, tokens));
    vault.put(&keys::session(&hidden), &record, lifetime)?;
    vault.put(
        &log.key(slot),
        &SessionEntry {
            hidden: hidden.clone(),
        },
        Lifetime::Forever,
    )?;
    touch(vault, &hidden)?;
    Ok(bearer)
}

/// What the store (and the audit trail) knows a session by: a keyed hash of its bearer value.
pub fn hide_bearer<P: Backing>(vault: &Vault<'_, P>, bearer: &str) -> String {
    vault.hide("session", bearer)
}

/// The session stored under `hidden`, if it is still live.
fn load<P: Backing>(vault: &Vault<'_, P>, hidden: &str) -> Result<Option<Session>, Error> {
    Ok(vault
        .get_versioned::<SessionRecord>(&keys::session(hidden))
        .map_err(unreadable)?
        .map(|record| Session {
            hidden: hidden.to_string(),
            record,
        }))
}

/// The session as the store holds it now (another request may have refreshed it).
pub fn reload<P: Backing>(vault: &Vault<'_, P>, session: &Session) -> Result<Session, Error> {
    load(vault, &session.hidden)?.ok_or_else(unknown)
}

/// Records that the session was used now (at most once a minute: touching is a write).
fn touch<P: Backing>(vault: &Vault<'_, P>, hidden: &str) -> Result<(), Error> {
    vault.platform.set(
        &keys::session_seen(hidden),
        vault.now().to_string().as_bytes(),
    )?;
    Ok(())
}

fn last_seen<P: Backing>(vault: &Vault<'_, P>, hidden: &str) -> Result<Option<i64>, Error> {
    Ok(vault
        .platform
        .get(&keys::session_seen(hidden))?
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok()))
}

/// Ends the session if it sat unused too long; else notes the use.
fn use_or_expire<P: Backing>(
    vault: &Vault<'_, P>,
    limits: &SessionLimits,
    session: &Session,
    audit: &Audit<'_, P>,
) -> Result<bool, Error> {
    let now = vault.now();
    let seen = last_seen(vault, &session.hidden)?.unwrap_or(session.record.value.created_at);
    if now - seen > limits.idle_secs {
        end(vault, session, audit, &idle_ending(limits))?;
        return Ok(false);
    }
    if now - seen >= 60 {
        touch(vault, &session.hidden)?;
    }
    Ok(true)
}

/// Authenticates `Authorization: Bearer <session>`.
pub fn authenticate<P: Backing>(
    vault: &Vault<'_, P>,
    limits: &SessionLimits,
    bearer: Option<&str>,
    audit: &Audit<'_, P>,
) -> Result<Session, Error> {
    let bearer = bearer.ok_or_else(|| {
        Error::Unauthorized(
            "send the session from /bluebutton/callback as `Authorization: Bearer <session>`"
                .into(),
        )
    })?;
    let session = load(vault, &hide_bearer(vault, bearer))?.ok_or_else(unknown)?;
    let issued_by = session.tokens().api_version;
    if issued_by != vault.version() {
        return Err(Error::Unauthorized(format!(
            "this session was issued on Blue Button {issued_by}, and this app now uses {}, where \
             CMS knows the beneficiary by another id: authorize again",
            vault.version()
        )));
    }
    if !use_or_expire(vault, limits, &session, audit)? {
        return Err(Error::Unauthorized(format!(
            "this session was unused for more than {} seconds and has ended: authorize again",
            limits.idle_secs
        )));
    }
    Ok(session)
}

/// Notes a use by the admin sync: a patient the sync keeps current keeps their session.
pub fn note_use<P: Backing>(vault: &Vault<'_, P>, session: &Session) -> Result<(), Error> {
    touch(vault, &session.hidden)
}

/// Ends a session: its record, its idle clock and its log entry; the audit trail says `why`.
pub fn end<P: Backing>(
    vault: &Vault<'_, P>,
    session: &Session,
    audit: &Audit<'_, P>,
    why: &str,
) -> Result<(), Error> {
    vault.delete(&session.key())?;
    vault.delete(&keys::session_seen(&session.hidden))?;
    vault.delete(&Log::new(vault, logs::SESSIONS).key(session.record.value.slot))?;
    audit.record(
        Event::new(
            Action::SessionEnded,
            Outcome::Success,
            format!("session {} ended: {why}", session.hidden),
        )
        .patient(session.patient()),
    );
    Ok(())
}

fn idle_ending(limits: &SessionLimits) -> String {
    format!("unused for more than {} seconds", limits.idle_secs)
}

/// Stores the record as it now is (after a refresh, say), keeping its lifetime.
pub fn store<P: Backing>(
    vault: &Vault<'_, P>,
    session: &Session,
    record: &SessionRecord,
) -> Result<(), Error> {
    vault.put(&session.key(), record, session.record.lifetime)
}

/// Replaces the record with `record` (which claims it) only if nobody changed it since `session` was
/// read and no other claimant's write replaced it (see [`Vault::claim`]).
pub async fn claim<P: Backing>(
    vault: &Vault<'_, P>,
    session: &Session,
    record: &SessionRecord,
) -> Result<bool, Error> {
    vault
        .claim(
            &session.key(),
            &session.record,
            record,
            session.record.lifetime,
        )
        .await
}

/// The newest live session of every patient, for the admin sync. On the way it removes what has ended
/// (expired, idle, or its log entry left behind), up to `sweep_limit` removals.
pub fn newest_by_patient<P: Backing>(
    vault: &Vault<'_, P>,
    limits: &SessionLimits,
    audit: &Audit<'_, P>,
) -> Result<std::collections::BTreeMap<String, Session>, Error> {
    let log = Log::new(vault, logs::SESSIONS);
    let mut walk = log.walk()?;
    let mut newest = std::collections::BTreeMap::<String, Session>::new();
    for slot in walk.span.clone() {
        let entry_key = log.key(slot);
        let Some(entry) = vault.get::<SessionEntry>(&entry_key).map_err(unreadable)? else {
            walk.hole(slot);
            continue;
        };
        let session = match load(vault, &entry.hidden)? {
            // Kept for when the app goes back to the API that issued it; useless until then.
            Some(session) if session.tokens().api_version != vault.version() => continue,
            Some(session) if use_or_expire_quietly(vault, limits, &session, audit)? => session,
            // Ended for being idle: `end` removed its entry.
            Some(_) => {
                walk.removed(slot);
                continue;
            }
            // Its record expired: what was left beside it goes too.
            None => {
                vault.delete(&keys::session_seen(&entry.hidden))?;
                vault.delete(&entry_key)?;
                walk.removed(slot);
                continue;
            }
        };
        walk.kept();
        let patient = session.patient().to_string();
        let newer = newest
            .get(&patient)
            .is_none_or(|s| s.record.value.created_at <= session.record.value.created_at);
        if newer {
            newest.insert(patient, session);
        }
    }
    log.finish(walk)?;
    Ok(newest)
}

/// As [`use_or_expire`], without counting the look as a use.
fn use_or_expire_quietly<P: Backing>(
    vault: &Vault<'_, P>,
    limits: &SessionLimits,
    session: &Session,
    audit: &Audit<'_, P>,
) -> Result<bool, Error> {
    let seen = last_seen(vault, &session.hidden)?.unwrap_or(session.record.value.created_at);
    if vault.now() - seen > limits.idle_secs {
        end(vault, session, audit, &idle_ending(limits))?;
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::TokenKey;
    use crate::testing::FakePlatform;
    use std::time::Duration;

    pub(crate) fn tokens(patient: &str) -> TokenSet {
        TokenSet {
            access_token: "ACCESS-TOKEN-PLAINTEXT-123456".into(),
            refresh_token: Some("REFRESH-TOKEN-PLAINTEXT-12345".into()),
            expires_at: 1_790_003_600,
            scope: "patient/Patient.rs".into(),
            patient: patient.into(),
            access_grant_expiration: Some("2027-12-29T21:20:00Z".into()),
            api_version: ApiVersion::V2,
        }
    }

    fn key() -> TokenKey {
        TokenKey::parse(&"42".repeat(32)).unwrap()
    }

    pub(crate) fn audit<'a>(vault: &'a Vault<'a, FakePlatform>) -> Audit<'a, FakePlatform> {
        let settings = crate::config::AuditSettings {
            retention_days: 1,
            to_connect: false,
        };
        Audit::new(vault, settings, crate::audit::Agent::App)
    }

    pub(crate) const LIMITS: SessionLimits = SessionLimits {
        idle_secs: 3600,
        max_secs: 86_400,
    };

    #[test]
    fn sessions_are_opaque_and_everything_at_rest_is_sealed() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let bearer = create(&vault, &LIMITS, &tokens("-20140000010000")).unwrap();
        assert!(bearer.len() >= 43, "≥ 128 bits");
        let dump = format!("{:?}", p.store.borrow());
        for secret in [
            bearer.as_str(),
            "PLAINTEXT",
            "-20140000010000",
            "Patient.rs",
        ] {
            assert!(!dump.contains(secret), "{secret} at rest");
        }
        let s = authenticate(&vault, &LIMITS, Some(&bearer), &audit(&vault)).unwrap();
        assert_eq!(s.tokens(), &tokens("-20140000010000"));
        assert!(!format!("{s:?}").contains("PLAINTEXT"));
    }

    #[test]
    fn unknown_missing_ended_idle_and_old_sessions_are_401_and_leave_nothing() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let err = |r: Result<Session, Error>| r.unwrap_err();
        assert!(matches!(
            err(authenticate(&vault, &LIMITS, None, &audit(&vault))),
            Error::Unauthorized(_)
        ));
        assert!(matches!(
            err(authenticate(&vault, &LIMITS, Some("nope"), &audit(&vault))),
            Error::Unauthorized(_)
        ));
        let ended = create(&vault, &LIMITS, &tokens("-1")).unwrap();
        let session = authenticate(&vault, &LIMITS, Some(&ended), &audit(&vault)).unwrap();
        end(&vault, &session, &audit(&vault), "revoked").unwrap();
        assert!(authenticate(&vault, &LIMITS, Some(&ended), &audit(&vault)).is_err());

        let idle = create(&vault, &LIMITS, &tokens("-1")).unwrap();
        p.advance(Duration::from_secs(3601));
        let why = err(authenticate(&vault, &LIMITS, Some(&idle), &audit(&vault)));
        assert!(why.to_string().contains("unused"), "{why}");
        assert!(authenticate(&vault, &LIMITS, Some(&idle), &audit(&vault)).is_err());

        let old = create(&vault, &LIMITS, &tokens("-1")).unwrap();
        for _ in 0..24 {
            p.advance(Duration::from_secs(3500));
            authenticate(&vault, &LIMITS, Some(&old), &audit(&vault)).unwrap();
        }
        p.advance(Duration::from_secs(3500));
        assert!(
            authenticate(&vault, &LIMITS, Some(&old), &audit(&vault)).is_err(),
            "past its maximum age"
        );
        newest_by_patient(&vault, &LIMITS, &audit(&vault)).unwrap();
        let left: Vec<String> = p
            .stored_keys()
            .into_iter()
            .filter(|k| !k.starts_with("audit"))
            .collect();
        assert_eq!(left, ["sessions:head", "sessions:n"]);
    }

    #[test]
    fn a_session_never_outlives_the_cms_grant() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let mut short = tokens("-1");
        let grant_end = vault.now() + 1800;
        short.access_grant_expiration = Some(
            time::OffsetDateTime::from_unix_timestamp(grant_end)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
        );
        let bearer = create(&vault, &LIMITS, &short).unwrap();
        p.advance(Duration::from_secs(1801));
        assert!(authenticate(&vault, &LIMITS, Some(&bearer), &audit(&vault)).is_err());
    }

    #[test]
    fn the_sync_sees_each_patients_newest_session() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        create(&vault, &LIMITS, &tokens("-1")).unwrap();
        p.advance(Duration::from_secs(5));
        let newer = create(&vault, &LIMITS, &tokens("-1")).unwrap();
        create(&vault, &LIMITS, &tokens("-2")).unwrap();
        let sessions = newest_by_patient(&vault, &LIMITS, &audit(&vault)).unwrap();
        assert_eq!(sessions.keys().collect::<Vec<_>>(), ["-1", "-2"]);
        let expected = authenticate(&vault, &LIMITS, Some(&newer), &audit(&vault)).unwrap();
        assert_eq!(sessions["-1"].hidden, expected.hidden);
    }

    #[test]
    fn the_granted_scope_says_which_types_may_be_searched() {
        use crate::fhir::ResourceType::*;
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let mut granted = tokens("-1");
        granted.scope =
            "openid patient/Coverage.rs patient/ExplanationOfBenefit.read patient/Patient.r".into();
        let bearer = create(&vault, &LIMITS, &granted).unwrap();
        let s = authenticate(&vault, &LIMITS, Some(&bearer), &audit(&vault)).unwrap();
        assert!(s.may_search(Coverage) && s.may_search(ExplanationOfBenefit));
        assert!(!s.may_search(Patient), "`.r` reads, it does not search");
    }

    #[test]
    fn a_session_reaches_only_its_patient() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let bearer = create(&vault, &LIMITS, &tokens("-1")).unwrap();
        let s = authenticate(&vault, &LIMITS, Some(&bearer), &audit(&vault)).unwrap();
        assert!(s.check_patient(None).is_ok());
        assert!(s.check_patient(Some("-1")).is_ok());
        assert!(s.check_patient(Some("Patient/-1")).is_ok());
        assert!(matches!(
            s.check_patient(Some("-2")),
            Err(Error::Forbidden(_))
        ));
    }
}
