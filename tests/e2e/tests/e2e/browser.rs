//! In a real browser (Debian's headless Chromium, driven through chromedriver): the docs page renders its
//! operations, and the whole seed flow works — authorize, log in and consent at the CMS emulator, land on
//! the callback with a session, fetch the beneficiary's Patient with it.
//!
//! Needs `chromium` and `chromium-driver` (Debian packages; `.ci/run` installs them).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cms_sandbox::BBUSER29999_PATIENT;
use e2e::{free_port, workspace_root, Stack};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (Debian package chromium-driver)");
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = std::env::temp_dir().join(format!("chromium-profile-{port}"));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1600",
                format!("--user-data-dir={}", profile.display()),
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
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
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
    for expected in [
        "/bluebutton/authorize",
        "/bluebutton/callback",
        "/bluebutton/fhir/{resource_type}",
        "/bluebutton/connect/outbox",
        "/bluebutton/sync",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} not rendered in {paths:?}"
        );
    }
    assert!(
        browser.find(Locator::Css(".btn.authorize")).await.is_ok(),
        "the Authorize button"
    );
    let artefacts = workspace_root().join("tests/artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let png = browser.screenshot().await.unwrap();
    std::fs::write(artefacts.join("docs.png"), &png).unwrap();
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
    username.send_keys("BBUser29999").await.unwrap();
    browser
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("PW29999!")
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
    assert_eq!(granted["patient"], BBUSER29999_PATIENT);
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
    assert_eq!(
        fetched["body"]["entry"][0]["resource"]["id"],
        BBUSER29999_PATIENT
    );
    browser.close().await.unwrap();
}
