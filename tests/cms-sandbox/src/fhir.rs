//! FHIR side of the emulator: `metadata`, and Patient / Coverage / ExplanationOfBenefit search and read
//! with BB2's parameter rules, BFD's offset paging links, DRF error bodies and rate-limit headers.

use super::control::{apply_rate, fault_response, injected, RateInfo};
use super::data::{format_instant_ms, parse_fhir_date, Eob, Resource, EOB_TYPES, EOB_TYPE_SYSTEM};
use super::oauth::{
    scope_allows, AccessTok, TokenCheck, GRANT_EXPIRED, NOT_AUTHENTICATED, PERMISSION_DENIED,
};
use super::{detail_response, header_str, json_response, AppState, CT_FHIR_JSON, CT_JSON};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

const DEFAULT_COUNT: i64 = 10;
const MAX_COUNT: i64 = 50;
const FORMAT_PARAM: &str = "application/json+fhir";

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

pub(crate) async fn metadata(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    st.delay().await;
    let resp = match negotiate(&headers) {
        Ok(ct) => json_response(StatusCode::OK, st.metadata.clone(), ct),
        Err(r) => r,
    };
    with_rate(resp, &st.with_ctl(|c| c.anon_rate()))
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
    start_index: usize,
    count: usize,
    last_updated: Vec<DateBound>,
    service_date: Vec<DateBound>,
    /// `None`: every type.
    types: Option<HashSet<String>>,
    /// Filter parameters passed upstream, in request order (they reappear in the links).
    filters: Vec<(String, String)>,
}

fn bad_request(detail: &str, ct: &str) -> Response {
    detail_response(StatusCode::BAD_REQUEST, detail, ct)
}

