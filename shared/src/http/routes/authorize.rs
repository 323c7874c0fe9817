//! `GET /bluebutton/authorize[?lang=en|es][&return_to=/path]`: sends the beneficiary to CMS with a fresh
//! single-use state and a PKCE S256 challenge — a 302, or the URL as JSON for API clients.

use crate::auth::state;
use crate::config::{OAuthClient, STATE_TTL_SECS};
use crate::crypto::TokenKey;
use crate::error::Error;
use crate::http::{header, json_response, no_store, query_param, require_method, Response};
use crate::ports::Platform;
use crate::store::Vault;

pub const PATH: &str = "/bluebutton/authorize";

fn wants_json(headers: &http::HeaderMap) -> bool {
    header(headers, "accept").is_some_and(|accept| {
        accept
            .split(',')
            .any(|t| t.trim().starts_with("application/json"))
    })
}

pub fn authorize(platform: &impl Platform, head: &http::request::Parts) -> Result<Response, Error> {
    require_method(head, "GET")?;
    let client = OAuthClient::load(platform)?;
    let key = TokenKey::load(platform)?;
    let ttl = STATE_TTL_SECS.load(platform)? as i64;
    let lang = query_param(&head.uri, "lang");
    let return_to = query_param(&head.uri, "return_to");
    let vault = Vault::new(platform, &key);
    let start = state::begin(&vault, &client, ttl, lang.as_deref(), return_to.as_deref())?;
    let resp = if wants_json(&head.headers) {
        json_response(200, &start)
    } else {
        let location = http::HeaderValue::from_str(&start.authorization_url)
            .map_err(|_| Error::Config("`cms_base_url` is not a valid URL".into()))?;
        let mut resp = http::Response::new(Vec::new());
        *resp.status_mut() = http::StatusCode::FOUND;
        resp.headers_mut().insert(http::header::LOCATION, location);
        resp
    };
    // The URL carries a live state: never cache it.
    Ok(no_store(resp))
}
