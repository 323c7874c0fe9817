//! OAuth2 / OIDC side of the emulator: authorize (+ login and consent forms), token, refresh rotation,
//! revoke, introspect, grant expiry, userinfo and the discovery documents.

use super::data::{add_months, format_grant_time};
use super::html;
use super::json::J;
use super::{
    detail_response, header_str, html_response, json_response, redirect, s256_challenge,
    synthetic_user, ApiVersion, AppState, Options, SyntheticUser, CT_JSON, DEFAULT_SCOPES,
    SCOPES_SUPPORTED,
};
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use rand::distributions::Alphanumeric;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Codes live 60 s (BB2 / DOT `AUTHORIZATION_CODE_EXPIRE_SECONDS`).
const CODE_TTL: Duration = Duration::from_secs(60);
/// A pending authorization lives as long as BB2's session (`SESSION_COOKIE_AGE`).
const PENDING_TTL: Duration = Duration::from_secs(5400);
const GRANT_MONTHS: u32 = 13;
const APP_NAME: &str = "bluebutton-spin (emulated app)";

pub(crate) const NOT_AUTHENTICATED: &str = "Authentication credentials were not provided.";
pub(crate) const PERMISSION_DENIED: &str = "You do not have permission to perform this action.";
/// BB2's `APPLICATION_THIRTEEN_MONTH_DATA_ACCESS_EXPIRED_MESG`.
pub(crate) const GRANT_EXPIRED: &str = "User access has timed out. To refresh Medicare data, end user must re-authenticate and consent to share their data.";
/// BB2's `APPLICATION_THIRTEEN_MONTH_DATA_ACCESS_NOT_FOUND_MESG`.
const GRANT_NOT_FOUND: &str = "User access cannot be found. To refresh Medicare data, end user must re-authenticate and consent to share their data.";

#[derive(Debug)]
struct Pending {
    redirect_uri: String,
    state: String,
    code_challenge: String,
    scopes: Vec<String>,
    lang: String,
    created: Instant,
    user: Option<&'static SyntheticUser>,
    /// The version whose authorize endpoint started it (its consent page posts back there).
    version: ApiVersion,
}

#[derive(Debug)]
struct Code {
    redirect_uri: String,
    code_challenge: String,
    scopes: Vec<String>,
    user: &'static SyntheticUser,
    created: Instant,
}

#[derive(Clone, Debug)]
pub(crate) struct AccessTok {
    pub user: &'static SyntheticUser,
    pub scopes: Vec<String>,
    pub expires: Instant,
    pub expires_unix: i64,
}

#[derive(Debug)]
struct RefreshTok {
    user: &'static SyntheticUser,
    scopes: Vec<String>,
    access: Option<String>,
    /// Rotated (used) tokens stay known so reuse is told apart from an unknown token, as DOT does.
    revoked: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub created: OffsetDateTime,
    pub expires: OffsetDateTime,
}

/// All OAuth state. The emulator registers one application, so grants are keyed by patient.
#[derive(Debug, Default)]
pub(crate) struct AuthState {
    pending: HashMap<String, Pending>,
    codes: HashMap<String, Code>,
    access: HashMap<String, AccessTok>,
    refresh: HashMap<String, RefreshTok>,
    grants: HashMap<String, Grant>,
    /// Every PKCE verifier a client presented, for tests that look for leaks.
    verifiers: Vec<String>,
}

pub(crate) enum TokenCheck {
    Valid(AccessTok),
    /// Missing, unknown, revoked or expired token.
    NotAuthenticated,
    GrantExpired,
    GrantMissing,
}

impl AuthState {
    /// Every secret a client was given or showed: access and refresh tokens, codes, PKCE verifiers.
    pub fn secrets(&self) -> Vec<String> {
        self.access
            .keys()
            .chain(self.refresh.keys())
            .chain(self.codes.keys())
            .chain(&self.verifiers)
            .cloned()
            .collect()
    }

    pub fn upsert_grant(&mut self, patient: &str) -> Grant {
        let now = OffsetDateTime::now_utc();
        let grant = Grant {
            created: now,
            expires: add_months(now, GRANT_MONTHS),
        };
        self.grants.insert(patient.to_string(), grant.clone());
        grant
    }

    pub fn grant(&self, patient: &str) -> Option<&Grant> {
        self.grants.get(patient)
    }

    pub fn expire_grant(&mut self, patient: &str) -> bool {
        match self.grants.get_mut(patient) {
            Some(g) => {
                g.expires = OffsetDateTime::now_utc() - time::Duration::seconds(1);
                true
            }
            None => false,
        }
    }

