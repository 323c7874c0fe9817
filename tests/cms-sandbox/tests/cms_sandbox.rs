//! Integration tests of the CMS Blue Button 2.0 sandbox emulator (v2, then v3), driven over HTTP with
//! reqwest.

use cms_sandbox::{
    parse_forms, s256_challenge, ApiVersion, CmsSandbox, Options, BBUSER00001_PATIENT,
    BBUSER08325_PATIENT, BBUSER08325_PATIENT_V3, BBUSER09001_PATIENT, BBUSER09001_PATIENT_V3,
    BBUSER29999_PATIENT,
};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "test-client";
const CLIENT_SECRET: &str = "test-secret";
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
const STATE: &str = "state-0123456789abcdef";
const VERIFIER: &str = "verifier-0123456789-0123456789-0123456789-0123456789";

fn opts() -> Options {
    Options {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uri: REDIRECT_URI.into(),
        ..Options::default()
    }
}

async fn start(o: Options) -> CmsSandbox {
    CmsSandbox::start("127.0.0.1:0".parse().unwrap(), o)
        .await
        .expect("emulator starts")
}

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(LOCATION)
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_string()
}

fn query_of(url: &str) -> BTreeMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn authorize_params(challenge: &str) -> Vec<(&'static str, String)> {
    vec![
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", REDIRECT_URI.into()),
        ("response_type", "code".into()),
        ("state", STATE.into()),
        ("code_challenge", challenge.into()),
        ("code_challenge_method", "S256".into()),
    ]
}

fn authorize_url(base: &str, params: &[(&str, String)]) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    format!("{base}/v2/o/authorize/?{q}")
}

/// Acts as the beneficiary's browser: authorize, login form, consent form. Returns the final redirect.
async fn consent_redirect(
    sb: &CmsSandbox,
    c: &Client,
    params: &[(&str, String)],
    username: &str,
    password: &str,
    share: &str,
    button: &str,
) -> String {
    let url = authorize_url(&sb.base_url(), params);
    consent_redirect_from(sb, c, &url, username, password, share, button).await
}

/// [`consent_redirect`] from a given authorize URL (any version).
async fn consent_redirect_from(
    sb: &CmsSandbox,
    c: &Client,
    authorize: &str,
    username: &str,
    password: &str,
    share: &str,
    button: &str,
) -> String {
    let base = sb.base_url();
    let resp = c.get(authorize).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FOUND,
        "authorize redirects to login"
    );
    let login_url = format!("{base}{}", location(&resp));
    let html = c
        .get(&login_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = parse_forms(&html).remove(0);
    assert_eq!(form.method, "post");
    let mut fields = form.fields.clone();
    fields.push(("username".into(), username.into()));
    fields.push(("password".into(), password.into()));
    let resp = c
        .post(format!("{base}{}", form.action))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND, "login accepted");
    let consent_url = format!("{base}{}", location(&resp));
    let html = c
        .get(&consent_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = parse_forms(&html).remove(0);
    let mut fields: Vec<(String, String)> = form
        .fields
        .iter()
        .filter(|(k, _)| k != "share")
        .cloned()
        .collect();
    fields.push(("share".into(), share.into()));
    let (name, value) = form
        .buttons
        .iter()
        .find(|(n, _)| n == button)
        .expect("button exists")
        .clone();
    fields.push((name, value));
    let resp = c
        .post(format!("{base}{}", form.action))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND, "consent redirects back");
    location(&resp)
}

async fn code_for(
    sb: &CmsSandbox,
    c: &Client,
    user: &str,
    scope: Option<&str>,
    share: &str,
) -> String {
    let mut params = authorize_params(&s256_challenge(VERIFIER));
    if let Some(s) = scope {
        params.push(("scope", s.into()));
    }
    let password = format!("PW{}!", &user[6..]);
    let back = consent_redirect(sb, c, &params, user, &password, share, "allow").await;
    let q = query_of(&back);
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    q["code"].clone()
}

async fn exchange(sb: &CmsSandbox, c: &Client, code: &str, verifier: &str) -> reqwest::Response {
    exchange_at(sb, c, ApiVersion::V2, code, verifier).await
}

async fn exchange_at(
    sb: &CmsSandbox,
    c: &Client,
    version: ApiVersion,
    code: &str,
    verifier: &str,
) -> reqwest::Response {
    c.post(format!("{}{}/o/token/", sb.base_url(), version.prefix()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
}

async fn login(sb: &CmsSandbox, c: &Client, user: &str, scope: Option<&str>, share: &str) -> Value {
    let code = code_for(sb, c, user, scope, share).await;
    let resp = exchange(sb, c, &code, VERIFIER).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn refresh(
    sb: &CmsSandbox,
    c: &Client,
    refresh_token: &str,
    scope: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", CLIENT_ID),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    c.post(format!("{}/v2/o/token/", sb.base_url()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn get(c: &Client, url: &str, token: &str) -> reqwest::Response {
    c.get(url).bearer_auth(token).send().await.unwrap()
}

async fn get_json(c: &Client, url: &str, token: &str) -> (StatusCode, HeaderMap, Value) {
    let resp = get(c, url, token).await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn access(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_string()
}

fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| x["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn link(bundle: &Value, rel: &str) -> Option<String> {
    bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == rel)
        .map(|l| l["url"].as_str().unwrap().to_string())
}

fn relations(bundle: &Value) -> Vec<String> {
    bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["relation"].as_str().unwrap().to_string())
        .collect()
}

async fn control(c: &Client, sb: &CmsSandbox, path: &str, body: Value) -> Value {
    let resp = c
        .post(format!("{}/_emulator{path}", sb.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "control {path}");
    resp.json().await.unwrap()
}

// ---------------------------------------------------------------------------------------------------
// OAuth

#[tokio::test]
async fn full_oauth_flow_through_the_html_forms() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();

    // The SDKs' slash-less URL is a 301 to the slash form, query kept.
    let params = authorize_params(&s256_challenge(VERIFIER));
    let no_slash = authorize_url(&base, &params).replace("/authorize/?", "/authorize?");
    let resp = c.get(&no_slash).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        format!("{base}{}", location(&resp)),
        authorize_url(&base, &params),
        "301 keeps the query"
    );

    // A wrong password shows the form again with an error.
    let resp = c.get(authorize_url(&base, &params)).send().await.unwrap();
    let login_url = format!("{base}{}", location(&resp));
    let html = c
        .get(&login_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = parse_forms(&html).remove(0);
    assert_eq!(form.action, "/mymedicare/login");
    let mut fields = form.fields.clone();
    fields.extend([
        ("username".to_string(), "BBUser29999".to_string()),
        ("password".into(), "wrong".into()),
    ]);
    let resp = c
        .post(format!("{base}{}", form.action))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Invalid username or password."));
    assert_eq!(
        parse_forms(&html)[0].field("auth_id"),
        form.field("auth_id")
    );

    let tokens = login(&sb, &c, "BBUser29999", None, "all").await;
    let keys: HashSet<&str> = tokens
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "access_token",
            "expires_in",
            "token_type",
            "scope",
            "refresh_token",
            "patient",
            "access_grant_expiration"
        ])
    );
    assert_eq!(access(&tokens).len(), 30);
    assert!(access(&tokens).chars().all(|ch| ch.is_ascii_alphanumeric()));
    assert_eq!(tokens["refresh_token"].as_str().unwrap().len(), 30);
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["patient"], BBUSER29999_PATIENT);
    assert!(tokens["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|s| s == "patient/ExplanationOfBenefit.rs"));
    // Consent + 13 months, formatted %Y-%m-%dT%H:%M:%SZ.
    let exp = tokens["access_grant_expiration"].as_str().unwrap();
    let parsed = time::PrimitiveDateTime::parse(
        exp,
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"),
    )
    .expect("access_grant_expiration format")
    .assume_utc();
    let days = (parsed - time::OffsetDateTime::now_utc()).whole_days();
    assert!(
        (390..=398).contains(&days),
        "13 months ahead, got {days} days"
    );

    let (status, _, patient) = get_json(
        &c,
        &format!("{base}/v2/fhir/Patient/{BBUSER29999_PATIENT}"),
        &access(&tokens),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patient["id"], BBUSER29999_PATIENT);
    let (status, _, info) =
        get_json(&c, &format!("{base}/v2/connect/userinfo"), &access(&tokens)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["sub"], BBUSER29999_PATIENT);
    assert_eq!(info["patient"], BBUSER29999_PATIENT);
    assert_eq!(info["given_name"], "John");
    assert_eq!(info["family_name"], "Doe");
}

#[tokio::test]
async fn codes_are_single_use_and_bound_to_the_redirect_uri() {
    let sb = start(opts()).await;
    let c = client();
    let code = code_for(&sb, &c, "BBUser00001", None, "all").await;
    let resp = c
        .post(format!("{}/v2/o/token/", sb.base_url()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );

    let first = exchange(&sb, &c, &code, VERIFIER).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.json::<Value>().await.unwrap()["patient"],
        BBUSER00001_PATIENT
    );
    let again = exchange(&sb, &c, &code, VERIFIER).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({"error": "invalid_grant"})
    );
}

