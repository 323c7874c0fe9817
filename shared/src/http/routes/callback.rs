//! `GET /bluebutton/callback?code=&state=` (or `?error=access_denied&state=`): exchanges the code for
//! tokens, seals them, and hands the caller an opaque session. `DELETE /bluebutton/session` ends one.

use serde::Serialize;

use crate::audit::{Action, Agent, Audit, Data, Event, Outcome, Peer};
use crate::auth::oauth::{self, TokenFailure};
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
}

pub async fn callback(
    platform: &impl Platform,
    head: &http::request::Parts,
) -> Result<Response, Error> {
    require_method(head, "GET")?;
    // Configuration first: a broken deployment must not burn the beneficiary's state.
    let ctx = TokenContext::load(platform)?;
    let vault = Vault::new(platform, &ctx.key);
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
    let expires_at = time::OffsetDateTime::from_unix_timestamp(tokens.expires_at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let granted = SessionGranted {
        session,
        patient: tokens.patient,
        scope: tokens.scope,
        expires_at,
        return_to: pending.return_to,
    };
    Ok(no_store(json_response(200, &granted)))
}

/// Revokes the grant at CMS and forgets the session.
pub async fn end_session(
    platform: &impl Platform,
    head: &http::request::Parts,
) -> Result<Response, Error> {
    require_method(head, "DELETE")?;
    let ctx = TokenContext::load(platform)?;
    let vault = Vault::new(platform, &ctx.key);
    let mut audit = Audit::new(&vault, ctx.audit, Agent::App);
    let session = session::authenticate(&vault, &ctx.limits, bearer(&head.headers), &audit)?;
    audit.act_as(Agent::Session(session.hidden.clone()));
    let revoked = oauth::revoke(platform, &ctx.client, &ctx.secret, session.tokens()).await;
    let (outcome, desc) = match &revoked {
        Ok(()) => (Outcome::Success, "the grant was revoked at CMS".to_string()),
        Err(err) => (Outcome::SeriousFailure, err.to_string()),
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