    pub fn delete_grant(&mut self, patient: &str) -> bool {
        self.grants.remove(patient).is_some()
    }

    /// Expires access tokens now (all, or one patient's).
    pub fn expire_access_tokens(&mut self, patient: Option<&str>) -> usize {
        let now = Instant::now();
        let mut n = 0;
        for t in self.access.values_mut() {
            if patient.is_none_or(|p| p == t.user.patient_id) {
                t.expires = now;
                n += 1;
            }
        }
        n
    }

    /// BB2's `remove_application_user_pair_tokens_data_access`: the grant and every token of the
    /// app and user go.
    fn remove_app_user(&mut self, patient: &str) {
        self.grants.remove(patient);
        self.access.retain(|_, t| t.user.patient_id != patient);
        self.refresh.retain(|_, t| t.user.patient_id != patient);
    }

    /// Issues an access and refresh token pair (a ONE_TIME app: the access token alone) and answers the
    /// token response body. Tokens carry no version; `patient` is the beneficiary's id on the version
    /// of the token endpoint, and absent when the crosswalk has none there.
    pub fn mint(
        &mut self,
        opts: &Options,
        user: &'static SyntheticUser,
        scopes: Vec<String>,
        version: ApiVersion,
    ) -> String {
        let access = random_token();
        let refresh = random_token();
        let now = OffsetDateTime::now_utc();
        self.access.insert(
            access.clone(),
            AccessTok {
                user,
                scopes: scopes.clone(),
                expires: Instant::now() + Duration::from_secs(opts.token_ttl_secs),
                expires_unix: now.unix_timestamp() + opts.token_ttl_secs as i64,
            },
        );
        if !opts.one_time_app {
            self.refresh.insert(
                refresh.clone(),
                RefreshTok {
                    user,
                    scopes: scopes.clone(),
                    access: Some(access.clone()),
                    revoked: false,
                },
            );
        }
        let patient = user.fhir_id(version);
        let expiration = self
            .grants
            .get(user.patient_id)
            .map(|g| format_grant_time(g.expires))
            .unwrap_or_default();
        let mut fields = vec![
            ("access_token", J::str(access)),
            ("expires_in", J::Num(opts.token_ttl_secs.into())),
            ("token_type", J::str("Bearer")),
            ("scope", J::str(scopes.join(" "))),
            ("refresh_token", J::str(refresh)),
            ("patient", J::str(patient.unwrap_or_default())),
            ("access_grant_expiration", J::str(expiration)),
        ];
        fields.retain(|(name, _)| match *name {
            "refresh_token" => !opts.one_time_app,
            "patient" => patient.is_some(),
            _ => true,
        });
        J::obj(fields).to_json()
    }

    pub fn check_access(&self, token: &str) -> TokenCheck {
        let Some(t) = self.access.get(token) else {
            return TokenCheck::NotAuthenticated;
        };
        if Instant::now() >= t.expires {
            return TokenCheck::NotAuthenticated;
        }
        match self.grants.get(t.user.patient_id) {
            None => TokenCheck::GrantMissing,
            Some(g) if g.expires <= OffsetDateTime::now_utc() => TokenCheck::GrantExpired,
            Some(_) => TokenCheck::Valid(t.clone()),
        }
    }
}

fn random_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(30)
        .map(char::from)
        .collect()
}

