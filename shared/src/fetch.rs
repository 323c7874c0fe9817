//! The fetch pipeline behind `GET /bluebutton/fhir/{type}` and `POST /bluebutton/sync`: pages from CMS
//! (see [`crate::fhir`]), each entry once, handed page by page to the caller's Bundle and/or to connect,
//! and the `since=last` watermark moved only when everything arrived.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use crate::config;
use crate::connect::{ConnectConfig, Delivery, DeliveryResult};
use crate::fhir::{self, Page, Resource, SearchRequest};
use crate::ports::{write_full, Platform, ResponseWriter};
use crate::problem::Error;
use crate::session::{self, Session};
use crate::tokens::{SharedToken, TokenContext};
use crate::web::{self, json_response, no_store, Request};

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
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct FetchSummary {
    pub pages: usize,
    pub entries: usize,
    pub retries: u32,
    pub duplicates_dropped: usize,
}

/// Runs every page of `search` through `sink`, then moves the watermark when the fetch was complete.
async fn run_pages<P: Platform>(
    platform: &P,
    ctx: &TokenContext,
    session: &mut Session,
    search: &SearchRequest,
    moves_watermark: bool,
    sink: impl AsyncPageSink,
) -> Result<FetchSummary, Error> {
    let tokens = SharedToken::new(platform, ctx, session.clone()).await?;
    let summary = run_token_pages(platform, &tokens, search, moves_watermark, sink).await;
    *session = tokens.into_session();
    summary
}

async fn run_token_pages<P: Platform>(
    platform: &P,
    tokens: &SharedToken<'_, P>,
    search: &SearchRequest,
    moves_watermark: bool,
    mut sink: impl AsyncPageSink,
) -> Result<FetchSummary, Error> {
    let pages = fhir::pages(platform, tokens, search).await?;
    sink.planned(pages.planned);
    let mut dedup = Dedup::default();
    let mut summary = FetchSummary::default();
    let fhir::Pages {
        first, mut rest, ..
    } = pages;
    let mut next: Option<Page> = Some(first);
    while let Some(page) = next.take() {
        summary.pages += 1;
        summary.retries += page.retries;
        let fresh = dedup.admit(page.entries);
        summary.entries += fresh.len();
        sink.page(fresh).await?;
        if let Some((_, page)) = futures::StreamExt::next(&mut rest).await {
            next = Some(page?);
        }
    }
    summary.duplicates_dropped = dedup.duplicates;
    if let (Some(newest), true) = (dedup.newest, moves_watermark) {
        let stamp = newest
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        fhir::store_watermark(platform, &tokens.patient(), &search.resource_type, &stamp)?;
    }
    Ok(summary)
}

/// Where fetched pages go.
trait AsyncPageSink {
    fn planned(&mut self, _pages: Option<usize>) {}
    async fn page(&mut self, entries: Vec<Resource>) -> Result<(), Error>;
}

/// The request's choices.
struct FetchRequest {
    search: SearchRequest,
    since_last: bool,
    /// Answer with the merged CMS Bundle (else with the connect delivery result).
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
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::BadRequest(format!("`{name}` is `true` or `false`"))),
    }
}

const RESOURCE_TYPES: [&str; 3] = ["Patient", "Coverage", "ExplanationOfBenefit"];

fn parse_request(
    platform: &impl Platform,
    req: &Request,
    session: &Session,
    resource_type: &str,
) -> Result<FetchRequest, Error> {
    let page_size = config::number(platform, "page_size", 50, 1..=50)?;
    let concurrency = config::number(platform, "fetch_concurrency", 4, 1..=16)? as usize;
    let mut filters = Vec::new();
    let (mut since_last, mut return_cms, mut push) = (false, true, true);
    for (name, value) in web::query_pairs(req) {
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
            n if fhir::allowed_filter(resource_type, n) => filters.push((name, value)),
            _ => {
                return Err(Error::BadRequest(format!(
                    "`{name}` is not a parameter of /bluebutton/fhir/{resource_type}"
                )))
            }
        }
    }
    if !return_cms && !push {
        return Err(Error::BadRequest(
            "`return_cms=false` answers with the delivery to connect, so it needs `push`".into(),
        ));
    }
    if since_last {
        if let Some(mark) = fhir::load_watermark(platform, &session.record.patient, resource_type)?
        {
            filters.push(("_lastUpdated".into(), format!("gt{mark}")));
        }
    }
    Ok(FetchRequest {
        search: SearchRequest {
            resource_type: resource_type.to_string(),
            page_size,
            concurrency,
            filters,
        },
        since_last,
        return_cms,
        push,
    })
}

