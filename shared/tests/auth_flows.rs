//! The authorization rules end to end over the ports: authorize → callback → session → refresh → revoke,
//! against an in-memory CMS token endpoint that rotates refresh tokens like the real one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use futures::executor::block_on;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shared::http::routes::{Authorize, Callback, Component, FhirFetch};
use shared::ports::HttpError;
use shared::testing::{CaptureWriter, FakePlatform};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn platform() -> FakePlatform {
    FakePlatform::new()
        .with_var("cms_base_url", "https://cms.test")
        .with_var("cms_client_id", "client123")
        .with_var("cms_client_secret", "secret456")
        .with_var("redirect_uri", "http://127.0.0.1:3000/bluebutton/callback")
        .with_var("cms_scopes", "patient/Patient.rs")
        .with_var("token_key", KEY)
}

fn get(uri: &str) -> http::Request<Vec<u8>> {
    http::Request::get(uri).body(Vec::new()).unwrap()
}

fn form(req: &http::Request<Vec<u8>>) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.body())
        .into_owned()
        .collect()
}

/// Serves a request the way a component does: through `shared`'s one entry.
fn serve(
    p: &FakePlatform,
    component: impl Component,
    req: http::Request<Vec<u8>>,
) -> http::Response<Vec<u8>> {
    let (head, body) = req.into_parts();
    let writer = CaptureWriter::default();
    block_on(shared::http::routes::handle(
        component,
        p,
        head,
        body,
        writer.clone(),
    ));
    let captured = writer.0.borrow().clone();
    assert_eq!(captured.complete, Some(true));
    let mut resp = http::Response::new(captured.body);
    *resp.status_mut() = http::StatusCode::from_u16(captured.status).unwrap();
    for (name, value) in &captured.headers {
        resp.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    resp
}

fn json_body(resp: &http::Response<Vec<u8>>) -> Value {
    serde_json::from_slice(resp.body()).unwrap()
}

/// CMS's token endpoint: codes bound to a PKCE challenge, single-use rotating refresh tokens.
#[derive(Default)]
struct FakeCms {
    challenges: HashMap<String, String>,
    live_refresh: Vec<String>,
    issued: u32,
    fail_next: Vec<u16>,
    revoked: bool,
    /// Refresh-token grants asked for (granted or not).
    refreshes: u32,
    /// The beneficiary's claims, paged the way v3 pages them.
    eobs: usize,
    /// `next` links carry an opaque cursor instead of `_offset` (nothing to guess from).
    cursor_links: bool,
    /// EOB page requests served.
    eob_requests: u32,
    /// The next FHIR request answers this status with an OperationOutcome, as v3 passes BFD's on.
    outcome_next: Option<u16>,
}

fn token_json(cms: &mut FakeCms, ttl: i64) -> Value {
    cms.issued += 1;
    let refresh = format!("refresh-{}", cms.issued);
    cms.live_refresh.push(refresh.clone());
    json!({
        "access_token": format!("access-{}", cms.issued),
        "expires_in": ttl,
        "token_type": "Bearer",
        "scope": "patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.rs",
        "refresh_token": refresh,
        "patient": "-20140000010000",
        "access_grant_expiration": "2027-12-29T21:20:00Z",
    })
}

fn respond(status: u16, body: Value) -> Result<http::Response<Vec<u8>>, HttpError> {
    Ok(http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap())
}

fn install_cms(p: &FakePlatform, ttl: i64) -> Rc<RefCell<FakeCms>> {
    let cms = Rc::new(RefCell::new(FakeCms::default()));
    let state = cms.clone();
    p.on_send(move |req| {
        let mut cms = state.borrow_mut();
        if let Some(status) = cms.fail_next.pop() {
            return respond(status, json!({"detail": "injected"}));
        }
        // Both versions answer alike here; the v3 paging rules are in `eob_page`.
        let path = req.uri().path().replacen("/v3/", "/v2/", 1);
        if path.starts_with("/v2/fhir/") {
            // A one-entry Patient bundle for the live access token.
            let auth = req.headers()["authorization"].to_str().unwrap();
            if cms.revoked || auth != format!("Bearer access-{}", cms.issued) {
                return respond(
                    401,
                    json!({"detail": "Authentication credentials were not provided."}),
                );
            }
            if let Some(status) = cms.outcome_next.take() {
                let issue = json!({"severity": "error", "code": "processing",
                    "diagnostics": "Invalid _lastUpdated at https://bfd.internal:7443/v3/fhir"});
                return respond(status, json!({"resourceType": "OperationOutcome", "issue": [issue]}));
            }
            if path == "/v2/fhir/Patient/$generate-insurance-card" {
                let entry = |resource: Value| json!({"fullUrl": "urn:uuid:x", "resource": resource});
                return respond(
                    200,
                    json!({"resourceType": "Bundle", "type": "collection", "entry": [
                        entry(json!({"resourceType": "Patient", "id": "-30250000010000"})),
                        entry(json!({"resourceType": "Coverage", "id": "part-a--30250000010000"})),
                        entry(json!({"resourceType": "Organization", "id": "c4dic-cms"})),
                    ]}),
                );
            }
            if path == "/v2/fhir/ExplanationOfBenefit/" {
                cms.eob_requests += 1;
                return respond(200, eob_page(&cms, req.uri()));
            }
            return respond(
                200,
                json!({"resourceType": "Bundle", "type": "searchset", "total": 1,
                       "entry": [{"resource": {"resourceType": "Patient", "id": "-20140000010000"}}]}),
            );
        }
        let expected = format!("Basic {}", STANDARD.encode("client123:secret456"));
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap());
        if auth != Some(expected.as_str()) {
            return respond(401, json!({"error": "invalid_client"}));
        }
        let f = form(req);
        match (path.as_str(), f.get("grant_type").map(String::as_str)) {
            ("/v2/o/token/", Some("authorization_code")) => {
                let Some(challenge) = cms.challenges.remove(&f["code"]) else {
                    return respond(400, json!({"error": "invalid_grant"}));
                };
                let computed =
                    URL_SAFE_NO_PAD.encode(Sha256::digest(f["code_verifier"].as_bytes()));
                if computed != challenge
                    || f["redirect_uri"] != "http://127.0.0.1:3000/bluebutton/callback"
                {
                    return respond(400, json!({"error": "invalid_grant"}));
                }
                let body = token_json(&mut cms, ttl);
                respond(200, body)
            }
            ("/v2/o/token/", Some("refresh_token")) => {
                cms.refreshes += 1;
                let token = &f["refresh_token"];
                if cms.revoked || !cms.live_refresh.contains(token) {
                    return respond(400, json!({"error": "invalid_grant"}));
                }
                cms.live_refresh.retain(|t| t != token);
                let body = token_json(&mut cms, ttl);
                respond(200, body)
            }
            ("/v2/o/revoke/", _) => {
                cms.revoked = true;
                cms.live_refresh.clear();
                respond(200, json!({}))
            }
            _ => respond(404, json!({"detail": "Not found."})),
        }
    });
    cms
}