/// The scopes an authorize request asks for: the supported ones it names (deduplicated, in order), or
/// the app's default set when it names none.
pub(crate) fn requested_scopes(scope: Option<&str>) -> Vec<String> {
    let Some(scope) = scope.filter(|s| !s.trim().is_empty()) else {
        return DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect();
    };
    let mut out: Vec<String> = Vec::new();
    for s in scope.split_whitespace() {
        if SCOPES_SUPPORTED.contains(&s) && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

fn is_demographic(scope: &str) -> bool {
    scope == "profile" || scope.starts_with("patient/Patient.")
}

/// Whether `scopes` allow `action` ("read" or "search") on `resource` (WS `apps/fhir/constants.py`).
pub(crate) fn scope_allows(scopes: &[String], resource: &str, search: bool) -> bool {
    let suffixes: [&str; 3] = if search {
        ["read", "s", "rs"]
    } else {
        ["read", "r", "rs"]
    };
    suffixes.iter().any(|s| {
        scopes
            .iter()
            .any(|g| *g == format!("patient/{resource}.{s}"))
    })
}

// ---------------------------------------------------------------------------------------------------
// Request helpers.

/// Last value of a field, as Django's `QueryDict.get` answers.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// Reads a form body, url-encoded or multipart (BB2 accepts both on the token endpoint).
async fn form_fields(req: Request) -> (HeaderMap, Vec<(String, String)>) {
    let headers = req.headers().clone();
    let ct = header_str(&headers, header::CONTENT_TYPE)
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        let mut fields = Vec::new();
        if let Ok(mut mp) = Multipart::from_request(req, &()).await {
            while let Ok(Some(f)) = mp.next_field().await {
                let name = f.name().unwrap_or_default().to_string();
                if let Ok(text) = f.text().await {
                    fields.push((name, text));
                }
            }
        }
        (headers, fields)
    } else {
        let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (headers, parse_pairs(&bytes))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = header_str(headers, header::AUTHORIZATION)?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `Authorization: Basic` credentials, url-decoded as DOT does.
fn basic(headers: &HeaderMap) -> Option<Option<(String, String)>> {
    let v = header_str(headers, header::AUTHORIZATION)?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let pair = decoded.and_then(|d| {
        let (id, secret) = d.split_once(':')?;
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        Some((dec(id), dec(secret)))
    });
    Some(pair)
}

/// oauthlib's error body `{"error": …, "error_description": …}`.
fn oauth_error(status: StatusCode, error: &str, description: Option<&str>) -> Response {
    let mut pairs = vec![("error", J::str(error))];
    if let Some(d) = description {
        pairs.push(("error_description", J::str(d)));
    }
    no_store(json_response(status, J::obj(pairs).to_json(), CT_JSON))
}

/// BB2's `json_response_from_oauth2_error` body `{"status_code", "error", "error_description"}`.
fn bb2_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = J::obj(vec![
        ("status_code", J::Num(status.as_u16().into())),
        ("error", J::str(error)),
        ("error_description", J::str(description)),
    ]);
    no_store(json_response(status, body.to_json(), CT_JSON))
}

fn status_message(status: StatusCode, message: &str) -> Response {
    let body = J::obj(vec![
        ("status_code", J::Num(status.as_u16().into())),
        ("message", J::str(message)),
    ]);
    json_response(status, body.to_json(), CT_JSON)
}

fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs(pairs);
            u.into()
        }
        Err(_) => {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            let sep = if uri.contains('?') { '&' } else { '?' };
            format!("{uri}{sep}{q}")
        }
    }
}

fn cms_client_id_format_ok(id: &str) -> bool {
    id.len() == 40 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Client authentication: HTTP Basic first, else `client_id` + `client_secret` in the body.
fn client_auth(
    st: &AppState,
    headers: &HeaderMap,
    fields: &[(String, String)],
) -> Result<(), Response> {
    let body_id = field(fields, "client_id");
    let creds = match basic(headers) {
        Some(Some((id, secret))) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(bb2_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "different app in headers than in request data",
                ));
            }
            Some((id, secret))
        }
        Some(None) => None,
        None => body_id.map(|id| {
            (
                id.to_string(),
                field(fields, "client_secret")
                    .unwrap_or_default()
                    .to_string(),
            )
        }),
    };
    let Some((id, secret)) = creds else {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            None,
        ));
    };
    if st.opts.require_cms_client_id_format && !cms_client_id_format_ok(&id) {
        return Err(bb2_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Invalid client_id format.",
        ));
    }
    if id != st.opts.client_id || secret != st.opts.client_secret {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            None,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Authorize, login, consent.

pub(crate) async fn authorize_no_slash(ver: ApiVersion, RawQuery(query): RawQuery) -> Response {
    let p = ver.prefix();
    let location = match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("{p}/o/authorize/?{q}"),
        None => format!("{p}/o/authorize/"),
    };
    redirect(StatusCode::MOVED_PERMANENTLY, &location)
}