/// `GET /bluebutton/fhir/{type}`: every page of the session's resources of that type — as one searchset
/// Bundle (streamed once it outgrows `response_buffer_bytes`), delivered to connect unless `push=false`,
/// or answered with the delivery result when `return_cms=false`.
pub async fn fhir_fetch<W: ResponseWriter>(platform: &impl Platform, req: Request, writer: W) {
    let info = web::header(&req, "spin-path-info")
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().path().to_string());
    let resource_type = info.trim_matches('/').to_string();
    let prepared = (|| {
        if fhir::patient_param(&resource_type).is_none() {
            return Err(Error::NotFound(format!(
                "no such resource type `{resource_type}`: use one of {}",
                RESOURCE_TYPES.join(", ")
            )));
        }
        if req.method() != http::Method::GET {
            return Err(Error::MethodNotAllowed(
                format!("{} is not supported here; use GET", req.method()),
                "GET",
            ));
        }
        let ctx = TokenContext::load(platform)?;
        let session = session::authenticate(platform, &ctx.key, web::bearer(&req))?;
        let request = parse_request(platform, &req, &session, &resource_type)?;
        let connect = if request.push {
            Some(ConnectConfig::load(platform)?)
        } else {
            None
        };
        let budget = config::number(platform, "response_buffer_bytes", 8 << 20, 0..=1 << 30)?;
        Ok((ctx, session, request, connect, budget as usize))
    })();
    let (ctx, mut session, request, connect, budget) = match prepared {
        Ok(p) => p,
        Err(err) => return write_full(writer, err.into_response()),
    };
    let started = platform.now();
    let self_url = web::header(&req, "spin-full-url")
        .map(str::to_string)
        .unwrap_or_else(|| req.uri().to_string());
    let (bundle, plain) = if request.return_cms {
        (Some(BundleOut::new(writer, budget, &self_url)), None)
    } else {
        (None, Some(writer))
    };
    let mut sink = FetchSink {
        bundle,
        delivery: connect.map(|c| Delivery::new(platform, c, &session.record.patient)),
    };
    let moves = request.moves_watermark();
    let outcome = run_pages(
        platform,
        &ctx,
        &mut session,
        &request.search,
        moves,
        &mut sink,
    )
    .await;
    let FetchSink { bundle, delivery } = sink;
    let outcome = match (outcome, delivery) {
        (Ok(summary), Some(delivery)) => delivery.finish().await.map(|d| (summary, Some(d))),
        (Ok(summary), None) => Ok((summary, None)),
        (Err(err), _) => Err(err),
    };
    match (outcome, bundle, plain) {
        (Err(err), Some(out), _) => out.fail(err),
        (Err(err), None, Some(writer)) => write_full(writer, err.into_response()),
        (Ok((summary, delivery)), bundle, plain) => {
            eprintln!(
                "fhir-fetch: {} pages={} entries={} retries={} duplicates_dropped={} ms={}",
                request.search.resource_type,
                summary.pages,
                summary.entries,
                summary.retries,
                summary.duplicates_dropped,
                (platform.now() - started).whole_milliseconds()
            );
            match (bundle, plain) {
                (Some(out), _) => out.finish(&summary, delivery.as_ref()),
                (None, Some(writer)) => {
                    let result = delivery.unwrap_or_default();
                    write_full(writer, no_store(json_response(result.status(), &result)));
                }
                (None, None) => {}
            }
        }
        (Err(_), None, None) => {}
    }
}

struct FetchSink<'a, P: Platform, W: ResponseWriter> {
    bundle: Option<BundleOut<W>>,
    delivery: Option<Delivery<'a, P>>,
}