#[tokio::test]
async fn authorize_rejects_bad_requests_before_login() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let good = authorize_params(&s256_challenge(VERIFIER));
    let with = |k: &str, v: &str| -> Vec<(&'static str, String)> {
        good.iter()
            .map(|(pk, pv)| (*pk, if *pk == k { v.to_string() } else { pv.clone() }))
            .collect()
    };
    let without = |drop: &[&str]| -> Vec<(&'static str, String)> {
        good.iter()
            .filter(|(k, _)| !drop.contains(k))
            .cloned()
            .collect()
    };
    let check = |params: Vec<(&'static str, String)>, status: StatusCode, body: Value| {
        let c = c.clone();
        let url = authorize_url(&base, &params);
        async move {
            let resp = c.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), status, "{url}");
            assert_eq!(resp.json::<Value>().await.unwrap(), body, "{url}");
        }
    };

    check(
        with("state", "too-short"),
        StatusCode::BAD_REQUEST,
        json!({"status_code": 400, "message": "State parameter should have a minimum of 16 characters"}),
    )
    .await;
    check(
        without(&["code_challenge", "state"]),
        StatusCode::BAD_REQUEST,
        json!({"status_code": 400, "message": "Missing Required Parameter(s): code_challenge, state"}),
    )
    .await;
    check(
        without(&["code_challenge_method"]),
        StatusCode::BAD_REQUEST,
        json!({"status_code": 400, "message": "Missing Required Parameter(s): code_challenge_method"}),
    )
    .await;
    check(
        with("code_challenge_method", "plain"),
        StatusCode::BAD_REQUEST,
        json!({"status_code": 400, "error": "invalid_request", "error_description": "code_challenge_method must be S256"}),
    )
    .await;
    check(
        with("redirect_uri", "http://127.0.0.1:9/callback/"),
        StatusCode::BAD_REQUEST,
        json!({"status_code": 400, "error": "invalid_request", "error_description": "Mismatching redirect URI."}),
    )
    .await;
    check(
        without(&["redirect_uri"]),
        StatusCode::BAD_REQUEST,
        json!({"status_code": 400, "error": "invalid_request", "error_description": "Missing redirect URI."}),
    )
    .await;
    check(
        without(&["response_type"]),
        StatusCode::BAD_REQUEST,
        json!({"status_code": 400, "error": "invalid_request", "error_description": "Missing response_type parameter."}),
    )
    .await;
    let resp = c
        .get(authorize_url(&base, &with("response_type", "token")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "unsupported_response_type"
    );

    // Unknown or missing client: BB2's HTML error page with 401.
    for params in [with("client_id", "nobody"), without(&["client_id"])] {
        let resp = c.get(authorize_url(&base, &params)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    let mut leaky = good.clone();
    leaky.push(("client_secret", CLIENT_SECRET.into()));
    let resp = c.get(authorize_url(&base, &leaky)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.text().await.unwrap(),
        "Illegal query parameter [client_secret] detected"
    );

    // None of that started a login: nothing was counted on the login page.
    let counters: Value = c
        .get(format!("{base}/_emulator/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(counters["by_path"].get("/mymedicare/login").is_none());
}

#[tokio::test]
async fn authorize_accepts_post_and_requires_state_in_the_body() {
    let sb = start(opts()).await;
    let c = client();
    let url = format!("{}/v2/o/authorize/", sb.base_url());
    let params = authorize_params(&s256_challenge(VERIFIER));
    let resp = c.post(&url).form(&params).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert!(location(&resp).starts_with("/mymedicare/login?auth_id="));
    let no_state: Vec<_> = params
        .iter()
        .filter(|(k, _)| *k != "state")
        .cloned()
        .collect();
    let resp = c.post(&url).form(&no_state).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"status_code": 401, "message": "State required in POST body."})
    );
}

#[tokio::test]
async fn deny_redirects_with_access_denied_and_state() {
    let sb = start(opts()).await;
    let c = client();
    let params = authorize_params(&s256_challenge(VERIFIER));
    let back = consent_redirect(&sb, &c, &params, "BBUser29999", "PW29999!", "all", "deny").await;
    assert!(back.starts_with(REDIRECT_URI));
    let q = query_of(&back);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    assert!(!q.contains_key("code"));
}

#[tokio::test]
async fn withholding_demographics_drops_patient_and_profile_scopes() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let tokens = login(&sb, &c, "BBUser29999", None, "no-demographics").await;
    let scopes: Vec<&str> = tokens["scope"].as_str().unwrap().split(' ').collect();
    assert!(
        scopes
            .iter()
            .all(|s| *s != "profile" && !s.starts_with("patient/Patient.")),
        "{scopes:?}"
    );
    assert!(scopes.contains(&"patient/Coverage.rs"));
    let t = access(&tokens);
    let (status, _, body) = get_json(&c, &format!("{base}/v2/fhir/Patient/"), &t).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"detail": "You do not have permission to perform this action."})
    );
    let (status, _, _) = get_json(&c, &format!("{base}/v2/connect/userinfo"), &t).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = get_json(&c, &format!("{base}/v2/fhir/Coverage/"), &t).await;
    assert_eq!(status, StatusCode::OK);

    // Asking only for demographic scopes and then withholding them leaves nothing: denied.
    let mut params = authorize_params(&s256_challenge(VERIFIER));
    params.push(("scope", "profile patient/Patient.read".into()));
    let back = consent_redirect(
        &sb,
        &c,
        &params,
        "BBUser29999",
        "PW29999!",
        "no-demographics",
        "allow",
    )
    .await;
    assert_eq!(
        query_of(&back).get("error").map(String::as_str),
        Some("access_denied")
    );
}