pub(crate) async fn authorize(
    State(st): State<Arc<AppState>>,
    ver: ApiVersion,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let query_pairs = parse_pairs(query.unwrap_or_default().as_bytes());
    let body_pairs = if method == Method::POST {
        parse_pairs(&body)
    } else {
        Vec::new()
    };
    // GET first, then POST, as BB2's `_get_param`.
    let get = |k: &str| {
        field(&query_pairs, k)
            .or_else(|| field(&body_pairs, k))
            .filter(|v| !v.is_empty())
    };

    if get("client_secret").is_some() {
        return html_response(
            StatusCode::BAD_REQUEST,
            "Illegal query parameter [client_secret] detected".into(),
        );
    }
    if method == Method::POST && field(&body_pairs, "state").is_none_or(str::is_empty) {
        return status_message(StatusCode::UNAUTHORIZED, "State required in POST body.");
    }
    match get("client_id") {
        Some(id) if id == st.opts.client_id => {}
        Some(_) => {
            return html_response(
                StatusCode::UNAUTHORIZED,
                html::app_error_page("invalid_client : Application does not exist (client_id)"),
            )
        }
        None => {
            return html_response(
                StatusCode::UNAUTHORIZED,
                html::app_error_page("invalid_client : App id failed"),
            )
        }
    }

    let mut missing = Vec::new();
    if get("code_challenge").is_none() {
        missing.push("code_challenge");
    }
    if get("code_challenge_method").is_none() {
        missing.push("code_challenge_method");
    }
    match get("state") {
        None => missing.push("state"),
        Some(s) if s.chars().count() < 16 => {
            return status_message(
                StatusCode::BAD_REQUEST,
                "State parameter should have a minimum of 16 characters",
            )
        }
        Some(_) => {}
    }
    // v3 has no default scope set: the app must say what it asks for.
    if ver == ApiVersion::V3 && get("scope").is_none_or(|s| s.trim().is_empty()) {
        missing.push("scope");
    }
    if !missing.is_empty() {
        return status_message(
            StatusCode::BAD_REQUEST,
            &format!("Missing Required Parameter(s): {}", missing.join(", ")),
        );
    }

    match get("redirect_uri") {
        None => {
            return bb2_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing redirect URI.",
            )
        }
        Some(r) if r != st.opts.redirect_uri => {
            return bb2_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Mismatching redirect URI.",
            )
        }
        Some(_) => {}
    }
    match get("response_type") {
        None => {
            return bb2_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing response_type parameter.",
            )
        }
        Some("code") => {}
        Some(_) => {
            return bb2_error(
                StatusCode::BAD_REQUEST,
                "unsupported_response_type",
                "Only the authorization code flow (response_type=code) is supported.",
            )
        }
    }
    if get("code_challenge_method") != Some("S256") {
        return bb2_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code_challenge_method must be S256",
        );
    }

    let lang = match get("lang") {
        Some(l @ ("en" | "es")) => l.to_string(),
        _ => "en".to_string(),
    };
    let pending = Pending {
        redirect_uri: st.opts.redirect_uri.clone(),
        state: get("state").unwrap_or_default().to_string(),
        code_challenge: get("code_challenge").unwrap_or_default().to_string(),
        scopes: requested_scopes(get("scope")),
        lang,
        created: Instant::now(),
        user: None,
        version: ver,
    };
    let auth_id = uuid::Uuid::new_v4().to_string();
    st.with_auth(|a| {
        a.pending.retain(|_, p| p.created.elapsed() < PENDING_TTL);
        a.pending.insert(auth_id.clone(), pending);
    });
    redirect(
        StatusCode::FOUND,
        &format!("/mymedicare/login?auth_id={auth_id}"),
    )
}

fn session_gone() -> Response {
    html_response(
        StatusCode::BAD_REQUEST,
        html::app_error_page(
            "This authorization request is unknown or has expired. Start again from the app.",
        ),
    )
}

pub(crate) async fn login_form(
    State(st): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = parse_pairs(query.unwrap_or_default().as_bytes());
    let auth_id = field(&pairs, "auth_id").unwrap_or_default().to_string();
    let lang = st.with_auth(|a| {
        a.pending
            .get(&auth_id)
            .filter(|p| p.created.elapsed() < PENDING_TTL)
            .map(|p| p.lang.clone())
    });
    match lang {
        Some(lang) => html_response(
            StatusCode::OK,
            html::login_page(&lang, &auth_id, APP_NAME, None),
        ),
        None => session_gone(),
    }
}

