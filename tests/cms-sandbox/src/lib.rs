//! CMS Blue Button 2.0 **v2 sandbox emulator**: OAuth2 (authorize with HTML login and consent forms,
//! token, refresh rotation, revoke, introspect, grant expiry), OIDC userinfo, the discovery documents,
//! and the FHIR R4 API (Patient, Coverage, ExplanationOfBenefit search and read, `metadata`) over the CMS
//! sample data embedded from `fixtures/`. It follows the BB2 web server's current behaviour as
//! summarised in the project's CMS reference (routes, parameter rules, error bodies, paging links,
//! rate-limit headers), on its own origin, with latency and fault injection for client tests.
//!
//! Start it with [`CmsSandbox::start`] (or the `cms-sandbox` binary). The server binds loopback only in
//! the binary; everything is in memory and dies with the server.
//!
//! # Synthetic users
//! See [`SYNTHETIC_USERS`]: `BBUser29999` / `PW29999!` (patient `-20140000010000`, the site sample:
//! Patient, 4 Coverage, 10 PDE EOBs, grown by `eob_count`), `BBUser00001` / `PW00001!` (patient
//! `-19990000000001`, the 52 EOBs of the SDK's 6-page capture), `BBUser08325` / `PW08325!` (patient
//! `-20140000008325`, the web server's test patient with one carrier EOB).
//!
//! # Test control: `/_emulator/` (no auth; JSON bodies; every answer is JSON)
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /_emulator/state` | | patients and their EOB counts, fault settings, latency, throttle, `omit_total` |
//! | `POST /_emulator/patients/{patient}/eobs` | `{"count": N}` | appends N new EOBs (clones with new ids) whose `meta.lastUpdated` is newer than anything in the store; answers `{"added": [ids], "eob_count": n, "last_updated": "…"}` |
//! | `POST /_emulator/patients/{patient}/eob-count` | `{"count": N}` | grows (clones, stable spread `meta.lastUpdated`) or truncates the patient's EOB list to N |
//! | `POST /_emulator/omit-total` | `{"omit": true}` | searches leave out `Bundle.total` (links stay), as the web server fixture does |
//! | `POST /_emulator/faults/next` | `{"count": K, "status": 503}` | the next K FHIR data requests fail with that status (429 carries `Retry-After`) |
//! | `POST /_emulator/faults/start-index` | `{"start_index": 20, "status": 502, "count": 1, "resource": "ExplanationOfBenefit"}` | the next `count` (default 1) searches at that `startIndex` (of that resource type, if given) fail |
//! | `POST /_emulator/faults/rate` | `{"rate": 0.2, "seed": 7, "retry_after_secs": 1}` | random fault rate (`seed` and `retry_after_secs` optional; a seed restarts the sequence) |
//! | `POST /_emulator/faults/clear` | | drops forced faults and sets the rate to 0 |
//! | `POST /_emulator/latency` | `{"ms": 50}` | delay before every FHIR and token response |
//! | `POST /_emulator/throttle` | `{"limit": 5, "window_secs": 60}` | per-access-token throttle (default 100000 per 1 s, BB2's `TOKEN_THROTTLE_RATE`) |
//! | `GET /_emulator/counters` | | `{"total": n, "by_path": {path: {status: n}}, "by_status": {status: n}}` for every request outside `/_emulator/` |
//! | `POST /_emulator/counters/reset` (or `DELETE /_emulator/counters`) | | zeroes the counters |
//! | `POST /_emulator/tokens/expire` | `{"patient": "-2014…"}` (optional) | access tokens (all, or that patient's) expire now, as after `token_ttl_secs` |
//! | `POST /_emulator/grants/{patient}/expire` | | the patient's grant expires (FHIR and refresh give 401), like `expire_authenticated_user` |
//! | `POST /_emulator/grants/{patient}/delete` | | the grant disappears but tokens stay (FHIR 403, refresh 403 `invalid_grant`), as when a beneficiary disconnects the app |
//!
//! Faults (random, forced next-K, forced start-index) apply to FHIR data requests (Patient, Coverage,
//! ExplanationOfBenefit search and read) after authentication and parameter validation, where BB2
//! would call BFD. Random faults draw from a `StdRng` seeded with `Options::seed`, so a given request
//! sequence always fails the same way.

// Handlers bail out early with a ready `Response` as the error; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod control;
mod data;
mod fhir;
pub mod fixtures;
mod html;
mod json;
mod oauth;

pub use html::{parse_forms, HtmlForm};

use anyhow::Context;
use axum::body::Body;
use axum::handler::Handler;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Patient id of `BBUser29999` (the site's downloadable sample).
pub const BBUSER29999_PATIENT: &str = "-20140000010000";
/// Patient id of `BBUser00001` (the SDKs' 52-EOB capture).
pub const BBUSER00001_PATIENT: &str = "-19990000000001";
/// Patient id of `BBUser08325` (the web server's unit-test patient).
pub const BBUSER08325_PATIENT: &str = "-20140000008325";

/// A sandbox beneficiary who can log in on the emulator's login form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticUser {
    pub username: &'static str,
    pub password: &'static str,
    pub patient_id: &'static str,
    pub email: &'static str,
}

/// The beneficiaries the emulator knows: the password is `PW` + the username's digits + `!`.
pub const SYNTHETIC_USERS: [SyntheticUser; 3] = [
    SyntheticUser {
        username: "BBUser29999",
        password: "PW29999!",
        patient_id: BBUSER29999_PATIENT,
        email: "bbuser29999@example.com",
    },
    SyntheticUser {
        username: "BBUser00001",
        password: "PW00001!",
        patient_id: BBUSER00001_PATIENT,
        email: "bbuser00001@example.com",
    },
    SyntheticUser {
        username: "BBUser08325",
        password: "PW08325!",
        patient_id: BBUSER08325_PATIENT,
        email: "bbuser08325@example.com",
    },
];

/// Looks a synthetic user up by username (case-sensitive, as Medicare.gov's sandbox is).
pub fn synthetic_user(username: &str) -> Option<&'static SyntheticUser> {
    SYNTHETIC_USERS.iter().find(|u| u.username == username)
}

/// The S256 PKCE challenge of a verifier: unpadded base64url of its SHA-256.
pub fn s256_challenge(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Every scope BB2 v2 grants (`openid`, `profile`, `launch/patient` and the three resource types with
/// `read`, `r`, `s` and `rs`).
pub const SCOPES_SUPPORTED: [&str; 15] = [
    "openid",
    "profile",
    "launch/patient",
    "patient/Patient.read",
    "patient/ExplanationOfBenefit.read",
    "patient/Coverage.read",
    "patient/Patient.r",
    "patient/ExplanationOfBenefit.r",
    "patient/Coverage.r",
    "patient/Patient.s",
    "patient/ExplanationOfBenefit.s",
    "patient/Coverage.s",
    "patient/Patient.rs",
    "patient/ExplanationOfBenefit.rs",
    "patient/Coverage.rs",
];

/// Scopes granted when the authorize request has no `scope` (the registered app's full set, condensed
/// the way BB2 now reports them).
pub const DEFAULT_SCOPES: [&str; 6] = [
    "openid",
    "profile",
    "launch/patient",
    "patient/Patient.rs",
    "patient/ExplanationOfBenefit.rs",
    "patient/Coverage.rs",
];

#[derive(Clone, Debug)]
pub struct Options {
    pub client_id: String,
    pub client_secret: String,
    /// The one registered redirect URI (matched exactly).
    pub redirect_uri: String,
    /// `expires_in` of access tokens, and when they stop working. BB2 now answers 3600 (36000 before
    /// 2026), so clients must use the returned value.
    pub token_ttl_secs: u64,
    /// Delay before every FHIR and token response.
    pub latency_ms: u64,
    /// Probability (0.0..=1.0) that a FHIR data request fails with 500, 502, 503 or 429.
    pub fault_rate: f64,
    /// Seed of the fault RNG.
    pub seed: u64,
    /// Grows BBUser29999's patient to this many EOBs.
    pub eob_count: Option<usize>,
    /// `Retry-After` of injected 429s.
    pub retry_after_secs: u64,
    /// Enforce BB2's non-local client-id rule (`[a-zA-Z0-9]{40}`, else 400 `invalid_client`).
    pub require_cms_client_id_format: bool,
    /// The app is registered with BB2's ONE_TIME data access type: token answers carry no refresh
    /// token, and a refresh is refused (403 `invalid_client`).
    pub one_time_app: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client_id: "bluebutton-spin-local-client".into(),
            client_secret: "bluebutton-spin-local-secret".into(),
            redirect_uri: "http://127.0.0.1:3000/callback".into(),
            token_ttl_secs: 3600,
            latency_ms: 0,
            fault_rate: 0.0,
            seed: 0,
            eob_count: None,
            retry_after_secs: 1,
            require_cms_client_id_format: false,
            one_time_app: false,
        }
    }
}

/// A running emulator. Dropping it (or [`CmsSandbox::shutdown`]) stops the server.
pub struct CmsSandbox {
    pub addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl CmsSandbox {
    /// Binds `listen` (port 0 picks a free port), loads the data and serves on a tokio task.
    pub async fn start(listen: SocketAddr, opts: Options) -> anyhow::Result<CmsSandbox> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&opts.fault_rate),
            "fault_rate must be within 0.0..=1.0"
        );
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let origin = format!("http://{addr}");
        let state = Arc::new(AppState::new(opts, origin)?);
        let app = router(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("cms-sandbox: server error: {e}");
            }
        });
        Ok(CmsSandbox {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, the emulator's origin (links, discovery and metadata use it).
    pub fn base_url(&self) -> String {
        self.state.origin.clone()
    }

    /// The authorize URL a client would build, for tests that act as the browser.
    pub fn authorize_url(&self, state: &str, code_challenge: &str, scope: Option<&str>) -> String {
        let mut url = url::Url::parse(&format!("{}/v2/o/authorize/", self.state.origin))
            .expect("valid origin");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.state.opts.client_id)
                .append_pair("redirect_uri", &self.state.opts.redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("state", state)
                .append_pair("code_challenge", code_challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(scope) = scope {
                q.append_pair("scope", scope);
            }
        }
        url.into()
    }

    /// Grants and issues tokens for a synthetic user without the browser round trip (for benchmarks
    /// and tests that are not about OAuth). Returns the same JSON body `/v2/o/token/` would.
    /// Every token, code and PKCE verifier this emulator issued or was shown (for leak checks).
    pub fn secrets_seen(&self) -> Vec<String> {
        self.state.with_auth(|auth| auth.secrets())
    }

    pub fn issue_tokens(
        &self,
        username: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let user = synthetic_user(username)
            .with_context(|| format!("unknown synthetic user {username}"))?;
        let scopes = oauth::requested_scopes(scope);
        anyhow::ensure!(!scopes.is_empty(), "no supported scope in {scope:?}");
        let body = self.state.with_auth(|auth| {
            auth.upsert_grant(user.patient_id);
            auth.mint(&self.state.opts, user, scopes)
        });
        Ok(serde_json::from_str(&body)?)
    }

    /// Stops accepting connections and lets open ones finish.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Idle keep-alive connections could hold a graceful shutdown open; the test is over anyway.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for CmsSandbox {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Shared server state. Locks are never held across an await.
pub(crate) struct AppState {
    pub opts: Options,
    pub origin: String,
    pub store: RwLock<data::Store>,
    pub auth: Mutex<oauth::AuthState>,
    pub ctl: Mutex<control::Control>,
    pub latency_ms: AtomicU64,
    /// `/v2/fhir/metadata`, with the fixture's sandbox URLs on this origin.
    pub metadata: String,
}

impl AppState {
    fn new(opts: Options, origin: String) -> anyhow::Result<AppState> {
        let store = data::Store::load(opts.eob_count)?;
        let metadata = json::J::parse(data::METADATA)?
            .to_json()
            .replace("https://sandbox.bluebutton.cms.gov", &origin);
        Ok(AppState {
            latency_ms: AtomicU64::new(opts.latency_ms),
            ctl: Mutex::new(control::Control::new(&opts)),
            auth: Mutex::new(oauth::AuthState::default()),
            store: RwLock::new(store),
            metadata,
            origin,
            opts,
        })
    }

    pub fn with_auth<T>(&self, f: impl FnOnce(&mut oauth::AuthState) -> T) -> T {
        f(&mut self.auth.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn with_ctl<T>(&self, f: impl FnOnce(&mut control::Control) -> T) -> T {
        f(&mut self.ctl.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn read_store(&self) -> std::sync::RwLockReadGuard<'_, data::Store> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_store(&self) -> std::sync::RwLockWriteGuard<'_, data::Store> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured artificial latency (tokio sleep, so concurrent requests overlap).
    pub async fn delay(&self) {
        let ms = self.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        // OAuth2 and OIDC.
        .route(
            "/v2/o/authorize",
            get(oauth::authorize_no_slash).post(oauth::authorize),
        )
        .route(
            "/v2/o/authorize/",
            get(oauth::authorize).post(oauth::authorize),
        )
        .route(
            "/v2/o/authorize/{auth_id}/",
            get(oauth::consent_form).post(oauth::consent_submit),
        )
        .route(
            "/mymedicare/login",
            get(oauth::login_form).post(oauth::login_submit),
        )
        .route(
            "/mymedicare/login/",
            get(oauth::login_form).post(oauth::login_submit),
        )
        .route("/v2/o/token", post(oauth::token))
        .route("/v2/o/token/", post(oauth::token))
        .route("/v2/o/revoke/", post(oauth::revoke))
        .route("/v2/o/revoke", post(oauth::revoke))
        .route("/v2/o/revoke_token/", post(oauth::revoke_token))
        .route("/v2/o/revoke_token", post(oauth::revoke_token))
        .route(
            "/v2/o/introspect/",
            get(oauth::introspect).post(oauth::introspect),
        )
        .route(
            "/v2/o/introspect",
            get(oauth::introspect).post(oauth::introspect),
        )
        .route(
            "/v2/o/expire_authenticated_user/{patient}/",
            post(oauth::expire_authenticated_user),
        )
        .route(
            "/v2/o/expire_authenticated_user/{patient}",
            post(oauth::expire_authenticated_user),
        )
        .route(
            "/v2/connect/userinfo",
            get(oauth::userinfo).post(oauth::userinfo),
        )
        .route(
            "/v2/connect/userinfo/",
            get(oauth::userinfo).post(oauth::userinfo),
        )
        .route(
            "/v2/connect/.well-known/openid-configuration",
            get(oauth::openid_configuration),
        )
        .route(
            "/.well-known/openid-configuration-v2",
            get(oauth::openid_configuration),
        )
        .route(
            "/v2/fhir/.well-known/smart-configuration",
            get(oauth::smart_configuration),
        )
        // FHIR.
        .route("/v2/fhir/metadata", fhir_get(fhir::metadata))
        .route("/v2/fhir/metadata/", fhir_get(fhir::metadata))
        .route("/v2/fhir/{resource}", fhir_get(fhir::search))
        .route("/v2/fhir/{resource}/", fhir_get(fhir::search))
        .route("/v2/fhir/{resource}/{id}", fhir_get(fhir::read))
        .route("/v2/fhir/{resource}/{id}/", fhir_get(fhir::read))
        // Test control.
        .nest("/_emulator", control::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            control::count_requests,
        ))
        .with_state(state)
}

/// FHIR routes are GET only; other methods get DRF's 405 body.
fn fhir_get<H, T>(handler: H) -> MethodRouter<Arc<AppState>>
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    get(handler).fallback(fhir::method_not_allowed)
}

async fn not_found() -> Response {
    detail_response(StatusCode::NOT_FOUND, "Not found.", CT_JSON)
}

pub(crate) const CT_JSON: &str = "application/json";
pub(crate) const CT_FHIR_JSON: &str = "application/fhir+json";

pub(crate) fn json_response(status: StatusCode, body: String, content_type: &str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static(CT_JSON)),
    );
    resp
}

/// DRF's error body `{"detail": "…"}`.
pub(crate) fn detail_response(status: StatusCode, detail: &str, content_type: &str) -> Response {
    json_response(
        status,
        serde_json::json!({ "detail": detail }).to_string(),
        content_type,
    )
}

pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(crate) fn redirect(status: StatusCode, location: &str) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
