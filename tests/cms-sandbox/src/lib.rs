//! CMS Blue Button 2.0 **sandbox emulator, v2 and v3**: OAuth2 (authorize with HTML login and consent
//! forms, token, refresh rotation, revoke, introspect, grant expiry), OIDC userinfo, the discovery
//! documents, and the FHIR R4 API (Patient, Coverage, ExplanationOfBenefit search and read, `metadata`;
//! v3's `$generate-insurance-card`) over the CMS sample data embedded from `fixtures/`. It follows the
//! BB2 web server's and BFD's current behaviour as summarised in the project's CMS reference (routes,
//! parameter rules, error bodies, paging links, rate-limit headers), on its own origin, with latency and
//! fault injection for client tests.
//!
//! Start it with [`CmsSandbox::start`] (or the `cms-sandbox` binary). The server binds loopback only in
//! the binary; everything is in memory and dies with the server.
//!
//! # Synthetic users
//! See [`SYNTHETIC_USERS`]: `BBUser29999` / `PW29999!` (patient `-20140000010000`, the site sample:
//! Patient, 4 Coverage, 10 PDE EOBs, grown by `eob_count`), `BBUser00001` / `PW00001!` (patient
//! `-19990000000001`, the 52 EOBs of the SDK's 6-page capture), `BBUser08325` / `PW08325!` (patient
//! `-20140000008325`, v3 `-30250000008325`, the web server's test patient with one carrier EOB), and
//! BB2's v3 pilot users `BBUser09001`–`BBUser09005` / `PW09001!`–`PW09005!` (v2 `-2014000000900N`, v3
//! `-3025000000900N`): BBUser29999's Patient, Parts A, B and D, and 30 claims cloned from the fixtures
//! (carrier, drug event, outpatient, interleaved), growable with `eob-count`. Only those six have a v3
//! id. A pilot claim has a number `900N000000 + index`: v2 id `<type>--<number>`, v3 id `<number>`, claim
//! identifier (`clm_id` / `pde_id`) `-<number>`.
//!
//! # v3 (`/v3/...`, beside v2)
//! The same handlers serve both versions; they take [`ApiVersion`] from the path. What differs:
//! - **Authorize** needs `scope` (else 400 `{"status_code": 400, "message": "Missing Required
//!   Parameter(s): scope"}`); granted = requested ∩ [`SCOPES_SUPPORTED`]. The login and consent forms
//!   are shared; the consent form posts to the authorize endpoint of the version that started the flow.
//! - **Tokens carry no version.** The token answer's `patient` is the beneficiary's id on the token
//!   endpoint's version, and left out when there is none (BB2 takes it from the crosswalk, which has no
//!   v3 id for v2-only beneficiaries). A token works on a version only if its beneficiary has an id
//!   there; otherwise FHIR answers 403 `{"detail": …}` and userinfo has no `patient` (`sub` stays the v2
//!   id). Grants are per beneficiary: revoking or deleting one ends every token, whichever endpoint
//!   minted it. A new authorization (its code exchanged) deletes every earlier token of the
//!   beneficiary for this app, on both versions, as BB2 does; the grant stays.
//! - **Ids**: Patient is the v3 id; Coverage `part-<x>-<v3 id without its minus>` (e.g.
//!   `part-a-30250000009001`); EOBs the number in the v2 id (`carrier-22639159481` → `22639159481`);
//!   every reference uses them. Both versions list the same final claims in the same order.
//! - **Paging**: `_count` 10 by default, at most 50. EOB searches page by `_offset` (else `startIndex`);
//!   links are `next` and `previous` on this origin (the request's path and parameters, minus
//!   `_offset`/`startIndex`, then `_offset=N`) and a `self` naming BFD's internal host
//!   (`https://prod-sbx.bfd.internal:7443/v3/fhir/…`), never to be followed. **`Bundle.total` is not the
//!   result size**: the request's `_count` while a next page exists, else the page's entry count.
//!   Beyond the end: an empty searchset. Patient and Coverage searches are not paged (one Bundle, true
//!   `total`); `startIndex` or `_offset` there is a 400.
//! - **Errors** that BFD would answer (bad parameters, unknown ids, injected faults of any status) are
//!   BFD's OperationOutcome `{"resourceType": "OperationOutcome", "issue": [{"severity": "error",
//!   "code": "processing", "diagnostics": …}]}` with BFD's status, as `application/fhir+json` (an
//!   injected 429 keeps `Retry-After`). BB2's own refusals (authentication, scope, crosswalk, grant,
//!   throttle, another patient's id in the query) keep their DRF `{"detail": …}` bodies.
//! - **EOB filters**: `_source` (comma list of `NCH`, `DDPS`, `FISS`, `MCS`, `VMS`, `CWF`; other values
//!   400), `_tag` (`[system|]code`, system `https://bluebutton.cms.gov/fhir/CodeSystem/Adjudication-Status`,
//!   codes `Adjudicated` and `PartiallyAdjudicated`), `_security:not` (`42CFRPart2`). Without `_tag` and
//!   `_source`, BB2's `_source=NCH,DDPS` applies. v3 EOBs carry `meta.source` (`DDPS` for drug events,
//!   `NCH` for other final claims), that `meta.tag`, and the pilots' fourth claim `meta.security`
//!   `http://terminology.hl7.org/CodeSystem/v3-ActCode|42CFRPart2`. Each pilot user also has four
//!   partially adjudicated claims (v3 only, after the finals; `outcome` `partial`): MCS and FISS versions
//!   of their first carrier and outpatient claims (v3 ids `<number> + 500000`, same claim identifier as
//!   the final), and an MCS and a FISS claim without a final yet (`900N900000`, `900N900001`).
//! - `GET /v3/fhir/Patient/$generate-insurance-card`: a C4DIC `collection` Bundle (Patient, each
//!   Coverage, the CMS Organization as payer; `urn:uuid` ids and references, C4DIC profiles). Needs a
//!   Patient read and a Coverage search scope. v2 has no such operation (its Patient read answers 404).
//! - `/v3/fhir/metadata` (v2's CapabilityStatement with v3 URLs and v3's EOB parameters) and
//!   `/v3/fhir/.well-known/smart-configuration` (v3 endpoints, `permission-v3`); no OIDC discovery.
//!
//! # Test control: `/_emulator/` (no auth; JSON bodies; every answer is JSON)
//! A `{patient}` may be a beneficiary's v2 or v3 id. Faults apply to both versions.
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /_emulator/state` | | patients (by v2 id) and their EOB counts (`v3_id`, `v3_eob_count` for those with a v3 id), fault settings, latency, throttle, `omit_total` |
//! | `POST /_emulator/patients/{patient}/eobs` | `{"count": N}` | appends N new EOBs (clones with new ids) whose `meta.lastUpdated` is newer than anything in the store; answers `{"added": [v2 ids], "eob_count": n, "last_updated": "…"}` |
//! | `POST /_emulator/patients/{patient}/eob-count` | `{"count": N}` | grows (clones, stable spread `meta.lastUpdated`) or truncates the patient's EOB list to N (partially adjudicated v3 claims stay) |
//! | `POST /_emulator/omit-total` | `{"omit": true}` | searches leave out `Bundle.total` (links stay), as the web server fixture does |
//! | `POST /_emulator/faults/next` | `{"count": K, "status": 503}` | the next K FHIR data requests fail with that status (429 carries `Retry-After`) |
//! | `POST /_emulator/faults/start-index` | `{"start_index": 20, "status": 502, "count": 1, "resource": "ExplanationOfBenefit"}` | the next `count` (default 1) searches at that `startIndex` (v3: `_offset`) (of that resource type, if given) fail |
//! | `POST /_emulator/faults/rate` | `{"rate": 0.2, "seed": 7, "retry_after_secs": 1}` | random fault rate (`seed` and `retry_after_secs` optional; a seed restarts the sequence) |
//! | `POST /_emulator/faults/clear` | | drops forced faults and sets the rate to 0 |
//! | `POST /_emulator/latency` | `{"ms": 50}` | delay before every FHIR and token response |
//! | `POST /_emulator/throttle` | `{"limit": 5, "window_secs": 60}` | per-access-token throttle (default 100000 per 1 s, BB2's `TOKEN_THROTTLE_RATE`) |
//! | `GET /_emulator/counters` | | `{"total": n, "by_path": {path: {status: n}}, "by_status": {status: n}}` for every request outside `/_emulator/` (paths as requested, so `/v3/...` apart) |
//! | `POST /_emulator/counters/reset` (or `DELETE /_emulator/counters`) | | zeroes the counters |
//! | `POST /_emulator/tokens/expire` | `{"patient": "-2014…"}` (optional) | access tokens (all, or that patient's) expire now, as after `token_ttl_secs` |
//! | `POST /_emulator/grants/{patient}/expire` | | the patient's grant expires (FHIR and refresh give 401), like `expire_authenticated_user` |
//! | `POST /_emulator/grants/{patient}/delete` | | the grant disappears but tokens stay (FHIR 403, refresh 403 `invalid_grant`), as when a beneficiary disconnects the app |
//!
//! Faults (random, forced next-K, forced start-index) apply to FHIR data requests (Patient, Coverage,
//! ExplanationOfBenefit search and read, the insurance card) after authentication and parameter
//! validation, where BB2 would call BFD. Random faults draw from a `StdRng` seeded with `Options::seed`,
//! so a given request sequence always fails the same way.

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
use axum::extract::FromRequestParts;
use axum::handler::Handler;
use axum::http::request::Parts;
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
/// v3 patient id of `BBUser08325`.
pub const BBUSER08325_PATIENT_V3: &str = "-30250000008325";
/// v2 patient id of `BBUser09001`, the first v3 pilot user (`BBUser09001`–`BBUser09005` follow the
/// pattern).
pub const BBUSER09001_PATIENT: &str = "-20140000009001";
/// v3 patient id of `BBUser09001`.
pub const BBUSER09001_PATIENT_V3: &str = "-30250000009001";

/// The API versions the emulator serves. Tokens carry none: a token works on a version when its
/// beneficiary has a FHIR id there ([`SyntheticUser::fhir_id`]), as BB2's crosswalk decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    V2,
    V3,
}

impl ApiVersion {
    pub const ALL: [ApiVersion; 2] = [ApiVersion::V2, ApiVersion::V3];

    /// The path prefix, `/v2` or `/v3`.
    pub fn prefix(self) -> &'static str {
        match self {
            ApiVersion::V2 => "/v2",
            ApiVersion::V3 => "/v3",
        }
    }
}

/// Handlers learn their version from the path they were routed by, so one handler serves both.
impl<S: Send + Sync> FromRequestParts<S> for ApiVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(if parts.uri.path().starts_with("/v3/") {
            ApiVersion::V3
        } else {
            ApiVersion::V2
        })
    }
}

/// A sandbox beneficiary who can log in on the emulator's login form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticUser {
    pub username: &'static str,
    pub password: &'static str,
    /// The v2 FHIR id (every user has one).
    pub patient_id: &'static str,
    /// The v3 FHIR id, for the beneficiaries v3 knows.
    pub v3_patient_id: Option<&'static str>,
    pub email: &'static str,
}

impl SyntheticUser {
    /// The beneficiary's FHIR id on `version`, if the crosswalk has one.
    pub fn fhir_id(&self, version: ApiVersion) -> Option<&'static str> {
        match version {
            ApiVersion::V2 => Some(self.patient_id),
            ApiVersion::V3 => self.v3_patient_id,
        }
    }
}

const fn user(
    username: &'static str,
    password: &'static str,
    patient_id: &'static str,
    v3_patient_id: Option<&'static str>,
    email: &'static str,
) -> SyntheticUser {
    SyntheticUser {
        username,
        password,
        patient_id,
        v3_patient_id,
        email,
    }
}

/// The beneficiaries the emulator knows: the password is `PW` + the username's digits + `!`.
/// `BBUser09001`–`BBUser09005` are BB2's v3 pilot users.
pub const SYNTHETIC_USERS: [SyntheticUser; 8] = [
    user(
        "BBUser29999",
        "PW29999!",
        BBUSER29999_PATIENT,
        None,
        "bbuser29999@example.com",
    ),
    user(
        "BBUser00001",
        "PW00001!",
        BBUSER00001_PATIENT,
        None,
        "bbuser00001@example.com",
    ),
    user(
        "BBUser08325",
        "PW08325!",
        BBUSER08325_PATIENT,
        Some(BBUSER08325_PATIENT_V3),
        "bbuser08325@example.com",
    ),
    user(
        "BBUser09001",
        "PW09001!",
        BBUSER09001_PATIENT,
        Some(BBUSER09001_PATIENT_V3),
        "bbuser09001@example.com",
    ),
    user(
        "BBUser09002",
        "PW09002!",
        "-20140000009002",
        Some("-30250000009002"),
        "bbuser09002@example.com",
    ),
    user(
        "BBUser09003",
        "PW09003!",
        "-20140000009003",
        Some("-30250000009003"),
        "bbuser09003@example.com",
    ),
    user(
        "BBUser09004",
        "PW09004!",
        "-20140000009004",
        Some("-30250000009004"),
        "bbuser09004@example.com",
    ),
    user(
        "BBUser09005",
        "PW09005!",
        "-20140000009005",
        Some("-30250000009005"),
        "bbuser09005@example.com",
    ),
];

/// The v2 id (the emulator's key for a beneficiary) of a v2 or v3 patient id; other strings unchanged.
pub(crate) fn v2_patient_id(id: &str) -> &str {
    SYNTHETIC_USERS
        .iter()
        .find(|u| u.v3_patient_id == Some(id))
        .map_or(id, |u| u.patient_id)
}

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
    /// `false` keeps a beneficiary's earlier tokens alive across new authorizations, which BB2 never
    /// does (default `true`): for load tests whose many sessions stand in for as many beneficiaries,
    /// when the emulator has only a handful of users.
    pub new_authorization_replaces_tokens: bool,
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
            new_authorization_replaces_tokens: true,
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

    /// The v2 authorize URL a client would build, for tests that act as the browser.
    pub fn authorize_url(&self, state: &str, code_challenge: &str, scope: Option<&str>) -> String {
        self.authorize_url_for(ApiVersion::V2, state, code_challenge, scope)
    }

    /// [`CmsSandbox::authorize_url`] on `version` (v3 answers 400 without a `scope`).
    pub fn authorize_url_for(
        &self,
        version: ApiVersion,
        state: &str,
        code_challenge: &str,
        scope: Option<&str>,
    ) -> String {
        let mut url = url::Url::parse(&format!(
            "{}{}/o/authorize/",
            self.state.origin,
            version.prefix()
        ))
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

    /// Every token, code and PKCE verifier this emulator issued or was shown (for leak checks).
    pub fn secrets_seen(&self) -> Vec<String> {
        self.state.with_auth(|auth| auth.secrets())
    }

    /// Grants and issues tokens for a synthetic user without the browser round trip (for benchmarks
    /// and tests that are not about OAuth). Returns the same JSON body `/v2/o/token/` would.
    pub fn issue_tokens(
        &self,
        username: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        self.issue_tokens_for(ApiVersion::V2, username, scope)
    }

    /// [`CmsSandbox::issue_tokens`] as `{version}/o/token/` answers (its `patient` is the version's id,
    /// absent when the beneficiary has none). No `scope` grants the default set on either version.
    pub fn issue_tokens_for(
        &self,
        version: ApiVersion,
        username: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let user = synthetic_user(username)
            .with_context(|| format!("unknown synthetic user {username}"))?;
        let scopes = oauth::requested_scopes(scope);
        anyhow::ensure!(!scopes.is_empty(), "no supported scope in {scope:?}");
        let body = self.state.with_auth(|auth| {
            auth.upsert_grant(user.patient_id);
            auth.mint(&self.state.opts, user, scopes, version)
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
    /// `/v3/fhir/metadata`: the same CapabilityStatement with v3 URLs and v3's EOB parameters.
    pub metadata_v3: String,
}

impl AppState {
    fn new(opts: Options, origin: String) -> anyhow::Result<AppState> {
        let store = data::Store::load(opts.eob_count)?;
        let metadata = json::J::parse(data::METADATA)?
            .to_json()
            .replace("https://sandbox.bluebutton.cms.gov", &origin);
        let metadata_v3 = fhir::metadata_v3(&metadata, &origin)?;
        Ok(AppState {
            latency_ms: AtomicU64::new(opts.latency_ms),
            ctl: Mutex::new(control::Control::new(&opts)),
            auth: Mutex::new(oauth::AuthState::default()),
            store: RwLock::new(store),
            metadata,
            metadata_v3,
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
    let mut app = Router::new()
        .route(
            "/mymedicare/login",
            get(oauth::login_form).post(oauth::login_submit),
        )
        .route(
            "/mymedicare/login/",
            get(oauth::login_form).post(oauth::login_submit),
        )
        // v2 only: the sandbox's grant-expiry hook and OIDC discovery (v3 has SMART discovery only).
        .route(
            "/v2/o/expire_authenticated_user/{patient}/",
            post(oauth::expire_authenticated_user),
        )
        .route(
            "/v2/o/expire_authenticated_user/{patient}",
            post(oauth::expire_authenticated_user),
        )
        .route(
            "/v2/connect/.well-known/openid-configuration",
            get(oauth::openid_configuration),
        )
        .route(
            "/.well-known/openid-configuration-v2",
            get(oauth::openid_configuration),
        );
    // v3 only: BB2 matches it before the Patient read; on v2 the read answers it (404).
    app = slash_optional(
        app,
        "/v3/fhir/Patient/$generate-insurance-card",
        fhir_get(fhir::insurance_card),
    );
    for version in ApiVersion::ALL {
        app = versioned_routes(app, version.prefix());
    }
    app
        // Test control.
        .nest("/_emulator", control::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            control::count_requests,
        ))
        .with_state(state)
}

type AppRouter = Router<Arc<AppState>>;

/// The routes both versions have, under `prefix`. Handlers take [`ApiVersion`] from the path.
fn versioned_routes(app: AppRouter, prefix: &str) -> AppRouter {
    let app = app
        // OAuth2 and OIDC.
        .route(
            &format!("{prefix}/o/authorize"),
            get(oauth::authorize_no_slash).post(oauth::authorize),
        )
        .route(
            &format!("{prefix}/o/authorize/"),
            get(oauth::authorize).post(oauth::authorize),
        )
        .route(
            &format!("{prefix}/o/authorize/{{auth_id}}/"),
            get(oauth::consent_form).post(oauth::consent_submit),
        )
        .route(
            &format!("{prefix}/fhir/.well-known/smart-configuration"),
            get(oauth::smart_configuration),
        );
    // Each with and without a trailing slash.
    let both: [(&str, MethodRouter<Arc<AppState>>); 8] = [
        ("/o/token", post(oauth::token)),
        ("/o/revoke", post(oauth::revoke)),
        ("/o/revoke_token", post(oauth::revoke_token)),
        (
            "/o/introspect",
            get(oauth::introspect).post(oauth::introspect),
        ),
        (
            "/connect/userinfo",
            get(oauth::userinfo).post(oauth::userinfo),
        ),
        // FHIR.
        ("/fhir/metadata", fhir_get(fhir::metadata)),
        ("/fhir/{resource}", fhir_get(fhir::search)),
        ("/fhir/{resource}/{id}", fhir_get(fhir::read)),
    ];
    both.into_iter().fold(app, |app, (path, method)| {
        slash_optional(app, &format!("{prefix}{path}"), method)
    })
}

/// Serves `path` with and without a trailing slash, as BB2's URL patterns do.
fn slash_optional(app: AppRouter, path: &str, method: MethodRouter<Arc<AppState>>) -> AppRouter {
    app.route(path, method.clone())
        .route(&format!("{path}/"), method)
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

/// The OperationOutcome BFD answers errors with; v3 passes it through with BFD's status.
pub(crate) fn operation_outcome(status: StatusCode, diagnostics: &str) -> Response {
    use json::J;
    let issue = J::obj(vec![
        ("severity", J::str("error")),
        ("code", J::str("processing")),
        ("diagnostics", J::str(diagnostics)),
    ]);
    let body = J::obj(vec![
        ("resourceType", J::str("OperationOutcome")),
        ("issue", J::Arr(vec![issue])),
    ]);
    json_response(status, body.to_json(), CT_FHIR_JSON)
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
