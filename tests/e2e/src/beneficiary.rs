//! A beneficiary's browser, as a plain HTTP client: follows the app's redirect to CMS, fills in the
//! emulator's login and consent forms, and lands on the app's callback.

use anyhow::{bail, ensure, Context, Result};
use reqwest::{header::LOCATION, redirect::Policy, Client, Response};
use url::Url;

use cms_sandbox::{parse_forms, synthetic_user};

/// How the beneficiary answers the consent form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Consent {
    /// `share=all`, allow.
    All,
    /// `share=no-demographics`, allow.
    NoDemographics,
    Deny,
}

/// Requests give up after this long: a hung app fails a test instead of stalling the suite.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

pub fn client() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client")
}

fn location(resp: &Response) -> Result<Url> {
    ensure!(
        resp.status().is_redirection(),
        "expected a redirect from {}, got {}",
        resp.url(),
        resp.status()
    );
    let value = resp
        .headers()
        .get(LOCATION)
        .context("redirect without Location")?
        .to_str()?;
    Ok(resp.url().join(value)?)
}

/// From `GET {app}/bluebutton/authorize` to the URL CMS redirects back to (the app's callback, not yet
/// visited).
pub async fn authorize_at_cms(app_base: &str, username: &str, consent: Consent) -> Result<Url> {
    let resp = client()
        .get(format!("{app_base}/bluebutton/authorize"))
        .send()
        .await?;
    let cms_authorize = location(&resp)?;
    consent_at_cms(cms_authorize, username, consent).await
}

/// From CMS's authorization URL (as the app answers it, redirect or JSON) to the URL CMS redirects back
/// to (the app's callback, not yet visited): logs in and answers the consent form.
pub async fn consent_at_cms(cms_authorize: Url, username: &str, consent: Consent) -> Result<Url> {
    let http = client();
    let user = synthetic_user(username).context("unknown synthetic user")?;
    let resp = http.get(cms_authorize).send().await?;
    let mut next = location(&resp)?;
    // Login page.
    let page = http.get(next.clone()).send().await?;
    let page_url = page.url().clone();
    let html = page.text().await?;
    let login = parse_forms(&html)
        .into_iter()
        .find(|f| f.fields.iter().any(|(n, _)| n == "auth_id") || html.contains("password"))
        .context("no login form")?;
    let mut fields = login.fields.clone();
    fields.push(("username".into(), user.username.into()));
    fields.push(("password".into(), user.password.into()));
    let resp = http
        .post(page_url.join(&login.action)?)
        .form(&fields)
        .send()
        .await?;
    next = location(&resp)?;
    // Consent page.
    let page = http.get(next).send().await?;
    let page_url = page.url().clone();
    let html = page.text().await?;
    let consent_form = parse_forms(&html)
        .into_iter()
        .find(|f| !f.buttons.is_empty())
        .context("no consent form")?;
    let mut fields: Vec<(String, String)> = consent_form
        .fields
        .iter()
        .filter(|(n, _)| n != "share")
        .cloned()
        .collect();
    match consent {
        Consent::All => {
            fields.push(("share".into(), "all".into()));
            fields.push(("allow".into(), button(&consent_form.buttons, "allow")?));
        }
        Consent::NoDemographics => {
            fields.push(("share".into(), "no-demographics".into()));
            fields.push(("allow".into(), button(&consent_form.buttons, "allow")?));
        }
        Consent::Deny => {
            fields.push(("share".into(), "all".into()));
            fields.push(("deny".into(), button(&consent_form.buttons, "deny")?));
        }
    }
    let resp = http
        .post(page_url.join(&consent_form.action)?)
        .form(&fields)
        .send()
        .await?;
    location(&resp)
}

fn button(buttons: &[(String, String)], name: &str) -> Result<String> {
    match buttons.iter().find(|(n, _)| n == name) {
        Some((_, value)) => Ok(value.clone()),
        None => bail!("the consent form has no `{name}` button"),
    }
}

/// The whole flow: returns the callback's JSON (`session`, `patient`, ...).
pub async fn sign_in(app_base: &str, username: &str) -> Result<serde_json::Value> {
    let callback = authorize_at_cms(app_base, username, Consent::All).await?;
    let resp = client().get(callback).send().await?;
    ensure!(
        resp.status() == 200,
        "callback answered {}: {}",
        resp.status(),
        resp.text().await?
    );
    Ok(resp.json().await?)
}
