//! Pending authorizations: a single-use, expiring `state` paired with a PKCE verifier, sealed in the
//! store under a keyed hash of the state. Anyone may start one, so each is listed in the `states` log
//! and swept once it expires: a flood of abandoned authorizations does not outlive its TTL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::auth::oauth;
use crate::config::OAuthClient;
use crate::error::Error;
use crate::keys::{self, logs};
use crate::store::log::Log;
use crate::store::{Backing, Lifetime, Vault};

/// What `authorize` keeps for `callback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub verifier: String,
    pub created_at: i64,
    pub return_to: Option<String>,
    /// Its entry in the `states` log.
    slot: u64,
}

/// A `states` log entry: which record, and when it may be swept.
#[derive(Serialize, Deserialize)]
struct StateEntry {
    hidden: String,
    expires: i64,
}

/// Where to send the beneficiary (for API clients that ask for JSON instead of a redirect).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuthorizationStart {
    pub authorization_url: String,
    /// Seconds the beneficiary has to log in and consent at CMS.
    pub expires_in: i64,
}

/// Expired states each new authorization sweeps on its way: a flood cleans up after itself.
const SWEEP_ON_BEGIN: usize = 4;

/// Creates and stores a state and PKCE verifier, and returns where to send the beneficiary.
pub fn begin<P: Backing>(
    vault: &Vault<'_, P>,
    client: &OAuthClient,
    ttl_secs: i64,
    lang: Option<&str>,
    return_to: Option<&str>,
) -> Result<AuthorizationStart, Error> {
    oauth::check_request(lang, return_to)?;
    // A deployment CMS would refuse stores nothing.
    oauth::check_scopes(client)?;
    // 32 random bytes: a 43-character state (CMS needs at least 16).
    let mut bytes = [0u8; 32];
    vault.platform.fill(&mut bytes);
    let state = URL_SAFE_NO_PAD.encode(bytes);
    let verifier = oauth::new_verifier(vault.platform);
    let hidden = vault.hide("state", &state);
    let now = vault.now();
    let expires = now + ttl_secs;
    let log = Log::new(vault, logs::STATES);
    let slot = log.append()?;
    let pending = PendingAuthorization {
        verifier,
        created_at: now,
        return_to: return_to.map(str::to_string),
        slot,
    };
    vault.put(&keys::state(&hidden), &pending, Lifetime::Until(expires))?;
    vault.put(
        &log.key(slot),
        &StateEntry { hidden, expires },
        Lifetime::Forever,
    )?;
    sweep(vault, SWEEP_ON_BEGIN)?;
    Ok(AuthorizationStart {
        authorization_url: oauth::authorize_url(client, &state, &pending.verifier, lang)?,
        expires_in: ttl_secs,
    })
}

/// Takes a state back, once: it is deleted whatever happens next, so a replay fails.
pub fn take<P: Backing>(
    vault: &Vault<'_, P>,
    state: Option<&str>,
) -> Result<PendingAuthorization, Error> {
    let state = state
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::BadRequest("the `state` parameter is missing".into()))?;
    let key = keys::state(&vault.hide("state", state));
    // A state this server did not issue, or issued and saw used or expire, is refused as forged or
    // replayed.
    let pending: PendingAuthorization = vault.get(&key)?.ok_or_else(|| {
        Error::Forbidden(
            "unknown, used or expired `state` (a beneficiary has 10 minutes at CMS): start again \
             at /bluebutton/authorize"
                .into(),
        )
    })?;
    vault.delete(&key)?;
    vault.delete(&Log::new(vault, logs::STATES).key(pending.slot))?;
    Ok(pending)
}

