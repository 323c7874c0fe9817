//! Reading a patient's resources from CMS: the right search parameter per type, every page (the rest
//! fetched concurrently once `total` tells how many there are, else by following `next`), retries, and
//! one merged searchset Bundle in CMS order.

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use url::Url;

use crate::ports::Platform;
use crate::problem::Error;
use crate::retry::{self, RetryPolicy};
use crate::session::Session;
use crate::tokens::{self, TokenContext};

/// The three resource types Blue Button 2.0 serves, with the search parameter naming the patient.
pub const RESOURCE_TYPES: [(&str, &str); 3] = [
    ("Patient", "_id"),
    ("Coverage", "beneficiary"),
    ("ExplanationOfBenefit", "patient"),
];

pub fn patient_param(resource_type: &str) -> Option<&'static str> {
    RESOURCE_TYPES
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, p)| *p)
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub resource_type: String,
    pub page_size: u64,
    pub concurrency: usize,
    /// Filters passed through to CMS as given (`_lastUpdated`, `type`, `service-date`).
    pub filters: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct SearchResult {
    pub entries: Vec<Value>,
    pub pages: usize,
    pub retries: u32,
}

/// Which filters a caller may pass through for a type (anything else is refused, not silently dropped).
pub fn allowed_filter(resource_type: &str, name: &str) -> bool {
    name == "_lastUpdated"
        || (resource_type == "ExplanationOfBenefit" && matches!(name, "type" | "service-date"))
}

fn page_url(base: &str, search: &SearchRequest, patient: &str, start: Option<u64>) -> String {
    let mut url = Url::parse(&format!("{base}/v2/fhir/{}/", search.resource_type))
        .expect("the base URL was validated");
    {
        let mut q = url.query_pairs_mut();
        let param = patient_param(&search.resource_type).expect("validated type");
        q.append_pair(param, patient);
        q.append_pair("_count", &search.page_size.to_string());
        for (name, value) in &search.filters {
            q.append_pair(name, value);
        }
        if let Some(start) = start {
            q.append_pair("startIndex", &start.to_string());
        }
    }
    url.into()
}

struct Page {
    entries: Vec<Value>,
    total: Option<u64>,
    next: Option<String>,
    retries: u32,
}

/// Fetches every page of the session's resources of one type.
pub async fn search(
    platform: &impl Platform,
    ctx: &TokenContext,
    session: &mut Session,
    search: &SearchRequest,
) -> Result<SearchResult, Error> {
    let base = ctx.client.cms_base_url.clone();
    let patient = session.record.patient.clone();
    let mut token = tokens::access_token(platform, ctx, session, false).await?;
    let first_url = page_url(&base, search, &patient, None);
    let first = match fetch_page(platform, &first_url, &token, 0).await {
        Err(PageError::Unauthorized) => {
            // The token died early (revoked, or CMS restarted): one forced refresh, then give up.
            token = tokens::access_token(platform, ctx, session, true).await?;
            fetch_page(platform, &first_url, &token, 0).await
        }
        other => other,
    }
    .map_err(|e| e.into_error(1))?;
    let mut retries = first.retries;
    let mut entries = first.entries;
    let mut pages = 1;
    match first.total {
        Some(total) if total > entries.len() as u64 && !entries.is_empty() => {
            // startIndex counts entries, in steps of the page size we asked for.
            let step = search.page_size;
            let starts: Vec<u64> = (1..).map(|k| k * step).take_while(|s| *s < total).collect();
            let results: Vec<(usize, Result<Page, PageError>)> =
                stream::iter(starts.iter().enumerate())
                    .map(|(i, start)| {
                        let url = page_url(&base, search, &patient, Some(*start));
                        let token = token.clone();
                        async move { (i + 2, fetch_page(platform, &url, &token, 0).await) }
                    })
                    .buffered(search.concurrency.max(1))
                    .collect()
                    .await;
            for (number, result) in results {
                let page = result.map_err(|e| e.into_error(number))?;
                retries += page.retries;
                entries.extend(page.entries);
                pages += 1;
            }
        }
        Some(_) => {}
        None => {
            let mut next = first.next;
            while let Some(url) = next {
                check_same_origin(&url, &base)?;
                pages += 1;
                let page = fetch_page(platform, &url, &token, 0)
                    .await
                    .map_err(|e| e.into_error(pages))?;
                retries += page.retries;
                entries.extend(page.entries);
                next = page.next;
            }
        }
    }
    Ok(SearchResult {
        entries,
        pages,
        retries,
    })
}

