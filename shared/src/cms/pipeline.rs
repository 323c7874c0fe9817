//! The fetch pipeline: every page of a search (see [`crate::cms::paging`]), each entry once, handed page by
//! page to a [`PageSink`] — the caller's Bundle, connect, or both. It reports the newest
//! `meta.lastUpdated` it saw; moving a cursor past it is delivery's decision, once delivery is durable.

use std::collections::HashSet;
use std::future::Future;

use serde::Serialize;

use crate::audit::{Action, Audit, Data, Event, IdsHash, Outcome, Peer};
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
    ids: IdsHash,
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
                self.ids.add(&resource.resource_type, &resource.id);
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
    /// The audit trail's hash of the entries' ids.
    #[serde(skip)]
    pub ids_hash: Option<String>,
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
/// The fetch is recorded in the audit trail, however it ends.
pub async fn run<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: &'a Audit<'a, P>,
    ctx: &'a TokenContext,
    session: &mut Session,
    search: &SearchRequest,
    sink: &mut impl PageSink,
) -> Result<FetchSummary, Error> {
    let summary = match SharedToken::new(vault, audit, ctx, session.clone()).await {
        Ok(tokens) => {
            let summary = run_with(vault.platform, &tokens, search, sink).await;
            *session = tokens.into_session();
            summary
        }
        Err(err) => Err(err),
    };
    audit.record(read_event(session.patient(), search, &summary));
    summary
}

fn read_event(
    patient: &str,
    search: &SearchRequest,
    summary: &Result<FetchSummary, Error>,
) -> Event {
    let resource_type = search.resource_type.as_str();
    let mut query: Vec<String> = search
        .filters
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    query.push(format!("_count={}", search.limits.page_size));
    let mut data = Data {
        resource_type: resource_type.to_string(),
        query: Some(query.join("&")),
        ..Data::default()
    };
    let event = match summary {
        Ok(summary) => {
            data.ids_hash = summary.ids_hash.clone();
            data.details = vec![
                ("entries", summary.entries.to_string()),
                ("pages", summary.pages.to_string()),
                ("retries", summary.retries.to_string()),
            ];
            Event::new(
                Action::CmsRead,
                Outcome::Success,
                format!(
                    "read {} {resource_type} in {} pages",
                    summary.entries, summary.pages
                ),
            )
        }
        Err(err) => {
            data.details = vec![("status", err.status().to_string())];
            Event::new(Action::CmsRead, Outcome::SeriousFailure, err.to_string())
        }
    };
    event.patient(patient).peer(Peer::Cms).data(data)
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
    summary.ids_hash = dedup.ids.finish();
    Ok(summary)
}
