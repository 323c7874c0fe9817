//! `GET /bluebutton/fhir/{type}`: every page of the session's resources of that type — as one searchset
//! Bundle (streamed once it outgrows `response_buffer_bytes`), delivered to connect unless `push=false`,
//! or answered with the delivery result when `return_cms=false`. `GET /bluebutton/fhir/insurance-card`
//! (v3): the beneficiary's digital insurance card, a `collection` Bundle, answered and delivered alike.

use crate::audit::{Agent, Audit};
use crate::auth::session::{self, Session};
use crate::auth::tokens::TokenContext;
use crate::cms::pipeline::{self, Both, PageSink};
use crate::cms::search::{check_filter, SearchRequest, V3_CLAIM_FILTERS};
use crate::config::{ApiVersion, ConnectSettings, FetchLimits};
use crate::connect::delivery::{audit_to_connect, Before};
use crate::connect::{cursor, Delivery};
use crate::error::Error;
use crate::fhir::{Resource, ResourceType};
use crate::http::bundle_stream::BundleOut;
use crate::http::{
    bearer, full_url, json_response, no_store, path_info, query_pairs, require_method, write_full,
};
use crate::ports::{Platform, ResponseWriter};
use crate::store::Vault;

/// How long a fetch that pushes replays older outbox batches before its own go out (behind them).
const DRAIN_SECS: i64 = 20;

/// The caller's choices.
struct FetchRequest {
    search: SearchRequest,
    /// The caller's own filters (`since=last` adds the cursor's, which is not one of them).
    filtered: bool,
    /// Answer with the merged CMS Bundle (else with the delivery to connect: empty with `push=false`).
    return_cms: bool,
    /// Also deliver to connect.
    push: bool,
}

impl FetchRequest {
    /// Only a complete delivery moves the sync's cursor: pushed, and not narrowed by a filter (the
    /// insurance card is not a search: it has no cursor).
    fn moves_cursor(&self) -> bool {
        self.push && !self.filtered && !self.search.insurance_card
    }
}

fn flag(value: &str, name: &str) -> Result<bool, Error> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::BadRequest(format!("`{name}` is `true` or `false`"))),
    }
}