impl<P: Platform, W: ResponseWriter> AsyncPageSink for &mut FetchSink<'_, P, W> {
    fn planned(&mut self, pages: Option<usize>) {
        if let Some(out) = self.bundle.as_mut() {
            out.planned = pages;
        }
    }

    async fn page(&mut self, entries: Vec<Resource>) -> Result<(), Error> {
        if let Some(delivery) = self.delivery.as_mut() {
            delivery.add(&entries).await?;
        }
        if let Some(out) = self.bundle.as_mut() {
            out.add(&entries)?;
        }
        Ok(())
    }
}

/// The merged Bundle: held in memory while small (so a failing page still becomes a 502 problem
/// naming it), streamed page by page once it outgrows the budget (so memory stays bounded). A stream that
/// fails later is aborted, never finished as if whole.
struct BundleOut<W: ResponseWriter> {
    writer: Option<W>,
    buffer: Vec<u8>,
    budget: usize,
    planned: Option<usize>,
    entries: usize,
    started: bool,
}

impl<W: ResponseWriter> BundleOut<W> {
    fn new(writer: W, budget: usize, self_url: &str) -> Self {
        let mut buffer =
            br#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"#
                .to_vec();
        serde_json::to_writer(&mut buffer, self_url).expect("a string serializes");
        buffer.extend_from_slice(br#"}],"entry":["#);
        BundleOut {
            writer: Some(writer),
            buffer,
            budget,
            planned: None,
            entries: 0,
            started: false,
        }
    }

    fn add(&mut self, entries: &[Resource]) -> Result<(), Error> {
        for resource in entries {
            if self.entries > 0 {
                self.buffer.push(b',');
            }
            self.buffer.extend_from_slice(br#"{"resource":"#);
            self.buffer
                .extend_from_slice(resource.json.get().as_bytes());
            self.buffer.push(b'}');
            self.entries += 1;
        }
        if self.started || self.buffer.len() > self.budget {
            self.flush()?;
        }
        Ok(())
    }

    /// Starts streaming (once) and sends what is buffered.
    fn flush(&mut self) -> Result<(), Error> {
        let writer = self
            .writer
            .as_mut()
            .expect("the writer stays until the end");
        if !self.started {
            self.started = true;
            let mut headers = vec![
                (
                    "content-type".to_string(),
                    "application/fhir+json".to_string(),
                ),
                ("cache-control".to_string(), "no-store".to_string()),
                ("x-streamed".to_string(), "true".to_string()),
            ];
            if let Some(planned) = self.planned {
                // Exact when the stream completes: a missing page aborts it.
                headers.push(("x-pages-fetched".into(), planned.to_string()));
            }
            writer
                .start(200, &headers)
                .map_err(|e| Error::BadGateway(format!("the client went away: {e}")))?;
        }
        writer
            .write(&self.buffer)
            .map_err(|e| Error::BadGateway(format!("the client went away: {e}")))?;
        self.buffer.clear();
        Ok(())
    }

    fn fail(mut self, err: Error) {
        let writer = self.writer.take().expect("the writer stays until the end");
        if self.started {
            eprintln!("fhir-fetch: aborting a streamed response: {err}");
            writer.finish(false);
        } else {
            write_full(writer, err.into_response());
        }
    }

    fn finish(mut self, summary: &FetchSummary, delivery: Option<&DeliveryResult>) {
        self.buffer.extend_from_slice(br#"],"total":"#);
        self.buffer
            .extend_from_slice(self.entries.to_string().as_bytes());
        self.buffer.push(b'}');
        if self.started {
            let ok = self.flush().is_ok();
            if let Some(writer) = self.writer.take() {
                writer.finish(ok);
            }
            return;
        }
        let mut headers = vec![
            (
                "content-type".to_string(),
                "application/fhir+json".to_string(),
            ),
            ("cache-control".to_string(), "no-store".to_string()),
            ("x-pages-fetched".to_string(), summary.pages.to_string()),
            (
                "x-upstream-retries".to_string(),
                summary.retries.to_string(),
            ),
            (
                "x-duplicates-dropped".to_string(),
                summary.duplicates_dropped.to_string(),
            ),
        ];
        if let Some(d) = delivery {
            headers.push(("x-connect-delivered".into(), d.delivered.to_string()));
            headers.push(("x-connect-queued".into(), d.queued.len().to_string()));
            headers.push(("x-connect-rejected".into(), d.rejected.to_string()));
        }
        let mut writer = self.writer.take().expect("the writer stays until the end");
        let ok = writer.start(200, &headers).is_ok() && writer.write(&self.buffer).is_ok();
        writer.finish(ok);
    }
}

/// Routes the `fhir-fetch` component's requests.
pub async fn handle<W: ResponseWriter>(platform: &impl Platform, req: Request, writer: W) {
    if req.uri().path() == "/bluebutton/sync" {
        let resp = sync(platform, &req)
            .await
            .unwrap_or_else(Error::into_response);
        return write_full(writer, resp);
    }
    fhir_fetch(platform, req, writer).await
}

/// `POST /bluebutton/sync`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncReport {
    pub patients: Vec<PatientSync>,
}

/// One resource type of one patient's sync.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct TypeSync {
    #[serde(flatten)]
    pub fetch: FetchSummary,
    pub delivered: usize,
    pub queued: usize,
    pub rejected: usize,
}

/// One patient's sync: `ok`, or `error` with why (a grant that is gone, say).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PatientSync {
    pub patient: String,
    #[schema(example = "ok")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// By resource type.
    pub types: std::collections::BTreeMap<String, TypeSync>,
}

