//! A session's access token, refreshed early. CMS rotates refresh tokens and each works once, so when two
//! requests refresh at once the loser's `invalid_grant` is not the end: the winner stored a newer token set.

use std::time::Duration;

use crate::auth::crypto::TokenKey;
use crate::auth::oauth::{self, TokenFailure};
use crate::auth::session::{self, Session};
use crate::config::{self, OAuthClient};
use crate::error::Error;
use crate::ports::Platform;

/// Refresh when the access token has less than this left, so it cannot expire mid-request.
pub const REFRESH_EARLY_SECS: i64 = 60;

/// What refreshing needs, loaded once per request.
pub struct TokenContext {
    pub client: OAuthClient,
    pub secret: String,
    pub key: TokenKey,
}

impl TokenContext {
    pub fn load(platform: &impl Platform) -> Result<TokenContext, Error> {
        Ok(TokenContext {
            client: OAuthClient::load(platform)?,
            secret: config::client_secret(platform)?,
            key: TokenKey::load(platform)?,
        })
    }
}

pub fn needs_refresh(session: &Session, now: i64) -> bool {
    session.tokens.expires_at - now <= REFRESH_EARLY_SECS
}

/// The session's access token, refreshed first if due (or if `force`, after CMS said 401).
pub async fn access_token(
    platform: &impl Platform,
    ctx: &TokenContext,
    session: &mut Session,
    force: bool,
) -> Result<String, Error> {
    let now = platform.now().unix_timestamp();
    if !force && !needs_refresh(session, now) {
        return Ok(session.tokens.access_token.clone());
    }
    match oauth::refresh(platform, &ctx.client, &ctx.secret, &session.tokens).await {
        Ok(tokens) => {
            session.tokens = tokens;
            session.record.refreshed_at = now;
            session.record.scope = session.tokens.scope.clone();
            session.record.tokens =
                session::seal_tokens(platform, &ctx.key, &session.hash, &session.tokens);
            // Stored at once: the old refresh token is already spent at CMS.
            session::store_record(platform, &session.hash, &session.record)?;
            Ok(session.tokens.access_token.clone())
        }
        Err(TokenFailure::Refused(error)) => {
            // The winner of a race may still be storing what CMS gave it: look a few times.
            for wait_ms in [0, 100, 250, 500] {
                platform.sleep(Duration::from_millis(wait_ms)).await;
                let latest = session::load(platform, &ctx.key, &session.hash)?;
                if latest.tokens.refresh_token != session.tokens.refresh_token
                    && !needs_refresh(&latest, now)
                {
                    *session = latest;
                    return Ok(session.tokens.access_token.clone());
                }
            }
            Err(Error::Unauthorized(format!(
                "CMS no longer accepts this session's grant (`{error}`): authorize again at \
                 /bluebutton/authorize"
            )))
        }
        Err(TokenFailure::Failed(err)) => Err(err),
    }
}

/// One fetch's access token, shared by its concurrent pages. When CMS refuses it mid-fetch (it expired,
/// or was revoked and re-granted), the first page to notice refreshes it and the others use the result.
pub struct SharedToken<'a, P: Platform> {
    platform: &'a P,
    pub ctx: &'a TokenContext,
    session: std::cell::RefCell<Session>,
    current: std::cell::RefCell<String>,
}

impl<'a, P: Platform> SharedToken<'a, P> {
    pub async fn new(
        platform: &'a P,
        ctx: &'a TokenContext,
        mut session: Session,
    ) -> Result<SharedToken<'a, P>, Error> {
        let token = access_token(platform, ctx, &mut session, false).await?;
        Ok(SharedToken {
            platform,
            ctx,
            session: std::cell::RefCell::new(session),
            current: std::cell::RefCell::new(token),
        })
    }

    pub fn current(&self) -> String {
        self.current.borrow().clone()
    }

    pub fn patient(&self) -> String {
        self.session.borrow().record.patient.clone()
    }

    /// Called with the token CMS just refused: refreshes it, unless another page already has.
    pub async fn renew(&self, refused: &str) -> Result<String, Error> {
        if *self.current.borrow() != refused {
            return Ok(self.current());
        }
        // No RefCell borrow may live across the await: work on a copy, then store it.
        let mut session = self.session.borrow().clone();
        let token = access_token(self.platform, self.ctx, &mut session, true).await?;
        *self.session.borrow_mut() = session;
        *self.current.borrow_mut() = token.clone();
        Ok(token)
    }

    pub fn into_session(self) -> Session {
        self.session.into_inner()
    }
}