pub(crate) async fn login_submit(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let fields = parse_pairs(&body);
    let auth_id = field(&fields, "auth_id").unwrap_or_default().to_string();
    let username = field(&fields, "username").unwrap_or_default();
    let password = field(&fields, "password").unwrap_or_default();
    let user = synthetic_user(username).filter(|u| u.password == password);
    let outcome = st.with_auth(|a| {
        let p = a
            .pending
            .get_mut(&auth_id)
            .filter(|p| p.created.elapsed() < PENDING_TTL)?;
        if user.is_some() {
            p.user = user;
        }
        Some((p.lang.clone(), p.version))
    });
    match (outcome, user) {
        (None, _) => session_gone(),
        (Some((lang, _)), None) => html_response(
            StatusCode::OK,
            html::login_page(
                &lang,
                &auth_id,
                APP_NAME,
                Some("Invalid username or password."),
            ),
        ),
        (Some((_, version)), Some(_)) => redirect(
            StatusCode::FOUND,
            &format!("{}/o/authorize/{auth_id}/", version.prefix()),
        ),
    }
}

fn approval_not_found() -> Response {
    status_message(StatusCode::NOT_FOUND, "Not found.")
}

pub(crate) async fn consent_form(
    State(st): State<Arc<AppState>>,
    Path(auth_id): Path<String>,
) -> Response {
    let page = st.with_auth(|a| {
        let p = a
            .pending
            .get(&auth_id)
            .filter(|p| p.created.elapsed() < PENDING_TTL)?;
        let user = p.user?;
        Some(html::consent_page(
            &p.lang,
            &auth_id,
            APP_NAME,
            user.username,
            &p.scopes,
            p.version.prefix(),
        ))
    });
    match page {
        Some(page) => html_response(StatusCode::OK, page),
        None => approval_not_found(),
    }
}

pub(crate) async fn consent_submit(
    State(st): State<Arc<AppState>>,
    Path(auth_id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = parse_pairs(&body);
    if field(&fields, "auth_id").is_some_and(|f| f != auth_id) {
        return approval_not_found();
    }
    let pending = st.with_auth(|a| {
        let ready = a
            .pending
            .get(&auth_id)
            .is_some_and(|p| p.user.is_some() && p.created.elapsed() < PENDING_TTL);
        if ready {
            a.pending.remove(&auth_id)
        } else {
            None
        }
    });
    let Some(p) = pending else {
        return approval_not_found();
    };
    let user = p.user.expect("checked when taken");
    let denied = |state: &str| {
        redirect(
            StatusCode::FOUND,
            &with_query(
                &p.redirect_uri,
                &[("error", "access_denied"), ("state", state)],
            ),
        )
    };
    let allow = field(&fields, "allow").is_some() && field(&fields, "deny").is_none();
    if !allow {
        return denied(&p.state);
    }
    let withhold = field(&fields, "share") == Some("no-demographics");
    let scopes: Vec<String> = p
        .scopes
        .iter()
        .filter(|s| !(withhold && is_demographic(s)))
        .cloned()
        .collect();
    let code = random_token();
    let granted = st.with_auth(|a| {
        if scopes.is_empty() {
            // No scope left: BB2 denies and drops the app's grant and tokens for this user.
            a.remove_app_user(user.patient_id);
            return false;
        }
        if withhold {
            // Choosing not to share demographics drops the earlier grant and its tokens.
            a.remove_app_user(user.patient_id);
        }
        a.upsert_grant(user.patient_id);
        a.codes.retain(|_, c| c.created.elapsed() < CODE_TTL);
        a.codes.insert(
            code.clone(),
            Code {
                redirect_uri: p.redirect_uri.clone(),
                code_challenge: p.code_challenge.clone(),
                scopes: scopes.clone(),
                user,
                created: Instant::now(),
            },
        );
        true
    });
    if !granted {
        return denied(&p.state);
    }
    redirect(
        StatusCode::FOUND,
        &with_query(&p.redirect_uri, &[("code", &code), ("state", &p.state)]),
    )
}

// ---------------------------------------------------------------------------------------------------
// Token endpoint.

pub(crate) async fn token(
    State(st): State<Arc<AppState>>,
    ver: ApiVersion,
    req: Request,
) -> Response {
    st.delay().await;
    let (headers, fields) = form_fields(req).await;
    if let Err(resp) = client_auth(&st, &headers, &fields) {
        return resp;
    }
    // DOT's server defaults a missing grant_type to authorization_code.
    match field(&fields, "grant_type").unwrap_or("authorization_code") {
        "authorization_code" => code_grant(&st, ver, &fields),
        "refresh_token" => refresh_grant(&st, ver, &fields),
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", None),
    }
}

fn token_ok(body: String) -> Response {
    no_store(json_response(StatusCode::OK, body, CT_JSON))
}

fn code_grant(st: &AppState, ver: ApiVersion, fields: &[(String, String)]) -> Response {
    let Some(code) = field(fields, "code").filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("Missing code parameter."),
        );
    };
    st.with_auth(|a| {
        let Some(c) = a.codes.get(code) else {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", None);
        };
        if c.created.elapsed() >= CODE_TTL {
            a.codes.remove(code);
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", None);
        }
        // A missing redirect_uri falls back to the single registered one, as oauthlib does.
        if field(fields, "redirect_uri").is_some_and(|r| r != c.redirect_uri) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("Mismatching redirect URI."),
            );
        }
        let Some(verifier) = field(fields, "code_verifier").filter(|v| !v.is_empty()) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("Code verifier required."),
            );
        };
        a.verifiers.push(verifier.to_string());
        if !(43..=128).contains(&verifier.len()) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("code_verifier must be between 43 and 128 characters"),
            );
        }
        if s256_challenge(verifier) != c.code_challenge.trim_end_matches('=') {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                Some("code_challenge does not match"),
            );
        }
        let c = a.codes.remove(code).expect("present above");
        // A new authorization by the beneficiary replaces every token of theirs for this app, on
        // either version (tokens carry none); the grant stays.
        if st.opts.new_authorization_replaces_tokens {
            a.access
                .retain(|_, t| t.user.patient_id != c.user.patient_id);
            a.refresh
                .retain(|_, t| t.user.patient_id != c.user.patient_id);
        }
        if !a.grants.contains_key(c.user.patient_id) {
            a.upsert_grant(c.user.patient_id);
        }
        token_ok(a.mint(&st.opts, c.user, c.scopes, ver))
    })
}

