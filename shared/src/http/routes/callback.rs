//! `GET /bluebutton/callback?code=&state=` (or `?error=access_denied&state=`): exchanges the code for
//! tokens, seals them, and hands the caller an opaque session. `DELETE /bluebutton/session` ends one.

use serde::Serialize;

use crate::audit::{Action, Agent, Audit, Data, Event, Outcome, Peer};
use crate::auth::oauth::{self, Revocation, TokenFailure};
use crate::auth::session;
use crate::auth::state;
use crate::auth::tokens::TokenContext;
use crate::connect::delivery::audit_to_connect;
use crate::error::Error;
use crate::http::{bearer, json_response, no_store, query_param, require_method, Response};
use crate::ports::Platform;
use crate::store::Vault;

pub const PATH: &str = "/bluebutton/callback";
pub const SESSION_PATH: &str = "/bluebutton/session";

/// The callback's answer: the caller's session. The CMS tokens stay on the server.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionGranted {
    /// Opaque bearer for `Authorization: Bearer <session>`; shown once, stored only as its SHA-256.
    pub session: String,
    /// The FHIR id of the beneficiary who consented; the session reaches only this patient.
    #[schema(example = "-20140000010000")]
    pub patient: String,
    /// What the beneficiary granted, space-separated.
    pub scope: String,
    /// When the current CMS access token expires (RFC 3339); it is refreshed before that.
    pub expires_at: String,
    /// When the beneficiary's data access grant at CMS ends (RFC 3339, as CMS said; 13 months for most
    /// apps): no session outlives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_grant_expiration: Option<String>,
    /// CMS issued no refresh token (a ONE_TIME app): the session ends with the access token.
    pub one_time: bool,
    /// When this session ends at the latest (RFC 3339), unless unused for `session_idle_secs` first.
    pub session_expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub async fn callback(
    platform: &impl Platform,
    head: &http::request::Parts,
) -> Result<Response, Error> {
    require_method(head, "GET")?;
    // Configuration first: a broken deployment must not burn the beneficiary's state.
    let ctx = TokenContext::load(platform)?;
    let vault = ctx.vault(platform);
    let mut audit = Audit::new(&vault, ctx.audit, Agent::Beneficiary);
    let answer = exchange(&vault, &mut audit, &ctx, head).await;
    // Connect is not called from here: the callback's events wait in the outbox for the next delivery.
    audit_to_connect(&vault, &audit, false).await;
    answer
}

async fn exchange<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: &mut Audit<'a, P>,
    ctx: &TokenContext,
    head: &http::request::Parts,
) -> Result<Response, Error> {
    let platform = vault.platform;
    let state = query_param(&head.uri, "state");
    if let Some(error) = query_param(&head.uri, "error") {
        // Only an answer to a request we made (a known state) is believed, and it uses the state up.
        state::take(vault, state.as_deref())?;
        let (err, outcome) = if error == "access_denied" {
            let why = "the beneficiary declined to share their data with this app at CMS";
            (Error::Forbidden(why.into()), Outcome::MinorFailure)
        } else {
            let why = format!("CMS ended the authorization with error `{error}`");
            (Error::BadGateway(why), Outcome::SeriousFailure)
        };
        audit.record(
            Event::new(Action::AuthorizationFailed, outcome, err.to_string()).peer(Peer::Cms),
        );
        return Err(err);
    }
    let pending = state::take(vault, state.as_deref())?;
    let code = query_param(&head.uri, "code")
        .filter(|code| !code.is_empty())
        .ok_or_else(|| Error::BadRequest("the `code` parameter is missing".into()))?;
    let tokens = oauth::exchange_code(platform, &ctx.client, &ctx.secret, &code, pending.verifier)
        .await
        .map_err(|failure| match failure {
            TokenFailure::Refused { error, .. } => Error::BadGateway(format!(
                "CMS refused the code exchange with `{error}`; start again at /bluebutton/authorize"
            )),
            TokenFailure::Failed(err) => err,
        });
    let tokens = tokens.inspect_err(|err| {
        let event = Event::new(
            Action::AuthorizationFailed,
            Outcome::SeriousFailure,
            err.to_string(),
        );
        audit.record(event.peer(Peer::Cms));
    })?;
    let session = session::create(vault, &ctx.limits, &tokens)?;
    audit.act_as(Agent::Session(session::hide_bearer(vault, &session)));
    let data = Data {
        resource_type: "Consent".into(),
        details: vec![("scope", tokens.scope.clone())],
        ..Data::default()
    };
    audit.record(
        Event::new(
            Action::AuthorizationGranted,
            Outcome::Success,
            "the beneficiary authorized this app at CMS",
        )
        .patient(&tokens.patient)
        .peer(Peer::Cms)
        .data(data),
    );
    let granted = SessionGranted {
        session,
        expires_at: rfc3339(tokens.expires_at),
        session_expires_at: rfc3339(session::end_of(&ctx.limits, vault.now(), &tokens)),
        one_time: tokens.refresh_token.is_none(),
        access_grant_expiration: tokens.access_grant_expiration,
        patient: tokens.patient,
        scope: tokens.scope,
        return_to: pending.return_to,
    };
    Ok(no_store(json_response(200, &granted)))
}

/// Revokes the session's tokens at CMS (with `grant=true`, the beneficiary's data access grant itself)
/// and forgets the session.
pub async fn end_session(
    platform: &impl Platform,
    head: &http::request::Parts,
) -> Result<Response, Error> {
    require_method(head, "DELETE")?;
    let what = match query_param(&head.uri, "grant").as_deref() {
        None | Some("false") => Revocation::Tokens,
        Some("true") => Revocation::Grant,
        Some(_) => return Err(Error::BadRequest(
            "`grant` is `true` (also end the beneficiary's data access grant at CMS) or `false`"
                .into(),
        )),
    };
    let ctx = TokenContext::load(platform)?;
    let vault = ctx.vault(platform);
    let mut audit = Audit::new(&vault, ctx.audit, Agent::App);
    let session = session::authenticate(&vault, &ctx.limits, bearer(&head.headers), &audit)?;
    audit.act_as(Agent::Session(session.hidden.clone()));
    let revoked = oauth::revoke(platform, &ctx.client, &ctx.secret, session.tokens(), what).await;
    let (outcome, desc) = match (&revoked, what) {
        (Ok(()), Revocation::Tokens) => (
            Outcome::Success,
            "the session's tokens were revoked at CMS; the data access grant stays".to_string(),
        ),
        (Ok(()), Revocation::Grant) => (
            Outcome::Success,
            "the data access grant was revoked at CMS, with every token".to_string(),
        ),
        (Err(err), _) => (Outcome::SeriousFailure, err.to_string()),
    };
    audit.record(
        Event::new(Action::Revoked, outcome, desc)
            .patient(session.patient())
            .peer(Peer::Cms),
    );
    let ended = revoked.and_then(|()| {
        session::end(
            &vault,
            &session,
            &audit,
            "its holder ended it (DELETE /bluebutton/session)",
        )
    });
    audit_to_connect(&vault, &audit, false).await;
    ended?;
    let mut resp = http::Response::new(Vec::new());
    *resp.status_mut() = http::StatusCode::NO_CONTENT;
    Ok(no_store(resp))
}
