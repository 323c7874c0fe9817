//! The single mapping of [`Error`] to HTTP: an `application/problem+json` document (RFC 9457).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::http::{json_response, Response};

/// An RFC 9457 problem document: every error this API answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, utoipa::ToResponse)]
#[response(
    description = "A problem document (RFC 9457); `detail` says what went wrong and what to do",
    content_type = "application/problem+json"
)]
#[schema(example = json!({"type": "https://bluebutton-spin.dev/problems/unauthorized", "title": "Unauthorized", "status": 401, "detail": "unknown or revoked session"}))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::PayloadTooLarge(_) => 413,
            Error::Config(_) | Error::Store(_) => 500,
            Error::BadGateway(_) => 502,
            Error::GatewayTimeout(_) => 504,
            // Only an error status is ever kept (a 2xx or 3xx never becomes an `Outcome`).
            Error::Outcome { status, .. } => *status,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Error::BadRequest(_) => ("bad-request", "Bad request"),
            Error::Unauthorized(_) => ("unauthorized", "Unauthorized"),
            Error::Forbidden(_) => ("forbidden", "Forbidden"),
            Error::NotFound(_) => ("not-found", "Not found"),
            Error::MethodNotAllowed { .. } => ("method-not-allowed", "Method not allowed"),
            Error::PayloadTooLarge(_) => ("payload-too-large", "Payload too large"),
            Error::Config(_) => ("configuration", "Server misconfigured"),
            Error::Store(_) => ("storage", "Key-value store failure"),
            Error::BadGateway(_) => ("upstream", "Upstream failure"),
            Error::GatewayTimeout(_) => ("upstream-timeout", "Upstream timed out"),
            Error::Outcome { .. } => ("cms-outcome", "CMS refused the request"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (slug, title) = self.slug_and_title();
        Problem {
            kind: format!("https://bluebutton-spin.dev/problems/{slug}"),
            title: title.to_string(),
            status: self.status(),
            detail: self.to_string(),
        }
    }

    pub fn into_response(self) -> Response {
        if let Error::Store(inner) = &self {
            eprintln!("key-value store failure: {inner}");
        }
        let problem = self.problem();
        let mut resp = json_response(problem.status, &problem);
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Error::Unauthorized(_) => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"bluebutton-spin\""),
                );
            }
            Error::MethodNotAllowed { allow, .. } => {
                headers.insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

/// A handler's outcome as a response: its own, or the problem it ran into.
pub fn respond(result: Result<Response, Error>) -> Response {
    result.unwrap_or_else(Error::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_carry_status_title_type_and_detail() {
        let resp = Error::Forbidden("session reaches only patient -1".into()).into_response();
        assert_eq!(resp.status(), 403);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
        let p: Problem = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(p.status, 403);
        assert_eq!(p.title, "Forbidden");
        assert_eq!(p.detail, "session reaches only patient -1");
        assert!(p.kind.ends_with("/forbidden"));
    }

    #[test]
    fn unauthorized_names_the_scheme_and_405_the_methods() {
        let resp = Error::Unauthorized("no session".into()).into_response();
        assert!(resp.headers().contains_key(http::header::WWW_AUTHENTICATE));
        let resp = Error::method_not_allowed(&http::Method::PUT, "GET").into_response();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[http::header::ALLOW], "GET");
    }

    #[test]
    fn config_errors_are_500_and_say_so() {
        let resp = Error::Config("token_key must decode to 32 bytes".into()).into_response();
        assert_eq!(resp.status(), 500);
        let p: Problem = serde_json::from_slice(resp.body()).unwrap();
        assert!(p.detail.contains("token_key"));
    }
}