/// `POST /bluebutton/sync` (admin key; optional body `{"patient": "<id>"}`): for each authorized patient,
/// what changed since the last sync of each type, delivered to connect. A patient whose grant is gone
/// is reported, not fatal.
pub async fn sync(
    platform: &impl Platform,
    req: &Request,
) -> Result<http::Response<Vec<u8>>, Error> {
    crate::admin::require_admin(platform, req)?;
    if req.method() != http::Method::POST {
        return Err(Error::MethodNotAllowed(
            "use POST to run a sync".into(),
            "POST",
        ));
    }
    let only: Option<String> = if req.body().is_empty() {
        None
    } else {
        let body: Value = serde_json::from_slice(req.body())
            .map_err(|e| Error::BadRequest(format!("the body must be JSON: {e}")))?;
        if !body.is_object() && !body.is_null() {
            return Err(Error::BadRequest(
                "the body must be a JSON object such as {\"patient\": \"-20140000010000\"}".into(),
            ));
        }
        match body.get("patient") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.clone()),
            Some(_) => return Err(Error::BadRequest("`patient` must be a string".into())),
        }
    };
    let ctx = TokenContext::load(platform)?;
    let connect = ConnectConfig::load(platform)?;
    let page_size = config::number(platform, "page_size", 50, 1..=50)?;
    let concurrency = config::number(platform, "fetch_concurrency", 4, 1..=16)? as usize;
    let patients = match only {
        Some(p) => vec![p],
        None => session::patients(platform)?,
    };
    let mut report = Vec::new();
    let mut queued_any = false;
    for patient in patients {
        let mut entry = PatientSync {
            patient: patient.clone(),
            status: "ok",
            error: None,
            types: Default::default(),
        };
        match sync_patient(
            platform,
            &ctx,
            &connect,
            &patient,
            page_size,
            concurrency,
            &mut entry,
        )
        .await
        {
            Ok(()) => {}
            Err(err) => {
                entry.status = "error";
                entry.error = Some(err.to_string());
            }
        }
        queued_any |= entry.types.values().any(|t| t.queued > 0);
        report.push(entry);
    }
    let status = if queued_any { 202 } else { 200 };
    Ok(no_store(json_response(
        status,
        &SyncReport { patients: report },
    )))
}