/// A v3 EOB page: by `_offset` (or the fake's cursor), with only a `next` link on CMS's origin, a
/// `self` link on BFD's internal host, and `total` as BFD and HAPI leave it: the page size while more
/// follow, the page's own count on the last.
fn eob_page(cms: &FakeCms, uri: &http::Uri) -> Value {
    let url = url::Url::parse(&uri.to_string()).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let count: usize = q.get("_count").map_or(10, |c| c.parse().unwrap());
    let offset: usize = match (q.get("_offset"), q.get("cursor")) {
        (Some(o), _) => o.parse().unwrap(),
        (None, Some(c)) => c.trim_start_matches("opaque").parse().unwrap(),
        (None, None) => 0,
    };
    let end = (offset + count).min(cms.eobs);
    let entries: Vec<Value> = (offset..end)
        .map(|i| {
            json!({"resource": {"resourceType": "ExplanationOfBenefit", "id": format!("{i}"),
                                      "patient": {"reference": "Patient/-20140000010000"}}})
        })
        .collect();
    let mut internal = url.clone();
    internal.set_host(Some("bfd.internal")).unwrap();
    let mut links = vec![json!({"relation": "self", "url": internal.as_str()})];
    if end < cms.eobs {
        let mut next = url.clone();
        let (param, value) = match cms.cursor_links {
            true => ("cursor", format!("opaque{end}")),
            false => ("_offset", end.to_string()),
        };
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .into_owned()
            .filter(|(name, _)| name != "_offset" && name != "cursor")
            .collect();
        next.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair(param, &value);
        links.push(json!({"relation": "next", "url": next.as_str()}));
    }
    let total = if end < cms.eobs { count } else { entries.len() };
    json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
           "entry": entries})
}

