//! The fetch pipeline: every page of a search (see [`crate::cms::paging`]), each entry once, handed page by
//! page to a [`PageSink`] — the caller's Bundle, connect, or both. It reports the newest
//! `meta.lastUpdated` it saw; moving a cursor past it is delivery's decision, once delivery is durable.

use std::collections::HashSet;
use std::future::Future;

use serde::Serialize;

use crate::auth::session::Session;
use crate::auth::tokens::{SharedToken, TokenContext};
use crate::cms::paging::{self, Page};
use crate::cms::search::SearchRequest;
use crate::connect::Delivery;
use crate::error::Error;
use crate::fhir::Resource;
use crate::ports::Platform;
use crate::store::Vault;

/// Entries seen so far: each `Type/id` once, and the newest `meta.lastUpdated`.
#[derive(Default)]
struct Dedup {
    seen: HashSet<String>,
    duplicates: usize,
    newest: Option<time::OffsetDateTime>,
}

impl Dedup {
    /// The page's entries not seen before, in order.
    fn admit(&mut self, entries: Vec<Resource>) -> Vec<Resource> {
        entries
            .into_iter()
            .filter(|resource| {
                // Offset paging over data that changes can repeat an entry; each appears once.
                if let Some(key) = resource.key() {
                    if !self.seen.insert(key) {
                        self.duplicates += 1;
                        return false;
                    }
                }
                if let Some(updated) = resource.last_updated {
                    self.newest = Some(self.newest.map_or(updated, |n| n.max(updated)));
                }
                true
            })
            .collect()
    }
}

/// What one type's fetch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FetchSummary {
    pub pages: usize,
    pub entries: usize,
    pub retries: u32,
    pub duplicates_dropped: usize,
    /// The newest `meta.lastUpdated` among the entries.
    #[serde(skip)]
    pub newest: Option<time::OffsetDateTime>,
}

/// Where fetched pages go.
pub trait PageSink {
    /// How many pages there will be, once CMS said (`None`: found by following `next`).
    fn planned(&mut self, _pages: Option<usize>) {}
    fn page(&mut self, entries: &[Resource]) -> impl Future<Output = Result<(), Error>>;
}

/// Connect receives pages as they come.
impl<P: Platform> PageSink for Delivery<'_, P> {
    async fn page(&mut self, entries: &[Resource]) -> Result<(), Error> {
        self.add(entries).await
    }
}

/// Connect (when pushing) and then the caller's answer: connect first, so the answer never shows what was
/// not handed on.
pub struct Both<A, B>(pub Option<A>, pub B);

impl<A: PageSink, B: PageSink> PageSink for Both<A, B> {
    fn planned(&mut self, pages: Option<usize>) {
        if let Some(a) = self.0.as_mut() {
            a.planned(pages);
        }
        self.1.planned(pages);
    }

    async fn page(&mut self, entries: &[Resource]) -> Result<(), Error> {
        if let Some(a) = self.0.as_mut() {
            a.page(entries).await?;
        }
        self.1.page(entries).await
    }
}

/// Runs every page of `search` through `sink`. The session comes back with whatever token it ended with.
pub async fn run<P: Platform>(
    vault: &Vault<'_, P>,
    ctx: &TokenContext,
    session: &mut Session,
    search: &SearchRequest,
    sink: &mut impl PageSink,
) -> Result<FetchSummary, Error> {
    let tokens = SharedToken::new(vault, ctx, session.clone()).await?;
    let summary = run_with(vault.platform, &tokens, search, sink).await;
    *session = tokens.into_session();
    summary
}

async fn run_with<P: Platform>(
    platform: &P,
    tokens: &SharedToken<'_, P>,
    search: &SearchRequest,
    sink: &mut impl PageSink,
) -> Result<FetchSummary, Error> {
    let paging::Pages {
        first,
        planned,
        mut rest,
    } = paging::pages(platform, tokens, search).await?;
    sink.planned(planned);
    let mut dedup = Dedup::default();
    let mut summary = FetchSummary::default();
    let mut next: Option<Page> = Some(first);
    while let Some(page) = next.take() {
        summary.pages += 1;
        summary.retries += page.retries;
        let fresh = dedup.admit(page.entries);
        summary.entries += fresh.len();
        sink.page(&fresh).await?;
        if let Some((_, page)) = futures::StreamExt::next(&mut rest).await {
            next = Some(page?);
        }
    }
    summary.duplicates_dropped = dedup.duplicates;
    summary.newest = dedup.newest;
    Ok(summary)
}
