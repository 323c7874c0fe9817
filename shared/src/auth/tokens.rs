//! A session's access token, refreshed early and single-flight. CMS rotates refresh tokens and each works
//! once, so exactly one request may spend it: that request claims the session record (a
//! compare-and-swap on it, which Spin provides on SQLite and Redis alike), and every other request — in
//! this instance or another replica — waits for the new tokens instead of spending the old one again.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::audit::{Action, Audit, Event, Outcome, Peer};
use crate::auth::oauth;
use crate::auth::session::{self, Refreshing, Session};
use crate::config::{self, AuditSettings, OAuthClient, SessionLimits};
use crate::crypto::TokenKey;
use crate::error::Error;
use crate::ports::Platform;
use crate::store::Vault;

/// Refresh when the access token has less than this left, so it cannot expire mid-request.
pub const REFRESH_EARLY_SECS: i64 = 60;

/// How long a claimed refresh may take before others take it over (the token endpoint's own retries
/// end well before).
const CLAIM_SECS: i64 = 30;

/// How often a waiting request looks for the new tokens.
const POLL: Duration = Duration::from_millis(100);

/// What talking to CMS for a session needs, loaded once per request.
pub struct TokenContext {
    pub client: OAuthClient,
    pub secret: String,
    pub key: TokenKey,
    pub limits: SessionLimits,
    pub audit: AuditSettings,
}

impl TokenContext {
    pub fn load(platform: &impl Platform) -> Result<TokenContext, Error> {
        Ok(TokenContext {
            client: OAuthClient::load(platform)?,
            secret: config::client_secret(platform)?,
            key: TokenKey::load(platform)?,
            limits: SessionLimits::load(platform)?,
            audit: AuditSettings::load(platform)?,
        })
    }

    /// The store, for data from the API version this app talks to.
    pub fn vault<'a, P: Platform>(&'a self, platform: &'a P) -> Vault<'a, P> {
        Vault::new(platform, &self.key).on(self.client.api_version)
    }
}

/// The session's access token, refreshed first if it is due or if CMS just `refused` it.
pub async fn access_token<P: Platform>(
    vault: &Vault<'_, P>,
    ctx: &TokenContext,
    session: &mut Session,
    refused: Option<&str>,
    audit: &Audit<'_, P>,
) -> Result<String, Error> {
    let deadline = vault.now() + 2 * CLAIM_SECS;
    loop {
        let now = vault.now();
        let usable = |s: &Session| {
            s.tokens().expires_at - now > REFRESH_EARLY_SECS
                && Some(s.tokens().access_token.as_str()) != refused
        };
        if usable(session) {
            return Ok(session.tokens().access_token.clone());
        }
        if session.tokens().refresh_token.is_none() {
            return one_time(session, now, refused);
        }
        // Another request may have refreshed it already, or be doing so now.
        let latest = session::reload(vault, session)?;
        if usable(&latest) {
            *session = latest;
            continue;
        }
        if now > deadline {
            return Err(Error::GatewayTimeout(
                "another request's token refresh did not finish in time; try again".into(),
            ));
        }
        if latest
            .record
            .value
            .refreshing
            .as_ref()
            .is_some_and(|r| r.until > now)
        {
            *session = latest;
            vault.platform.sleep(POLL).await;
            continue;
        }
        let mut claimed = latest.record.value.clone();
        claimed.refreshing = Some(Refreshing {
            until: now + CLAIM_SECS,
            by: claim_id(vault),
        });
        if !session::claim(vault, &latest, &claimed).await? {
            // Someone claimed or refreshed it first: look again.
            *session = latest;
            continue;
        }
        let refreshed = oauth::refresh(
            vault.platform,
            &ctx.client,
            &ctx.secret,
            &latest.record.value.tokens,
        )
        .await;
        claimed.refreshing = None;
        return match refreshed {
            Ok(tokens) => {
                claimed.refreshed_at = vault.now();
                claimed.tokens = tokens;
                // The claim is ours: a plain write publishes the new tokens to every waiter.
                session::store(vault, &latest, &claimed)?;
                *session = session::reload(vault, &latest)?;
                Ok(session.tokens().access_token.clone())
            }
            Err(failure) => {
                let err = failure.into_refresh_error();
                audit.record(
                    Event::new(
                        Action::RefreshFailed,
                        Outcome::SeriousFailure,
                        err.to_string(),
                    )
                    .patient(latest.patient())
                    .peer(Peer::Cms),
                );
                if matches!(err, Error::Unauthorized(_)) {
                    // The grant is gone at CMS: so is the session.
                    session::end(vault, &latest, audit, "CMS no longer honours its grant")?;
                } else {
                    session::store(vault, &latest, &claimed)?;
                }
                Err(err)
            }
        };
    }
}

/// A ONE_TIME grant (CMS issued no refresh token): its access token serves until it expires, and then
/// the session is over (its record expires with it).
fn one_time(session: &Session, now: i64, refused: Option<&str>) -> Result<String, Error> {
    let tokens = session.tokens();
    if tokens.expires_at > now && Some(tokens.access_token.as_str()) != refused {
        return Ok(tokens.access_token.clone());
    }
    Err(Error::Unauthorized(
        "this app's grant is one-time (CMS issues it no refresh token) and its access token has \
         expired: authorize again at /bluebutton/authorize"
            .into(),
    ))
}

fn claim_id<P: Platform>(vault: &Vault<'_, P>) -> String {
    let mut bytes = [0u8; 9];
    vault.platform.fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One fetch's access token, shared by its concurrent pages. When CMS refuses it mid-fetch (it expired,
/// or was revoked and re-granted), the first page to notice refreshes it and the others use the result.
pub struct SharedToken<'a, P: Platform> {
    vault: &'a Vault<'a, P>,
    audit: &'a Audit<'a, P>,
    pub ctx: &'a TokenContext,
    session: std::cell::RefCell<Session>,
}

impl<'a, P: Platform> SharedToken<'a, P> {
    pub async fn new(
        vault: &'a Vault<'a, P>,
        audit: &'a Audit<'a, P>,
        ctx: &'a TokenContext,
        mut session: Session,
    ) -> Result<SharedToken<'a, P>, Error> {
        access_token(vault, ctx, &mut session, None, audit).await?;
        Ok(SharedToken {
            vault,
            audit,
            ctx,
            session: std::cell::RefCell::new(session),
        })
    }

    pub fn current(&self) -> String {
        self.session.borrow().tokens().access_token.clone()
    }

    pub fn patient(&self) -> String {
        self.session.borrow().patient().to_string()
    }

    /// Called with the token CMS just refused: a fresh one, from this request's refresh or another's.
    pub async fn renew(&self, refused: &str) -> Result<String, Error> {
        if self.current() != refused {
            return Ok(self.current());
        }
        // No RefCell borrow may live across the await: work on a copy, then keep the newer one.
        let mut session = self.session.borrow().clone();
        let token = access_token(
            self.vault,
            self.ctx,
            &mut session,
            Some(refused),
            self.audit,
        )
        .await?;
        let mut shared = self.session.borrow_mut();
        if shared.tokens().access_token == refused {
            *shared = session;
        }
        Ok(token)
    }

    pub fn into_session(self) -> Session {
        self.session.into_inner()
    }
}
