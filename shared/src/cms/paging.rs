//! Every page of a search: the first, then the rest — fetched concurrently by `startIndex` once `total`
//! tells how many there are, else by following `next` — each retried, and renewed once when CMS refuses
//! the token mid-fetch.

use std::collections::VecDeque;

use futures::future::{FutureExt, LocalBoxFuture};
use futures::stream::{self, FuturesOrdered, LocalBoxStream, StreamExt};
use url::Url;

use crate::auth::tokens::SharedToken;
use crate::cms::search::SearchRequest;
use crate::config::ApiVersion;
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

/// Fetches the first page, and plans the rest: on v2 by `startIndex` (concurrently, in order) when
/// `total` is known; else (and always on v3, whose `total` is not the result's size) by following
/// `next`, fetching guessed pages ahead where the links page by offset.
pub async fn pages<'a, P: Platform>(
    platform: &'a P,
    tokens: &'a SharedToken<'a, P>,
    search: &'a SearchRequest,
) -> Result<Pages<'a>, Error> {
    let client = &tokens.ctx.client;
    let (base, version) = (client.cms_base_url.clone(), client.api_version);
    let patient = tokens.patient();
    let first_url = search.page_url(&base, version, &patient, None);
    let first = fetch_authorized(platform, &first_url, tokens)
        .await
        .map_err(|e| e.into_error(1))?;
    // v3's `total` is the page size while more pages follow (BFD drops it, HAPI fills it in).
    let trusted_total = first.total.filter(|_| version == ApiVersion::V2);
    let (planned, rest) = match trusted_total {
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
                    let url = search.page_url(&base, version, &patient, Some(start));
                    async move {
                        let page = fetch_authorized(platform, &url, tokens).await;
                        (i + 2, page.map_err(|e| e.into_error(i + 2)))
                    }
                })
                .buffered(search.limits.concurrency.max(1))
                .boxed_local();
            (Some(planned), rest)
        }
        None => (
            None,
            follow_next(platform, tokens, search, first.next.clone()),
        ),
    };
    Ok(Pages {
        first,
        planned,
        rest,
    })
}

/// The chain of `next` links from page 2 on, exactly as a reader following them one by one would get
/// it. Where a link pages by offset, the pages after it are guessed (the same link, the offset moved on
/// by the page size) and fetched ahead, up to the concurrency; a guessed page is used only once the page
/// before it has named that very request as its `next`, and a wrong guess is dropped and the link
/// followed instead. The cost: up to concurrency − 1 requests past the last page.
fn follow_next<'a, P: Platform>(
    platform: &'a P,
    tokens: &'a SharedToken<'a, P>,
    search: &'a SearchRequest,
    first_next: Option<String>,
) -> LocalBoxStream<'a, (usize, Result<Page, Error>)> {
    type Fetch<'f> = LocalBoxFuture<'f, Result<Page, PageError>>;
    struct Chain<'f> {
        /// What the last page named as `next`, as CMS wrote it.
        next: Option<String>,
        /// Requests under way, oldest first, beside the URLs they fetch.
        ahead: FuturesOrdered<Fetch<'f>>,
        urls: VecDeque<Url>,
        number: usize,
    }
    let client = &tokens.ctx.client;
    let (base, version) = (client.cms_base_url.as_str(), client.api_version);
    let width = search.limits.concurrency.max(1);
    let launch = move |chain: &mut Chain<'a>, url: Url| {
        let target = url.to_string();
        chain.ahead.push_back(
            async move { fetch_authorized(platform, &target, tokens).await }.boxed_local(),
        );
        chain.urls.push_back(url);
    };
    let chain = Chain {
        next: first_next,
        ahead: FuturesOrdered::new(),
        urls: VecDeque::new(),
        number: 2,
    };
    stream::unfold(chain, move |mut chain| async move {
        let link = chain.next.take()?;
        let number = chain.number;
        chain.number += 1;
        let expected = match on_cms(&link, base, version) {
            Ok(url) => url,
            Err(err) => return Some(((number, Err(err)), chain)),
        };
        if chain
            .urls
            .front()
            .is_none_or(|guess| !same_request(guess, &expected))
        {
            chain.ahead = FuturesOrdered::new();
            chain.urls.clear();
            launch(&mut chain, expected);
        }
        while chain.urls.len() < width {
            let last = chain.urls.back().expect("one request is under way");
            match offset_after(last, search.limits.page_size) {
                Some(guess) => launch(&mut chain, guess),
                None => break,
            }
        }
        chain.urls.pop_front();
        let page = chain.ahead.next().await.expect("one request is under way");
        match &page {
            Ok(page) => chain.next.clone_from(&page.next),
            // Nothing follows a missing page.
            Err(_) => chain.next = None,
        }
        if chain.next.is_none() {
            chain.ahead = FuturesOrdered::new();
            chain.urls.clear();
        }
        Some(((number, page.map_err(|e| e.into_error(number))), chain))
    })
    .boxed_local()
}

