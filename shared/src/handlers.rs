//! One function per route: parse the request, apply the rules, answer. Components only adapt Spin to these.

use crate::config::{self, OAuthClient};
use crate::connect::{ConnectConfig, Delivery};
use crate::oauth;
use crate::ports::Platform;
use crate::problem::Error;
use crate::web::{self, json_response, no_store, Request, Response};

fn require_get(req: &Request) -> Result<(), Error> {
    if req.method() == http::Method::GET {
        Ok(())
    } else {
        Err(Error::MethodNotAllowed(format!(
            "{} is not supported here; use GET",
            req.method()
        )))
    }
}

/// The path after the component's route prefix (Spin's `spin-path-info`).
fn path_info(req: &Request) -> String {
    web::header(req, "spin-path-info")
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().path().to_string())
}

fn wants_json(req: &Request) -> bool {
    web::header(req, "accept").is_some_and(|accept| {
        accept
            .split(',')
            .any(|t| t.trim().starts_with("application/json"))
    })
}

fn respond(result: Result<Response, Error>) -> Response {
    result.unwrap_or_else(Error::into_response)
}

/// `GET /bluebutton/authorize[?lang=en|es][&return_to=/path]`: 302 to CMS, or JSON for API clients.
pub async fn authorize(platform: &impl Platform, req: Request) -> Response {
    respond((|| {
        require_get(&req)?;
        let client = OAuthClient::load(platform)?;
        let lang = web::query_param(&req, "lang");
        let return_to = web::query_param(&req, "return_to");
        let start = oauth::begin(platform, &client, lang.as_deref(), return_to.as_deref())?;
        let resp = if wants_json(&req) {
            json_response(200, &start)
        } else {
            let mut resp = http::Response::new(Vec::new());
            *resp.status_mut() = http::StatusCode::FOUND;
            resp.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_str(&start.authorization_url)
                    .map_err(|_| Error::Config("`cms_base_url` is not a valid URL".into()))?,
            );
            resp
        };
        // The URL carries a live state: never cache it.
        Ok(no_store(resp))
    })())
}

/// The three resource types Blue Button 2.0 serves.
pub const RESOURCE_TYPES: [&str; 3] = ["Patient", "Coverage", "ExplanationOfBenefit"];

/// Health of a component: which of the variables it needs are missing, without their values.
pub fn health(platform: &impl Platform, component: &str, needs: &[&str]) -> Response {
    let missing: Vec<&str> = needs
        .iter()
        .copied()
        .filter(|name| config::required(platform, name).is_err())
        .collect();
    let status = if missing.is_empty() { 200 } else { 503 };
    json_response(
        status,
        &serde_json::json!({
            "status": if missing.is_empty() { "ok" } else { "misconfigured" },
            "component": component,
            "missing_variables": missing,
        }),
    )
}

/// `GET /bluebutton/callback?code=&state=` (or `?error=access_denied&state=`): exchanges the code for
/// tokens, seals them, and hands the caller an opaque session.
pub async fn callback(platform: &impl Platform, req: Request) -> Response {
    if req.uri().path() == "/bluebutton/session" {
        return respond(end_session(platform, &req).await);
    }
    respond(callback_inner(platform, &req).await)
}

/// `DELETE /bluebutton/session`: revokes the grant at CMS and forgets the session.
async fn end_session(platform: &impl Platform, req: &Request) -> Result<Response, Error> {
    if req.method() != http::Method::DELETE {
        return Err(Error::MethodNotAllowed(
            "use DELETE to end a session".into(),
        ));
    }
    let ctx = crate::tokens::TokenContext::load(platform)?;
    let session = crate::session::authenticate(platform, &ctx.key, web::bearer(req))?;
    oauth::revoke(platform, &ctx.client, &ctx.secret, &session.tokens).await?;
    crate::session::delete(platform, &session)?;
    let mut resp = http::Response::new(Vec::new());
    *resp.status_mut() = http::StatusCode::NO_CONTENT;
    Ok(no_store(resp))
}

