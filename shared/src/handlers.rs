//! One function per route: parse the request, apply the rules, answer. Components only adapt Spin to these.

use crate::config::{self, OAuthClient};
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

/// `GET /bluebutton/fhir/{type}`: every page of the session's resources of that type, as one Bundle.
pub async fn fhir_fetch(platform: &impl Platform, req: Request) -> Response {
    respond(fhir_fetch_inner(platform, &req).await)
}

fn path_info(req: &Request) -> String {
    web::header(req, "spin-path-info")
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().path().to_string())
}

async fn fhir_fetch_inner(platform: &impl Platform, req: &Request) -> Result<Response, Error> {
    let info = path_info(req);
    let resource_type = info.trim_matches('/');
    if crate::fhir::patient_param(resource_type).is_none() {
        return Err(Error::NotFound(format!(
            "no such resource type `{resource_type}`: use one of {}",
            RESOURCE_TYPES.join(", ")
        )));
    }
    require_get(req)?;
    let ctx = crate::tokens::TokenContext::load(platform)?;
    let page_size = config::number(platform, "page_size", 50, 1..=50)?;
    let concurrency = config::number(platform, "fetch_concurrency", 4, 1..=16)? as usize;
    let mut session = crate::session::authenticate(platform, &ctx.key, web::bearer(req))?;
    let mut filters = Vec::new();
    for (name, value) in web::query_pairs(req) {
        match name.as_str() {
            "patient" => session.check_patient(Some(&value))?,
            n if crate::fhir::allowed_filter(resource_type, n) => filters.push((name, value)),
            _ => {
                return Err(Error::BadRequest(format!(
                    "`{name}` is not a parameter of /bluebutton/fhir/{resource_type}"
                )))
            }
        }
    }
    let search = crate::fhir::SearchRequest {
        resource_type: resource_type.to_string(),
        page_size,
        concurrency,
        filters,
    };
    let result = crate::fhir::search(platform, &ctx, &mut session, &search).await?;
    let self_url = web::header(req, "spin-full-url")
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().to_string());
    let bundle = crate::fhir::merged_bundle(&self_url, result.entries);
    let mut resp = json_response(200, &bundle);
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json"),
    );
    headers.insert("x-pages-fetched", result.pages.into());
    headers.insert("x-upstream-retries", result.retries.into());
    Ok(no_store(resp))
}

/// `/bluebutton/connect/...`: the outbox and dead letters of deliveries to connect (admin key).
pub async fn connect_push(platform: &impl Platform, req: Request) -> Response {
    respond(connect_push_inner(platform, &req))
}

fn connect_push_inner(platform: &impl Platform, req: &Request) -> Result<Response, Error> {
    let info = path_info(req);
    let prefix = match info.as_str() {
        "/outbox" => "outbox:",
        "/dead-letters" => "deadletter:",
        other => {
            return Err(Error::NotFound(format!(
                "no route /bluebutton/connect{other}: see /bluebutton/connect/outbox and \
                 /bluebutton/connect/dead-letters"
            )))
        }
    };
    crate::admin::require_admin(platform, req)?;
    require_get(req)?;
    let mut items = Vec::new();
    for key in platform
        .keys()?
        .into_iter()
        .filter(|k| k.starts_with(prefix))
    {
        if let Some(value) = platform.get(&key)? {
            let mut item: serde_json::Value =
                serde_json::from_slice(&value).unwrap_or(serde_json::Value::Null);
            // Listings never carry payloads.
            if let Some(obj) = item.as_object_mut() {
                obj.remove("payload");
                obj.remove("resource");
            }
            items.push(serde_json::json!({"key": key, "item": item}));
        }
    }
    Ok(no_store(json_response(
        200,
        &serde_json::json!({"count": items.len(), "items": items}),
    )))
}
