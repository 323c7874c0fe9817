//! Authorization end to end: the real components on `spin-host`, CMS played by `cms-sandbox`, the
//! beneficiary by a plain HTTP client filling in the emulator's forms.

use std::time::Duration;

use cms_sandbox::{BBUSER09001_PATIENT_V3, BBUSER29999_PATIENT};
use e2e::beneficiary::{self, authorize_at_cms, sign_in, Consent};
use e2e::{Stack, CLIENT_SECRET};
use serde_json::Value;

async fn fetch_patient(stack: &Stack, session: &str) -> reqwest::Response {
    beneficiary::client()
        .get(format!("{}/bluebutton/fhir/Patient", stack.base_url()))
        .bearer_auth(session)
        .send()
        .await
        .unwrap()
}

async fn problem(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    (status, body["detail"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn a_beneficiary_authorizes_and_the_session_reaches_their_data() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let callback = authorize_at_cms(&stack.base_url(), "BBUser29999", Consent::All)
        .await
        .unwrap();
    assert!(callback.as_str().starts_with(&stack.base_url()));
    let resp = beneficiary::client()
        .get(callback.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["patient"], BBUSER29999_PATIENT);
    assert!(body["scope"].as_str().unwrap().contains("patient/Patient"));
    assert!(body["expires_at"].as_str().unwrap().len() >= 20);
    let session = body["session"].as_str().unwrap().to_string();
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());

    let resp = fetch_patient(&stack, &session).await;
    assert_eq!(resp.status(), 200);
    let bundle: Value = resp.json().await.unwrap();
    assert_eq!(bundle["entry"][0]["resource"]["id"], BBUSER29999_PATIENT);

    // The callback cannot be replayed: its state is gone, and CMS is not asked again.
    let before = stack.cms_counters().await["total"].as_u64().unwrap();
    let (status, detail) = problem(beneficiary::client().get(callback).send().await.unwrap()).await;
    assert_eq!(status, 403, "a replayed state is refused as forged");
    assert!(detail.contains("state"));
    assert_eq!(
        stack.cms_counters().await["total"].as_u64().unwrap(),
        before
    );

    // At rest: the session only as a keyed hash; tokens, patient and scope sealed.
    let dump = stack.store_dump();
    assert!(!dump.contains(&session));
    for plain in [
        "access_token",
        "refresh_token",
        BBUSER29999_PATIENT,
        "patient/Patient",
    ] {
        assert!(!dump.contains(plain), "{plain} at rest");
    }
    assert!(dump.contains("session:"), "the session is there, sealed");
}

#[tokio::test]
async fn denied_consent_is_a_403_problem() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let callback = authorize_at_cms(&stack.base_url(), "BBUser29999", Consent::Deny)
        .await
        .unwrap();
    assert!(callback.query().unwrap().contains("error=access_denied"));
    let (status, detail) = problem(
        beneficiary::client()
            .get(callback.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(detail.contains("declined"));
    // The state was consumed: the same answer again is now an unknown state.
    let (status, _) = problem(beneficiary::client().get(callback).send().await.unwrap()).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn forged_states_are_refused_before_calling_cms() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    for (query, expected) in [
        ("code=abc&state=forged-state-that-was-never-issued", 403),
        ("code=abc", 400),
    ] {
        let (status, _) = problem(
            beneficiary::client()
                .get(format!("{}/bluebutton/callback?{query}", stack.base_url()))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, expected, "{query}");
    }
    assert_eq!(stack.cms_counters().await["total"], 0);
}

#[tokio::test]
async fn a_wrong_client_secret_is_reported_as_cms_refusing_us() {
    let stack = Stack::start(|_| {}, &[format!("cms_client_secret=not-{CLIENT_SECRET}")])
        .await
        .unwrap();
    let callback = authorize_at_cms(&stack.base_url(), "BBUser29999", Consent::All)
        .await
        .unwrap();
    let (status, detail) = problem(beneficiary::client().get(callback).send().await.unwrap()).await;
    assert_eq!(status, 502);
    assert!(detail.contains("invalid_client"), "{detail}");
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_and_concurrent_refreshes_keep_the_session() {
    // 62 s tokens: fresh at sign-in, due for refresh (< 60 s left) three seconds later.
    let stack = Stack::start(|o| o.token_ttl_secs = 62, &[]).await.unwrap();
    let signed_in = sign_in(&stack.base_url(), "BBUser29999").await.unwrap();
    let session = signed_in["session"].as_str().unwrap().to_string();
    assert_eq!(fetch_patient(&stack, &session).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = (0..6).map(|_| fetch_patient(&stack, &session));
    for resp in futures::future::join_all(requests).await {
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    let counters = stack.cms_counters().await;
    let refreshes = e2e::token_requests(&counters) - 1;
    assert!(
        refreshes >= 1,
        "no refresh happened: {}",
        counters["by_path"]["/v2/o/token/"]
    );
    // The session still works after the race settled.
    assert_eq!(fetch_patient(&stack, &session).await.status(), 200);
}

/// Whether CMS still holds `patient`'s data access grant for the app (the emulator answers 404 to
/// expiring a grant it does not have; expiring is harmless here, the test is over for that grant).
async fn grant_exists(stack: &Stack, patient: &str) -> bool {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/_emulator/grants/{patient}/expire",
            stack.cms.base_url()
        ))
        .send()
        .await
        .unwrap();
    resp.status() == 200
}

#[tokio::test]
async fn ending_a_session_revokes_its_tokens_and_with_grant_true_the_grant_at_cms() {
    ending_sessions("v2", "BBUser29999", BBUSER29999_PATIENT).await;
}

#[tokio::test]
async fn on_v3_ending_a_session_revokes_at_v3s_endpoints() {
    ending_sessions("v3", "BBUser09001", BBUSER09001_PATIENT_V3).await;
}

async fn ending_sessions(version: &str, user: &str, patient: &str) {
    let variables = [format!("cms_api_version={version}")];
    let stack = Stack::start(|_| {}, &variables).await.unwrap();
    let (revoke_token, revoke) = (
        format!("/{version}/o/revoke_token/"),
        format!("/{version}/o/revoke/"),
    );
    let end = |session: String, query: &'static str| {
        let url = format!("{}/bluebutton/session{query}", stack.base_url());
        async move {
            let resp = beneficiary::client()
                .delete(url)
                .bearer_auth(&session)
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    let revoked = |path: &String| {
        let stack = &stack;
        let path = path.clone();
        async move { stack.cms_counters().await["by_path"][&path]["200"].as_u64() }
    };

    // By default only the session's tokens: the beneficiary's grant stays at CMS.
    let session = stack.session(user).await;
    assert_eq!(end(session.clone(), "").await, 204);
    assert_eq!(revoked(&revoke_token).await, Some(1));
    assert_eq!(revoked(&revoke).await, None);
    let (status, _) = problem(fetch_patient(&stack, &session).await).await;
    assert_eq!(status, 401);
    assert!(!stack.store_dump().contains("session:"));
    assert!(grant_exists(&stack, patient).await);

    // `grant=true` ends the data access grant itself.
    let session = stack.session(user).await;
    assert_eq!(end(session.clone(), "?grant=maybe").await, 400);
    assert_eq!(end(session.clone(), "?grant=true").await, 204);
    assert_eq!(revoked(&revoke).await, Some(1));
    assert!(!grant_exists(&stack, patient).await);
    let (status, _) = problem(fetch_patient(&stack, &session).await).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_one_time_grant_ends_with_its_access_token_and_is_never_refreshed() {
    let stack = Stack::start(
        |o| {
            o.one_time_app = true;
            o.token_ttl_secs = 3;
        },
        &[],
    )
    .await
    .unwrap();
    let granted = sign_in(&stack.base_url(), "BBUser29999").await.unwrap();
    assert_eq!(granted["one_time"], true, "{granted}");
    assert!(granted["access_grant_expiration"].as_str().unwrap().len() >= 20);
    assert_eq!(granted["session_expires_at"], granted["expires_at"]);
    let session = granted["session"].as_str().unwrap().to_string();
    // Within its last minute (where a refreshable token would be renewed first) it still serves.
    assert_eq!(fetch_patient(&stack, &session).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (status, detail) = problem(fetch_patient(&stack, &session).await).await;
    assert_eq!(status, 401);
    assert!(detail.contains("authorize again"), "{detail}");
    assert_eq!(
        e2e::token_requests(&stack.cms_counters().await),
        1,
        "the code exchange only: no refresh was tried"
    );

    // A 13-month app's callback says so too.
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let granted = sign_in(&stack.base_url(), "BBUser29999").await.unwrap();
    assert_eq!(granted["one_time"], false);
    assert!(
        granted["session_expires_at"].as_str().unwrap() > granted["expires_at"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_grant_that_expired_at_cms_asks_the_caller_to_authorize_again() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let signed_in = sign_in(&stack.base_url(), "BBUser29999").await.unwrap();
    let session = signed_in["session"].as_str().unwrap().to_string();
    reqwest::Client::new()
        .post(format!(
            "{}/_emulator/grants/{BBUSER29999_PATIENT}/expire",
            stack.cms.base_url()
        ))
        .send()
        .await
        .unwrap();
    let (status, detail) = problem(fetch_patient(&stack, &session).await).await;
    assert_eq!(status, 401);
    assert!(detail.contains("authorize again"), "{detail}");
}