/// Removes up to `limit` expired states, oldest first; returns how many.
pub fn sweep<P: Backing>(vault: &Vault<'_, P>, limit: usize) -> Result<usize, Error> {
    let log = Log::new(vault, logs::STATES);
    let mut walk = log.walk()?;
    let now = vault.now();
    let mut swept = 0;
    // Holes (states taken back by their callback) cost a read each: bound the walk, not just the work.
    for slot in walk.span.clone().take(limit.saturating_mul(16)) {
        if swept >= limit {
            break;
        }
        let entry_key = log.key(slot);
        match vault.get::<StateEntry>(&entry_key)? {
            Some(entry) if entry.expires <= now => {
                vault.delete(&keys::state(&entry.hidden))?;
                vault.delete(&entry_key)?;
                walk.removed(slot);
                swept += 1;
            }
            // The oldest live authorization: the rest are younger.
            Some(_) => {
                walk.kept();
                break;
            }
            None => walk.hole(slot),
        }
    }
    log.finish(walk)?;
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::TokenKey;
    use crate::testing::FakePlatform;
    use std::time::Duration;

    fn client() -> OAuthClient {
        OAuthClient {
            cms_base_url: "https://sandbox.bluebutton.cms.gov".into(),
            api_version: Default::default(),
            client_id: "client".into(),
            redirect_uri: "http://127.0.0.1:3000/bluebutton/callback".into(),
            scopes: None,
        }
    }

    fn state_of(start: &AuthorizationStart) -> String {
        url::Url::parse(&start.authorization_url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned()
    }

    fn key() -> TokenKey {
        TokenKey::parse(&"42".repeat(32)).unwrap()
    }

    #[test]
    fn the_verifier_is_stored_sealed_and_matches_the_challenge() {
        use sha2::{Digest, Sha256};
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let start = begin(&vault, &client(), 600, None, Some("/done")).unwrap();
        let state = state_of(&start);
        assert!(state.len() >= 43);
        let dump = format!("{:?}", p.store.borrow());
        assert!(!dump.contains(&state) && !dump.contains("/done"));
        let pending = take(&vault, Some(&state)).unwrap();
        assert!((43..=128).contains(&pending.verifier.len()));
        assert!(pending
            .verifier
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)));
        let q: std::collections::HashMap<String, String> =
            url::Url::parse(&start.authorization_url)
                .unwrap()
                .query_pairs()
                .into_owned()
                .collect();
        let digest = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
        assert_eq!(q["code_challenge"], digest);
        assert_eq!(pending.return_to.as_deref(), Some("/done"));
        assert_eq!(start.expires_in, 600);
    }

    #[test]
    fn states_are_single_use_and_expire() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        let first = state_of(&begin(&vault, &client(), 600, None, None).unwrap());
        let second = state_of(&begin(&vault, &client(), 600, None, None).unwrap());
        assert_ne!(first, second);
        assert!(take(&vault, Some(&first)).is_ok());
        let replay = take(&vault, Some(&first)).unwrap_err();
        assert!(matches!(replay, Error::Forbidden(_)));
        p.advance(Duration::from_secs(601));
        let expired = take(&vault, Some(&second)).unwrap_err();
        assert!(expired.to_string().contains("expired"));
        assert!(matches!(take(&vault, None), Err(Error::BadRequest(_))));
        assert!(take(&vault, Some("forged-state-value-xxxxxxxxxxxx")).is_err());
    }

    #[test]
    fn abandoned_authorizations_are_swept_once_their_ttl_passes() {
        let p = FakePlatform::new();
        let k = key();
        let vault = Vault::new(&p, &k);
        for _ in 0..500 {
            begin(&vault, &client(), 600, None, None).unwrap();
        }
        assert!(p.stored_keys().len() > 1000);
        assert_eq!(
            sweep(&vault, usize::MAX).unwrap(),
            0,
            "nothing has expired yet"
        );
        p.advance(Duration::from_secs(601));
        assert_eq!(sweep(&vault, 100).unwrap(), 100, "a sweep is bounded");
        assert_eq!(sweep(&vault, usize::MAX).unwrap(), 400);
        assert_eq!(
            p.stored_keys(),
            ["states:head", "states:n"],
            "only the log's own marks are left"
        );
    }
}
