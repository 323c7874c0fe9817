//! FHIR side of the emulator: `metadata`, and Patient / Coverage / ExplanationOfBenefit search and read
//! with BB2's parameter rules, BFD's offset paging links, DRF error bodies and rate-limit headers.

use super::control::{apply_rate, fault_response, injected, RateInfo};
use super::data::{
    format_instant_ms, parse_fhir_date, Eob, Resource, ADJUDICATION_SYSTEM, DEFAULT_SOURCES,
    EOB_TYPES, EOB_TYPE_SYSTEM, PART2_CODE, SOURCES,
};
use super::json::J;
use super::oauth::{
    scope_allows, AccessTok, TokenCheck, GRANT_EXPIRED, NOT_AUTHENTICATED, PERMISSION_DENIED,
};
use super::{
    detail_response, header_str, json_response, operation_outcome, ApiVersion, AppState,
    CT_FHIR_JSON, CT_JSON,
};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

const DEFAULT_COUNT: i64 = 10;
const MAX_COUNT: i64 = 50;
const FORMAT_PARAM: &str = "application/json+fhir";
/// The BFD host that v3 `self` links name: BB2 passes BFD's link through. Clients must not follow it.
const BFD_INTERNAL: &str = "https://prod-sbx.bfd.internal:7443";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Patient,
    Coverage,
    Eob,
}

impl Kind {
    fn parse(resource: &str) -> Option<Kind> {
        match resource {
            "Patient" => Some(Kind::Patient),
            "Coverage" => Some(Kind::Coverage),
            "ExplanationOfBenefit" => Some(Kind::Eob),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Patient => "Patient",
            Kind::Coverage => "Coverage",
            Kind::Eob => "ExplanationOfBenefit",
        }
    }
}

pub(crate) async fn method_not_allowed(method: Method) -> Response {
    detail_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method \"{method}\" not allowed."),
        CT_JSON,
    )
}

/// `Accept` negotiation: none or `*/*` gives FHIR JSON, `application/json` plain JSON, else 406.
fn negotiate(headers: &HeaderMap) -> Result<&'static str, Response> {
    let accept = header_str(headers, header::ACCEPT).unwrap_or("").trim();
    if accept.is_empty() {
        return Ok(CT_FHIR_JSON);
    }
    for part in accept.split(',') {
        let media = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json" => return Ok(CT_JSON),
            "application/fhir+json" | "application/json+fhir" | "application/*" | "*/*" => {
                return Ok(CT_FHIR_JSON)
            }
            _ => {}
        }
    }
    Err(detail_response(
        StatusCode::NOT_ACCEPTABLE,
        "Could not satisfy the request Accept header.",
        CT_JSON,
    ))
}

pub(crate) async fn metadata(
    State(st): State<Arc<AppState>>,
    ver: ApiVersion,
    headers: HeaderMap,
) -> Response {
    st.delay().await;
    let body = match ver {
        ApiVersion::V2 => &st.metadata,
        ApiVersion::V3 => &st.metadata_v3,
    };
    let resp = match negotiate(&headers) {
        Ok(ct) => json_response(StatusCode::OK, body.clone(), ct),
        Err(r) => r,
    };
    with_rate(resp, &st.with_ctl(|c| c.anon_rate()))
}