/// Runs authorize, lets the fake CMS issue a code for the challenge, and returns the callback query.
fn authorize(p: &FakePlatform, cms: &Rc<RefCell<FakeCms>>) -> String {
    let resp = serve(p, Authorize, get("/bluebutton/authorize"));
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap();
    let q: HashMap<String, String> = url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let code = format!("code-{}", q["state"].len() + cms.borrow().challenges.len());
    cms.borrow_mut()
        .challenges
        .insert(code.clone(), q["code_challenge"].clone());
    format!("/bluebutton/callback?code={code}&state={}", q["state"])
}

fn login(p: &FakePlatform, cms: &Rc<RefCell<FakeCms>>) -> String {
    let callback = authorize(p, cms);
    let resp = serve(p, Callback, get(&callback));
    assert_eq!(
        resp.status(),
        200,
        "{}",
        String::from_utf8_lossy(resp.body())
    );
    json_body(&resp)["session"].as_str().unwrap().to_string()
}

#[test]
fn callback_exchanges_the_code_with_pkce_and_returns_an_opaque_session() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let callback = authorize(&p, &cms);
    let resp = serve(&p, Callback, get(&callback));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = json_body(&resp);
    assert_eq!(body["patient"], "-20140000010000");
    assert_eq!(
        body["scope"],
        "patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.rs"
    );
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    let session = body["session"].as_str().unwrap();
    assert!(
        !body.to_string().contains("access-1"),
        "CMS tokens never leave"
    );

    let token_request = &p.sent.borrow()[0];
    assert_eq!(token_request.method(), http::Method::POST);
    let f = form(token_request);
    assert_eq!(f["grant_type"], "authorization_code");
    assert!(f.contains_key("code_verifier"));

    let at_rest = format!("{:?}", p.store.borrow());
    for secret in ["access-1", "refresh-1", session] {
        assert!(!at_rest.contains(secret), "{secret} stored in plain text");
    }
    // A replayed callback fails before reaching CMS.
    let calls = p.sent.borrow().len();
    let replay = serve(&p, Callback, get(&callback));
    assert_eq!(replay.status(), 403);
    assert_eq!(p.sent.borrow().len(), calls);
}

#[test]
fn denied_consent_is_403_and_consumes_the_state() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let callback = authorize(&p, &cms);
    let state = callback.split("state=").nth(1).unwrap();
    let resp = serve(
        &p,
        Callback,
        get(&format!(
            "/bluebutton/callback?error=access_denied&state={state}"
        )),
    );
    assert_eq!(resp.status(), 403);
    assert!(json_body(&resp)["detail"]
        .as_str()
        .unwrap()
        .contains("declined"));
    let left = p.stored_keys();
    assert!(
        left.iter().all(|k| k.starts_with("states:n")
            || k.starts_with("states:head")
            || k.starts_with("audit:")),
        "state consumed: {left:?}"
    );
    // The refusal is in the operator's view of the trail (no patient was named).
    let ctx = shared::auth::tokens::TokenContext::load(&p).unwrap();
    let vault = shared::store::Vault::new(&p, &ctx.key);
    let query = shared::audit::Query {
        count: 10,
        ..Default::default()
    };
    let trail = shared::audit::list(&vault, &query).unwrap();
    assert_eq!(trail.events.len(), 1);
    let event: serde_json::Value = serde_json::from_str(&trail.events[0]).unwrap();
    assert_eq!(event["outcome"], "4");
    assert!(event["outcomeDesc"].as_str().unwrap().contains("declined"));
    assert!(event.get("entity").is_none(), "no patient named");
    assert!(p.sent.borrow().is_empty());
}