#[tokio::test]
async fn pkce_is_verified_at_the_token_endpoint() {
    let sb = start(opts()).await;
    let c = client();
    let code = code_for(&sb, &c, "BBUser29999", None, "all").await;

    let wrong = exchange(&sb, &c, &code, &"x".repeat(43)).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        wrong.json::<Value>().await.unwrap(),
        json!({"error": "invalid_grant", "error_description": "code_challenge does not match"})
    );
    let short = exchange(&sb, &c, &code, "short-verifier").await;
    assert_eq!(short.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        short.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
    let long = exchange(&sb, &c, &code, &"y".repeat(129)).await;
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    // Failed attempts do not burn the code.
    let ok = exchange(&sb, &c, &code, VERIFIER).await;
    assert_eq!(ok.status(), StatusCode::OK);

    // A padded challenge (the Python SDK's) is accepted.
    let padded = format!("{}=", s256_challenge(VERIFIER));
    let back = consent_redirect(
        &sb,
        &c,
        &authorize_params(&padded),
        "BBUser29999",
        "PW29999!",
        "all",
        "allow",
    )
    .await;
    let code = query_of(&back)["code"].clone();
    assert_eq!(
        exchange(&sb, &c, &code, VERIFIER).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn token_endpoint_client_authentication() {
    let sb = start(opts()).await;
    let c = client();
    let url = format!("{}/v2/o/token/", sb.base_url());
    let code = code_for(&sb, &c, "BBUser29999", None, "all").await;

    let resp = c
        .post(&url)
        .basic_auth(CLIENT_ID, Some("wrong"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "invalid_client"})
    );

    let resp = c
        .post(&url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("client_id", "someone-else"),
            ("code", &code),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Multipart body with the credentials in form fields, and no slash on the path.
    // (reqwest is built without its multipart feature, so the body is written by hand.)
    let boundary = "----cms-sandbox-test-boundary";
    let mut body = String::new();
    for (k, v) in [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", VERIFIER),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let resp = c
        .post(url.trim_end_matches('/'))
        .header(
            CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let tokens: Value = resp.json().await.unwrap();

    let resp = c
        .post(&url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "form-field credentials work");

    let resp = c
        .post(&url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "unsupported_grant_type"})
    );

    // Outside "local", the client id must look like CMS's.
    let strict = start(Options {
        require_cms_client_id_format: true,
        ..opts()
    })
    .await;
    let resp = c
        .post(format!("{}/v2/o/token/", strict.base_url()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "authorization_code"), ("code", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
}

#[tokio::test]
async fn refresh_tokens_rotate_and_are_single_use() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let first = login(&sb, &c, "BBUser29999", None, "all").await;
    let rt1 = first["refresh_token"].as_str().unwrap();

    let resp = refresh(&sb, &c, rt1, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let second: Value = resp.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(second["scope"], first["scope"]);
    assert_eq!(second["patient"], BBUSER29999_PATIENT);
    assert_eq!(
        second["access_grant_expiration"],
        first["access_grant_expiration"]
    );

    // The rotated-out access token is dead; the new one works.
    let eob = format!("{base}/v2/fhir/ExplanationOfBenefit/");
    assert_eq!(
        get(&c, &eob, &access(&first)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &eob, &access(&second)).await.status(),
        StatusCode::OK
    );

    let reuse = refresh(&sb, &c, rt1, None).await;
    assert_eq!(reuse.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        reuse.json::<Value>().await.unwrap(),
        json!({"error": "invalid_grant"})
    );

    // Narrowing works, widening does not.
    let rt2 = second["refresh_token"].as_str().unwrap();
    let resp = refresh(&sb, &c, rt2, Some("patient/Coverage.rs")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let narrow: Value = resp.json().await.unwrap();
    assert_eq!(narrow["scope"], "patient/Coverage.rs");
    assert_eq!(
        get(&c, &eob, &access(&narrow)).await.status(),
        StatusCode::FORBIDDEN
    );
    let rt3 = narrow["refresh_token"].as_str().unwrap();
    let resp = refresh(&sb, &c, rt3, Some("patient/ExplanationOfBenefit.rs")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_scope"
    );

    let unknown = refresh(&sb, &c, "not-a-token", None).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.json::<Value>().await.unwrap(),
        json!({"status_code": 400, "error": "invalid_request", "error_description": "Missing refresh token parameter"})
    );
}

#[tokio::test]
async fn revoke_kills_every_token_of_the_grant() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let a = login(&sb, &c, "BBUser29999", None, "all").await;
    let b = login(&sb, &c, "BBUser29999", None, "all").await;
    let other = login(&sb, &c, "BBUser00001", None, "all").await;
    // The second authorization already replaced the first one's tokens.
    let eob = format!("{base}/v2/fhir/ExplanationOfBenefit/");
    assert_eq!(
        get(&c, &eob, &access(&a)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&c, &eob, &access(&b)).await.status(), StatusCode::OK);

    let resp = c
        .post(format!("{base}/v2/o/revoke/"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", access(&b).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Unknown tokens are 200 as well.
    let resp = c
        .post(format!("{base}/v2/o/revoke/"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", "nothing")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    for t in [&a, &b] {
        let resp = get(&c, &eob, &access(t)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"detail": "Authentication credentials were not provided."})
        );
        let r = refresh(&sb, &c, t["refresh_token"].as_str().unwrap(), None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    }
    assert_eq!(
        get(&c, &eob, &access(&other)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn revoke_token_and_introspect() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = login(&sb, &c, "BBUser08325", None, "all").await;

    let resp = c
        .post(format!("{base}/v2/o/introspect/"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", access(&t).as_str())])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["client_id"], CLIENT_ID);
    assert_eq!(body["username"], "BBUser08325");
    assert_eq!(body["scope"], t["scope"]);
    let exp = body["exp"].as_i64().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now + 3590..=now + 3600).contains(&exp));

    let resp = c
        .post(format!("{base}/v2/o/introspect/"))
        .form(&[("token", access(&t).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "introspection needs client credentials"
    );

    let resp = c
        .post(format!("{base}/v2/o/revoke_token/"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("token", access(&t).as_str()),
            ("token_type_hint", "access_token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = c
        .post(format!("{base}/v2/o/introspect/"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", access(&t).as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"active": false}));
    assert_eq!(
        get(&c, &format!("{base}/v2/fhir/Patient/"), &access(&t))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Only that token went: the refresh token still works.
    assert_eq!(
        refresh(&sb, &c, t["refresh_token"].as_str().unwrap(), None)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn expired_or_deleted_grants() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = login(&sb, &c, "BBUser29999", None, "all").await;

    let resp = c
        .post(format!(
            "{base}/v2/o/expire_authenticated_user/{BBUSER29999_PATIENT}/"
        ))
        .basic_auth(CLIENT_ID, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = c
        .post(format!(
            "{base}/v2/o/expire_authenticated_user/{BBUSER29999_PATIENT}/"
        ))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get(
        &c,
        &format!("{base}/v2/fhir/ExplanationOfBenefit/"),
        &access(&t),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .starts_with("User access has timed out."));
    let r = refresh(&sb, &c, t["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status_code"], 401);
    assert_eq!(body["error"], "invalid_grant");

    // A grant that is gone while tokens remain: 403 on FHIR and on refresh.
    let t = login(&sb, &c, "BBUser00001", None, "all").await;
    control(
        &c,
        &sb,
        &format!("/grants/{BBUSER00001_PATIENT}/delete"),
        json!({}),
    )
    .await;
    let (status, _, body) = get_json(&c, &format!("{base}/v2/fhir/Coverage/"), &access(&t)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["detail"],
        "You do not have permission to perform this action."
    );
    let r = refresh(&sb, &c, t["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status_code"], 403);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with("User access cannot be found."));
}

#[tokio::test]
async fn access_tokens_expire_after_the_ttl() {
    let sb = start(Options {
        token_ttl_secs: 1,
        ..opts()
    })
    .await;
    let c = client();
    let t = login(&sb, &c, "BBUser29999", None, "all").await;
    assert_eq!(t["expires_in"], 1);
    let url = format!("{}/v2/fhir/Coverage/", sb.base_url());
    assert_eq!(get(&c, &url, &access(&t)).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&c, &url, &access(&t)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = refresh(&sb, &c, t["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "refresh tokens outlive access tokens"
    );

    // The control endpoint does the same without waiting.
    let fresh: Value = r.json().await.unwrap();
    control(
        &c,
        &sb,
        "/tokens/expire",
        json!({"patient": BBUSER29999_PATIENT}),
    )
    .await;
    assert_eq!(
        get(&c, &url, &access(&fresh)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn discovery_documents_are_on_the_emulators_origin() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    for path in [
        "/v2/connect/.well-known/openid-configuration",
        "/.well-known/openid-configuration-v2",
    ] {
        let doc: Value = c
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["issuer"], base);
        assert_eq!(
            doc["authorization_endpoint"],
            format!("{base}/v2/o/authorize")
        );
        assert_eq!(doc["token_endpoint"], format!("{base}/v2/o/token/"));
        assert_eq!(
            doc["revocation_endpoint"],
            format!("{base}/v2/o/revoke_token")
        );
        assert_eq!(
            doc["userinfo_endpoint"],
            format!("{base}/v2/connect/userinfo")
        );
        assert_eq!(doc["fhir_metadata_uri"], format!("{base}/v2/fhir/metadata"));
        assert_eq!(
            doc["grant_types_supported"],
            json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(doc["response_types_supported"], json!(["code", "token"]));
    }
    let smart: Value = c
        .get(format!("{base}/v2/fhir/.well-known/smart-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(smart["code_challenge_methods_supported"], json!(["S256"]));
    assert!(smart["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("permission-v2")));
    assert_eq!(smart["token_endpoint"], format!("{base}/v2/o/token/"));

    // Metadata is public, FHIR JSON, and points here.
    let resp = c
        .get(format!("{base}/v2/fhir/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/fhir+json");
    let text = resp.text().await.unwrap();
    assert!(!text.contains("sandbox.bluebutton.cms.gov"));
    let meta: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(meta["fhirVersion"], "4.0.1");
    assert_eq!(meta["implementation"]["url"], format!("{base}/v2/fhir"));
    assert!(
        text.starts_with("{\"resourceType\":\"CapabilityStatement\""),
        "fixture key order kept"
    );
}

// ---------------------------------------------------------------------------------------------------
// FHIR

#[tokio::test]
async fn fhir_requests_need_a_bearer_token_in_the_header() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let url = format!("{base}/v2/fhir/ExplanationOfBenefit/");
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
    assert!(resp.headers().contains_key("x-ratelimit-limit"));
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"detail": "Authentication credentials were not provided."})
    );
    assert_eq!(
        get(&c, &url, "bogus-token").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());
    let resp = c
        .get(format!("{url}?access_token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = get(&c, &format!("{url}?access_token={t}"), &t).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "refused even with a header"
    );
    assert!(resp.json::<Value>().await.unwrap()["detail"].is_string());

    let resp = c.post(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, body) = get_json(&c, &format!("{base}/v2/fhir/Claim/"), &t).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"detail": "Not found."}))
    );
}

#[tokio::test]
async fn content_negotiation_and_rate_limit_headers() {
    let sb = start(opts()).await;
    let c = client();
    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());
    let url = format!("{}/v2/fhir/Coverage", sb.base_url());
    for (accept, expected) in [
        (None, Some("application/fhir+json")),
        (Some("*/*"), Some("application/fhir+json")),
        (Some("application/fhir+json"), Some("application/fhir+json")),
        (Some("application/json"), Some("application/json")),
        (Some("application/xml"), None),
        (Some("text/html"), None),
    ] {
        let mut req = c.get(&url).bearer_auth(&t);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        let resp = req.send().await.unwrap();
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(resp.headers().contains_key(h), "{h} for {accept:?}");
        }
        match expected {
            Some(ct) => {
                assert_eq!(resp.status(), StatusCode::OK, "{accept:?}");
                assert_eq!(resp.headers()[CONTENT_TYPE], ct);
            }
            None => assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE, "{accept:?}"),
        }
    }
    let resp = get(&c, &url, &t).await;
    let limit: u64 = resp.headers()["x-ratelimit-limit"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let remaining: u64 = resp.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let reset: f64 = resp.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(limit, 100_000);
    assert!(remaining < limit);
    assert!((0.0..=1.0).contains(&reset));

    // A tight throttle: the third request in the window is a 429 with Retry-After.
    control(&c, &sb, "/throttle", json!({"limit": 2, "window_secs": 60})).await;
    assert_eq!(
        get(&c, &url, &t).await.headers()["x-ratelimit-remaining"],
        "1"
    );
    assert_eq!(
        get(&c, &url, &t).await.headers()["x-ratelimit-remaining"],
        "0"
    );
    let resp = get(&c, &url, &t).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&wait));
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"detail": format!("Request was throttled. Expected available in {wait} seconds.")})
    );
}

#[tokio::test]
async fn eob_search_matches_the_sdk_capture_page_by_page() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = access(&sb.issue_tokens("BBUser00001", None).unwrap());
    let pages = [
        include_str!("../fixtures/sdk_eob_search_page0.min.json"),
        include_str!("../fixtures/sdk_eob_search_page1.min.json"),
        include_str!("../fixtures/sdk_eob_search_page2.min.json"),
        include_str!("../fixtures/sdk_eob_search_page3.min.json"),
        include_str!("../fixtures/sdk_eob_search_page4.min.json"),
        include_str!("../fixtures/sdk_eob_search_page5.min.json"),
    ];
    for (i, page) in pages.iter().enumerate() {
        let fixture: Value = serde_json::from_str(page).unwrap();
        let url = format!(
            "{base}/v2/fhir/ExplanationOfBenefit/?patient={BBUSER00001_PATIENT}&_count=10&startIndex={}",
            i * 10
        );
        let (status, _, got) = get_json(&c, &url, &t).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["resourceType"], "Bundle");
        assert_eq!(got["type"], "searchset");
        assert_eq!(got["total"], 52);
        assert!(got["id"].is_string() && got["meta"]["lastUpdated"].is_string());
        let want_links: Vec<Value> = fixture["link"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                json!({"relation": l["relation"], "url": l["url"].as_str().unwrap().replace("https://sandbox.bluebutton.cms.gov", &base)})
            })
            .collect();
        assert_eq!(got["link"], Value::Array(want_links), "links of page {i}");
        // Entries are the captured resources themselves, with only `resource`.
        assert_eq!(got["entry"], fixture["entry"], "entries of page {i}");
    }
}

#[tokio::test]
async fn eob_search_parameters() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = access(&sb.issue_tokens("BBUser00001", None).unwrap());
    let eob = format!("{base}/v2/fhir/ExplanationOfBenefit");
    let search = |q: &str| {
        let (c, t, url) = (c.clone(), t.clone(), format!("{eob}?{q}"));
        async move { get_json(&c, &url, &t).await }
    };
    let total = |v: &Value| v["total"].as_u64().unwrap();

    // patient must be the token's patient, bare.
    let (s, _, body) = search(&format!("patient={BBUSER00001_PATIENT}")).await;
    assert_eq!((s, total(&body)), (StatusCode::OK, 52));
    for other in [
        format!("Patient/{BBUSER00001_PATIENT}"),
        BBUSER29999_PATIENT.to_string(),
    ] {
        let (s, _, body) = search(&format!("patient={}", other.replace('/', "%2F"))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{other}");
        assert_eq!(
            body,
            json!({"detail": "You do not have permission to perform this action."})
        );
    }

    // type: comma list, case-insensitive, optional system prefix.
    let (_, _, carrier) = search("type=carrier").await;
    let (_, _, outpatient) = search("type=OUTPATIENT").await;
    assert_eq!(total(&carrier) + total(&outpatient), 52);
    assert!(total(&carrier) > 0 && total(&outpatient) > 0);
    assert!(entry_ids(&carrier)
        .iter()
        .all(|id| id.starts_with("carrier-")));
    let (_, _, both) = search(
        "type=carrier,https://bluebutton.cms.gov/resources/codesystem/eob-type%7Coutpatient",
    )
    .await;
    assert_eq!(total(&both), 52);
    let (_, _, pde) = search("type=pde").await;
    assert_eq!(total(&pde), 0);
    let (s, _, body) = search("type=claim").await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "the type parameter value is not valid"})
        )
    );
    assert!(link(&carrier, "self").unwrap().contains("type=carrier"));
    assert!(link(&carrier, "first").unwrap().contains("&type=carrier"));

    // service-date: repeatable lt/le/gt/ge on the claim's through date.
    let (_, _, y2000) = search("service-date=ge2000-01-01&service-date=lt2001-01-01").await;
    let (_, _, before) = search("service-date=lt2000-01-01").await;
    let (_, _, after) = search("service-date=ge2001-01-01").await;
    assert_eq!(total(&y2000) + total(&before) + total(&after), 52);
    assert!(total(&y2000) > 0 && total(&before) > 0 && total(&after) > 0);
    let (_, _, day) = search("service-date=ge2000-08-01&service-date=le2000-08-01").await;
    let (_, _, gt_day) = search("service-date=gt2000-08-01&service-date=lt2000-09-01").await;
    assert!(entry_ids(&day).contains(&"carrier--10344810963".to_string()));
    assert!(!entry_ids(&gt_day).contains(&"carrier--10344810963".to_string()));
    let (s, _, body) = search("service-date=2000-01-01").await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "the service-date operator is not valid"})
        )
    );

    // _lastUpdated: the SDK capture's EOBs were updated 2021-06-07 between 21:51 and 21:54 (-04:00).
    let (_, _, early) = search("_lastUpdated=lt2021-06-07T21:52:00-04:00").await;
    let (_, _, late) = search("_lastUpdated=ge2021-06-07T21:52:00-04:00").await;
    assert_eq!(total(&early) + total(&late), 52);
    assert!(total(&early) > 0 && total(&late) > 0);
    let (_, _, none) = search("_lastUpdated=gt2021-06-08&_lastUpdated=lt2030-01-01").await;
    assert_eq!(total(&none), 0);
    let (s, _, body) = search("_lastUpdated=2021-01-01").await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "the _lastUpdated operator is not valid"})
        )
    );
    let (s, _, body) = search("_lastUpdated=gtyesterday").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("An error occurred contacting the upstream server:"));

    // _count 0..=50, default 10, alias count; startIndex offsets.
    let (_, _, default) = search("").await;
    assert_eq!(entry_ids(&default).len(), 10);
    let (_, _, fifty) = search("_count=50").await;
    assert_eq!(entry_ids(&fifty).len(), 50);
    let (_, _, alias) = search("count=5&_count=20").await;
    assert_eq!(entry_ids(&alias).len(), 5, "count wins over _count");
    let (s, _, body) = search("_count=51").await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "value must be at most 50"})
        )
    );
    let (s, _, _) = search("_count=ten").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = search("startIndex=x").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, _, tail) = search("startIndex=48&_count=10").await;
    assert_eq!(
        entry_ids(&tail),
        entry_ids(&fifty)[48..]
            .to_vec()
            .into_iter()
            .chain(entry_ids(&search("startIndex=50").await.2))
            .collect::<Vec<_>>()
    );
    assert_eq!(relations(&tail), ["first", "previous", "last", "self"]);
    assert!(link(&tail, "previous").unwrap().contains("startIndex=38&"));
    assert!(link(&tail, "last").unwrap().contains("startIndex=50&"));
    let (_, _, zero) = search("_count=0").await;
    assert_eq!(
        (total(&zero), relations(&zero)),
        (52, vec!["self".to_string()])
    );
    assert!(zero.get("entry").is_none());

    // Unknown parameters are dropped silently, from the results and from the links.
    let (s, _, odd) = search("foo=bar&_sort=date&_count=10").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(entry_ids(&odd), entry_ids(&default));
    assert!(!link(&odd, "self").unwrap().contains("foo"));

    // Search results are in a stable order.
    assert_eq!(entry_ids(&search("_count=50").await.2), entry_ids(&fifty));

    // An empty result has only `self` and no `entry`.
    assert_eq!(relations(&none), ["self"]);
    assert!(none.get("entry").is_none());
}