async fn sync_patient(
    platform: &impl Platform,
    ctx: &TokenContext,
    connect: &ConnectConfig,
    patient: &str,
    page_size: u64,
    concurrency: usize,
    entry: &mut PatientSync,
) -> Result<(), Error> {
    let hashes = session::sessions_of(platform, patient)?;
    // The newest session first: older ones may belong to a grant since replaced.
    let mut session = None;
    for hash in hashes.iter().rev() {
        if let Ok(s) = session::load(platform, &ctx.key, hash) {
            session = Some(s);
            break;
        }
    }
    let mut session = session.ok_or_else(|| {
        Error::Unauthorized(format!(
            "no usable session for patient {patient}: authorize again"
        ))
    })?;
    for resource_type in RESOURCE_TYPES {
        let mut filters = Vec::new();
        if let Some(mark) = fhir::load_watermark(platform, patient, resource_type)? {
            filters.push(("_lastUpdated".to_string(), format!("gt{mark}")));
        }
        let search = SearchRequest {
            resource_type: resource_type.to_string(),
            page_size,
            concurrency,
            filters,
        };
        let mut sink = FetchSink::<_, crate::ports::NoResponse> {
            bundle: None,
            delivery: Some(Delivery::new(platform, connect.clone(), patient)),
        };
        let summary = run_pages(platform, ctx, &mut session, &search, true, &mut sink).await?;
        let delivered = sink.delivery.take().expect("set above").finish().await?;
        entry.types.insert(
            resource_type.to_string(),
            TypeSync {
                fetch: summary,
                delivered: delivered.delivered,
                queued: delivered.queued.len(),
                rejected: delivered.rejected,
            },
        );
    }
    Ok(())
}

/// Every page of the session's resources of one type, from CMS.
///
/// One `searchset` Bundle with each entry once, in CMS order. Large results stream (`x-streamed: true`);
/// smaller ones carry `x-pages-fetched` and `x-upstream-retries`. Unless `push=false`, the resources are
/// also delivered to connect; `return_cms=false` answers with that delivery instead.
#[utoipa::path(get, path = "/bluebutton/fhir/{resource_type}", tag = "fhir",
    security(("session" = [])),
    params(
        ("resource_type" = crate::api::ResourceType, Path, description = "`Patient`, `Coverage` or `ExplanationOfBenefit`"),
        ("patient" = Option<String>, Query, description = "Must be the session's own patient"),
        ("_lastUpdated" = Option<Vec<String>>, Query, description = "`lt|le|gt|ge` + date, repeatable"),
        ("type" = Option<String>, Query, description = "EOB only: claim types, e.g. `carrier,pde`"),
        ("service-date" = Option<Vec<String>>, Query, description = "EOB only: `lt|le|gt|ge` + date, repeatable"),
        ("since" = Option<crate::api::Since>, Query, description = "`last`: only what changed since the last complete fetch"),
        ("push" = Option<bool>, Query, description = "Also deliver to connect (default true)"),
        ("return_cms" = Option<bool>, Query, description = "Answer with the Bundle (default true) or the delivery"),
    ),
    responses(
        (status = 200, description = "The Bundle (or, with `return_cms=false`, the delivery result)", content(
            (crate::api::SearchsetBundle = "application/fhir+json"),
            (crate::connect::DeliveryResult = "application/json"),
        )),
        (status = 202, description = "With `return_cms=false`: some batches are queued for connect", body = crate::connect::DeliveryResult),
        (status = 400, description = "An unknown or malformed parameter", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Unknown session, or the grant is gone: authorize again", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another patient, or a scope withheld at consent", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not one of the three types", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 502, description = "A page failed for good at CMS (named)", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 504, description = "CMS did not answer a page in time", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn fhir_fetch_doc() {}

/// Sync every authorized patient (or one) to connect: what changed since the last sync of each type.
#[utoipa::path(post, path = "/bluebutton/sync", tag = "connect",
    security(("admin_key" = [])),
    request_body(content = Option<Object>, description = "Optional `{\"patient\": \"<id>\"}`", content_type = "application/json"),
    responses(
        (status = 200, description = "Per patient and type", body = SyncReport),
        (status = 202, description = "As 200, with some batches queued for connect", body = SyncReport),
        (status = 400, description = "A malformed body", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin routes are disabled", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub fn sync_doc() {}