/// The request a page after `url` would be, when `url` pages by `_offset` or `startIndex`.
fn offset_after(url: &Url, page_size: u64) -> Option<Url> {
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let at = pairs
        .iter()
        .position(|(name, _)| name == "_offset" || name == "startIndex")?;
    let step = pairs
        .iter()
        .find(|(name, _)| name == "_count")
        .and_then(|(_, count)| count.parse::<u64>().ok())
        .unwrap_or(page_size)
        .max(1);
    let offset = pairs[at].1.parse::<u64>().ok()? + step;
    let mut guess = url.clone();
    guess
        .query_pairs_mut()
        .clear()
        .extend_pairs(
            pairs
                .iter()
                .enumerate()
                .map(|(i, (name, value))| match i == at {
                    true => (name.as_str(), offset.to_string()),
                    false => (name.as_str(), value.clone()),
                }),
        );
    Some(guess)
}

/// Whether two URLs ask for the same thing: same origin and path, same parameters in the same order,
/// however each was percent-encoded.
fn same_request(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin() && a.path() == b.path() && a.query_pairs().eq(b.query_pairs())
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

/// A `next` link, checked: the access token goes only to CMS. On v3 a link that names another host
/// (BB2 can leak BFD's own) but CMS's FHIR path is re-based onto `cms_base_url`; anything else is
/// refused.
fn on_cms(link: &str, base: &str, version: ApiVersion) -> Result<Url, Error> {
    let refused = || {
        Error::BadGateway(format!(
            "CMS sent a `next` link to another origin ({link}); not following it with the token"
        ))
    };
    let (mut url, base) = Url::parse(link)
        .ok()
        .zip(Url::parse(base).ok())
        .ok_or_else(refused)?;
    if url.origin() == base.origin() {
        return Ok(url);
    }
    if version == ApiVersion::V2 || !url.path().starts_with(&version.path("/fhir/")) {
        return Err(refused());
    }
    url.set_scheme(base.scheme()).map_err(|()| refused())?;
    url.set_host(base.host_str()).map_err(|_| refused())?;
    url.set_port(base.port()).map_err(|()| refused())?;
    Ok(url)
}

enum PageError {
    Unauthorized,
    /// CMS refused the token and refreshing it failed (the grant is gone, say).
    Renewal(Error),
    Status(u16, String),
    /// A FHIR OperationOutcome with an error status, passed on with it.
    Outcome(u16, String),
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
            PageError::Outcome(status, detail) => Error::Outcome {
                status,
                detail: format!("CMS answered page {page} with {status}: {detail}"),
            },
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
        return Err(match crate::upstream::is_operation_outcome(resp.body()) {
            true if status >= 400 => PageError::Outcome(status, detail),
            _ => PageError::Status(status, detail),
        });
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
    fn next_links_stay_on_cms_and_v3_ones_are_rebased() {
        let on = |link, version| on_cms(link, "https://cms.test", version).map(String::from);
        let v2 = ApiVersion::V2;
        assert!(on("https://cms.test/v2/fhir/X?startIndex=10", v2).is_ok());
        assert!(on("https://evil.test/v2/fhir/X", v2).is_err());
        assert!(on("http://cms.test/v2/fhir/X", v2).is_err());
        let v3 = ApiVersion::V3;
        assert_eq!(
            on(
                "https://bfd.internal:7443/v3/fhir/ExplanationOfBenefit?_offset=5",
                v3
            )
            .unwrap(),
            "https://cms.test/v3/fhir/ExplanationOfBenefit?_offset=5"
        );
        assert!(on("https://evil.test/steal?x=/v3/fhir/", v3).is_err());
        assert!(on("not a url", v3).is_err());
    }

    #[test]
    fn offsets_are_guessed_in_place_and_compared_decoded() {
        let url = |s| Url::parse(s).unwrap();
        let link =
            url("https://cms.test/v3/fhir/EOB?patient=-3&_count=5&_offset=5&_source=NCH,DDPS");
        let guess = offset_after(&link, 50).unwrap();
        assert!(same_request(
            &guess,
            &url("https://cms.test/v3/fhir/EOB?patient=-3&_count=5&_offset=10&_source=NCH%2CDDPS")
        ));
        assert!(!same_request(&guess, &link));
        let v2 = url("https://cms.test/v2/fhir/EOB?patient=-1&startIndex=50");
        assert_eq!(
            offset_after(&v2, 50).unwrap().as_str(),
            "https://cms.test/v2/fhir/EOB?patient=-1&startIndex=100"
        );
        assert!(offset_after(&url("https://cms.test/v3/fhir/EOB?cursor=ab"), 50).is_none());
    }
}
