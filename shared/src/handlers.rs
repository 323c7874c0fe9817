//! One function per route: parse the request, apply the rules, answer. Components only adapt Spin to these.

use crate::config::{self, OAuthClient};
use crate::oauth;
use crate::ports::{write_full, Platform, ResponseWriter};
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

/// `GET /bluebutton/fhir/{type}`: every page of the session's resources of that type, as one searchset
/// Bundle, streamed once it outgrows `response_buffer_bytes`.
pub async fn fhir_fetch(platform: &impl Platform, req: Request, writer: impl ResponseWriter) {
    let started = platform.now();
    let (ctx, mut session, search, since) = match prepare_fetch(platform, &req) {
        Ok(prepared) => prepared,
        Err(err) => return write_full(writer, err.into_response()),
    };
    let budget = match config::number(platform, "response_buffer_bytes", 8 << 20, 0..=1 << 30) {
        Ok(n) => n as usize,
        Err(err) => return write_full(writer, err.into_response()),
    };
    let pages = match crate::fhir::pages(platform, &ctx, &mut session, &search).await {
        Ok(pages) => pages,
        Err(err) => return write_full(writer, err.into_response()),
    };
    let self_url = web::header(&req, "spin-full-url")
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().to_string());
    let mut out = BundleOut::new(writer, budget, &self_url, pages.planned);
    let crate::fhir::Pages { first, rest, .. } = pages;
    out.add_page(first);
    let mut rest = rest;
    while let Some((_, page)) = futures::StreamExt::next(&mut rest).await {
        match page {
            Ok(page) => out.add_page(page),
            Err(err) => return out.fail(err),
        }
        if out.broken {
            return out.fail(Error::BadGateway("the client went away".into()));
        }
    }
    // Only a complete, unfiltered (or `since=last`) fetch moves the watermark.
    if let (Some(newest), true) = (out.newest, since.is_some() || search.filters.is_empty()) {
        let stamp = newest
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let patient = &session.record.patient;
        if let Err(err) = crate::fhir::store_watermark(platform, patient, &search.resource_type, &stamp)
        {
            return out.fail(err);
        }
    }
    let elapsed = platform.now() - started;
    eprintln!(
        "fhir-fetch: {} pages={} entries={} retries={} duplicates_dropped={} streamed={} ms={}",
        search.resource_type,
        out.pages,
        out.entries,
        out.retries,
        out.duplicates,
        out.started,
        elapsed.whole_milliseconds()
    );
    out.finish();
}

type Prepared = (
    crate::tokens::TokenContext,
    crate::session::Session,
    crate::fhir::SearchRequest,
    Option<String>,
);

fn prepare_fetch(platform: &impl Platform, req: &Request) -> Result<Prepared, Error> {
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
    let session = crate::session::authenticate(platform, &ctx.key, web::bearer(req))?;
    let mut filters = Vec::new();
    let mut since = None;
    for (name, value) in web::query_pairs(req) {
        match name.as_str() {
            "patient" => session.check_patient(Some(&value))?,
            "since" if value == "last" => since = Some(value),
            "since" => {
                return Err(Error::BadRequest(
                    "`since` takes one value, `last`: what changed since the last complete fetch"
                        .into(),
                ))
            }
            n if crate::fhir::allowed_filter(resource_type, n) => filters.push((name, value)),
            _ => {
                return Err(Error::BadRequest(format!(
                    "`{name}` is not a parameter of /bluebutton/fhir/{resource_type}"
                )))
            }
        }
    }
    if since.is_some() {
        if let Some(mark) =
            crate::fhir::load_watermark(platform, &session.record.patient, resource_type)?
        {
            filters.push(("_lastUpdated".into(), format!("gt{mark}")));
        }
    }
    let search = crate::fhir::SearchRequest {
        resource_type: resource_type.to_string(),
        page_size,
        concurrency,
        filters,
    };
    Ok((ctx, session, search, since))
}