/// The v3 CapabilityStatement, from v2's (on this origin): v3 URLs, bfd-server-ng, and EOB search
/// by `_offset`, `_tag`, `_source` and `_security` (no `startIndex` on the unpaged Patient and Coverage).
pub(crate) fn metadata_v3(v2: &str, origin: &str) -> anyhow::Result<String> {
    let text = v2.replace(&format!("{origin}/v2/"), &format!("{origin}/v3/"));
    let mut cap = J::parse(&text)?;
    if let Some(imp) = cap.get_mut("implementation") {
        imp.set("description", J::str("gov.cms.bfd:bfd-server-ng"));
    }
    let param = |name: &str, kind: &str, doc: &str| {
        J::obj(vec![
            ("name", J::str(name)),
            ("type", J::str(kind)),
            ("documentation", J::str(doc)),
        ])
    };
    let resources = cap
        .get_mut("rest")
        .and_then(|r| match r {
            J::Arr(items) => items.first_mut(),
            _ => None,
        })
        .and_then(|r| r.get_mut("resource"));
    if let Some(J::Arr(resources)) = resources {
        for r in resources {
            let is_eob = r.get("type").and_then(J::as_str) == Some("ExplanationOfBenefit");
            if let Some(J::Arr(params)) = r.get_mut("searchParam") {
                params.retain(|p| p.get("name").and_then(J::as_str) != Some("startIndex"));
                if is_eob {
                    params.extend([
                        param(
                            "_offset",
                            "number",
                            "Offset of the first entry of the page.",
                        ),
                        param(
                            "_tag",
                            "token",
                            "Adjudication status: Adjudicated or PartiallyAdjudicated.",
                        ),
                        param(
                            "_source",
                            "uri",
                            "Source system: NCH, DDPS, FISS, MCS, VMS, CWF (default NCH,DDPS).",
                        ),
                        param(
                            "_security",
                            "token",
                            "Security labels (`_security:not=42CFRPart2`).",
                        ),
                    ]);
                }
            }
        }
    }
    Ok(cap.to_json())
}

fn with_rate(mut resp: Response, rate: &RateInfo) -> Response {
    apply_rate(&mut resp, rate);
    resp
}

/// What every FHIR data request goes through before its own logic.
struct Ctx {
    content_type: &'static str,
    tok: AccessTok,
    rate: RateInfo,
}

async fn prelude(
    st: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
) -> Result<Ctx, Response> {
    st.delay().await;
    let anon = || st.with_ctl(|c| c.anon_rate());
    let content_type = negotiate(headers).map_err(|r| with_rate(r, &anon()))?;
    if pairs.iter().any(|(k, _)| k == "access_token") {
        return Err(with_rate(
            detail_response(
                StatusCode::BAD_REQUEST,
                "Using the access token in the query parameters is not supported. Use the Authorization header instead.",
                content_type,
            ),
            &anon(),
        ));
    }
    let unauthenticated = |detail: &str| {
        let mut r = detail_response(StatusCode::UNAUTHORIZED, detail, content_type);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"api\""),
        );
        with_rate(r, &anon())
    };
    let token = header_str(headers, header::AUTHORIZATION)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let Some(token) = token else {
        return Err(unauthenticated(NOT_AUTHENTICATED));
    };
    let tok = match st.with_auth(|a| a.check_access(&token)) {
        TokenCheck::Valid(t) => t,
        TokenCheck::NotAuthenticated => return Err(unauthenticated(NOT_AUTHENTICATED)),
        TokenCheck::GrantExpired => return Err(unauthenticated(GRANT_EXPIRED)),
        TokenCheck::GrantMissing => {
            return Err(with_rate(
                detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, content_type),
                &anon(),
            ))
        }
    };
    match st.with_ctl(|c| c.throttle(&token)) {
        Ok(rate) => Ok(Ctx {
            content_type,
            tok,
            rate,
        }),
        Err((rate, wait)) => Err(with_rate(
            fault_response(StatusCode::TOO_MANY_REQUESTS, wait, content_type),
            &rate,
        )),
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Last value of a parameter (Django's `QueryDict.dict()` keeps the last).
fn last<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn all<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug)]
struct DateBound {
    cmp: Cmp,
    lo: i64,
    hi: i64,
}

impl DateBound {
    /// FHIR prefix semantics against the interval the bound's precision denotes.
    fn admits(&self, t: i64) -> bool {
        match self.cmp {
            Cmp::Lt => t < self.lo,
            Cmp::Le => t < self.hi,
            Cmp::Gt => t >= self.hi,
            Cmp::Ge => t >= self.lo,
        }
    }
}

/// Validated search parameters.
struct Search {
    /// v2 `startIndex`; v3 EOB `_offset` (else `startIndex`).
    start_index: usize,
    count: usize,
    last_updated: Vec<DateBound>,
    service_date: Vec<DateBound>,
    /// `None`: every type.
    types: Option<HashSet<String>>,
    /// Filter parameters passed upstream, in request order (they reappear in v2 links).
    filters: Vec<(String, String)>,
    /// v3 EOB filters (`None` on v2, where those parameters are unknown and dropped).
    v3: Option<V3Filters>,
}

