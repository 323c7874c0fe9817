//! The HTTP face of the app: plain `http` request and response types (which spin-sdk accepts as they
//! are), one mapping of errors to problem documents ([`problem`]), the streamed Bundle
//! ([`bundle_stream`]), the health check ([`health`]) and one handler per route ([`routes`]).

pub mod bundle_stream;
pub mod health;
pub mod problem;
pub mod routes;

use serde::Serialize;

use crate::error::Error;
use crate::ports::{ResponseWriter, WriteError};

pub type Request = http::Request<Vec<u8>>;
pub type Response = http::Response<Vec<u8>>;

pub fn json_response<T: Serialize>(status: u16, body: &T) -> Response {
    let body = serde_json::to_vec(body).expect("response types serialize");
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Marks a response that carries a secret or personal data as never to be cached.
pub fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The query string's pairs, decoded.
pub fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// A query parameter's first value, as given (an empty value is a value: each route's rules decide it).
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    query_pairs(uri)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = header(headers, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The path after the component's route prefix (Spin's `spin-path-info`), e.g. `/Patient` for
/// `/bluebutton/fhir/Patient`.
pub fn path_info(head: &http::request::Parts) -> String {
    header(&head.headers, "spin-path-info")
        .map(str::to_string)
        .unwrap_or_else(|| head.uri.path().to_string())
}

/// The URL the caller used (Spin's `spin-full-url`).
pub fn full_url(head: &http::request::Parts) -> String {
    header(&head.headers, "spin-full-url")
        .map(str::to_string)
        .unwrap_or_else(|| head.uri.to_string())
}

/// The route serves only `allow` (`"GET"`, say).
pub fn require_method(head: &http::request::Parts, allow: &'static str) -> Result<(), Error> {
    if head.method.as_str() == allow {
        Ok(())
    } else {
        Err(Error::method_not_allowed(&head.method, allow))
    }
}

/// Sends a whole, already built response.
pub fn write_full(mut writer: impl ResponseWriter, resp: Response) {
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let sent: Result<(), WriteError> = writer
        .start(resp.status().as_u16(), &headers)
        .and_then(|()| writer.write(resp.body()));
    writer.finish(sent.is_ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", auth.parse().unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer  ")), None);
    }

    #[test]
    fn query_decoding() {
        let uri: http::Uri = "/x?a=1%202&b=%2F&c=".parse().unwrap();
        assert_eq!(query_param(&uri, "a").as_deref(), Some("1 2"));
        assert_eq!(query_param(&uri, "b").as_deref(), Some("/"));
        assert_eq!(query_param(&uri, "c").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "d"), None);
    }
}
