//! `GET /bluebutton/audit`: the accounting of disclosures, a FHIR `searchset` Bundle of AuditEvents,
//! newest first, paged (`_count`, then the `next` link) and narrowed by `_since`. With a session: the
//! beneficiary's own, and nobody else's. With the admin key: one beneficiary's (`?patient=`), or
//! everything, authorizations that never named a patient included.

use crate::audit::{self, Action, Agent, Audit, Event, Outcome, Query};
use crate::auth::admin::admin_bearer;
use crate::auth::session;
use crate::auth::tokens::TokenContext;
use crate::cms::search::fhir_date_start;
use crate::connect::delivery::audit_to_connect;
use crate::error::Error;
use crate::http::{bearer, full_url, no_store, query_pairs, require_method, Response};
use crate::ports::Platform;
use crate::store::Vault;

pub const PATH: &str = "/bluebutton/audit";

const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 500;
/// The largest `_before` (JSON's largest exact integer; a log never gets near it).
const MAX_POSITION: u64 = (1 << 53) - 1;

/// The caller's parameters; `patient` is checked against who the caller is.
fn parse(uri: &http::Uri) -> Result<(Query, Option<String>), Error> {
    let mut query = Query {
        count: DEFAULT_COUNT,
        ..Query::default()
    };
    let mut patient = None;
    for (name, value) in query_pairs(uri) {
        match name.as_str() {
            "_count" => {
                query.count = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| {
                        Error::BadRequest(format!(
                            "`_count` is a whole number from 1 to {MAX_COUNT}"
                        ))
                    })?
            }
            "_since" => query.since = Some(since(&value)?),
            "_before" => {
                query.before = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n <= MAX_POSITION)
                        .ok_or_else(|| {
                            Error::BadRequest(
                                "`_before` is the position a `next` link gives".into(),
                            )
                        })?,
                )
            }
            "patient" => {
                patient = Some(value.trim_start_matches("Patient/").to_string());
            }
            _ => {
                return Err(Error::BadRequest(format!(
                    "`{name}` is not a parameter of {PATH}: use `_count`, `_since` or `patient`"
                )))
            }
        }
    }
    Ok((query, patient))
}

/// `_since`: a FHIR date or dateTime (`2026-12-01`, `2026-12-01T10:00:00Z`), from its start.
fn since(value: &str) -> Result<i64, Error> {
    fhir_date_start(value).ok_or_else(|| {
        Error::BadRequest(format!(
            "`_since` is a date such as 2026-12-01 or an instant such as 2026-12-01T10:00:00Z, \
             not `{value}`"
        ))
    })
}

pub async fn audit(
    platform: &impl Platform,
    head: &http::request::Parts,
) -> Result<Response, Error> {
    require_method(head, "GET")?;
    let ctx = TokenContext::load(platform)?;
    let vault = ctx.vault(platform);
    let mut recorder = Audit::new(&vault, ctx.audit, Agent::App);
    let (query, patient) = parse(&head.uri)?;
    let caller = bearer(&head.headers);
    let listing = read(&vault, &mut recorder, &ctx, caller, query, patient);
    // Whatever the answer: authenticating may have ended an idle session, an event like any other.
    audit_to_connect(&vault, &recorder, true).await;
    let listing = listing?;
    let url = full_url(head);
    let next = listing.next.map(|before| page_url(&url, before));
    Ok(no_store(bundle(&url, next.as_deref(), &listing.events)))
}

/// The caller's listing: the operator's choice, or the session's own patient's.
fn read<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    recorder: &mut Audit<'a, P>,
    ctx: &TokenContext,
    caller: Option<&str>,
    mut query: Query,
    patient: Option<String>,
) -> Result<audit::Listing, Error> {
    let listing = match admin_bearer(vault.platform, caller)? {
        Some(admin) => {
            recorder.act_as(Agent::Admin(admin));
            query.patient = patient.filter(|p| !p.is_empty());
            let listing = audit::list(vault, &query)?;
            if let Some(patient) = &query.patient {
                let desc = "an operator read this patient's accounting of disclosures";
                let event = Event::new(Action::AdminRead, Outcome::Success, desc);
                recorder.record(event.patient(patient));
            }
            listing
        }
        None => {
            let session = session::authenticate(vault, &ctx.limits, caller, recorder)?;
            session.check_patient(patient.as_deref())?;
            query.patient = Some(session.patient().to_string());
            audit::list(vault, &query)?
        }
    };
    Ok(listing)
}

/// The same search, from `before` on.
fn page_url(url: &str, before: u64) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return format!("{PATH}?_before={before}");
    };
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(name, _)| name != "_before")
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("_before", &before.to_string());
    parsed.to_string()
}

/// A searchset Bundle around the events' own JSON, as stored.
fn bundle(url: &str, next: Option<&str>, events: &[String]) -> Response {
    let mut links = vec![serde_json::json!({"relation": "self", "url": url})];
    if let Some(next) = next {
        links.push(serde_json::json!({"relation": "next", "url": next}));
    }
    let mut body = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","link":{},"entry":["#,
        serde_json::Value::Array(links)
    );
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"resource":"#);
        body.push_str(event);
        body.push_str(r#","search":{"mode":"match"}}"#);
    }
    body.push_str("]}");
    let mut resp = http::Response::new(body.into_bytes());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let uri: http::Uri = "/bluebutton/audit?_count=2&_since=2026-12-01&patient=Patient/-1"
            .parse()
            .unwrap();
        let (query, patient) = parse(&uri).unwrap();
        assert_eq!(query.count, 2);
        assert_eq!(query.since, Some(1_796_083_200));
        assert_eq!(patient.as_deref(), Some("-1"));
        for bad in [
            "_count=0",
            "_count=501",
            "_since=yesterday",
            "_before=x",
            "foo=1",
        ] {
            let uri: http::Uri = format!("/bluebutton/audit?{bad}").parse().unwrap();
            assert!(matches!(parse(&uri), Err(Error::BadRequest(_))), "{bad}");
        }
        assert_eq!(since("2026-12-01T00:00:00Z").unwrap(), 1_796_083_200);
    }

    #[test]
    fn the_next_page_keeps_the_search_and_moves_on() {
        assert_eq!(
            page_url("http://h/bluebutton/audit?_count=2&_before=9", 7),
            "http://h/bluebutton/audit?_count=2&_before=7"
        );
    }
}
