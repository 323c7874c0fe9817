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
        Err(Error::MethodNotAllowed(
            format!("{} is not supported here; use GET", req.method()),
            "GET",
        ))
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
        // An empty parameter is an absent one.
        let lang = web::query_param(&req, "lang").filter(|v| !v.is_empty());
        let return_to = web::query_param(&req, "return_to").filter(|v| !v.is_empty());
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
            "DELETE",
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
        })
        .unwrap_or_default();
    let granted = crate::api::SessionGranted {
        session,
        patient: tokens.patient,
        scope: tokens.scope,
        expires_at,
        return_to: pending.return_to,
    };
    Ok(no_store(json_response(200, &granted)))
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
        let allow = if expected == http::Method::POST {
            "POST"
        } else {
            "GET"
        };
        return Err(Error::MethodNotAllowed(
            format!("use {expected} for /bluebutton/connect{info}"),
            allow,
        ));
    }
    let answer = match info.as_str() {
        "/deliver" => {
            let connect = ConnectConfig::load(platform)?;
            let body: serde_json::Value = serde_json::from_slice(req.body()).map_err(|e| {
                Error::BadRequest(format!("the body must be a FHIR resource or Bundle: {e}"))
            })?;
            let kind = body.get("resourceType").and_then(|t| t.as_str());
            let well_formed = kind.is_some_and(|k| {
                k.starts_with(|c: char| c.is_ascii_uppercase())
                    && k.len() > 1
                    && k.chars().all(|c| c.is_ascii_alphabetic())
            });
            if !well_formed {
                return Err(Error::BadRequest(
                    "the body must be a FHIR resource or Bundle: `resourceType` names an R4 type"
                        .into(),
                ));
            }
            let resources = match kind {
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
            delivery.add_values(&resources).await?;
            let result = delivery.finish().await?;
            json_response(result.status(), &result)
        }
        "/outbox/replay" => {
            let connect = ConnectConfig::load(platform)?;
            let replay = crate::connect::replay(platform, &connect).await?;
            json_response(replay.result.status(), &replay)
        }
        "/outbox" => {
            let items: Vec<crate::api::OutboxItem> = crate::connect::outbox(platform)?
                .into_iter()
                .map(crate::api::OutboxItem::from)
                .collect();
            json_response(200, &crate::api::Listing::new(items))
        }
        _ => {
            let items: Vec<crate::api::DeadLetterItem> = crate::connect::dead_letters(platform)?
                .into_iter()
                .map(crate::api::DeadLetterItem::from)
                .collect();
            json_response(200, &crate::api::Listing::new(items))
        }
    };
    Ok(no_store(answer))
}

// The OpenAPI description of each route, next to the code that serves it. Bodies are empty: utoipa reads
// the attributes; the schemas come from the types the handlers really serialize.