/// v3 EOB filters: any of `sources` (`None`: any), any of `tags` (`[system|]code`), none of
/// `security_not`.
struct V3Filters {
    sources: Option<Vec<String>>,
    /// Whether BB2 added `_source=NCH,DDPS` (no `_tag` or `_source` in the request).
    default_sources: bool,
    tags: Option<Vec<(Option<String>, String)>>,
    security_not: Vec<String>,
}

impl V3Filters {
    fn admits(&self, e: &Eob) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == e.source))
            && self.tags.as_ref().is_none_or(|t| {
                t.iter().any(|(system, code)| {
                    system.as_deref().is_none_or(|s| s == ADJUDICATION_SYSTEM)
                        && code == e.adjudication()
                })
            })
            && !(e.part2 && self.security_not.iter().any(|c| c == PART2_CODE))
    }
}

/// A rejected parameter: from BB2's own schema, or what BFD would answer (v2 relays it as a DRF detail;
/// v3 passes BFD's OperationOutcome through, so both become one there).
enum ParamError {
    Schema(String),
    Upstream(String),
}

impl ParamError {
    fn response(self, ver: ApiVersion, ct: &str) -> Response {
        match (ver, self) {
            (ApiVersion::V3, ParamError::Schema(m) | ParamError::Upstream(m)) => {
                operation_outcome(StatusCode::BAD_REQUEST, &m)
            }
            (ApiVersion::V2, ParamError::Schema(m)) => {
                detail_response(StatusCode::BAD_REQUEST, &m, ct)
            }
            (ApiVersion::V2, ParamError::Upstream(m)) => detail_response(
                StatusCode::BAD_REQUEST,
                &format!("An error occurred contacting the upstream server:{m}"),
                ct,
            ),
        }
    }
}

fn schema(msg: &str) -> ParamError {
    ParamError::Schema(msg.to_string())
}

/// Voluptuous `Coerce(int)`: Python's `int()` accepts surrounding blanks and a sign.
fn coerce_int(v: &str) -> Option<i64> {
    v.trim().parse::<i64>().ok()
}

fn has_operator(v: &str) -> bool {
    ["lt", "le", "gt", "ge"].iter().any(|p| v.starts_with(p)) && v.len() > 2
}

fn parse_types(v: &str) -> Option<Option<HashSet<String>>> {
    let prefix = format!("{EOB_TYPE_SYSTEM}|");
    let tokens: Vec<&str> = v
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return None;
    }
    let mut set = HashSet::new();
    let mut everything = false;
    for t in tokens {
        let lower = t.to_ascii_lowercase();
        let code = lower.strip_prefix(&prefix).unwrap_or(&lower);
        if code.is_empty() {
            // The bare system matches every EOB type.
            everything = true;
        } else if EOB_TYPES.contains(&code) {
            set.insert(code.to_string());
        } else {
            return None;
        }
    }
    Some(if everything { None } else { Some(set) })
}

/// Comma-separated values of every occurrence of a parameter.
fn list<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    all(pairs, name)
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The v3 EOB filters, with BB2's default `_source`.
fn v3_filters(pairs: &[(String, String)]) -> Result<V3Filters, ParamError> {
    let sources = list(pairs, "_source");
    if let Some(bad) = sources.iter().find(|s| !SOURCES.contains(s)) {
        return Err(ParamError::Upstream(format!(
            "Invalid _source value: {bad} (expected one of {})",
            SOURCES.join(", ")
        )));
    }
    let tags: Vec<(Option<String>, String)> = list(pairs, "_tag")
        .into_iter()
        .map(|t| match t.split_once('|') {
            Some((system, code)) => (Some(system.to_string()), code.to_string()),
            None => (None, t.to_string()),
        })
        .collect();
    let default_sources = sources.is_empty() && tags.is_empty();
    let sources = if default_sources {
        Some(DEFAULT_SOURCES.iter().map(|s| s.to_string()).collect())
    } else {
        (!sources.is_empty()).then(|| sources.iter().map(|s| s.to_string()).collect())
    };
    Ok(V3Filters {
        sources,
        default_sources,
        tags: (!tags.is_empty()).then_some(tags),
        security_not: list(pairs, "_security:not")
            .into_iter()
            .map(|s| s.rsplit('|').next().unwrap_or(s).to_string())
            .collect(),
    })
}

