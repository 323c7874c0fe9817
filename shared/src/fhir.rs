//! Reading a patient's resources from CMS: the right search parameter per type, every page (the rest
//! fetched concurrently once `total` tells how many there are, else by following `next`), retries, and
//! one merged searchset Bundle in CMS order.

use futures::stream::{self, LocalBoxStream, StreamExt};
use serde_json::Value;
use url::Url;

use crate::ports::Platform;
use crate::problem::Error;
use crate::retry::{self, RetryPolicy};
use crate::tokens::SharedToken;

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

/// One resource from CMS, kept as the JSON text CMS sent (parsing every claim into a tree and writing it
/// out again is most of a fetch's CPU), with what the pipeline needs to know about it.
#[derive(Debug, Clone)]
pub struct Resource {
    pub resource_type: String,
    /// Empty when the resource has none.
    pub id: String,
    pub last_updated: Option<time::OffsetDateTime>,
    pub json: Box<serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(default)]
    id: String,
    meta: Option<HeadMeta>,
}

#[derive(serde::Deserialize)]
struct HeadMeta {
    #[serde(rename = "lastUpdated")]
    last_updated: Option<String>,
}

impl Resource {
    pub fn from_raw(json: Box<serde_json::value::RawValue>) -> Result<Resource, String> {
        let head: Head = serde_json::from_str(json.get())
            .map_err(|e| format!("a resource without a resourceType ({e})"))?;
        let last_updated = head.meta.and_then(|m| m.last_updated).and_then(|t| {
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        });
        Ok(Resource {
            resource_type: head.resource_type,
            id: head.id,
            last_updated,
            json,
        })
    }

    pub fn from_value(value: &Value) -> Result<Resource, String> {
        let json = serde_json::value::to_raw_value(value).map_err(|e| e.to_string())?;
        Resource::from_raw(json)
    }

    /// `Type/id`, its identity within a Bundle.
    pub fn key(&self) -> Option<String> {
        (!self.id.is_empty()).then(|| format!("{}/{}", self.resource_type, self.id))
    }
}

/// A searchset page, read without building a tree of every claim.
#[derive(serde::Deserialize)]
struct RawPage {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    total: Option<u64>,
    #[serde(default)]
    link: Vec<RawLink>,
    entry: Option<Vec<RawEntry>>,
}

#[derive(serde::Deserialize)]
struct RawLink {
    relation: Option<String>,
    url: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawEntry {
    resource: Option<Box<serde_json::value::RawValue>>,
}

pub struct Page {
    pub entries: Vec<Resource>,
    pub total: Option<u64>,
    pub next: Option<String>,
    pub retries: u32,
}

/// A search under way: the first page, and the rest as a stream in CMS order (numbered from 2).
pub struct Pages<'a> {
    pub first: Page,
    /// How many pages there are in all, when CMS said `total`.
    pub planned: Option<usize>,
    pub rest: LocalBoxStream<'a, (usize, Result<Page, Error>)>,
}

/// Fetches the first page, and plans the rest: by `startIndex` (concurrently, in order) when `total` is
/// known, else by following `next`.
pub async fn pages<'a, P: Platform>(
    platform: &'a P,
    tokens: &'a SharedToken<'a, P>,
    search: &'a SearchRequest,
) -> Result<Pages<'a>, Error> {
    let base = tokens.ctx.client.cms_base_url.clone();
    let patient = tokens.patient();
    let first_url = page_url(&base, search, &patient, None);
    let first = fetch_authorized(platform, &first_url, tokens)
        .await
        .map_err(|e| e.into_error(1))?;
    let (planned, rest) = match first.total {
        Some(total) => {
            // startIndex counts entries, in steps of the page size we asked for.
            let step = search.page_size.max(1);
            let starts: Vec<u64> = (1..)
                .map(|k| k * step)
                .take_while(|s| *s < total && !first.entries.is_empty())
                .collect();
            let planned = 1 + starts.len();
            let rest = stream::iter(starts.into_iter().enumerate())
                .map(move |(i, start)| {
                    let url = page_url(&base, search, &patient, Some(start));
                    async move {
                        let page = fetch_authorized(platform, &url, tokens).await;
                        (i + 2, page.map_err(|e| e.into_error(i + 2)))
                    }
                })
                .buffered(search.concurrency.max(1))
                .boxed_local();
            (Some(planned), rest)
        }
        None => {
            let rest = stream::unfold((first.next.clone(), 2usize), move |(next, number)| {
                let base = base.clone();
                async move {
                    let url = next?;
                    let page = match check_same_origin(&url, &base) {
                        Ok(()) => fetch_authorized(platform, &url, tokens)
                            .await
                            .map_err(|e| e.into_error(number)),
                        Err(e) => Err(e),
                    };
                    // After a failure the stream ends: nothing follows a missing page.
                    let following = page.as_ref().ok().and_then(|p| p.next.clone());
                    Some(((number, page), (following, number + 1)))
                }
            })
            .boxed_local();
            (None, rest)
        }
    };
    Ok(Pages {
        first,
        planned,
        rest,
    })
}

