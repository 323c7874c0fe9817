//! Every page of a search: the first, then the rest — fetched concurrently by `startIndex` once `total`
//! tells how many there are, else by following `next` — each retried, and renewed once when CMS refuses
//! the token mid-fetch.

use futures::stream::{self, LocalBoxStream, StreamExt};
use url::Url;

use crate::auth::tokens::SharedToken;
use crate::cms::search::SearchRequest;
use crate::error::Error;
use crate::fhir::{Bundle, Resource};
use crate::ports::{HttpError, Platform};
use crate::retry::{self, RetryPolicy};

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
    let first_url = search.page_url(&base, &patient, None);
    let first = fetch_authorized(platform, &first_url, tokens)
        .await
        .map_err(|e| e.into_error(1))?;
    let (planned, rest) = match first.total {
        Some(total) => {
            // startIndex counts entries, in steps of the page size we asked for.
            let step = search.limits.page_size.max(1);
            let starts: Vec<u64> = (1..)
                .map(|k| k * step)
                .take_while(|s| *s < total && !first.entries.is_empty())
                .collect();
            let planned = 1 + starts.len();
            let rest = stream::iter(starts.into_iter().enumerate())
                .map(move |(i, start)| {
                    let url = search.page_url(&base, &patient, Some(start));
                    async move {
                        let page = fetch_authorized(platform, &url, tokens).await;
                        (i + 2, page.map_err(|e| e.into_error(i + 2)))
                    }
                })
                .buffered(search.limits.concurrency.max(1))
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
    Transport(HttpError),
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
            PageError::Transport(HttpError::TooLarge(limit)) => Error::BadGateway(format!(
                "CMS sent a page {page} larger than the {limit}-byte limit; refused it"
            )),
            PageError::Transport(HttpError::Timeout) => Error::GatewayTimeout(format!(
                "CMS did not answer page {page} in time, after retries"
            )),
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
        let detail = crate::upstream::error_detail(resp.body())
            .unwrap_or_else(|| format!("an answer of {} bytes", resp.body().len()));
        return Err(PageError::Status(status, detail));
    }
    let bundle = Bundle::parse(resp.body()).map_err(|e| PageError::Body(e.to_string()))?;
    let total = bundle.total;
    let next = bundle.link("next").map(str::to_string);
    let entries = bundle
        .into_resources()
        .map_err(|e| PageError::Body(e.to_string()))?;
    Ok(Page {
        entries,
        total,
        next,
        retries: retried.retries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
