//! `POST /bluebutton/sync` (admin key; optional body `{"patient": "<id>"}`): for each authorized patient,
//! what changed since the last sync of each type, delivered to connect.

use serde_json::Value;

use crate::auth::admin::require_admin;
use crate::cms::sync;
use crate::error::Error;
use crate::http::{bearer, json_response, no_store, require_method, Response};
use crate::ports::{Platform, RequestBody};

pub const PATH: &str = "/bluebutton/sync";

/// `{"patient": "…"}` and nothing much more.
const BODY_LIMIT: usize = 4 << 10;

pub async fn sync(
    platform: &impl Platform,
    head: &http::request::Parts,
    body: impl RequestBody,
) -> Result<Response, Error> {
    let admin = require_admin(platform, bearer(&head.headers))?;
    require_method(head, "POST")?;
    let only = patient_of(&body.read(BODY_LIMIT).await?)?;
    let report = sync::run(platform, only, admin).await?;
    Ok(no_store(json_response(report.status(), &report)))
}

/// The one patient a body names, if any.
fn patient_of(body: &[u8]) -> Result<Option<String>, Error> {
    if body.is_empty() {
        return Ok(None);
    }
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("the body must be JSON: {e}")))?;
    if !body.is_object() && !body.is_null() {
        return Err(Error::BadRequest(
            "the body must be a JSON object such as {\"patient\": \"-20140000010000\"}".into(),
        ));
    }
    match body.get("patient") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) => Ok(Some(p.clone())),
        Some(_) => Err(Error::BadRequest("`patient` must be a string".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_names_one_patient_or_none() {
        assert_eq!(patient_of(b"").unwrap(), None);
        assert_eq!(patient_of(b"null").unwrap(), None);
        assert_eq!(patient_of(b"{}").unwrap(), None);
        assert_eq!(
            patient_of(br#"{"patient":"-1"}"#).unwrap().as_deref(),
            Some("-1")
        );
        assert!(patient_of(b"[1]").is_err());
        assert!(patient_of(br#"{"patient":1}"#).is_err());
        assert!(patient_of(b"{").is_err());
    }
}