/// BB2's voluptuous schema first (its own messages), then what BFD would reject. Unknown parameters
/// are dropped. v3 pages EOBs by `_offset` (else `startIndex`) and does not page Patient or Coverage.
fn validate(ver: ApiVersion, kind: Kind, pairs: &[(String, String)]) -> Result<Search, ParamError> {
    // `count` is an alias of `_count` and wins over it (BB2's QUERY_TRANSFORMS).
    let count_raw = last(pairs, "count").or_else(|| last(pairs, "_count"));
    let start_raw = match ver {
        ApiVersion::V2 => last(pairs, "startIndex"),
        ApiVersion::V3 => {
            let offset = last(pairs, "_offset").or_else(|| last(pairs, "startIndex"));
            if kind != Kind::Eob && offset.is_some() {
                let name = if last(pairs, "_offset").is_some() {
                    "_offset"
                } else {
                    "startIndex"
                };
                return Err(ParamError::Upstream(format!(
                    "HAPI-0524: Invalid request: The FHIR endpoint on this server does not know how to handle GET operation[{}] with parameters [[{name}]]",
                    kind.name()
                )));
            }
            offset
        }
    };
    let start = match start_raw {
        None => 0,
        Some(v) => coerce_int(v).ok_or_else(|| schema("expected int"))?,
    };
    let count = match count_raw {
        None => DEFAULT_COUNT,
        Some(v) => {
            let n = coerce_int(v).ok_or_else(|| schema("expected int"))?;
            if n > MAX_COUNT {
                return Err(schema(&format!("value must be at most {MAX_COUNT}")));
            }
            if n < 0 {
                return Err(schema("value must be at least 0"));
            }
            n
        }
    };
    let last_updated_raw = all(pairs, "_lastUpdated");
    if last_updated_raw.iter().any(|v| !has_operator(v)) {
        return Err(schema("the _lastUpdated operator is not valid"));
    }
    let mut filters: Vec<(String, String)> = last_updated_raw
        .iter()
        .map(|v| ("_lastUpdated".to_string(), v.to_string()))
        .collect();
    let mut types = None;
    let mut service_raw = Vec::new();
    let mut v3 = None;
    if kind == Kind::Eob {
        if let Some(t) = last(pairs, "type") {
            types =
                parse_types(t).ok_or_else(|| schema("the type parameter value is not valid"))?;
            filters.push(("type".to_string(), t.to_string()));
        }
        service_raw = all(pairs, "service-date");
        if service_raw.iter().any(|v| !has_operator(v)) {
            return Err(schema("the service-date operator is not valid"));
        }
        filters.extend(
            service_raw
                .iter()
                .map(|v| ("service-date".to_string(), v.to_string())),
        );
        if ver == ApiVersion::V3 {
            v3 = Some(v3_filters(pairs)?);
        }
    }

    if start < 0 {
        let name = if ver == ApiVersion::V3 {
            "_offset"
        } else {
            "startIndex"
        };
        return Err(ParamError::Upstream(format!(
            "Value for {name} cannot be negative: {start}"
        )));
    }
    let bounds = |raw: &[&str]| -> Result<Vec<DateBound>, ParamError> {
        raw.iter()
            .map(|v| {
                let cmp = match &v[..2] {
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                let (lo, hi) = parse_fhir_date(&v[2..]).map_err(|_| {
                    ParamError::Upstream(format!("Invalid date/time format: \"{}\"", &v[2..]))
                })?;
                Ok(DateBound { cmp, lo, hi })
            })
            .collect()
    };
    Ok(Search {
        start_index: start as usize,
        count: count as usize,
        last_updated: bounds(&last_updated_raw)?,
        service_date: bounds(&service_raw)?,
        types,
        filters,
        v3,
    })
}

/// The beneficiary's FHIR id on this version: without one, BB2's crosswalk permission refuses.
fn crosswalk(ver: ApiVersion, ctx: &Ctx) -> Result<&'static str, Response> {
    ctx.tok
        .user
        .fhir_id(ver)
        .ok_or_else(|| detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ctx.content_type))
}