/// Start the beneficiary's authorization at CMS.
///
/// Creates a single-use `state` (valid 10 minutes) and a PKCE S256 verifier, and redirects the browser to
/// CMS's consent page. API clients that send `Accept: application/json` get the URL instead.
#[utoipa::path(get, path = "/bluebutton/authorize", tag = "authorization",
    params(
        ("lang" = Option<String>, Query, description = "CMS page language: `en` or `es`"),
        ("return_to" = Option<String>, Query, description = "A path on this server, echoed by the callback"),
    ),
    responses(
        (status = 302, description = "Redirect to CMS", headers(("location" = String, description = "CMS's authorize URL"))),
        (status = 200, description = "The authorize URL, for `Accept: application/json`", body = crate::oauth::AuthorizationStart),
        (status = 400, description = "A bad `lang` or `return_to`", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 500, description = "The deployment is misconfigured", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn authorize_doc() {}

/// CMS sends the beneficiary back here.
///
/// Takes the state back (once), exchanges the code with the PKCE verifier, seals the tokens in the store,
/// and answers with an opaque session. A refusal at CMS arrives as `error=access_denied`.
#[utoipa::path(get, path = "/bluebutton/callback", tag = "authorization",
    params(
        ("code" = Option<String>, Query, description = "The authorization code from CMS"),
        ("state" = String, Query, description = "The state `/bluebutton/authorize` created"),
        ("error" = Option<String>, Query, description = "CMS's error, e.g. `access_denied`"),
    ),
    responses(
        (status = 200, description = "A session for this beneficiary", body = crate::api::SessionGranted),
        (status = 400, description = "Missing, unknown, used or expired state; missing code", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The beneficiary declined", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 500, description = "The deployment is misconfigured", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 502, description = "CMS refused the exchange or failed", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 504, description = "CMS did not answer", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn callback_doc() {}

/// End a session: revoke the grant at CMS and forget the tokens.
#[utoipa::path(delete, path = "/bluebutton/session", tag = "authorization",
    security(("session" = [])),
    responses(
        (status = 204, description = "Revoked and forgotten"),
        (status = 401, description = "Unknown or revoked session", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 502, description = "CMS refused or failed; the session is kept so you can retry", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 504, description = "CMS did not answer; the session is kept", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn end_session_doc() {}

/// Deliver FHIR resources to connect (a Bundle's entries, or one resource).
#[utoipa::path(post, path = "/bluebutton/connect/deliver", tag = "connect",
    security(("admin_key" = [])),
    params(("patient" = Option<String>, Query, description = "Whose resources these are (names dead letters)")),
    request_body(content = crate::api::FhirResource, description = "A FHIR R4 Bundle or resource", content_type = "application/json"),
    responses(
        (status = 200, description = "Everything delivered or dead-lettered", body = crate::connect::DeliveryResult),
        (status = 202, description = "Some batches are queued in the outbox", body = crate::connect::DeliveryResult),
        (status = 400, description = "Not a FHIR resource", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin routes are disabled (no `admin_api_key`)", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn deliver_doc() {}

/// Batches waiting for connect.
#[utoipa::path(get, path = "/bluebutton/connect/outbox", tag = "connect",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The outbox, oldest first, without payloads", body = crate::api::Listing<crate::api::OutboxItem>),
        (status = 401, description = "Missing or wrong admin key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin routes are disabled", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn outbox_doc() {}

/// Deliver the outbox again; each batch leaves it only once connect confirms it.
#[utoipa::path(post, path = "/bluebutton/connect/outbox/replay", tag = "connect",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The outbox is empty", body = crate::connect::ReplayResult),
        (status = 202, description = "Some batches are still queued", body = crate::connect::ReplayResult),
        (status = 401, description = "Missing or wrong admin key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin routes are disabled", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn replay_doc() {}

/// Resources connect refused, with its answers.
#[utoipa::path(get, path = "/bluebutton/connect/dead-letters", tag = "connect",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The dead letters", body = crate::api::Listing<crate::api::DeadLetterItem>),
        (status = 401, description = "Missing or wrong admin key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin routes are disabled", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn dead_letters_doc() {}

/// Whether the deployment's settings are usable. Values are never shown.
#[utoipa::path(get, path = "/bluebutton/healthz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = crate::api::Health),
        (status = 503, description = "A setting is unusable", body = crate::api::Health),
    ))]
pub fn health_doc() {}

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub fn openapi_doc() {}

/// `GET /bluebutton/healthz`: checks every setting without showing a value.
pub fn healthz(platform: &impl Platform) -> Response {
    let mut checks = std::collections::BTreeMap::new();
    let mut healthy = true;
    let mut check = |name: &str, result: Result<(), Error>| {
        let verdict = match result {
            Ok(()) => "ok".to_string(),
            Err(err) => {
                healthy = false;
                err.to_string()
            }
        };
        checks.insert(name.to_string(), verdict);
    };
    check(
        "cms_base_url",
        config::origin(platform, "cms_base_url").map(drop),
    );
    check(
        "cms_client_id",
        config::required(platform, "cms_client_id").map(drop),
    );
    check(
        "cms_client_secret",
        config::required(platform, "cms_client_secret").map(drop),
    );
    check("redirect_uri", OAuthClient::load(platform).map(drop));
    check(
        "token_key",
        crate::crypto::TokenKey::load(platform).map(drop),
    );
    check("connect", ConnectConfig::load(platform).map(drop));
    check(
        "page_size",
        config::number(platform, "page_size", 50, 1..=50).map(drop),
    );
    check(
        "fetch_concurrency",
        config::number(platform, "fetch_concurrency", 4, 1..=16).map(drop),
    );
    check(
        "response_buffer_bytes",
        config::number(platform, "response_buffer_bytes", 8 << 20, 0..=1 << 30).map(drop),
    );
    // Optional: unset only switches the admin routes off.
    let admin = match config::optional(platform, "admin_api_key") {
        Ok(Some(_)) => "ok".to_string(),
        Ok(None) => "unset: admin routes are disabled".to_string(),
        Err(err) => err.to_string(),
    };
    checks.insert("admin_api_key".into(), admin);
    let health = crate::api::Health {
        status: if healthy { "ok" } else { "misconfigured" }.into(),
        checks,
    };
    no_store(json_response(if healthy { 200 } else { 503 }, &health))
}