/// Fetches a page with the shared token; a 401 (the token expired or was revoked mid-fetch) renews it
/// once and tries again.
async fn fetch_authorized<P: Platform>(
    platform: &P,
    url: &str,
    tokens: &SharedToken<'_, P>,
) -> Result<Page, PageError> {
    let token = tokens.current();
    match fetch_page(platform, url, &token).await {
        Err(PageError::Unauthorized) => {
            let fresh = tokens.renew(&token).await.map_err(PageError::Renewal)?;
            fetch_page(platform, url, &fresh).await
        }
        other => other,
    }
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
    /// CMS refused the token and refreshing it failed (the grant is gone, say).
    Renewal(Error),
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
            PageError::Renewal(err) => err,
            // CMS checks the filters we pass through: its 400 is the caller's to fix.
            PageError::Status(400, detail) => {
                Error::BadRequest(format!("CMS refused the search: {detail}"))
            }
            PageError::Status(403, detail) => Error::Forbidden(format!(
                "CMS refused page {page}: {detail} (was the scope withheld at consent?)"
            )),
            PageError::Status(status, detail) => Error::BadGateway(format!(
                "CMS answered page {page} with {status} after retries: {detail}"
            )),
            PageError::Transport(crate::ports::HttpError::TooLarge(limit)) => Error::BadGateway(
                format!("CMS sent a page {page} larger than the {limit}-byte limit; refused it"),
            ),
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

/// How often a page whose body arrived broken (cut short, not a Bundle) is fetched again.
const BROKEN_BODY_RETRIES: u32 = 2;

async fn fetch_page(platform: &impl Platform, url: &str, token: &str) -> Result<Page, PageError> {
    let mut broken = 0;
    loop {
        match fetch_page_once(platform, url, token).await {
            Err(PageError::Body(_)) if broken < BROKEN_BODY_RETRIES => broken += 1,
            Ok(mut page) => {
                page.retries += broken;
                return Ok(page);
            }
            other => return other,
        }
    }
}

async fn fetch_page_once(
    platform: &impl Platform,
    url: &str,
    token: &str,
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
    let page: RawPage = serde_json::from_slice(resp.body())
        .map_err(|e| PageError::Body(format!("not a JSON Bundle ({e})")))?;
    if page.resource_type.as_deref() != Some("Bundle") {
        return Err(PageError::Body("not a Bundle".into()));
    }
    let entries = page
        .entry
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let raw = e
                .resource
                .ok_or_else(|| PageError::Body("an entry without a resource".into()))?;
            Resource::from_raw(raw).map_err(PageError::Body)
        })
        .collect::<Result<_, _>>()?;
    let next = page
        .link
        .into_iter()
        .find(|l| l.relation.as_deref() == Some("next"))
        .and_then(|l| l.url);
    Ok(Page {
        entries,
        total: page.total,
        next,
        retries: retried.retries,
    })
}

/// `watermark:{patient}:{type}`: the newest `meta.lastUpdated` of the last complete fetch.
fn watermark_key(patient: &str, resource_type: &str) -> String {
    format!("watermark:{patient}:{resource_type}")
}

pub fn load_watermark(
    platform: &impl crate::ports::KeyValue,
    patient: &str,
    resource_type: &str,
) -> Result<Option<String>, Error> {
    Ok(platform
        .get(&watermark_key(patient, resource_type))?
        .and_then(|v| String::from_utf8(v).ok()))
}

pub fn store_watermark(
    platform: &impl crate::ports::KeyValue,
    patient: &str,
    resource_type: &str,
    value: &str,
) -> Result<(), Error> {
    platform.set(&watermark_key(patient, resource_type), value.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_names_the_patient_its_own_way() {
        assert_eq!(patient_param("Patient"), Some("_id"));
        assert_eq!(patient_param("Coverage"), Some("beneficiary"));
        assert_eq!(patient_param("ExplanationOfBenefit"), Some("patient"));
        assert_eq!(patient_param("Encounter"), None);
    }

    #[test]
    fn page_urls_carry_count_filters_and_offsets() {
        let search = SearchRequest {
            resource_type: "ExplanationOfBenefit".into(),
            page_size: 50,
            concurrency: 4,
            filters: vec![
                ("_lastUpdated".into(), "gt2024-01-01".into()),
                ("type".into(), "carrier,pde".into()),
            ],
        };
        let url = page_url("https://cms.test", &search, "-1", Some(100));
        assert_eq!(
            url,
            "https://cms.test/v2/fhir/ExplanationOfBenefit/?patient=-1&_count=50\
             &_lastUpdated=gt2024-01-01&type=carrier%2Cpde&startIndex=100"
        );
    }

    #[test]
    fn next_links_must_stay_on_the_cms_origin() {
        assert!(check_same_origin(
            "https://cms.test/v2/fhir/X?startIndex=10",
            "https://cms.test"
        )
        .is_ok());
        assert!(check_same_origin("https://evil.test/v2/fhir/X", "https://cms.test").is_err());
        assert!(check_same_origin("http://cms.test/v2/fhir/X", "https://cms.test").is_err());
    }

    #[test]
    fn filters_per_type() {
        assert!(allowed_filter("Patient", "_lastUpdated"));
        assert!(!allowed_filter("Patient", "type"));
        assert!(allowed_filter("ExplanationOfBenefit", "service-date"));
        assert!(!allowed_filter("Coverage", "startIndex"));
    }
}