#[tokio::test]
async fn coverage_and_patient_search_rules() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());

    let (s, _, cov) = get_json(
        &c,
        &format!("{base}/v2/fhir/Coverage/?beneficiary=Patient%2F{BBUSER29999_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cov["total"], 4);
    assert_eq!(
        entry_ids(&cov),
        [
            "part-a--20140000010000",
            "part-b--20140000010000",
            "part-c--20140000010000",
            "part-d--20140000010000"
        ]
    );
    assert_eq!(relations(&cov), ["first", "last", "self"]);
    assert_eq!(
        link(&cov, "first").unwrap(),
        format!("{base}/v2/fhir/Coverage?_format=application%2Fjson%2Bfhir&startIndex=0&_count=10&beneficiary=Patient%2F-20140000010000")
    );
    assert_eq!(
        link(&cov, "self").unwrap(),
        format!("{base}/v2/fhir/Coverage/?_count=10&_format=application%2Fjson%2Bfhir&beneficiary=Patient%2F-20140000010000&startIndex=0")
    );
    let (s, _, _) = get_json(
        &c,
        &format!("{base}/v2/fhir/Coverage/?beneficiary={BBUSER29999_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "beneficiary only has to contain the id");
    let (s, _, body) = get_json(
        &c,
        &format!("{base}/v2/fhir/Coverage/?beneficiary=Patient%2F{BBUSER00001_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(
        (s, body["detail"].as_str()),
        (
            StatusCode::FORBIDDEN,
            Some("You do not have permission to perform this action.")
        )
    );

    let (s, _, pat) = get_json(&c, &format!("{base}/v2/fhir/Patient/"), &t).await;
    assert_eq!((s, pat["total"].as_u64()), (StatusCode::OK, Some(1)));
    assert_eq!(entry_ids(&pat), [BBUSER29999_PATIENT]);
    assert!(link(&pat, "first")
        .unwrap()
        .ends_with(&format!("&_id={BBUSER29999_PATIENT}")));
    let (s, _, _) = get_json(
        &c,
        &format!("{base}/v2/fhir/Patient?_id={BBUSER29999_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = get_json(
        &c,
        &format!("{base}/v2/fhir/Patient?_id={BBUSER08325_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(
        (s, body),
        (StatusCode::NOT_FOUND, json!({"detail": "Not found."}))
    );
}

#[tokio::test]
async fn reads_are_limited_to_the_tokens_patient_and_scopes() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());
    let read = |url: String| {
        let (c, t) = (c.clone(), t.clone());
        async move { get_json(&c, &url, &t).await }
    };
    let (s, h, eob) = read(format!(
        "{base}/v2/fhir/ExplanationOfBenefit/pde--1010252550"
    ))
    .await;
    assert_eq!(
        (s, eob["id"].as_str()),
        (StatusCode::OK, Some("pde--1010252550"))
    );
    assert_eq!(h[CONTENT_TYPE], "application/fhir+json");
    assert!(h.contains_key("x-ratelimit-remaining"));
    let (s, _, _) = read(format!(
        "{base}/v2/fhir/ExplanationOfBenefit/pde--1010252550/"
    ))
    .await;
    assert_eq!(s, StatusCode::OK, "trailing slash optional");
    let (s, _, cov) = read(format!("{base}/v2/fhir/Coverage/part-d--20140000010000")).await;
    assert_eq!(
        (s, cov["resourceType"].as_str()),
        (StatusCode::OK, Some("Coverage"))
    );
    for other in [
        format!("{base}/v2/fhir/ExplanationOfBenefit/carrier--10344810963"),
        format!("{base}/v2/fhir/Patient/{BBUSER00001_PATIENT}"),
        format!("{base}/v2/fhir/Coverage/part-a--19990000000001"),
        format!("{base}/v2/fhir/ExplanationOfBenefit/pde--404"),
    ] {
        let (s, _, body) = read(other.clone()).await;
        assert_eq!(
            (s, body),
            (StatusCode::NOT_FOUND, json!({"detail": "Not found."})),
            "{other}"
        );
    }

    // Search-only and read-only scopes.
    let search_only = access(
        &sb.issue_tokens("BBUser29999", Some("patient/ExplanationOfBenefit.s"))
            .unwrap(),
    );
    let eob_read = format!("{base}/v2/fhir/ExplanationOfBenefit/pde--1010252550");
    let eob_search = format!("{base}/v2/fhir/ExplanationOfBenefit/");
    assert_eq!(
        get(&c, &eob_read, &search_only).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&c, &eob_search, &search_only).await.status(),
        StatusCode::OK
    );
    let read_only = access(
        &sb.issue_tokens("BBUser29999", Some("patient/ExplanationOfBenefit.r"))
            .unwrap(),
    );
    assert_eq!(
        get(&c, &eob_read, &read_only).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &eob_search, &read_only).await.status(),
        StatusCode::FORBIDDEN
    );
    let legacy = access(
        &sb.issue_tokens("BBUser29999", Some("patient/ExplanationOfBenefit.read"))
            .unwrap(),
    );
    assert_eq!(get(&c, &eob_read, &legacy).await.status(), StatusCode::OK);
    assert_eq!(get(&c, &eob_search, &legacy).await.status(), StatusCode::OK);
    assert_eq!(
        get(&c, &format!("{base}/v2/fhir/Coverage/"), &legacy)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn paging_a_large_patient_by_following_next() {
    let sb = start(Options {
        eob_count: Some(1000),
        ..opts()
    })
    .await;
    let c = client();
    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());
    let mut url = Some(format!(
        "{}/v2/fhir/ExplanationOfBenefit/?_count=50",
        sb.base_url()
    ));
    let mut ids = Vec::new();
    let mut pages = 0;
    let started = Instant::now();
    while let Some(u) = url {
        let (s, _, page) = get_json(&c, &u, &t).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(page["total"], 1000);
        assert!(
            u.starts_with(&sb.base_url()),
            "links stay on the emulator: {u}"
        );
        ids.extend(entry_ids(&page));
        url = link(&page, "next");
        pages += 1;
        assert!(pages <= 20, "paging must end");
    }
    assert_eq!(pages, 20);
    assert_eq!(ids.len(), 1000);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        1000,
        "every id distinct"
    );
    assert!(ids.contains(&"pde--990".to_string()));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_5000_eob_patient_serves_a_50_entry_page_quickly() {
    let sb = start(Options {
        eob_count: Some(5000),
        ..opts()
    })
    .await;
    let c = client();
    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());
    let url = format!(
        "{}/v2/fhir/ExplanationOfBenefit/?_count=50&startIndex=4950&_lastUpdated=ge2021-01-01",
        sb.base_url()
    );
    let mut best = Duration::MAX;
    let mut body = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let resp = get(&c, &url, &t).await;
        assert_eq!(resp.status(), StatusCode::OK);
        body = resp.bytes().await.unwrap().to_vec();
        best = best.min(started.elapsed());
    }
    // The server's work is a filter over 5000 rows and a concatenation; the bound leaves room for
    // an unoptimised build on a busy machine.
    assert!(best < Duration::from_millis(150), "best of 5: {best:?}");
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["total"], 5000);
    assert_eq!(entry_ids(&page).len(), 50);
    assert_eq!(
        entry_ids(&page).last().map(String::as_str),
        Some("pde--4990")
    );
}

