//! The one error type of the app and its single mapping to HTTP: `application/problem+json` (RFC 9457).

use serde::Serialize;

use crate::ports::StoreError;
use crate::web::{json_response, Response};

/// Every way a request can fail. The message is the problem's `detail`: it must never contain a secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The detail, and the methods the route does allow (its `Allow` header).
    #[error("{0}")]
    MethodNotAllowed(String, &'static str),
    /// A variable is missing or malformed: the operator must fix the deployment.
    #[error("configuration error: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An upstream (CMS or connect) answered with an error or garbage.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
}

/// An RFC 9457 problem document: every error this API answers.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
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
            Error::MethodNotAllowed(..) => 405,
            Error::Config(_) | Error::Store(_) => 500,
            Error::BadGateway(_) => 502,
            Error::GatewayTimeout(_) => 504,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Error::BadRequest(_) => ("bad-request", "Bad request"),
            Error::Unauthorized(_) => ("unauthorized", "Unauthorized"),
            Error::Forbidden(_) => ("forbidden", "Forbidden"),
            Error::NotFound(_) => ("not-found", "Not found"),
            Error::MethodNotAllowed(..) => ("method-not-allowed", "Method not allowed"),
            Error::Config(_) => ("configuration", "Server misconfigured"),
            Error::Store(_) => ("storage", "Key-value store failure"),
            Error::BadGateway(_) => ("upstream", "Upstream failure"),
            Error::GatewayTimeout(_) => ("upstream-timeout", "Upstream timed out"),
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
        let problem = self.problem();
        let mut resp = json_response(problem.status, &problem);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        );
        if let Error::Unauthorized(_) = self {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"bluebutton-spin\""),
            );
        }
        if let Error::MethodNotAllowed(_, allow) = self {
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
        }
        resp
    }
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
    fn unauthorized_names_the_scheme() {
        let resp = Error::Unauthorized("no session".into()).into_response();
        assert!(resp.headers().contains_key(http::header::WWW_AUTHENTICATE));
    }

    #[test]
    fn config_errors_are_500_and_say_so() {
        let resp = Error::Config("token_key must decode to 32 bytes".into()).into_response();
        assert_eq!(resp.status(), 500);
        let p: Problem = serde_json::from_slice(resp.body()).unwrap();
        assert!(p.detail.contains("token_key"));
    }
}