/// The Patient and Coverage resources a version serves for a beneficiary.
fn patient_and_coverage(
    data: &super::data::PatientData,
    ver: ApiVersion,
) -> Option<(&Resource, &[Resource])> {
    match ver {
        ApiVersion::V2 => Some((&data.patient, &data.coverage)),
        ApiVersion::V3 => data.v3.as_ref().map(|v| (&v.patient, &v.coverage[..])),
    }
}

pub(crate) async fn search(
    State(st): State<Arc<AppState>>,
    ver: ApiVersion,
    Path(resource): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(kind) = Kind::parse(&resource) else {
        return unknown_route(&st);
    };
    let pairs = query_pairs(&uri);
    let ctx = match prelude(&st, &headers, &pairs).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = search_inner(&st, ver, kind, &ctx, &pairs, uri.path());
    with_rate(resp, &ctx.rate)
}

fn search_inner(
    st: &AppState,
    ver: ApiVersion,
    kind: Kind,
    ctx: &Ctx,
    pairs: &[(String, String)],
    path: &str,
) -> Response {
    let ct = ctx.content_type;
    if !scope_allows(&ctx.tok.scopes, kind.name(), true) {
        return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ct);
    }
    let patient = match crosswalk(ver, ctx) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let search = match validate(ver, kind, pairs) {
        Ok(s) => s,
        Err(e) => return e.response(ver, ct),
    };
    // Here BB2 calls BFD: injected faults happen now.
    let (fault, omit_total, retry_after) = st.with_ctl(|c| {
        (
            c.take_fault(kind.name(), Some(search.start_index)),
            c.omit_total,
            c.retry_after_secs,
        )
    });
    if let Some(fault) = fault {
        return injected(ver, fault, retry_after, ct);
    }
    // BB2's checks on the patient named in the query (after the upstream call, as SearchCrosswalkPermission).
    match kind {
        Kind::Patient => {
            if last(pairs, "_id").is_some_and(|id| id != patient) {
                return detail_response(StatusCode::NOT_FOUND, "Not found.", ct);
            }
        }
        Kind::Coverage => {
            if last(pairs, "beneficiary").is_some_and(|b| !b.contains(patient)) {
                return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ct);
            }
        }
        Kind::Eob => {
            if last(pairs, "patient").is_some_and(|p| p != patient) {
                return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ct);
            }
        }
    }
    let resource_param = match kind {
        Kind::Patient => ("_id", patient.to_string()),
        Kind::Coverage => ("beneficiary", format!("Patient/{patient}")),
        Kind::Eob => ("patient", patient.to_string()),
    };

    let store = st.read_store();
    let Some((data, (patient_res, coverage))) = store
        .patient(ctx.tok.user.patient_id)
        .and_then(|d| Some((d, patient_and_coverage(d, ver)?)))
    else {
        return detail_response(StatusCode::NOT_FOUND, "Not found.", ct);
    };
    let lu_ok = |r: &Resource| {
        search
            .last_updated
            .iter()
            .all(|b| b.admits(r.last_updated_ms))
    };
    let eob_ok = |e: &Eob| {
        lu_ok(&e.res)
            && search
                .types
                .as_ref()
                .is_none_or(|t| t.contains(&e.eob_type))
            && (search.service_date.is_empty()
                || e.service_ms
                    .is_some_and(|s| search.service_date.iter().all(|b| b.admits(s))))
            && search.v3.as_ref().is_none_or(|f| f.admits(e))
    };
    let matches: Vec<&Resource> = match (kind, ver) {
        (Kind::Patient, _) => std::iter::once(patient_res).filter(|r| lu_ok(r)).collect(),
        (Kind::Coverage, _) => coverage.iter().filter(|r| lu_ok(r)).collect(),
        (Kind::Eob, ApiVersion::V2) => data
            .eobs
            .iter()
            .filter(|e| eob_ok(e))
            .map(|e| &e.res)
            .collect(),
        (Kind::Eob, ApiVersion::V3) => data
            .v3_eobs()
            .filter(|e| eob_ok(e))
            .map(|e| &e.res)
            .collect(),
    };
    let last_updated = format_instant_ms(store.last_updated_ms);
    let page = Page {
        kind,
        search: &search,
        matches: &matches,
        omit_total,
        last_updated: &last_updated,
    };
    let body = match ver {
        ApiVersion::V2 => page.v2(&st.origin, path, resource_param),
        ApiVersion::V3 => page.v3(&st.origin, path, pairs, resource_param),
    };
    drop(store);
    json_response(StatusCode::OK, body, ct)
}

fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A search's result, ready to be written as a version's searchset page.
struct Page<'a> {
    kind: Kind,
    search: &'a Search,
    matches: &'a [&'a Resource],
    omit_total: bool,
    last_updated: &'a str,
}

impl Page<'_> {
    /// The entries from `start`, at most `count`.
    fn slice(&self, start: usize, count: usize) -> &[&Resource] {
        let total = self.matches.len();
        if count == 0 || start >= total {
            &[]
        } else {
            &self.matches[start..(start + count).min(total)]
        }
    }

    /// As BFD v2 builds it: `first`/`next`/`previous`/`last` on `startIndex` (links on this origin),
    /// `self` with the request path and sorted parameters, `total` the result size.
    fn v2(&self, origin: &str, path: &str, resource_param: (&str, String)) -> String {
        let total = self.matches.len();
        let (start, count) = (self.search.start_index, self.search.count);
        let mut extra: Vec<(&str, &str)> = vec![(resource_param.0, resource_param.1.as_str())];
        extra.extend(
            self.search
                .filters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let nav = |at: usize| {
            let (s, c) = (at.to_string(), count.to_string());
            let mut pairs: Vec<(&str, &str)> = vec![
                ("_format", FORMAT_PARAM),
                ("startIndex", &s),
                ("_count", &c),
            ];
            pairs.extend(extra.iter().copied());
            format!("{origin}/v2/fhir/{}?{}", self.kind.name(), encode(&pairs))
        };
        let self_link = {
            let (s, c) = (start.to_string(), count.to_string());
            let mut pairs: Vec<(&str, &str)> = vec![
                ("_count", &c),
                ("_format", FORMAT_PARAM),
                ("startIndex", &s),
            ];
            pairs.extend(extra.iter().copied());
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            format!("{origin}{path}?{}", encode(&pairs))
        };
        let mut links: Vec<(&str, String)> = Vec::new();
        if total > 0 && count > 0 {
            links.push(("first", nav(0)));
            if start + count < total {
                links.push(("next", nav(start + count)));
            }
            if start > 0 {
                links.push(("previous", nav(start.saturating_sub(count))));
            }
            links.push(("last", nav((total - 1) / count * count)));
        }
        links.push(("self", self_link));
        let total = (!self.omit_total).then_some(total);
        searchset(self.last_updated, total, &links, self.slice(start, count))
    }

    /// As BFD v3 (bfd-server-ng) builds it. EOBs: a page at `_offset`, links `next`/`previous` on this
    /// origin (the request's path and parameters, `_offset` replaced), and a `total` that is the
    /// request's `_count` while a next page exists, else the page's size. Patient and Coverage: one
    /// unpaged page. `self` names BFD's internal host.
    fn v3(
        &self,
        origin: &str,
        path: &str,
        pairs: &[(String, String)],
        resource_param: (&str, String),
    ) -> String {
        let (offset, count) = (self.search.start_index, self.search.count);
        let paged = self.kind == Kind::Eob;
        let page = if paged {
            self.slice(offset, count)
        } else {
            self.matches
        };
        let kept: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| *k != "_offset" && *k != "startIndex")
            .collect();
        let nav = |at: usize| {
            let at = at.to_string();
            let mut q = kept.clone();
            q.push(("_offset", &at));
            format!("{origin}{path}?{}", encode(&q))
        };
        let has_next = paged && count > 0 && offset + count < self.matches.len();
        let mut links: Vec<(&str, String)> = Vec::new();
        if has_next {
            links.push(("next", nav(offset + count)));
        }
        if paged && count > 0 && offset > 0 {
            links.push(("previous", nav(offset.saturating_sub(count))));
        }
        // What BB2 sent BFD: the request plus the patient, the default `_source` and the page.
        let mut upstream = kept.clone();
        if !upstream.iter().any(|(k, _)| *k == resource_param.0) {
            upstream.push((resource_param.0, &resource_param.1));
        }
        let default_sources = DEFAULT_SOURCES.join(",");
        if self.search.v3.as_ref().is_some_and(|f| f.default_sources) {
            upstream.push(("_source", &default_sources));
        }
        let (o, c) = (offset.to_string(), count.to_string());
        if paged {
            upstream.retain(|(k, _)| *k != "_count" && *k != "count");
            upstream.extend([("_count", c.as_str()), ("_offset", o.as_str())]);
        }
        links.push((
            "self",
            format!(
                "{BFD_INTERNAL}/v3/fhir/{}?{}",
                self.kind.name(),
                encode(&upstream)
            ),
        ));
        // bfd-server-ng leaves `total` out when there is a next page and HAPI puts `_count` there.
        let total = match (paged, has_next) {
            (false, _) => self.matches.len(),
            (true, true) => count,
            (true, false) => page.len(),
        };
        let total = (!self.omit_total).then_some(total);
        searchset(self.last_updated, total, &links, page)
    }
}