fn refresh_grant(st: &AppState, ver: ApiVersion, fields: &[(String, String)]) -> Response {
    let presented = field(fields, "refresh_token").unwrap_or_default();
    if st.opts.one_time_app {
        // BB2's `validate_app_is_active` refuses every refresh of a ONE_TIME app.
        return bb2_error(
            StatusCode::FORBIDDEN,
            "invalid_client",
            "This application is registered for one-time data access: it may not refresh tokens.",
        );
    }
    st.with_auth(|a| {
        // BB2's `validate_app_is_active` checks run before oauthlib's own.
        let Some(rt) = a.refresh.get(presented) else {
            return bb2_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing refresh token parameter",
            );
        };
        match a.grants.get(rt.user.patient_id) {
            None => return bb2_error(StatusCode::FORBIDDEN, "invalid_grant", GRANT_NOT_FOUND),
            Some(g) if g.expires <= OffsetDateTime::now_utc() => {
                return bb2_error(StatusCode::UNAUTHORIZED, "invalid_grant", GRANT_EXPIRED)
            }
            Some(_) => {}
        }
        if rt.revoked {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", None);
        }
        let scopes = match field(fields, "scope").filter(|s| !s.trim().is_empty()) {
            None => rt.scopes.clone(),
            Some(asked) => {
                let asked: Vec<String> = asked.split_whitespace().map(str::to_string).collect();
                if !asked.iter().all(|s| rt.scopes.contains(s)) {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", None);
                }
                let mut narrowed: Vec<String> = Vec::new();
                for s in asked {
                    if !narrowed.contains(&s) {
                        narrowed.push(s);
                    }
                }
                narrowed
            }
        };
        let user = rt.user;
        // Rotation: the used refresh token and its access token are revoked.
        let rt = a.refresh.get_mut(presented).expect("present above");
        rt.revoked = true;
        if let Some(old) = rt.access.take() {
            a.access.remove(&old);
        }
        token_ok(a.mint(&st.opts, user, scopes, ver))
    })
}

// ---------------------------------------------------------------------------------------------------
// Revoke, introspect, expire.

pub(crate) async fn revoke(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (headers, fields) = form_fields(req).await;
    if let Err(resp) = client_auth(&st, &headers, &fields) {
        return resp;
    }
    let token = field(&fields, "token").unwrap_or_default();
    st.with_auth(|a| {
        let patient = a
            .access
            .get(token)
            .map(|t| t.user.patient_id)
            .or_else(|| a.refresh.get(token).map(|t| t.user.patient_id));
        if let Some(p) = patient {
            a.remove_app_user(p);
        }
    });
    // Always 200, known token or not.
    json_response(StatusCode::OK, String::new(), CT_JSON)
}