#[test]
fn cms_refusals_and_outages_map_to_clear_gateway_errors() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    // A code CMS does not know: CMS's `error` is in the detail.
    let callback = authorize(&p, &cms);
    let forged = callback.replace("code=code-", "code=other-");
    let resp = serve(&p, Callback, get(&forged));
    assert_eq!(resp.status(), 502);
    assert!(json_body(&resp)["detail"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));

    // Transient 503s are retried.
    let callback = authorize(&p, &cms);
    cms.borrow_mut().fail_next = vec![503, 503];
    let resp = serve(&p, Callback, get(&callback));
    assert_eq!(resp.status(), 200);

    // A wrong client secret: CMS's 401 invalid_client becomes a 502 naming it.
    let p2 = platform().with_var("cms_client_secret", "wrong");
    let cms2 = install_cms(&p2, 3600);
    let callback = authorize(&p2, &cms2);
    let resp = serve(&p2, Callback, get(&callback));
    assert_eq!(resp.status(), 502);
    assert!(json_body(&resp)["detail"]
        .as_str()
        .unwrap()
        .contains("invalid_client"));
}

#[test]
fn a_bad_token_key_is_a_clear_500_before_any_state_is_made() {
    let p = platform().with_var("token_key", "too-short");
    let resp = serve(&p, Authorize, get("/bluebutton/authorize"));
    assert_eq!(resp.status(), 500);
    assert!(json_body(&resp)["detail"]
        .as_str()
        .unwrap()
        .contains("token_key"));
    assert!(p.stored_keys().is_empty(), "nothing stored");
}

#[test]
fn a_missing_client_secret_is_a_clear_500_without_burning_the_state() {
    let mut p = platform();
    let cms = install_cms(&p, 3600);
    let callback = authorize(&p, &cms);
    p.vars.remove("cms_client_secret");
    let resp = serve(&p, Callback, get(&callback));
    assert_eq!(resp.status(), 500);
    assert!(json_body(&resp)["detail"]
        .as_str()
        .unwrap()
        .contains("cms_client_secret"));
    let p = p.with_var("cms_client_secret", "secret456");
    let resp = serve(&p, Callback, get(&callback));
    assert_eq!(resp.status(), 200, "the state was still usable");
}

fn fhir(p: &FakePlatform, session: &str) -> http::Response<Vec<u8>> {
    let req = http::Request::get("/bluebutton/fhir/Patient?push=false")
        .header("spin-path-info", "/Patient")
        .header("Authorization", format!("Bearer {session}"))
        .body(Vec::new())
        .unwrap();
    serve(p, FhirFetch, req)
}

#[test]
fn tokens_are_refreshed_early_and_rotation_is_persisted() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    // Past the refresh margin: the next call refreshes first.
    p.advance(Duration::from_secs(3600 - 30));
    let resp = fhir(&p, &session);
    assert_eq!(
        resp.status(),
        200,
        "{}",
        String::from_utf8_lossy(resp.body())
    );
    assert_eq!(cms.borrow().refreshes, 1);
    // The rotated token set was stored: a later request uses access-2 without refreshing again.
    let resp = fhir(&p, &session);
    assert_eq!(resp.status(), 200);
    assert_eq!(cms.borrow().refreshes, 1);
}

