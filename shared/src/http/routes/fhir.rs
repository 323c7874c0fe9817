//! `GET /bluebutton/fhir/{type}`: every page of the session's resources of that type — as one searchset
//! Bundle (streamed once it outgrows `response_buffer_bytes`), delivered to connect unless `push=false`,
//! or answered with the delivery result when `return_cms=false`.

use crate::auth::session::{self, Session};
use crate::auth::tokens::TokenContext;
use crate::cms::pipeline::{self, Both, PageSink};
use crate::cms::search::{check_filter, SearchRequest};
use crate::cms::watermark;
use crate::config::{ConnectSettings, FetchLimits};
use crate::connect::Delivery;
use crate::error::Error;
use crate::fhir::{Resource, ResourceType};
use crate::http::bundle_stream::BundleOut;
use crate::http::{
    bearer, full_url, json_response, no_store, path_info, query_pairs, require_method, write_full,
};
use crate::ports::{Platform, ResponseWriter};

/// The caller's choices.
struct FetchRequest {
    search: SearchRequest,
    since_last: bool,
    /// Answer with the merged CMS Bundle (else with the delivery to connect: empty with `push=false`).
    return_cms: bool,
    /// Also deliver to connect.
    push: bool,
}

impl FetchRequest {
    /// A complete fetch (unfiltered, or `since=last`) moves the watermark; a filtered one does not.
    fn moves_watermark(&self) -> bool {
        self.since_last || self.search.filters.is_empty()
    }
}

fn flag(value: &str, name: &str) -> Result<bool, Error> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::BadRequest(format!("`{name}` is `true` or `false`"))),
    }
}

fn parse(
    platform: &impl Platform,
    uri: &http::Uri,
    session: &Session,
    resource_type: ResourceType,
) -> Result<FetchRequest, Error> {
    let limits = FetchLimits::load(platform)?;
    let mut filters = Vec::new();
    let (mut since_last, mut return_cms, mut push) = (false, true, true);
    for (name, value) in query_pairs(uri) {
        match name.as_str() {
            "patient" => session.check_patient(Some(&value))?,
            "since" if value == "last" => since_last = true,
            "since" => {
                return Err(Error::BadRequest(
                    "`since` takes one value, `last`: what changed since the last complete fetch"
                        .into(),
                ))
            }
            "return_cms" => return_cms = flag(&value, "return_cms")?,
            "push" => push = flag(&value, "push")?,
            n if resource_type.filters().contains(&n) => {
                check_filter(n, &value)?;
                filters.push((name, value))
            }
            _ => {
                return Err(Error::BadRequest(format!(
                    "`{name}` is not a parameter of /bluebutton/fhir/{resource_type}"
                )))
            }
        }
    }
    if since_last {
        filters.extend(watermark::since_filter(
            platform,
            &session.record.patient,
            resource_type,
        )?);
    }
    Ok(FetchRequest {
        search: SearchRequest {
            resource_type,
            limits,
            filters,
        },
        since_last,
        return_cms,
        push,
    })
}

struct Prepared {
    ctx: TokenContext,
    session: Session,
    request: FetchRequest,
    connect: Option<ConnectSettings>,
}

fn prepare(platform: &impl Platform, head: &http::request::Parts) -> Result<Prepared, Error> {
    let info = path_info(head);
    let name = info.trim_matches('/');
    let resource_type = ResourceType::parse(name).ok_or_else(|| {
        Error::NotFound(format!(
            "no such resource type `{name}`: use one of {}",
            ResourceType::names()
        ))
    })?;
    require_method(head, "GET")?;
    let ctx = TokenContext::load(platform)?;
    let session = session::authenticate(platform, &ctx.key, bearer(&head.headers))?;
    let request = parse(platform, &head.uri, &session, resource_type)?;
    let connect = if request.push {
        Some(ConnectSettings::load(platform)?)
    } else {
        None
    };
    Ok(Prepared {
        ctx,
        session,
        request,
        connect,
    })
}

/// Where the answer goes: the merged Bundle, or (with `return_cms=false`) the delivery result.
enum Answer<W: ResponseWriter> {
    Bundle(BundleOut<W>),
    Delivery(W),
}

impl<W: ResponseWriter> PageSink for Answer<W> {
    fn planned(&mut self, pages: Option<usize>) {
        if let Answer::Bundle(out) = self {
            out.planned(pages);
        }
    }

    async fn page(&mut self, entries: &[Resource]) -> Result<(), Error> {
        match self {
            Answer::Bundle(out) => out.page(entries).await,
            Answer::Delivery(_) => Ok(()),
        }
    }
}

pub async fn fetch<W: ResponseWriter>(
    platform: &impl Platform,
    head: &http::request::Parts,
    writer: W,
) {
    let Prepared {
        ctx,
        mut session,
        request,
        connect,
    } = match prepare(platform, head) {
        Ok(prepared) => prepared,
        Err(err) => return write_full(writer, err.into_response()),
    };
    let started = platform.now();
    let answer = if request.return_cms {
        let budget = request.search.limits.response_buffer_bytes;
        Answer::Bundle(BundleOut::new(writer, budget, &full_url(head)))
    } else {
        Answer::Delivery(writer)
    };
    let delivery = connect.map(|c| Delivery::new(platform, c, &session.record.patient));
    let mut sink = Both(delivery, answer);
    let outcome = pipeline::run(
        platform,
        &ctx,
        &mut session,
        &request.search,
        request.moves_watermark(),
        &mut sink,
    )
    .await;
    let Both(delivery, answer) = sink;
    let outcome = match (outcome, delivery) {
        (Ok(summary), Some(delivery)) => delivery.finish().await.map(|d| (summary, Some(d))),
        (Ok(summary), None) => Ok((summary, None)),
        (Err(err), _) => Err(err),
    };
    if let Ok((summary, _)) = &outcome {
        eprintln!(
            "fhir-fetch: {} pages={} entries={} retries={} duplicates_dropped={} ms={}",
            request.search.resource_type,
            summary.pages,
            summary.entries,
            summary.retries,
            summary.duplicates_dropped,
            (platform.now() - started).whole_milliseconds()
        );
    }
    match (answer, outcome) {
        (Answer::Bundle(out), Ok((summary, delivery))) => out.finish(&summary, delivery.as_ref()),
        (Answer::Bundle(out), Err(err)) => out.fail(err),
        (Answer::Delivery(writer), Ok((_, delivery))) => {
            let result = delivery.unwrap_or_default();
            write_full(writer, no_store(json_response(result.status(), &result)));
        }
        (Answer::Delivery(writer), Err(err)) => write_full(writer, err.into_response()),
    }
}