pub(crate) async fn revoke_token(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (headers, fields) = form_fields(req).await;
    if let Err(resp) = client_auth(&st, &headers, &fields) {
        return resp;
    }
    let token = field(&fields, "token").unwrap_or_default().to_string();
    st.with_auth(|a| {
        let revoke_refresh = |a: &mut AuthState| {
            if let Some(rt) = a.refresh.get_mut(&token) {
                rt.revoked = true;
                if let Some(at) = rt.access.take() {
                    a.access.remove(&at);
                }
                true
            } else {
                false
            }
        };
        let revoke_access = |a: &mut AuthState| a.access.remove(&token).is_some();
        // RFC 7009's `token_type_hint` only says where to look first; a token string lives in
        // one table only, so the order cannot change the outcome.
        let _ = revoke_access(a) || revoke_refresh(a);
    });
    json_response(StatusCode::OK, String::new(), CT_JSON)
}

pub(crate) async fn introspect(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let query = req
        .uri()
        .query()
        .map(|q| parse_pairs(q.as_bytes()))
        .unwrap_or_default();
    let (headers, mut fields) = form_fields(req).await;
    fields.splice(0..0, query);
    // A Bearer token with scope `introspection`, or client credentials.
    let bearer_ok = bearer(&headers).is_some_and(|t| {
        st.with_auth(|a| match a.check_access(t) {
            TokenCheck::Valid(t) => t.scopes.iter().any(|s| s == "introspection"),
            _ => false,
        })
    });
    if !bearer_ok {
        if let Err(resp) = client_auth(&st, &headers, &fields) {
            return resp;
        }
    }
    let token = field(&fields, "token").unwrap_or_default();
    let body = st.with_auth(|a| match a.check_access(token) {
        TokenCheck::Valid(t) => J::obj(vec![
            ("active", J::Bool(true)),
            ("scope", J::str(t.scopes.join(" "))),
            ("exp", J::Num(t.expires_unix.into())),
            ("client_id", J::str(st.opts.client_id.clone())),
            ("username", J::str(t.user.username)),
        ]),
        _ => J::obj(vec![("active", J::Bool(false))]),
    });
    json_response(StatusCode::OK, body.to_json(), CT_JSON)
}

pub(crate) async fn expire_authenticated_user(
    State(st): State<Arc<AppState>>,
    Path(patient): Path<String>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    // Basic auth only, as BB2's sandbox endpoint.
    match basic(&headers) {
        Some(Some((id, secret))) if id == st.opts.client_id && secret == st.opts.client_secret => {}
        _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", None),
    }
    if st.with_auth(|a| a.expire_grant(&patient)) {
        json_response(StatusCode::OK, String::new(), CT_JSON)
    } else {
        detail_response(StatusCode::NOT_FOUND, "Not found.", CT_JSON)
    }
}

// ---------------------------------------------------------------------------------------------------
// Userinfo and discovery.

/// `sub` and `patient` are the beneficiary's id on this version; without one there, `patient` is left
/// out and `sub` stays the v2 id (a subject must not vanish).
pub(crate) async fn userinfo(
    State(st): State<Arc<AppState>>,
    ver: ApiVersion,
    headers: HeaderMap,
) -> Response {
    let unauthenticated = |detail: &str| {
        let mut r = detail_response(StatusCode::UNAUTHORIZED, detail, CT_JSON);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"api\""),
        );
        r
    };
    let check = match bearer(&headers) {
        Some(t) => st.with_auth(|a| a.check_access(t)),
        None => TokenCheck::NotAuthenticated,
    };
    let tok = match check {
        TokenCheck::Valid(t) => t,
        TokenCheck::NotAuthenticated => return unauthenticated(NOT_AUTHENTICATED),
        TokenCheck::GrantExpired => return unauthenticated(GRANT_EXPIRED),
        TokenCheck::GrantMissing => {
            return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, CT_JSON)
        }
    };
    if !tok.scopes.iter().any(|s| s == "profile") {
        return detail_response(StatusCode::FORBIDDEN, PERMISSION_DENIED, CT_JSON);
    }
    let iat = st.with_auth(|a| a.grant(tok.user.patient_id).map(|g| g.created));
    let iat = iat.unwrap_or_else(OffsetDateTime::now_utc);
    let (given, family) = {
        let store = st.read_store();
        store
            .patient(tok.user.patient_id)
            .map(|p| (p.given_name.clone(), p.family_name.clone()))
            .unwrap_or_default()
    };
    let fhir_id = tok.user.fhir_id(ver);
    let mut fields = vec![
        ("sub", J::str(fhir_id.unwrap_or(tok.user.patient_id))),
        (
            "name",
            J::str(format!("{given} {family}").trim().to_string()),
        ),
        ("given_name", J::str(given)),
        ("family_name", J::str(family)),
        ("email", J::str(tok.user.email)),
        (
            "iat",
            J::str(format!(
                "{}.{:03}Z",
                format_grant_time(iat).trim_end_matches('Z'),
                iat.millisecond()
            )),
        ),
    ];
    if let Some(id) = fhir_id {
        fields.push(("patient", J::str(id)));
    }
    json_response(StatusCode::OK, J::obj(fields).to_json(), CT_JSON)
}

