//! In a real browser (Debian's headless Chromium, driven through chromedriver): the docs page renders its
//! operations, and the whole seed flow works — authorize, log in and consent at the CMS emulator, land on
//! the callback with a session, fetch the beneficiary's Patient with it.
//!
//! Needs `chromium` and `chromium-driver` (Debian packages; `.ci/run` installs them) on PATH, or
//! `CHROMIUM` (or `CHROME_BIN`) and `CHROMEDRIVER` naming them. The screenshot of the docs goes to
//! `target/debug/e2e-artifacts/docs.png`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cms_sandbox::{BBUSER09001_PATIENT_V3, BBUSER29999_PATIENT};
use e2e::{free_port, Stack, TempDir};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// chromedriver and the browsers it starts (one process group), and the browser's profile folder: all
/// gone when dropped, whether or not the test got to close its session.
struct Driver {
    child: Child,
    _profile: TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// A program named by one of `vars`, else the first of `names` found on PATH.
fn find_program(vars: &[&str], names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = vars
        .iter()
        .find_map(|v| std::env::var_os(v).filter(|p| !p.is_empty()))
    {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

async fn browser() -> (Driver, Client) {
    let chromium = find_program(
        &["CHROMIUM", "CHROME_BIN"],
        &["chromium", "chromium-browser"],
    )
    .expect("chromium on PATH (Debian package chromium), or CHROMIUM/CHROME_BIN naming it");
    let chromedriver = find_program(&["CHROMEDRIVER"], &["chromedriver"])
        .expect("chromedriver on PATH (Debian package chromium-driver), or CHROMEDRIVER naming it");
    let port = free_port();
    let profile = TempDir::new("chromium");
    let user_data_dir = format!(
        "--user-data-dir={}",
        profile.path().join("user-data").display()
    );
    // chromedriver's and Chromium's own temp folders (`org.chromium.Chromium.scoped_dir.*`) go there too.
    let tmp = profile.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(chromedriver);
    cmd.arg(format!("--port={port}"))
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("chromedriver runs");
    let driver = Driver {
        child,
        _profile: profile,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1600",
                user_data_dir,
            ]
        }),
    );
    // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    (driver, client)
}

#[tokio::test]
async fn docs_render_and_a_beneficiary_signs_in_and_fetches_their_data() {
    browser_flow(&[], "BBUser29999", "PW29999!", BBUSER29999_PATIENT).await;
}

#[tokio::test]
async fn on_v3_docs_render_and_a_pilot_beneficiary_signs_in_and_fetches_their_data() {
    let v3 = ["cms_api_version=v3".to_string()];
    browser_flow(&v3, "BBUser09001", "PW09001!", BBUSER09001_PATIENT_V3).await;
}

/// Swagger UI renders the deployment's operations; a beneficiary clicks through CMS's forms, lands on
/// the callback, and reads their Patient and their accounting from the page.
async fn browser_flow(variables: &[String], user: &str, password: &str, patient: &str) {
    let stack = Stack::start(|_| {}, variables).await.unwrap();
    let on_v3 = !variables.is_empty();
    let (_driver, browser) = browser().await;
    let base = stack.base_url();

    // The interactive docs: Swagger UI renders every operation from /openapi.json, offline.
    browser.goto(&format!("{base}/docs/")).await.unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(".opblock"))
        .await
        .expect("operations rendered");
    let operations = browser
        .find_all(Locator::Css(".opblock-summary-path"))
        .await
        .unwrap();
    let mut paths = Vec::new();
    for op in operations {
        paths.push(op.text().await.unwrap().replace('\u{200b}', ""));
    }
    let v3_only = on_v3.then_some("/bluebutton/fhir/insurance-card");
    for expected in [
        "/bluebutton/authorize",
        "/bluebutton/callback",
        "/bluebutton/fhir/ExplanationOfBenefit",
        "/bluebutton/connect/outbox",
        "/bluebutton/sync",
    ]
    .into_iter()
    .chain(v3_only)
    {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} not rendered in {paths:?}"
        );
    }
    assert!(
        browser.find(Locator::Css(".btn.authorize")).await.is_ok(),
        "the Authorize button"
    );
    let artefacts = e2e::bin_dir().join("e2e-artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let png = browser.screenshot().await.unwrap();
    let shot = if on_v3 { "docs-v3.png" } else { "docs.png" };
    std::fs::write(artefacts.join(shot), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // The seed flow, as a beneficiary would click through it.
    browser
        .goto(&format!("{base}/bluebutton/authorize"))
        .await
        .unwrap();
    let username = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("input[name=username]"))
        .await
        .expect("CMS's login form");
    username.send_keys(user).await.unwrap();
    browser
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    browser
        .find(Locator::Css("button[name=login]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let allow = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("button[name=allow]"))
        .await
        .expect("CMS's consent form");
    allow.click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while browser.current_url().await.unwrap().path() != "/bluebutton/callback" {
        assert!(Instant::now() < deadline, "never reached the callback");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let granted: Value = serde_json::from_str(&text).expect("the callback's JSON");
    assert_eq!(granted["patient"], patient);
    let session = granted["session"].as_str().unwrap().to_string();

    // From the same page, with the session: the beneficiary's Patient.
    let fetched = browser
        .execute_async(
            "const [session, done] = arguments;
             fetch('/bluebutton/fhir/Patient?push=false', {headers: {Authorization: 'Bearer ' + session}})
               .then(r => r.json().then(body => done({status: r.status, body})));",
            vec![json!(session)],
        )
        .await
        .unwrap();
    assert_eq!(fetched["status"], 200);
    assert_eq!(fetched["body"]["entry"][0]["resource"]["id"], patient);

    // And their accounting of disclosures: the consent they just gave, then that read, newest first.
    let accounting = browser
        .execute_async(
            "const [session, done] = arguments;
             fetch('/bluebutton/audit', {headers: {Authorization: 'Bearer ' + session}})
               .then(r => r.json().then(body => done({status: r.status, body})));",
            vec![json!(session)],
        )
        .await
        .unwrap();
    assert_eq!(accounting["status"], 200);
    let codes: Vec<&str> = accounting["body"]["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let subtypes = e["resource"]["subtype"].as_array().unwrap();
            subtypes.last().unwrap()["code"].as_str().unwrap()
        })
        .collect();
    assert_eq!(codes, ["cms-read", "authorization-granted"]);
    browser.close().await.unwrap();
}