#[test]
fn a_request_that_read_the_session_before_a_refresh_uses_the_new_tokens() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    p.advance(Duration::from_secs(3600 - 30));

    let ctx = shared::auth::tokens::TokenContext::load(&p).unwrap();
    let vault = shared::store::Vault::new(&p, &ctx.key);
    let audit = shared::audit::Audit::new(&vault, ctx.audit, shared::audit::Agent::App);
    // Two requests read the same session before either refreshes.
    let authenticate = || {
        shared::auth::session::authenticate(&vault, &ctx.limits, Some(&session), &audit).unwrap()
    };
    let (mut first, mut second) = (authenticate(), authenticate());
    let access = |s| {
        block_on(shared::auth::tokens::access_token(
            &vault, &ctx, s, None, &audit,
        ))
        .unwrap()
    };
    assert_eq!(access(&mut first), "access-2");
    assert_eq!(
        access(&mut second),
        "access-2",
        "the other read the store, not CMS"
    );
    assert_eq!(cms.borrow().refreshes, 1);
    assert_eq!(fhir(&p, &session).status(), 200);
}

#[test]
fn eight_concurrent_requests_after_expiry_refresh_once() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    p.advance(Duration::from_secs(3600 - 30));
    let requests = (0..8).map(|_| {
        let req = http::Request::get("/bluebutton/fhir/Patient?push=false")
            .header("spin-path-info", "/Patient")
            .header("Authorization", format!("Bearer {session}"))
            .body(Vec::new())
            .unwrap();
        let (head, body) = req.into_parts();
        let writer = CaptureWriter::default();
        let done = writer.clone();
        let p = &p;
        async move {
            shared::http::routes::handle(FhirFetch, p, head, body, writer).await;
            let status = done.0.borrow().status;
            status
        }
    });
    let statuses = block_on(futures::future::join_all(requests));
    assert_eq!(statuses, [200; 8]);
    assert_eq!(cms.borrow().refreshes, 1, "one refresh for all eight");
}

#[test]
fn revoke_ends_the_session_and_a_dead_grant_asks_to_authorize_again() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    let other = login(&p, &cms);
    let delete = http::Request::delete("/bluebutton/session?grant=true")
        .header("Authorization", format!("Bearer {session}"))
        .body(Vec::new())
        .unwrap();
    let resp = serve(&p, Callback, delete);
    assert_eq!(resp.status(), 204);
    assert!(cms.borrow().revoked);
    assert_eq!(fhir(&p, &session).status(), 401);
    // The grant is gone at CMS for the other session too: its refresh is refused → 401, authorize again.
    p.advance(Duration::from_secs(3600));
    let resp = fhir(&p, &other);
    assert_eq!(resp.status(), 401);
    assert!(json_body(&resp)["detail"]
        .as_str()
        .unwrap()
        .contains("authorize again"));
}

#[test]
fn another_patients_id_is_forbidden() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    let req = http::Request::get("/bluebutton/fhir/Patient?push=false&patient=-19990000000001")
        .header("spin-path-info", "/Patient")
        .header("Authorization", format!("Bearer {session}"))
        .body(Vec::new())
        .unwrap();
    assert_eq!(serve(&p, FhirFetch, req).status(), 403);
}