/// The OIDC document as BB2's current `build_endpoint_info` builds it, on this origin.
pub(crate) async fn openid_configuration(State(st): State<Arc<AppState>>) -> Response {
    let o = &st.origin;
    let body = J::obj(vec![
        ("issuer", J::str(o.clone())),
        (
            "authorization_endpoint",
            J::str(format!("{o}/v2/o/authorize")),
        ),
        (
            "revocation_endpoint",
            J::str(format!("{o}/v2/o/revoke_token")),
        ),
        ("token_endpoint", J::str(format!("{o}/v2/o/token/"))),
        (
            "userinfo_endpoint",
            J::str(format!("{o}/v2/connect/userinfo")),
        ),
        ("ui_locales_supported", J::strs(&["en-US"])),
        (
            "service_documentation",
            J::str("https://bluebutton.cms.gov/developers"),
        ),
        ("op_tos_uri", J::str("https://bluebutton.cms.gov/terms")),
        (
            "grant_types_supported",
            J::strs(&["authorization_code", "refresh_token"]),
        ),
        ("response_types_supported", J::strs(&["code", "token"])),
        ("fhir_metadata_uri", J::str(format!("{o}/v2/fhir/metadata"))),
    ]);
    json_response(StatusCode::OK, body.to_json(), CT_JSON)
}

/// The SMART document as BB2's current `build_smart_config_endpoint` builds it, on this origin, with
/// the version's endpoints (v3 adds `permission-v3`).
pub(crate) async fn smart_configuration(
    State(st): State<Arc<AppState>>,
    ver: ApiVersion,
) -> Response {
    let o = format!("{}{}", st.origin, ver.prefix());
    let mut capabilities = vec![
        "client-confidential-symmetric",
        "context-standalone-patient",
        "launch-standalone",
        "permission-offline",
        "permission-patient",
        "permission-v1",
        "permission-v2",
        "authorize-post",
    ];
    if ver == ApiVersion::V3 {
        capabilities.insert(7, "permission-v3");
    }
    let body = J::obj(vec![
        ("authorization_endpoint", J::str(format!("{o}/o/authorize"))),
        ("revocation_endpoint", J::str(format!("{o}/o/revoke_token"))),
        ("token_endpoint", J::str(format!("{o}/o/token/"))),
        ("grant_types_supported", J::strs(&["authorization_code"])),
        ("response_types_supported", J::strs(&["code", "token"])),
        (
            "scopes_supported",
            J::strs(&[
                "openid",
                "profile",
                "launch/patient",
                "patient/Patient.read",
                "patient/ExplanationOfBenefit.read",
                "patient/Coverage.read",
                "patient/Patient.rs",
                "patient/ExplanationOfBenefit.rs",
                "patient/Coverage.rs",
            ]),
        ),
        ("code_challenge_methods_supported", J::strs(&["S256"])),
        ("capabilities", J::strs(&capabilities)),
    ]);
    json_response(StatusCode::OK, body.to_json(), CT_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_filtered_deduplicated_and_defaulted() {
        assert_eq!(requested_scopes(None).len(), DEFAULT_SCOPES.len());
        assert_eq!(requested_scopes(Some("  ")).len(), DEFAULT_SCOPES.len());
        assert_eq!(
            requested_scopes(Some("profile bogus profile patient/Coverage.s")),
            vec!["profile".to_string(), "patient/Coverage.s".to_string()]
        );
        assert!(requested_scopes(Some("bogus")).is_empty());
        let s = vec!["patient/Coverage.s".to_string()];
        assert!(scope_allows(&s, "Coverage", true));
        assert!(!scope_allows(&s, "Coverage", false));
        assert!(!scope_allows(&s, "Patient", true));
        assert!(is_demographic("patient/Patient.rs") && is_demographic("profile"));
        assert!(!is_demographic("openid"));
        assert!(cms_client_id_format_ok(&"a1".repeat(20)));
        assert!(!cms_client_id_format_ok("short"));
    }
}
