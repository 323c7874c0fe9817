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

/// Entries seen so far: each `Type/id` once, each claim in its final version when CMS has one, and the
/// newest `meta.lastUpdated`.
#[derive(Default)]
struct Dedup {
    seen: HashSet<String>,
    duplicates: usize,
    newest: Option<time::OffsetDateTime>,
    ids: IdsHash,
    /// The identifiers of the final versions of claims passed on.
    finals: HashSet<String>,
    /// Partially adjudicated claims, held to the end: the final version may come on a later page.
    partials: Vec<Resource>,
    superseded: usize,
}

impl Dedup {
    /// The page's entries not seen before, in order, less the partially adjudicated claims (see
    /// [`Dedup::partials_left`]).
    fn admit(&mut self, entries: Vec<Resource>) -> Vec<Resource> {
        let mut fresh = Vec::with_capacity(entries.len());
        for resource in entries {
            // Offset paging over data that changes can repeat an entry; each appears once.
            if let Some(key) = resource.key() {
                if !self.seen.insert(key) {
                    self.duplicates += 1;
                    continue;
                }
            }
            match &resource.claim {
                Some(claim) if claim.partial => {
                    self.partials.push(resource);
                    continue;
                }
                Some(claim) => self.finals.extend(claim.identifiers.iter().cloned()),
                None => {}
            }
            self.note(&resource);
            fresh.push(resource);
        }
        fresh
    }

    /// The partially adjudicated claims whose final version never came; the others are superseded.
    fn partials_left(&mut self) -> Vec<Resource> {
        let (finals, held) = (&self.finals, std::mem::take(&mut self.partials));
        let (superseded, left): (Vec<Resource>, Vec<Resource>) = held.into_iter().partition(|r| {
            r.claim
                .as_ref()
                .is_some_and(|c| c.identifiers.iter().any(|i| finals.contains(i)))
        });
        self.superseded += superseded.len();
        left.iter().for_each(|resource| self.note(resource));
        left
    }

    fn note(&mut self, resource: &Resource) {
        self.ids.add(&resource.resource_type, &resource.id);
        if let Some(updated) = resource.last_updated {
            self.newest = Some(self.newest.map_or(updated, |n| n.max(updated)));
        }
    }
}

/// What one type's fetch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FetchSummary {
    pub pages: usize,
    pub entries: usize,
    pub retries: u32,
    pub duplicates_dropped: usize,
    /// Partially adjudicated claims left out because CMS also sent their final version (v3).
    pub partials_superseded: usize,
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
    let query = match search.insurance_card {
        true => "$generate-insurance-card".to_string(),
        false => query.join("&"),
    };
    let mut data = Data {
        resource_type: resource_type.to_string(),
        query: Some(query),
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
            if summary.partials_superseded > 0 {
                let superseded = summary.partials_superseded.to_string();
                data.details.push(("partials_superseded", superseded));
            }
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
    let partials = dedup.partials_left();
    if !partials.is_empty() {
        summary.entries += partials.len();
        sink.page(&partials).await?;
    }
    summary.duplicates_dropped = dedup.duplicates;
    summary.partials_superseded = dedup.superseded;
    summary.newest = dedup.newest;
    summary.ids_hash = dedup.ids.finish();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, identifier: &str, partial: bool) -> Resource {
        let tag = if partial {
            "PartiallyAdjudicated"
        } else {
            "Adjudicated"
        };
        Resource::from_value(&serde_json::json!({
            "resourceType": "ExplanationOfBenefit", "id": id,
            "meta": {"tag": [{"system": "https://bluebutton.cms.gov/fhir/CodeSystem/Adjudication-Status",
                              "code": tag}]},
            "identifier": [{"system": "https://bluebutton.cms.gov/fhir/sid/claim-id", "value": identifier}],
        }))
        .unwrap()
    }

    fn ids(resources: &[Resource]) -> Vec<&str> {
        resources.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn a_claims_final_version_supersedes_its_partial_one_on_any_page() {
        let mut dedup = Dedup::default();
        let first = dedup.admit(vec![
            claim("1", "X", false),
            claim("2", "Y", true),
            claim("3", "X", true),
            claim("5", "Z", true),
        ]);
        assert_eq!(ids(&first), ["1"]);
        let second = dedup.admit(vec![claim("4", "Y", false), claim("1", "X", false)]);
        assert_eq!(ids(&second), ["4"]);
        assert_eq!(dedup.duplicates, 1);
        // Z never became final: its partial version is all there is, and it is kept.
        assert_eq!(ids(&dedup.partials_left()), ["5"]);
        assert_eq!(dedup.superseded, 2);
    }
}