fn eob_ids(p: &FakePlatform, session: &str) -> Vec<String> {
    let req = http::Request::get("/bluebutton/fhir/ExplanationOfBenefit?push=false")
        .header("spin-path-info", "/ExplanationOfBenefit")
        .header("Authorization", format!("Bearer {session}"))
        .body(Vec::new())
        .unwrap();
    let resp = serve(p, FhirFetch, req);
    assert_eq!(
        resp.status(),
        200,
        "{}",
        String::from_utf8_lossy(resp.body())
    );
    let bundle = json_body(&resp);
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(bundle["total"], entries.len());
    entries
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn v3() -> FakePlatform {
    platform()
        .with_var("cms_api_version", "v3")
        .with_var("page_size", "5")
        .with_var("fetch_concurrency", "4")
}

#[test]
fn v3_pages_follow_next_not_total_and_offsets_are_fetched_ahead_exactly() {
    let p = v3();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    for eobs in [23, 25, 3, 0] {
        cms.borrow_mut().eobs = eobs;
        cms.borrow_mut().eob_requests = 0;
        let every: Vec<String> = (0..eobs).map(|i| i.to_string()).collect();
        assert_eq!(eob_ids(&p, &session), every, "{eobs}");
        let pages = eobs.div_ceil(5).max(1) as u32;
        // The guesses past the end cost at most concurrency − 1 requests.
        let requests = cms.borrow().eob_requests;
        assert!((pages..pages + 4).contains(&requests), "{eobs}: {requests}");
    }
    cms.borrow_mut().eobs = 23;
    // Every request went to /v3/ on CMS's own origin, never to BFD's host named by `self`.
    assert!(p.sent.borrow().iter().all(|r| {
        let uri = r.uri().to_string();
        uri.starts_with("https://cms.test/v3/")
    }));
}

#[test]
fn v3_cursor_links_are_followed_one_by_one() {
    let p = v3();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    cms.borrow_mut().eobs = 17;
    cms.borrow_mut().cursor_links = true;
    let expected: Vec<String> = (0..17).map(|i| i.to_string()).collect();
    assert_eq!(eob_ids(&p, &session), expected);
    assert_eq!(cms.borrow().eob_requests, 4);
}

#[test]
fn a_v3_operation_outcome_keeps_its_status_and_diagnostics_without_internal_hosts() {
    let p = v3();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    for status in [400, 404, 422] {
        cms.borrow_mut().outcome_next = Some(status);
        let resp = fhir(&p, &session);
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem = json_body(&resp);
        assert_eq!(problem["status"], status);
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("error: Invalid _lastUpdated at (a URL)"),
            "{detail}"
        );
        assert!(!detail.contains("bfd.internal"), "{detail}");
    }
    assert_eq!(fhir(&p, &session).status(), 200);
}

#[test]
fn a_session_works_only_on_the_api_version_that_issued_it() {
    let p = platform();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    // The operator moves the app to v3; the store (shared by the clone) keeps the v2 session.
    let moved = p.clone().with_var("cms_api_version", "v3");
    let resp = fhir(&moved, &session);
    assert_eq!(resp.status(), 401);
    let detail = json_body(&resp)["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("issued on Blue Button v2, and this app now uses v3"),
        "{detail}"
    );
    let fresh = login(&moved, &cms);
    assert_eq!(fhir(&moved, &fresh).status(), 200);
    // Back on v2, the v3 session is refused in turn; the v2 one was kept, and serves while CMS
    // honours its tokens (this fake keeps refresh tokens across sign-ins).
    assert_eq!(fhir(&p, &fresh).status(), 401);
    assert_eq!(fhir(&p, &session).status(), 200);
}

#[test]
fn the_insurance_card_is_a_v3_collection_and_v2_says_so() {
    let card = |p: &FakePlatform, session: &str| {
        let req = http::Request::get("/bluebutton/fhir/insurance-card?push=false")
            .header("spin-path-info", "/insurance-card")
            .header("Authorization", format!("Bearer {session}"))
            .body(Vec::new())
            .unwrap();
        serve(p, FhirFetch, req)
    };
    let p = v3();
    let cms = install_cms(&p, 3600);
    let session = login(&p, &cms);
    let resp = card(&p, &session);
    assert_eq!(
        resp.status(),
        200,
        "{}",
        String::from_utf8_lossy(resp.body())
    );
    let bundle = json_body(&resp);
    assert_eq!(bundle["type"], "collection");
    assert!(bundle.get("total").is_none(), "a collection has no total");
    let types: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient", "Coverage", "Organization"]);
    assert!(p.sent.borrow().iter().any(|r| r
        .uri()
        .to_string()
        .ends_with("/v3/fhir/Patient/$generate-insurance-card")));

    let v2 = platform();
    let cms = install_cms(&v2, 3600);
    let session = login(&v2, &cms);
    let resp = card(&v2, &session);
    assert_eq!(resp.status(), 404);
    let detail = json_body(&resp)["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("v3 operation, and this app uses v2"),
        "{detail}"
    );
}