/// A 400 as BB2 relays it from BFD.
fn upstream_bad_request(diagnostics: &str, ct: &str) -> Response {
    bad_request(
        &format!("An error occurred contacting the upstream server:{diagnostics}"),
        ct,
    )
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

/// BB2's voluptuous schema first (its own messages), then what BFD would reject (relayed as upstream
/// 400s). Unknown parameters are dropped.
fn validate(kind: Kind, pairs: &[(String, String)], ct: &str) -> Result<Search, Response> {
    // `count` is an alias of `_count` and wins over it (BB2's QUERY_TRANSFORMS).
    let count_raw = last(pairs, "count").or_else(|| last(pairs, "_count"));
    let start_raw = last(pairs, "startIndex");
    let start = match start_raw {
        None => 0,
        Some(v) => coerce_int(v).ok_or_else(|| bad_request("expected int", ct))?,
    };
    let count = match count_raw {
        None => DEFAULT_COUNT,
        Some(v) => {
            let n = coerce_int(v).ok_or_else(|| bad_request("expected int", ct))?;
            if n > MAX_COUNT {
                return Err(bad_request(
                    &format!("value must be at most {MAX_COUNT}"),
                    ct,
                ));
            }
            if n < 0 {
                return Err(bad_request("value must be at least 0", ct));
            }
            n
        }
    };
    let last_updated_raw = all(pairs, "_lastUpdated");
    if last_updated_raw.iter().any(|v| !has_operator(v)) {
        return Err(bad_request("the _lastUpdated operator is not valid", ct));
    }
    let mut filters: Vec<(String, String)> = last_updated_raw
        .iter()
        .map(|v| ("_lastUpdated".to_string(), v.to_string()))
        .collect();
    let mut types = None;
    let mut service_raw = Vec::new();
    if kind == Kind::Eob {
        if let Some(t) = last(pairs, "type") {
            types = parse_types(t)
                .ok_or_else(|| bad_request("the type parameter value is not valid", ct))?;
            filters.push(("type".to_string(), t.to_string()));
        }
        service_raw = all(pairs, "service-date");
        if service_raw.iter().any(|v| !has_operator(v)) {
            return Err(bad_request("the service-date operator is not valid", ct));
        }
        filters.extend(
            service_raw
                .iter()
                .map(|v| ("service-date".to_string(), v.to_string())),
        );
    }

    if start < 0 {
        return Err(upstream_bad_request(
            &format!("Value for startIndex cannot be negative: {start}"),
            ct,
        ));
    }
    let bounds = |raw: &[&str]| -> Result<Vec<DateBound>, Response> {
        raw.iter()
            .map(|v| {
                let cmp = match &v[..2] {
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                let (lo, hi) = parse_fhir_date(&v[2..]).map_err(|_| {
                    upstream_bad_request(&format!("Invalid date/time format: \"{}\"", &v[2..]), ct)
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
    })
}

pub(crate) async fn search(
    State(st): State<Arc<AppState>>,
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
    let resp = search_inner(&st, kind, &ctx, &pairs, uri.path());
    with_rate(resp, &ctx.rate)
}

fn search_inner(
    st: &AppState,
    kind: Kind,
    ctx: &Ctx,
    pairs: &[(String, String)],
    path: &str,
) -> Response {
    let ct = ctx.content_type;
    if !scope_allows(&ctx.tok.scopes, kind.name(), true) {
        return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ct);
    }
    let search = match validate(kind, pairs, ct) {
        Ok(s) => s,
        Err(r) => return r,
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
        return injected(fault, retry_after, ct);
    }
    let patient = ctx.tok.user.patient_id;
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
    let Some(data) = store.patient(patient) else {
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
    };
    let matches: Vec<&Resource> = match kind {
        Kind::Patient => std::iter::once(&data.patient)
            .filter(|r| lu_ok(r))
            .collect(),
        Kind::Coverage => data.coverage.iter().filter(|r| lu_ok(r)).collect(),
        Kind::Eob => data
            .eobs
            .iter()
            .filter(|e| eob_ok(e))
            .map(|e| &e.res)
            .collect(),
    };
    let body = bundle(
        &st.origin,
        kind,
        path,
        &search,
        resource_param,
        &matches,
        omit_total,
        &format_instant_ms(store.last_updated_ms),
    );
    drop(store);
    json_response(StatusCode::OK, body, ct)
}

fn encode(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A searchset page as BFD builds it (links on this origin).
#[allow(clippy::too_many_arguments)]
fn bundle(
    origin: &str,
    kind: Kind,
    path: &str,
    search: &Search,
    resource_param: (&str, String),
    matches: &[&Resource],
    omit_total: bool,
    last_updated: &str,
) -> String {
    let total = matches.len();
    let (start, count) = (search.start_index, search.count);
    let mut extra: Vec<(&str, &str)> = vec![(resource_param.0, resource_param.1.as_str())];
    extra.extend(search.filters.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let nav = |at: usize| {
        let (s, c) = (at.to_string(), count.to_string());
        let mut pairs: Vec<(&str, &str)> = vec![
            ("_format", FORMAT_PARAM),
            ("startIndex", &s),
            ("_count", &c),
        ];
        pairs.extend(extra.iter().copied());
        format!("{origin}/v2/fhir/{}?{}", kind.name(), encode(&pairs))
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

    let page: &[&Resource] = if count == 0 || start >= total {
        &[]
    } else {
        &matches[start..(start + count).min(total)]
    };
    let mut out =
        String::with_capacity(512 + page.iter().map(|r| r.json.len() + 16).sum::<usize>());
    let q = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let _ = write!(
        out,
        "{{\"resourceType\":\"Bundle\",\"id\":{},\"meta\":{{\"lastUpdated\":{}}},\"type\":\"searchset\"",
        q(&uuid::Uuid::new_v4().to_string()),
        q(last_updated)
    );
    if !omit_total {
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
    let resp = read_inner(&st, kind, &ctx, &id);
    with_rate(resp, &ctx.rate)
}

fn read_inner(st: &AppState, kind: Kind, ctx: &Ctx, id: &str) -> Response {
    let ct = ctx.content_type;
    if !scope_allows(&ctx.tok.scopes, kind.name(), false) {
        return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, ct);
    }
    let (fault, retry_after) =
        st.with_ctl(|c| (c.take_fault(kind.name(), None), c.retry_after_secs));
    if let Some(fault) = fault {
        return injected(fault, retry_after, ct);
    }
    let store = st.read_store();
    // Another patient's resource is a 404 too, so its existence does not leak.
    let found = store
        .patient(ctx.tok.user.patient_id)
        .and_then(|data| match kind {
            Kind::Patient => (data.patient.id == id).then(|| data.patient.json.clone()),
            Kind::Coverage => data
                .coverage
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.json.clone()),
            Kind::Eob => data
                .eobs
                .iter()
                .find(|e| e.res.id == id)
                .map(|e| e.res.json.clone()),
        });
    drop(store);
    match found {
        Some(json) => json_response(StatusCode::OK, json.to_string(), ct),
        None => detail_response(StatusCode::NOT_FOUND, "Not found.", ct),
    }
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
