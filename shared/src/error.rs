//! The one error type of the app. Each variant is a kind of failure; its text is the problem's `detail`
//! (RFC 9457), so it must never contain a secret. `http::problem` maps it to a response, once.

use crate::ports::{BodyError, StoreError};

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
    #[error("{detail}")]
    MethodNotAllowed {
        detail: String,
        /// The methods the route does allow (its `Allow` header).
        allow: &'static str,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A variable is missing or malformed: the operator must fix the deployment.
    #[error("configuration error: {0}")]
    Config(String),
    /// The store's own words stay in the component's log: they can name files, hosts or records.
    #[error("the key-value store failed (the details are in this component's log)")]
    Store(#[from] StoreError),
    /// An upstream (CMS or connect) answered with an error or garbage.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    /// CMS refused with a FHIR `OperationOutcome` (v3 passes its backend's through): the caller gets
    /// CMS's status and words, as if it had asked CMS itself.
    #[error("{detail}")]
    Outcome { status: u16, detail: String },
}

impl Error {
    /// `method` is not one this route serves; `allow` lists those it does.
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> Error {
        Error::MethodNotAllowed {
            detail: format!("{method} is not supported here; use {allow}"),
            allow,
        }
    }
}

impl From<BodyError> for Error {
    fn from(err: BodyError) -> Error {
        match err {
            BodyError::TooLarge(_) => Error::PayloadTooLarge(err.to_string()),
            BodyError::Broken(_) => Error::BadRequest(err.to_string()),
        }
    }
}