/// The access token goes only to CMS: a `next` link elsewhere is refused.
fn check_same_origin(url: &str, base: &str) -> Result<(), Error> {
    let ok = Url::parse(url)
        .ok()
        .zip(Url::parse(base).ok())
        .is_some_and(|(u, b)| u.origin() == b.origin());
    if ok {
        Ok(())
    } else {
        Err(Error::BadGateway(format!(
            "CMS sent a `next` link to another origin ({url}); not following it with the token"
        )))
    }
}

enum PageError {
    Unauthorized,
    Status(u16, String),
    Transport(crate::ports::HttpError),
    Body(String),
}

impl PageError {
    fn into_error(self, page: usize) -> Error {
        match self {
            PageError::Unauthorized => Error::Unauthorized(format!(
                "CMS refused this session's access token on page {page}: authorize again"
            )),
            PageError::Status(403, detail) => Error::Forbidden(format!(
                "CMS refused page {page}: {detail} (was the scope withheld at consent?)"
            )),
            PageError::Status(status, detail) => Error::BadGateway(format!(
                "CMS answered page {page} with {status} after retries: {detail}"
            )),
            PageError::Transport(crate::ports::HttpError::Timeout) => Error::GatewayTimeout(
                format!("CMS did not answer page {page} in time, after retries"),
            ),
            PageError::Transport(e) => {
                Error::BadGateway(format!("CMS could not be reached for page {page}: {e}"))
            }
            PageError::Body(why) => {
                Error::BadGateway(format!("CMS sent an unusable page {page}: {why}"))
            }
        }
    }
}

async fn fetch_page(
    platform: &impl Platform,
    url: &str,
    token: &str,
    _attempt: u32,
) -> Result<Page, PageError> {
    let request = http::Request::get(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Accept", "application/fhir+json")
        .body(Vec::new())
        .map_err(|e| PageError::Body(e.to_string()))?;
    let retried = retry::send(platform, &request, &RetryPolicy::default()).await;
    let resp = retried.result.map_err(PageError::Transport)?;
    let status = resp.status().as_u16();
    if status == 401 {
        return Err(PageError::Unauthorized);
    }
    if !(200..300).contains(&status) {
        let detail = serde_json::from_slice::<Value>(resp.body())
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("{} bytes", resp.body().len()));
        return Err(PageError::Status(status, detail));
    }
    let bundle: Value = serde_json::from_slice(resp.body())
        .map_err(|e| PageError::Body(format!("not JSON ({e})")))?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(PageError::Body("not a Bundle".into()));
    }
    let entries = match bundle.get("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries
            .iter()
            .map(|e| {
                e.get("resource")
                    .cloned()
                    .ok_or_else(|| PageError::Body("an entry without a resource".into()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(PageError::Body("`entry` is not a list".into())),
    };
    let next = bundle
        .get("link")
        .and_then(Value::as_array)
        .and_then(|links| {
            links
                .iter()
                .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        })
        .and_then(|l| l.get("url").and_then(Value::as_str))
        .map(str::to_string);
    Ok(Page {
        entries,
        total: bundle.get("total").and_then(Value::as_u64),
        next,
        retries: retried.retries,
    })
}

/// One searchset Bundle with every entry once, in CMS order.
pub fn merged_bundle(self_url: &str, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{"relation": "self", "url": self_url}],
        "entry": entries.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>(),
    })
}