/// A searchset Bundle: built by concatenation, since the entries are kept serialised.
fn searchset(
    last_updated: &str,
    total: Option<usize>,
    links: &[(&str, String)],
    page: &[&Resource],
) -> String {
    let mut out =
        String::with_capacity(512 + page.iter().map(|r| r.json.len() + 16).sum::<usize>());
    let q = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let _ = write!(
        out,
        "{{\"resourceType\":\"Bundle\",\"id\":{},\"meta\":{{\"lastUpdated\":{}}},\"type\":\"searchset\"",
        q(&uuid::Uuid::new_v4().to_string()),
        q(last_updated)
    );
    if let Some(total) = total {
        let _ = write!(out, ",\"total\":{total}");
    }
    out.push_str(",\"link\":[");
    for (i, (rel, url)) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"relation\":{},\"url\":{}}}", q(rel), q(url));
    }
    out.push(']');
    if !page.is_empty() {
        out.push_str(",\"entry\":[");
        for (i, r) in page.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"resource\":");
            out.push_str(&r.json);
            out.push('}');
        }
        out.push(']');
    }
    out.push('}');
    out
}

pub(crate) async fn read(
    State(st): State<Arc<AppState>>,
    ver: ApiVersion,
    Path((resource, id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(kind) = Kind::parse(&resource) else {
        return unknown_route(&st);
    };
    let pairs = query_pairs(&uri);
    let ctx = match prelude(&st, &headers, &pairs).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = read_inner(&st, ver, kind, &ctx, &id);
    with_rate(resp, &ctx.rate)
}

fn read_inner(st: &AppState, ver: ApiVersion, kind: Kind, ctx: &Ctx, id: &str) -> Response {
    let ct = ctx.content_type;
    if !scope_allows(&ctx.tok.scopes, kind.name(), false) {
        return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ct);
    }
    if let Err(r) = crosswalk(ver, ctx) {
        return r;
    }
    let (fault, retry_after) =
        st.with_ctl(|c| (c.take_fault(kind.name(), None), c.retry_after_secs));
    if let Some(fault) = fault {
        return injected(ver, fault, retry_after, ct);
    }
    let store = st.read_store();
    // Another patient's resource is a 404 too, so its existence does not leak.
    let found = store.patient(ctx.tok.user.patient_id).and_then(|data| {
        let (patient, coverage) = patient_and_coverage(data, ver)?;
        match kind {
            Kind::Patient => (patient.id == id).then(|| patient.json.clone()),
            Kind::Coverage => coverage.iter().find(|r| r.id == id).map(|r| r.json.clone()),
            Kind::Eob => {
                let hit = |e: &&Eob| e.res.id == id;
                match ver {
                    ApiVersion::V2 => data.eobs.iter().find(hit),
                    ApiVersion::V3 => data.v3_eobs().find(hit),
                }
                .map(|e| e.res.json.clone())
            }
        }
    });
    drop(store);
    match (found, ver) {
        (Some(json), _) => json_response(StatusCode::OK, json.to_string(), ct),
        (None, ApiVersion::V2) => detail_response(StatusCode::NOT_FOUND, "Not found.", ct),
        (None, ApiVersion::V3) => operation_outcome(
            StatusCode::NOT_FOUND,
            &format!("HAPI-2001: Resource {}/{id} is not known", kind.name()),
        ),
    }
}

/// `GET /v3/fhir/Patient/$generate-insurance-card`: BFD's C4DIC `collection` Bundle (Patient, each
/// Coverage, the CMS Organization). Needs a Patient read and a Coverage search scope (BB2's
/// `HasDigitalInsuranceCardScope`).
pub(crate) async fn insurance_card(
    State(st): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let pairs = query_pairs(&uri);
    let ctx = match prelude(&st, &headers, &pairs).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resp = insurance_card_inner(&st, &ctx);
    with_rate(resp, &ctx.rate)
}

fn insurance_card_inner(st: &AppState, ctx: &Ctx) -> Response {
    let ct = ctx.content_type;
    let scopes = &ctx.tok.scopes;
    if !(scope_allows(scopes, "Patient", false) && scope_allows(scopes, "Coverage", true)) {
        return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ct);
    }
    if let Err(r) = crosswalk(ApiVersion::V3, ctx) {
        return r;
    }
    let (fault, retry_after) = st.with_ctl(|c| (c.take_fault("Patient", None), c.retry_after_secs));
    if let Some(fault) = fault {
        return injected(ApiVersion::V3, fault, retry_after, ct);
    }
    let store = st.read_store();
    let Some(v3) = store
        .patient(ctx.tok.user.patient_id)
        .and_then(|d| d.v3.as_ref())
    else {
        return detail_response(StatusCode::NOT_FOUND, "Not found.", ct);
    };
    let q = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let body = format!(
        "{{\"resourceType\":\"Bundle\",\"id\":{},\"meta\":{{\"lastUpdated\":{}}},\"type\":\"collection\",\"entry\":{}}}",
        q(&uuid::Uuid::new_v4().to_string()),
        q(&format_instant_ms(store.last_updated_ms)),
        v3.card_entries
    );
    drop(store);
    json_response(StatusCode::OK, body, ct)
}

fn unknown_route(st: &AppState) -> Response {
    with_rate(
        detail_response(StatusCode::NOT_FOUND, "Not found.", CT_JSON),
        &st.with_ctl(|c| c.anon_rate()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_lists() {
        let all_types =
            parse_types("https://bluebutton.cms.gov/resources/codesystem/eob-type|").unwrap();
        assert!(all_types.is_none());
        let t = parse_types(
            "carrier, PDE,https://bluebutton.cms.gov/resources/codesystem/eob-type|snf",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.contains("pde") && t.contains("snf"));
        assert!(parse_types("claim").is_none());
        assert!(parse_types(" , ").is_none());
    }

    #[test]
    fn date_bounds_follow_prefix_semantics() {
        let (lo, hi) = parse_fhir_date("2020-05-01").unwrap();
        let b = |cmp| DateBound { cmp, lo, hi };
        let noon = lo + 12 * 3_600_000;
        assert!(!b(Cmp::Lt).admits(noon) && b(Cmp::Le).admits(noon));
        assert!(!b(Cmp::Gt).admits(noon) && b(Cmp::Ge).admits(noon));
        assert!(b(Cmp::Gt).admits(hi) && b(Cmp::Lt).admits(lo - 1));
    }
}