/// Writes the merged Bundle: held in memory while small (so a failing page can still become a 502
/// problem), streamed page by page once it outgrows the budget (so memory stays bounded).
struct BundleOut<W: ResponseWriter> {
    writer: Option<W>,
    buffer: Vec<u8>,
    budget: usize,
    planned: Option<usize>,
    started: bool,
    broken: bool,
    entries: usize,
    pages: usize,
    retries: u32,
    duplicates: usize,
    seen: std::collections::HashSet<String>,
    newest: Option<time::OffsetDateTime>,
}

impl<W: ResponseWriter> BundleOut<W> {
    fn new(writer: W, budget: usize, self_url: &str, planned: Option<usize>) -> Self {
        let mut buffer = br#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"#.to_vec();
        serde_json::to_writer(&mut buffer, self_url).expect("a string serializes");
        buffer.extend_from_slice(br#"}],"entry":["#);
        BundleOut {
            writer: Some(writer),
            buffer,
            budget,
            planned,
            started: false,
            broken: false,
            entries: 0,
            pages: 0,
            retries: 0,
            duplicates: 0,
            seen: Default::default(),
            newest: None,
        }
    }

    fn add_page(&mut self, page: crate::fhir::Page) {
        self.pages += 1;
        self.retries += page.retries;
        for resource in page.entries {
            // Offset paging over data that changes can repeat an entry; each appears once.
            if let Some(key) = crate::fhir::resource_key(&resource) {
                if !self.seen.insert(key) {
                    self.duplicates += 1;
                    continue;
                }
            }
            if let Some(updated) = crate::fhir::last_updated(&resource) {
                self.newest = Some(self.newest.map_or(updated, |n| n.max(updated)));
            }
            if self.entries > 0 {
                self.buffer.push(b',');
            }
            self.buffer.extend_from_slice(br#"{"resource":"#);
            serde_json::to_writer(&mut self.buffer, &resource).expect("JSON serializes");
            self.buffer.push(b'}');
            self.entries += 1;
        }
        if self.started || self.buffer.len() > self.budget {
            self.flush();
        }
    }

    fn headers(&self, streamed: bool) -> Vec<(String, String)> {
        let mut headers = vec![
            ("content-type".to_string(), "application/fhir+json".to_string()),
            ("cache-control".to_string(), "no-store".to_string()),
        ];
        if streamed {
            if let Some(planned) = self.planned {
                headers.push(("x-pages-fetched".into(), planned.to_string()));
            }
            headers.push(("x-streamed".into(), "true".into()));
        } else {
            headers.push(("x-pages-fetched".into(), self.pages.to_string()));
            headers.push(("x-upstream-retries".into(), self.retries.to_string()));
            headers.push(("x-duplicates-dropped".into(), self.duplicates.to_string()));
        }
        headers
    }

    fn flush(&mut self) {
        let headers = (!self.started).then(|| self.headers(true));
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        if let Some(headers) = headers {
            self.started = true;
            if writer.start(200, &headers).is_err() {
                self.broken = true;
            }
        }
        if !self.broken && writer.write(&self.buffer).is_err() {
            self.broken = true;
        }
        self.buffer.clear();
    }

    fn fail(mut self, err: Error) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        if self.started {
            eprintln!("fhir-fetch: aborting a streamed response: {err}");
            writer.finish(false);
        } else {
            write_full(writer, err.into_response());
        }
    }

    fn finish(mut self) {
        self.buffer.extend_from_slice(br#"],"total":"#);
        self.buffer.extend_from_slice(self.entries.to_string().as_bytes());
        self.buffer.push(b'}');
        if self.started {
            self.flush();
            let ok = !self.broken;
            if let Some(writer) = self.writer.take() {
                writer.finish(ok);
            }
        } else if let Some(writer) = self.writer.take() {
            let mut resp = http::Response::new(std::mem::take(&mut self.buffer));
            for (name, value) in self.headers(false) {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(&value),
                ) {
                    resp.headers_mut().insert(n, v);
                }
            }
            write_full(writer, resp);
        }
    }
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