fn parse<P: Platform>(
    vault: &Vault<'_, P>,
    uri: &http::Uri,
    session: &Session,
    target: Target,
) -> Result<FetchRequest, Error> {
    let Target {
        resource_type,
        insurance_card,
    } = target;
    let limits = FetchLimits::load(vault.platform)?;
    let mut filters = Vec::new();
    let (mut since_last, mut return_cms, mut push) = (false, true, true);
    for (name, value) in query_pairs(uri) {
        match name.as_str() {
            "patient" => session.check_patient(Some(&value))?,
            "return_cms" => return_cms = flag(&value, "return_cms")?,
            "push" => push = flag(&value, "push")?,
            _ if insurance_card => {
                return Err(Error::BadRequest(format!(
                    "`{name}` is not a parameter of /bluebutton/fhir/insurance-card, which takes \
                     `patient`, `push` and `return_cms`"
                )))
            }
            "since" if value == "last" => since_last = true,
            "since" => {
                return Err(Error::BadRequest(
                    "`since` takes one value, `last`: what changed since the last complete fetch"
                        .into(),
                ))
            }
            n if resource_type.filters().contains(&n) => {
                check_filter(n, &value)?;
                filters.push((name, value))
            }
            n if resource_type == ResourceType::ExplanationOfBenefit
                && V3_CLAIM_FILTERS.contains(&n) =>
            {
                if vault.version() != ApiVersion::V3 {
                    return Err(Error::BadRequest(format!(
                        "`{n}` is a Blue Button v3 filter, and this app uses {}",
                        vault.version()
                    )));
                }
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
    let filtered = !filters.is_empty();
    if since_last {
        filters.extend(cursor::since_filter(
            vault,
            session.patient(),
            resource_type,
        )?);
    }
    Ok(FetchRequest {
        search: SearchRequest {
            resource_type,
            limits,
            filters,
            insurance_card,
        },
        filtered,
        return_cms,
        push,
    })
}

struct Prepared {
    session: Session,
    request: FetchRequest,
    connect: Option<ConnectSettings>,
}

/// What a path asks for: a search of one resource type, or v3's insurance card (rooted at Patient).
#[derive(Debug, Clone, Copy)]
struct Target {
    resource_type: ResourceType,
    insurance_card: bool,
}

const INSURANCE_CARD: &str = "insurance-card";

/// What a path names, before anything else is looked at.
fn target_of(head: &http::request::Parts) -> Result<Target, Error> {
    let info = path_info(head);
    let name = info.trim_matches('/');
    if name == INSURANCE_CARD {
        return Ok(Target {
            resource_type: ResourceType::Patient,
            insurance_card: true,
        });
    }
    let resource_type = ResourceType::parse(name).ok_or_else(|| {
        Error::NotFound(format!(
            "no such resource type `{name}`: use one of {}, or {INSURANCE_CARD}",
            ResourceType::names()
        ))
    })?;
    Ok(Target {
        resource_type,
        insurance_card: false,
    })
}

/// The insurance card is v3's alone: on v2 CMS has no such operation.
fn check_offered(target: Target, version: ApiVersion) -> Result<(), Error> {
    if target.insurance_card && version != ApiVersion::V3 {
        return Err(Error::NotFound(format!(
            "the digital insurance card (CMS's `Patient/$generate-insurance-card`) is a Blue Button \
             v3 operation, and this app uses {version} (`cms_api_version`)"
        )));
    }
    Ok(())
}

fn prepare<P: Platform>(
    vault: &Vault<'_, P>,
    audit: &Audit<'_, P>,
    ctx: &TokenContext,
    head: &http::request::Parts,
    target: Target,
) -> Result<Prepared, Error> {
    let session = session::authenticate(vault, &ctx.limits, bearer(&head.headers), audit)?;
    let resource_type = target.resource_type;
    // CMS builds the card from the beneficiary's Patient (read) and Coverage (search).
    let granted = match target.insurance_card {
        true => session.may_read(resource_type) && session.may_search(ResourceType::Coverage),
        false => session.may_search(resource_type),
    };
    if !granted {
        let what = match target.insurance_card {
            true => "their Patient and Coverage, which the insurance card needs,".to_string(),
            false => resource_type.to_string(),
        };
        return Err(Error::Forbidden(format!(
            "the beneficiary did not share {what} with this app (scope `{}`)",
            session.tokens().scope
        )));
    }
    let request = parse(vault, &head.uri, &session, target)?;
    let connect = if request.push {
        Some(ConnectSettings::load(vault.platform)?)
    } else {
        None
    };
    Ok(Prepared {
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

impl<W: ResponseWriter> Answer<W> {
    /// Answers the problem.
    fn fail(self, err: Error) {
        match self {
            Answer::Bundle(out) => out.fail(err),
            Answer::Delivery(writer) => write_full(writer, err.into_response()),
        }
    }
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
    let loaded = target_of(head).and_then(|target| {
        require_method(head, "GET")?;
        let ctx = TokenContext::load(platform)?;
        check_offered(target, ctx.client.api_version)?;
        Ok((target, ctx))
    });
    let (target, ctx) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => return write_full(writer, err.into_response()),
    };
    let vault = ctx.vault(platform);
    let mut audit = Audit::new(&vault, ctx.audit, Agent::App);
    let Prepared {
        mut session,
        request,
        connect,
    } = match prepare(&vault, &audit, &ctx, head, target) {
        Ok(prepared) => prepared,
        Err(err) => {
            // Authenticating may have ended an idle session, an event like any other.
            audit_to_connect(&vault, &audit, true).await;
            return write_full(writer, err.into_response());
        }
    };
    audit.act_as(Agent::Session(session.hidden.clone()));
    let started = platform.now();
    let answer = if request.return_cms {
        let budget = request.search.limits.response_buffer_bytes;
        let searchset = !target.insurance_card;
        Answer::Bundle(BundleOut::new(writer, budget, &full_url(head), searchset))
    } else {
        Answer::Delivery(writer)
    };
    let patient = session.patient().to_string();
    let delivery = match connect {
        Some(settings) => {
            let drain = Before::Drain(Some(vault.now() + DRAIN_SECS));
            match Delivery::start(&vault, Some(&audit), settings, &patient, drain).await {
                Ok(delivery) => Some(delivery),
                Err(err) => return answer.fail(err),
            }
        }
        None => None,
    };
    let mut sink = Both(delivery, answer);
    let outcome = pipeline::run(
        &vault,
        &audit,
        &ctx,
        &mut session,
        &request.search,
        &mut sink,
    )
    .await;
    let Both(delivery, answer) = sink;
    let outcome = match (outcome, delivery) {
        (Ok(summary), Some(delivery)) => delivery.finish().await.map(|d| (summary, Some(d))),
        (Ok(summary), None) => Ok((summary, None)),
        (Err(err), _) => Err(err),
    };
    // Every resource up to `newest` is delivered, queued or a dead letter: the cursor may pass it.
    let outcome = outcome.and_then(|(summary, delivery)| {
        if let (Some(newest), true) = (summary.newest, request.moves_cursor()) {
            cursor::advance(&vault, &patient, request.search.resource_type, newest)?;
        }
        Ok((summary, delivery))
    });
    if let Ok((summary, _)) = &outcome {
        let (audit_events, audit_time) = audit.cost();
        eprintln!(
            "fhir-fetch: {} pages={} entries={} retries={} duplicates_dropped={} us={} \
             audit_events={audit_events} audit_us={}",
            request.search.resource_type,
            summary.pages,
            summary.entries,
            summary.retries,
            summary.duplicates_dropped,
            (platform.now() - started).whole_microseconds(),
            audit_time.whole_microseconds()
        );
    }
    audit_to_connect(&vault, &audit, true).await;
    match (answer, outcome) {
        (Answer::Bundle(out), Ok((summary, delivery))) => out.finish(&summary, delivery.as_ref()),
        (Answer::Delivery(writer), Ok((_, delivery))) => {
            let result = delivery.unwrap_or_default();
            write_full(writer, no_store(json_response(result.status(), &result)));
        }
        (answer, Err(err)) => answer.fail(err),
    }
}