async fn callback_inner(platform: &impl Platform, req: &Request) -> Result<Response, Error> {
    require_get(req)?;
    // Configuration first: a broken deployment must not burn the beneficiary's state.
    let client = OAuthClient::load(platform)?;
    let secret = oauth::client_secret(platform)?;
    let key = crate::crypto::TokenKey::load(platform)?;
    let state = web::query_param(req, "state");
    if let Some(error) = web::query_param(req, "error") {
        // Only an answer to a request we made (a known state) is believed, and it uses the state up.
        oauth::take_state(platform, state.as_deref())?;
        return Err(if error == "access_denied" {
            Error::Forbidden(
                "the beneficiary declined to share their data with this app at CMS".into(),
            )
        } else {
            Error::BadGateway(format!("CMS ended the authorization with error `{error}`"))
        });
    }
    let pending = oauth::take_state(platform, state.as_deref())?;
    let code = web::query_param(req, "code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::BadRequest("the `code` parameter is missing".into()))?;
    let tokens = oauth::exchange_code(platform, &client, &secret, &code, pending.verifier)
        .await
        .map_err(|failure| match failure {
            oauth::TokenFailure::Refused(error) => Error::BadGateway(format!(
                "CMS refused the code exchange with `{error}`; start again at /bluebutton/authorize"
            )),
            oauth::TokenFailure::Failed(err) => err,
        })?;
    let session = crate::session::create(platform, &key, &tokens)?;
    let expires_at = time::OffsetDateTime::from_unix_timestamp(tokens.expires_at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    let mut body = serde_json::json!({
        "session": session,
        "patient": tokens.patient,
        "scope": tokens.scope,
        "expires_at": expires_at,
    });
    if let Some(return_to) = pending.return_to {
        body["return_to"] = serde_json::Value::String(return_to);
    }
    Ok(no_store(json_response(200, &body)))
}

/// `/bluebutton/connect/...` (admin key): deliver FHIR resources to connect, and see and replay what is
/// queued or refused.
pub async fn connect_push(platform: &impl Platform, req: Request) -> Response {
    respond(connect_push_inner(platform, &req).await)
}

async fn connect_push_inner(platform: &impl Platform, req: &Request) -> Result<Response, Error> {
    let info = path_info(req);
    let method = req.method().clone();
    let expected = match info.as_str() {
        "/deliver" | "/outbox/replay" => http::Method::POST,
        "/outbox" | "/dead-letters" => http::Method::GET,
        other => {
            return Err(Error::NotFound(format!(
                "no route /bluebutton/connect{other}: see POST /bluebutton/connect/deliver, GET \
                 /bluebutton/connect/outbox, POST /bluebutton/connect/outbox/replay and GET \
                 /bluebutton/connect/dead-letters"
            )))
        }
    };
    crate::admin::require_admin(platform, req)?;
    if method != expected {
        return Err(Error::MethodNotAllowed(format!(
            "use {expected} for /bluebutton/connect{info}"
        )));
    }
    let answer = match info.as_str() {
        "/deliver" => {
            let connect = ConnectConfig::load(platform)?;
            let body: serde_json::Value = serde_json::from_slice(req.body()).map_err(|e| {
                Error::BadRequest(format!("the body must be a FHIR resource or Bundle: {e}"))
            })?;
            let resources = match body.get("resourceType").and_then(|t| t.as_str()) {
                Some("Bundle") => body
                    .get("entry")
                    .and_then(|e| e.as_array())
                    .map(|entries| {
                        entries
                            .iter()
                            .filter_map(|e| e.get("resource").cloned())
                            .collect()
                    })
                    .unwrap_or_default(),
                Some(_) => vec![body],
                None => {
                    return Err(Error::BadRequest(
                        "the body must be a FHIR resource or Bundle (no `resourceType`)".into(),
                    ))
                }
            };
            let patient = web::query_param(req, "patient").unwrap_or_else(|| "-".into());
            let mut delivery = Delivery::new(platform, connect, &patient);
            delivery.add(&resources).await?;
            let result = delivery.finish().await?;
            json_response(result.status(), &result)
        }
        "/outbox/replay" => {
            let connect = ConnectConfig::load(platform)?;
            let replay = crate::connect::replay(platform, &connect).await?;
            json_response(replay.result.status(), &replay)
        }
        "/outbox" => {
            let items: Vec<serde_json::Value> = crate::connect::outbox(platform)?
                .into_iter()
                .map(|e| {
                    // Listings never carry payloads.
                    serde_json::json!({
                        "id": e.id, "patient": e.patient, "target": e.target,
                        "resources": e.resources, "bytes": e.bytes, "attempts": e.attempts,
                        "last_error": e.last_error, "queued_at": e.queued_at,
                        "updated_at": e.updated_at,
                    })
                })
                .collect();
            json_response(
                200,
                &serde_json::json!({"count": items.len(), "items": items}),
            )
        }
        _ => {
            let items: Vec<serde_json::Value> = crate::connect::dead_letters(platform)?
                .into_iter()
                .map(|d| {
                    serde_json::json!({
                        "patient": d.patient, "resource_type": d.resource_type, "id": d.id,
                        "status": d.status, "detail": d.detail, "time": d.time,
                    })
                })
                .collect();
            json_response(
                200,
                &serde_json::json!({"count": items.len(), "items": items}),
            )
        }
    };
    Ok(no_store(answer))
}