#[tokio::test]
async fn emulator_control_additions_total_omission_and_counters() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = access(&sb.issue_tokens("BBUser00001", None).unwrap());
    let eob = format!("{base}/v2/fhir/ExplanationOfBenefit/");

    let (_, _, before) = get_json(&c, &format!("{eob}?_count=50&startIndex=50"), &t).await;
    let cursor = before["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let added = control(
        &c,
        &sb,
        &format!("/patients/{BBUSER00001_PATIENT}/eobs"),
        json!({"count": 3}),
    )
    .await;
    let new_ids: Vec<String> = serde_json::from_value(added["added"].clone()).unwrap();
    assert_eq!(new_ids.len(), 3);
    assert_eq!(added["eob_count"], 55);

    // Incremental sync: only the additions are newer than the earlier bundle's lastUpdated.
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("_lastUpdated", &format!("gt{cursor}"))
        .finish();
    let (_, _, delta) = get_json(&c, &format!("{eob}?{q}"), &t).await;
    assert_eq!(delta["total"], 3);
    assert_eq!(entry_ids(&delta), new_ids);
    let (_, _, all_now) = get_json(&c, &format!("{eob}?_count=50&startIndex=50"), &t).await;
    assert_eq!(all_now["total"], 55);
    assert_eq!(entry_ids(&all_now)[2..], new_ids[..], "additions come last");
    let (s, _, one) = get_json(
        &c,
        &format!("{base}/v2/fhir/ExplanationOfBenefit/{}", new_ids[0]),
        &t,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        one["patient"]["reference"],
        format!("Patient/{BBUSER00001_PATIENT}")
    );

    control(
        &c,
        &sb,
        &format!("/patients/{BBUSER00001_PATIENT}/eob-count"),
        json!({"count": 12}),
    )
    .await;
    let (_, _, trimmed) = get_json(&c, &eob, &t).await;
    assert_eq!(trimmed["total"], 12);

    // Without `total`, `next` still leads through every page.
    control(&c, &sb, "/omit-total", json!({"omit": true})).await;
    let (_, _, first) = get_json(&c, &eob, &t).await;
    assert!(first.get("total").is_none());
    let next = link(&first, "next").expect("next without total");
    let (_, _, second) = get_json(&c, &next, &t).await;
    assert_eq!(entry_ids(&second).len(), 2);
    assert!(link(&second, "next").is_none());
    control(&c, &sb, "/omit-total", json!({"omit": false})).await;

    let resp = c
        .post(format!("{base}/_emulator/patients/nobody/eobs"))
        .json(&json!({"count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Counters by path and status; reset.
    control(&c, &sb, "/counters/reset", json!({})).await;
    for _ in 0..3 {
        get(&c, &eob, &t).await;
    }
    get(&c, &eob, "bad-token").await;
    get(&c, &format!("{base}/v2/fhir/Patient"), &t).await;
    let counters: Value = c
        .get(format!("{base}/_emulator/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        counters["by_path"]["/v2/fhir/ExplanationOfBenefit/"],
        json!({"200": 3, "401": 1})
    );
    assert_eq!(counters["by_path"]["/v2/fhir/Patient"], json!({"200": 1}));
    assert_eq!(counters["by_status"]["200"], 4);
    assert_eq!(counters["total"], 5);
    let resp = c
        .delete(format!("{base}/_emulator/counters"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let counters: Value = c
        .get(format!("{base}/_emulator/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["total"], 0);

    let state: Value = c
        .get(format!("{base}/_emulator/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["patients"][BBUSER00001_PATIENT]["eob_count"], 12);
    assert_eq!(state["base_url"], base);
}

#[tokio::test]
async fn forced_faults() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = access(&sb.issue_tokens("BBUser00001", None).unwrap());
    let eob = format!("{base}/v2/fhir/ExplanationOfBenefit/");

    control(&c, &sb, "/faults/next", json!({"count": 2, "status": 503})).await;
    assert_eq!(
        get(&c, &eob, &t).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let resp = get(
        &c,
        &format!("{base}/v2/fhir/Patient/{BBUSER00001_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "reads fail too"
    );
    assert_eq!(get(&c, &eob, &t).await.status(), StatusCode::OK);

    control(&c, &sb, "/faults/next", json!({"count": 1, "status": 429})).await;
    let resp = get(&c, &eob, &t).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[RETRY_AFTER], "1");

    control(&c, &sb, "/faults/next", json!({"count": 1, "status": 502})).await;
    let resp = get(&c, &eob, &t).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"detail": "A failure occurred contacting the upstream server"})
    );

    control(
        &c,
        &sb,
        "/faults/start-index",
        json!({"start_index": 20, "status": 500, "count": 1, "resource": "ExplanationOfBenefit"}),
    )
    .await;
    assert_eq!(
        get(&c, &format!("{eob}?startIndex=10"), &t).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &format!("{base}/v2/fhir/Coverage/?startIndex=20"), &t)
            .await
            .status(),
        StatusCode::OK,
        "other resource types are spared"
    );
    assert_eq!(
        get(&c, &format!("{eob}?startIndex=20"), &t).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&c, &format!("{eob}?startIndex=20"), &t).await.status(),
        StatusCode::OK
    );

    // Metadata and OAuth are never failed by injection.
    control(&c, &sb, "/faults/rate", json!({"rate": 1.0})).await;
    assert_eq!(
        c.get(format!("{base}/v2/fhir/metadata"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_ne!(get(&c, &eob, &t).await.status(), StatusCode::OK);
    control(&c, &sb, "/faults/clear", json!({})).await;
    assert_eq!(get(&c, &eob, &t).await.status(), StatusCode::OK);

    let resp = c
        .post(format!("{base}/_emulator/faults/next"))
        .json(&json!({"count": 1, "status": 200}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

async fn fault_sequence(seed: u64, n: usize) -> Vec<(u16, Option<String>)> {
    let sb = start(Options {
        fault_rate: 0.2,
        seed,
        retry_after_secs: 3,
        ..opts()
    })
    .await;
    let c = client();
    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());
    let url = format!("{}/v2/fhir/Coverage/", sb.base_url());
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = get(&c, &url, &t).await;
        let retry = resp
            .headers()
            .get(RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        out.push((resp.status().as_u16(), retry));
    }
    out
}

#[tokio::test]
async fn random_faults_follow_the_rate_and_the_seed() {
    let seq = fault_sequence(42, 500).await;
    let failures: Vec<&(u16, Option<String>)> = seq.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        (65..=135).contains(&failures.len()),
        "about 20% of 500 should fail, got {}",
        failures.len()
    );
    for (status, retry) in &failures {
        assert!(
            [500, 502, 503, 429].contains(status),
            "unexpected status {status}"
        );
        if *status == 429 {
            assert_eq!(retry.as_deref(), Some("3"), "429 carries Retry-After");
        }
    }
    let kinds: HashSet<u16> = failures.iter().map(|(s, _)| *s).collect();
    assert_eq!(kinds.len(), 4, "all four fault kinds occur: {kinds:?}");
    // The same seed gives the same sequence; another seed another one.
    assert_eq!(fault_sequence(42, 100).await, seq[..100].to_vec());
    assert_ne!(fault_sequence(43, 100).await, seq[..100].to_vec());
}

#[tokio::test]
async fn latency_delays_fhir_and_token_responses_concurrently() {
    let sb = start(Options {
        latency_ms: 300,
        ..opts()
    })
    .await;
    let c = client();
    let t = access(&sb.issue_tokens("BBUser29999", None).unwrap());
    let url = format!("{}/v2/fhir/Coverage/", sb.base_url());
    let started = Instant::now();
    assert_eq!(get(&c, &url, &t).await.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    let all = futures::future::join_all((0..8).map(|_| get(&c, &url, &t))).await;
    assert!(all.iter().all(|r| r.status() == StatusCode::OK));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    let started = Instant::now();
    let resp = c
        .post(format!("{}/v2/o/token/", sb.base_url()))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(started.elapsed() >= Duration::from_millis(300));

    control(&c, &sb, "/latency", json!({"ms": 0})).await;
    let started = Instant::now();
    get(&c, &url, &t).await;
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn the_binary_announces_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cms-sandbox"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            REDIRECT_URI,
            "--token-ttl",
            "120",
            "--eob-count",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("announces within 30 s")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("listening on http://")
        .expect("exact prefix");
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let base = format!("http://{addr}");
    let doc: Value = client()
        .get(format!(
            "{base}/v2/connect/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], base);
    let state: Value = client()
        .get(format!("{base}/_emulator/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["patients"][BBUSER29999_PATIENT]["eob_count"], 30);
    assert_eq!(state["token_ttl_secs"], 120);
    child.kill().await.unwrap();

    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_cms-sandbox"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--client-id",
            "a",
            "--client-secret",
            "b",
            "--redirect-uri",
            "http://x/cb",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        !refused.status.success(),
        "non-loopback addresses are refused"
    );
    assert!(refused.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------------------
// v3

const V3_SCOPE: &str =
    "openid profile patient/Patient.rs patient/Coverage.rs patient/ExplanationOfBenefit.rs";
const INTERNAL_BFD: &str = "https://prod-sbx.bfd.internal:7443/";

/// Signs in through the v3 authorize endpoint and the forms; returns the code.
async fn v3_code(sb: &CmsSandbox, c: &Client, user: &str, scope: &str) -> String {
    let url = sb.authorize_url_for(
        ApiVersion::V3,
        STATE,
        &s256_challenge(VERIFIER),
        Some(scope),
    );
    let password = format!("PW{}!", &user[6..]);
    let back = consent_redirect_from(sb, c, &url, user, &password, "all", "allow").await;
    let q = query_of(&back);
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    q["code"].clone()
}

fn v3_token(sb: &CmsSandbox, user: &str) -> String {
    access(&sb.issue_tokens_for(ApiVersion::V3, user, None).unwrap())
}

/// Asserts a v3 pass-through error: BFD's OperationOutcome with that status.
async fn assert_outcome(resp: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/fhir+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["severity"], "error");
    assert_eq!(body["issue"][0]["code"], "processing");
    body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .to_string()
}

fn denied() -> Value {
    json!({"detail": "You do not have permission to perform this action."})
}

#[tokio::test]
async fn v3_authorize_requires_a_scope() {
    let sb = start(opts()).await;
    let c = client();
    let challenge = s256_challenge(VERIFIER);
    for scope in [None, Some(""), Some("  ")] {
        let url = sb.authorize_url_for(ApiVersion::V3, STATE, &challenge, scope);
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{scope:?}");
        assert_eq!(
            resp.json::<Value>().await.unwrap(),
            json!({"status_code": 400, "message": "Missing Required Parameter(s): scope"})
        );
    }
    // The slash-less form redirects within v3; v2 keeps its default scopes.
    let url = sb.authorize_url_for(ApiVersion::V3, STATE, &challenge, Some("profile"));
    let resp = c
        .get(url.replace("/authorize/?", "/authorize?"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert!(location(&resp).starts_with("/v3/o/authorize/?"));
    let resp = c
        .get(sb.authorize_url(STATE, &challenge, None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn v3_sign_in_gives_the_v3_id_and_the_token_works_on_both_versions() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let code = v3_code(&sb, &c, "BBUser09001", &format!("{V3_SCOPE} bogus")).await;
    let resp = exchange_at(&sb, &c, ApiVersion::V3, &code, VERIFIER).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    assert_eq!(tokens["patient"], BBUSER09001_PATIENT_V3);
    assert_eq!(tokens["scope"], V3_SCOPE, "requested ∩ registered");
    let t = access(&tokens);

    let (status, _, patient) = get_json(
        &c,
        &format!("{base}/v3/fhir/Patient/{BBUSER09001_PATIENT_V3}"),
        &t,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patient["id"], BBUSER09001_PATIENT_V3);
    let (status, _, info) = get_json(&c, &format!("{base}/v3/connect/userinfo"), &t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["patient"], BBUSER09001_PATIENT_V3);
    assert_eq!(info["sub"], BBUSER09001_PATIENT_V3);

    // The same token on v2, with the v2 id.
    let (status, _, patient) = get_json(
        &c,
        &format!("{base}/v2/fhir/Patient/{BBUSER09001_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patient["id"], BBUSER09001_PATIENT);
    let (status, _, eobs) = get_json(
        &c,
        &format!("{base}/v2/fhir/ExplanationOfBenefit/?patient={BBUSER09001_PATIENT}"),
        &t,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(eobs["total"], 30);
    assert_eq!(
        eobs["entry"][0]["resource"]["patient"]["reference"],
        format!("Patient/{BBUSER09001_PATIENT}")
    );
    let (_, _, info) = get_json(&c, &format!("{base}/v2/connect/userinfo"), &t).await;
    assert_eq!(info["patient"], BBUSER09001_PATIENT);
    // A v3 id does not work on v2.
    let (status, _, _) = get_json(
        &c,
        &format!("{base}/v2/fhir/ExplanationOfBenefit/?patient={BBUSER09001_PATIENT_V3}"),
        &t,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A refresh at v3 answers the v3 id, at v2 the v2 id.
    let resp = c
        .post(format!("{base}/v3/o/token/"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    let refreshed: Value = resp.json().await.unwrap();
    assert_eq!(refreshed["patient"], BBUSER09001_PATIENT_V3);
    let v2 = refresh(&sb, &c, refreshed["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(
        v2.json::<Value>().await.unwrap()["patient"],
        BBUSER09001_PATIENT
    );

    // Counters tell the versions apart.
    let counters: Value = c
        .get(format!("{base}/_emulator/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["by_path"]["/v3/o/token/"]["200"], 2);
    assert_eq!(counters["by_path"]["/v3/connect/userinfo"]["200"], 1);

    // /v3/o/revoke/ drops the grant and every token of the beneficiary, whatever version minted it.
    let t = access(&sb.issue_tokens("BBUser09001", None).unwrap());
    let resp = c
        .post(format!("{base}/v3/o/revoke/"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", t.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let eob = format!("{base}/v3/fhir/ExplanationOfBenefit");
    assert_eq!(get(&c, &eob, &t).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn v3_sign_in_posts_consent_to_v3_and_a_v2_only_beneficiary_gets_403() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    // The consent form of a v3 flow posts to the v3 authorize endpoint.
    let url = sb.authorize_url_for(
        ApiVersion::V3,
        STATE,
        &s256_challenge(VERIFIER),
        Some(V3_SCOPE),
    );
    let resp = c.get(&url).send().await.unwrap();
    let login_url = format!("{base}{}", location(&resp));
    let html = c
        .get(&login_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = parse_forms(&html).remove(0);
    let mut fields = form.fields.clone();
    fields.extend([
        ("username".to_string(), "BBUser29999".to_string()),
        ("password".into(), "PW29999!".into()),
    ]);
    let resp = c
        .post(format!("{base}{}", form.action))
        .form(&fields)
        .send()
        .await
        .unwrap();
    let consent = location(&resp);
    assert!(consent.starts_with("/v3/o/authorize/"), "{consent}");
    let html = c
        .get(format!("{base}{consent}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(parse_forms(&html)[0].action, consent);

    // BBUser29999 has no v3 id: the v3 token answer has no `patient`, v3 FHIR is refused, v2 works.
    let code = v3_code(&sb, &c, "BBUser29999", V3_SCOPE).await;
    let tokens: Value = exchange_at(&sb, &c, ApiVersion::V3, &code, VERIFIER)
        .await
        .json()
        .await
        .unwrap();
    assert!(tokens.get("patient").is_none(), "{tokens}");
    let t = access(&tokens);
    for path in [
        "/v3/fhir/ExplanationOfBenefit",
        "/v3/fhir/Patient/",
        "/v3/fhir/Coverage",
        "/v3/fhir/Patient/$generate-insurance-card",
        &format!("/v3/fhir/Patient/{BBUSER29999_PATIENT}"),
    ] {
        let (status, _, body) = get_json(&c, &format!("{base}{path}"), &t).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body, denied(), "{path}");
    }
    let (status, _, info) = get_json(&c, &format!("{base}/v3/connect/userinfo"), &t).await;
    assert_eq!(status, StatusCode::OK);
    assert!(info.get("patient").is_none(), "{info}");
    let (status, _, _) = get_json(&c, &format!("{base}/v2/fhir/ExplanationOfBenefit"), &t).await;
    assert_eq!(status, StatusCode::OK);

    // BBUser08325 has both: its one claim is on v3 under a numeric id.
    let t = v3_token(&sb, "BBUser08325");
    let (status, _, bundle) =
        get_json(&c, &format!("{base}/v3/fhir/ExplanationOfBenefit"), &t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry_ids(&bundle), vec!["22639159481".to_string()]);
    assert_eq!(
        bundle["entry"][0]["resource"]["patient"]["reference"],
        format!("Patient/{BBUSER08325_PATIENT_V3}")
    );
}

#[tokio::test]
async fn v3_eob_paging_by_next_returns_every_claim_once_while_total_misleads() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = v3_token(&sb, "BBUser09001");
    let mut url = Some(format!(
        "{base}/v3/fhir/ExplanationOfBenefit?patient={BBUSER09001_PATIENT_V3}&_count=7"
    ));
    let (mut ids, mut pages) = (Vec::new(), 0);
    while let Some(u) = url {
        let (status, _, page) = get_json(&c, &u, &t).await;
        assert_eq!(status, StatusCode::OK);
        let rels = relations(&page);
        assert!(
            rels.iter()
                .all(|r| ["next", "previous", "self"].contains(&r.as_str())),
            "{rels:?}"
        );
        assert!(link(&page, "self").unwrap().starts_with(INTERNAL_BFD));
        let entries = entry_ids(&page);
        url = link(&page, "next");
        match &url {
            Some(next) => {
                assert_eq!(page["total"], 7, "total is _count while there is more");
                assert!(next.starts_with(&format!("{base}/v3/fhir/ExplanationOfBenefit?")));
                let q = query_of(next);
                assert_eq!(q["_count"], "7");
                assert_eq!(q["patient"], BBUSER09001_PATIENT_V3);
                assert_eq!(q["_offset"], (ids.len() + entries.len()).to_string());
            }
            None => assert_eq!(page["total"], entries.len(), "last page: its own size"),
        }
        ids.extend(entries);
        pages += 1;
        assert!(pages <= 10, "paging must end");
    }
    assert_eq!((pages, ids.len()), (5, 30));
    assert!(ids.iter().all(|id| id.bytes().all(|b| b.is_ascii_digit())));
    // The same claims as v2, in the same order.
    let t2 = access(&sb.issue_tokens("BBUser09001", None).unwrap());
    let (_, _, v2) = get_json(
        &c,
        &format!("{base}/v2/fhir/ExplanationOfBenefit?_count=50"),
        &t2,
    )
    .await;
    let v2_numbers: Vec<String> = entry_ids(&v2)
        .iter()
        .map(|id| {
            id.trim_start_matches(|ch: char| !ch.is_ascii_digit())
                .to_string()
        })
        .collect();
    assert_eq!(v2_numbers, ids);

    // previous; startIndex is a fallback for _offset; beyond the end an empty searchset.
    let eob = format!("{base}/v3/fhir/ExplanationOfBenefit/");
    let (_, _, page) = get_json(&c, &format!("{eob}?_count=10&startIndex=20"), &t).await;
    assert_eq!(entry_ids(&page), ids[20..30]);
    assert_eq!(query_of(&link(&page, "previous").unwrap())["_offset"], "10");
    let (_, _, page) = get_json(&c, &format!("{eob}?_offset=5&startIndex=20"), &t).await;
    assert_eq!(entry_ids(&page), ids[5..15]);
    assert_eq!(page["total"], 10);
    let (status, _, page) = get_json(&c, &format!("{eob}?_offset=40"), &t).await;
    assert_eq!(status, StatusCode::OK);
    assert!(entry_ids(&page).is_empty() && link(&page, "next").is_none());
    assert_eq!(page["total"], 0);

    // Growth through the control API, addressed by the v3 id, shows on v3 too.
    control(
        &c,
        &sb,
        &format!("/patients/{BBUSER09001_PATIENT_V3}/eob-count"),
        json!({"count": 45}),
    )
    .await;
    let (_, _, page) = get_json(&c, &format!("{eob}?_count=50"), &t).await;
    assert_eq!(entry_ids(&page).len(), 45);
    assert_eq!(entry_ids(&page)[..30], ids[..]);
    let state: Value = c
        .get(format!("{base}/_emulator/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = &state["patients"][BBUSER09001_PATIENT];
    assert_eq!(
        (p["v3_id"].as_str(), p["eob_count"].as_u64()),
        (Some(BBUSER09001_PATIENT_V3), Some(45))
    );
    assert_eq!(p["v3_eob_count"], 49, "45 finals and 4 partials");
    assert!(state["patients"][BBUSER29999_PATIENT]
        .get("v3_id")
        .is_none());
}

#[tokio::test]
async fn v3_errors_are_operation_outcomes_except_permission() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = v3_token(&sb, "BBUser09001");

    // Patient and Coverage are not paged: one Bundle, and paging parameters are refused.
    let (status, _, cov) = get_json(&c, &format!("{base}/v3/fhir/Coverage?_count=1"), &t).await;
    assert_eq!(status, StatusCode::OK);
    let ids = entry_ids(&cov);
    assert_eq!(
        ids,
        [
            "part-a-30250000009001",
            "part-b-30250000009001",
            "part-d-30250000009001"
        ]
    );
    assert_eq!(cov["total"], 3);
    assert_eq!(relations(&cov), ["self"]);
    assert_eq!(
        cov["entry"][0]["resource"]["beneficiary"]["reference"],
        format!("Patient/{BBUSER09001_PATIENT_V3}")
    );
    let (status, _, _) = get_json(
        &c,
        &format!("{base}/v3/fhir/Coverage/part-d-30250000009001"),
        &t,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for bad in [
        "/v3/fhir/Patient?startIndex=0",
        "/v3/fhir/Patient/?_offset=10",
        "/v3/fhir/Coverage?startIndex=10",
        "/v3/fhir/ExplanationOfBenefit?_count=51",
        "/v3/fhir/ExplanationOfBenefit?_count=ten",
        "/v3/fhir/ExplanationOfBenefit?_offset=-1",
        "/v3/fhir/ExplanationOfBenefit?_lastUpdated=ge2021-13-45",
        "/v3/fhir/ExplanationOfBenefit?service-date=2021",
        "/v3/fhir/ExplanationOfBenefit?_source=EDB",
    ] {
        let diagnostics = assert_outcome(
            get(&c, &format!("{base}{bad}"), &t).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(!diagnostics.is_empty(), "{bad}");
    }
    let d = assert_outcome(
        get(&c, &format!("{base}/v3/fhir/Patient?startIndex=0"), &t).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(d.contains("startIndex"), "{d}");
    // v2 keeps its DRF bodies for the same mistakes.
    let (status, _, body) = get_json(
        &c,
        &format!("{base}/v2/fhir/ExplanationOfBenefit?_count=51"),
        &t,
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "value must be at most 50"})
        )
    );

    // Unknown ids: 404 OperationOutcome (a v2 EOB id is unknown on v3).
    for path in [
        "/v3/fhir/ExplanationOfBenefit/123",
        "/v3/fhir/ExplanationOfBenefit/carrier--9001000000",
        &format!("/v3/fhir/Patient/{BBUSER09001_PATIENT}"),
    ] {
        assert_outcome(
            get(&c, &format!("{base}{path}"), &t).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    let (status, _, eob) = get_json(
        &c,
        &format!("{base}/v3/fhir/ExplanationOfBenefit/9001000000"),
        &t,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(eob["id"], "9001000000");

    // Forced faults answer BFD's OperationOutcome with the forced status; 429 keeps Retry-After.
    let eob = format!("{base}/v3/fhir/ExplanationOfBenefit");
    control(&c, &sb, "/faults/next", json!({"count": 2, "status": 503})).await;
    assert_outcome(get(&c, &eob, &t).await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_outcome(
        get(&c, &format!("{eob}/9001000000"), &t).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    control(&c, &sb, "/faults/next", json!({"count": 1, "status": 429})).await;
    let resp = get(&c, &eob, &t).await;
    assert_eq!(resp.headers()[RETRY_AFTER], "1");
    assert_outcome(resp, StatusCode::TOO_MANY_REQUESTS).await;
    control(
        &c,
        &sb,
        "/faults/start-index",
        json!({"start_index": 10, "status": 500, "resource": "ExplanationOfBenefit"}),
    )
    .await;
    assert_eq!(
        get(&c, &format!("{eob}?_offset=0"), &t).await.status(),
        StatusCode::OK
    );
    assert_outcome(
        get(&c, &format!("{eob}?_offset=10"), &t).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    control(&c, &sb, "/faults/next", json!({"count": 1, "status": 503})).await;
    let resp = get(&c, &format!("{base}/v2/fhir/ExplanationOfBenefit"), &t).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "v2 unchanged"
    );

    // Permission failures stay DRF bodies: no scope, another patient, a grant gone (by v3 id).
    let narrow = access(
        &sb.issue_tokens_for(ApiVersion::V3, "BBUser09001", Some("patient/Patient.rs"))
            .unwrap(),
    );
    let (status, _, body) = get_json(&c, &eob, &narrow).await;
    assert_eq!((status, body), (StatusCode::FORBIDDEN, denied()));
    let (status, _, body) = get_json(&c, &format!("{eob}?patient={BBUSER09001_PATIENT}"), &t).await;
    assert_eq!((status, body), (StatusCode::FORBIDDEN, denied()));
    control(
        &c,
        &sb,
        &format!("/grants/{BBUSER09001_PATIENT_V3}/delete"),
        json!({}),
    )
    .await;
    let (status, _, body) = get_json(&c, &eob, &t).await;
    assert_eq!((status, body), (StatusCode::FORBIDDEN, denied()));
}

#[tokio::test]
async fn v3_eob_filters_source_tag_and_security() {
    let sb = start(opts()).await;
    let c = client();
    let eob = format!("{}/v3/fhir/ExplanationOfBenefit?_count=50", sb.base_url());
    let t = v3_token(&sb, "BBUser09002");
    let search = |q: &str| {
        let (c, t, url) = (c.clone(), t.clone(), format!("{eob}{q}"));
        async move {
            let (status, _, b) = get_json(&c, &url, &t).await;
            assert_eq!(status, StatusCode::OK, "{url}");
            b["entry"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e["resource"].clone())
                .collect::<Vec<Value>>()
        }
    };
    let tag = |r: &Value| r["meta"]["tag"][0]["code"].as_str().unwrap().to_string();
    let claim = |r: &Value| r["identifier"][0]["value"].as_str().unwrap().to_string();

    // By default (BB2 adds _source=NCH,DDPS) only final claims, which have no partial duplicates.
    let finals = search("").await;
    assert_eq!(finals.len(), 30);
    assert!(finals
        .iter()
        .all(|r| ["NCH", "DDPS"].contains(&r["meta"]["source"].as_str().unwrap())));
    assert!(finals.iter().all(|r| tag(r) == "Adjudicated"));
    assert_eq!(
        finals[0]["meta"]["tag"][0]["system"],
        "https://bluebutton.cms.gov/fhir/CodeSystem/Adjudication-Status"
    );
    // A pilot claim's identifier is its number, which is also its v3 id.
    assert!(finals
        .iter()
        .all(|r| claim(r) == format!("-{}", r["id"].as_str().unwrap())));
    let final_claims: HashSet<String> = finals.iter().map(claim).collect();
    assert_eq!(
        final_claims.len(),
        30,
        "claim identifiers are unique among finals"
    );

    // Partially adjudicated claims: two versions of final claims, two without a final yet.
    let partials = search("&_source=FISS,MCS").await;
    assert_eq!(partials.len(), 4);
    assert!(partials.iter().all(|r| tag(r) == "PartiallyAdjudicated"));
    assert!(partials.iter().all(|r| r["outcome"] == "partial"));
    let with_final = partials
        .iter()
        .filter(|r| final_claims.contains(&claim(r)))
        .count();
    assert_eq!(with_final, 2);
    assert!(
        partials
            .iter()
            .all(|r| !finals.iter().any(|f| f["id"] == r["id"])),
        "distinct ids"
    );
    assert_eq!(search("&_source=MCS").await.len(), 2);
    assert_eq!(search("&_source=CWF").await.len(), 0);
    assert_eq!(search("&_source=NCH&_source=DDPS,FISS").await.len(), 32);

    // _tag replaces the default _source.
    assert_eq!(search("&_tag=PartiallyAdjudicated").await.len(), 4);
    let system = "https://bluebutton.cms.gov/fhir/CodeSystem/Adjudication-Status";
    let tagged = search(&format!("&_tag={system}|Adjudicated,PartiallyAdjudicated")).await;
    assert_eq!(tagged.len(), 34);
    assert_eq!(
        search("&_tag=http://other.example|Adjudicated").await.len(),
        0
    );

    // 42 CFR Part 2: one labelled final claim.
    let labelled: Vec<&Value> = finals
        .iter()
        .filter(|r| r["meta"]["security"][0]["code"] == "42CFRPart2")
        .collect();
    assert_eq!(labelled.len(), 1);
    let without = search("&_security:not=42CFRPart2").await;
    assert_eq!(without.len(), 29);
    assert!(!without.iter().any(|r| r["id"] == labelled[0]["id"]));

    // The v2 filters work on v3 too.
    let drugs = search("&type=pde").await;
    assert_eq!(drugs.len(), 10);
    assert!(drugs.iter().all(|r| r["meta"]["source"] == "DDPS"));
}

#[tokio::test]
async fn v3_insurance_card_metadata_and_discovery() {
    let sb = start(opts()).await;
    let c = client();
    let base = sb.base_url();
    let t = v3_token(&sb, "BBUser09003");
    for path in [
        "/v3/fhir/Patient/$generate-insurance-card",
        "/v3/fhir/Patient/$generate-insurance-card/",
    ] {
        let (status, headers, card) = get_json(&c, &format!("{base}{path}"), &t).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/fhir+json");
        assert_eq!(
            (card["resourceType"].as_str(), card["type"].as_str()),
            (Some("Bundle"), Some("collection"))
        );
        let entries = card["entry"].as_array().unwrap();
        let types: Vec<&str> = entries
            .iter()
            .map(|e| e["resource"]["resourceType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "Patient",
                "Coverage",
                "Coverage",
                "Coverage",
                "Organization"
            ]
        );
        for e in entries {
            let r = &e["resource"];
            assert_eq!(
                e["fullUrl"],
                format!("urn:uuid:{}", r["id"].as_str().unwrap())
            );
            assert_eq!(
                r["meta"]["profile"][0],
                format!(
                    "http://hl7.org/fhir/us/insurance-card/StructureDefinition/C4DIC-{}",
                    r["resourceType"].as_str().unwrap()
                )
            );
        }
        assert_eq!(
            entries[1]["resource"]["payor"][0]["reference"],
            entries[4]["fullUrl"]
        );
        assert_eq!(
            entries[1]["resource"]["beneficiary"]["reference"],
            entries[0]["fullUrl"]
        );
    }
    // It needs a Patient read and a Coverage search scope.
    let narrow = access(
        &sb.issue_tokens_for(
            ApiVersion::V3,
            "BBUser09003",
            Some("patient/Patient.r patient/Coverage.r"),
        )
        .unwrap(),
    );
    let (status, _, body) = get_json(
        &c,
        &format!("{base}/v3/fhir/Patient/$generate-insurance-card"),
        &narrow,
    )
    .await;
    assert_eq!((status, body), (StatusCode::FORBIDDEN, denied()));
    // v2 has no such operation: the Patient read answers it.
    let t2 = access(&sb.issue_tokens("BBUser09003", None).unwrap());
    let (status, _, _) = get_json(
        &c,
        &format!("{base}/v2/fhir/Patient/$generate-insurance-card"),
        &t2,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let meta: Value = c
        .get(format!("{base}/v3/fhir/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["resourceType"], "CapabilityStatement");
    assert_eq!(meta["fhirVersion"], "4.0.1");
    assert_eq!(meta["implementation"]["url"], format!("{base}/v3/fhir"));
    assert!(!meta.to_string().contains("/v2/"));
    let smart: Value = c
        .get(format!("{base}/v3/fhir/.well-known/smart-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(smart["token_endpoint"], format!("{base}/v3/o/token/"));
    assert_eq!(
        smart["authorization_endpoint"],
        format!("{base}/v3/o/authorize")
    );
    assert!(smart["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "permission-v3"));
    let v2: Value = c
        .get(format!("{base}/v2/fhir/.well-known/smart-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!v2["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "permission-v3"));
    // No OIDC discovery on v3.
    let resp = c
        .get(format!(
            "{base}/v3/connect/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
