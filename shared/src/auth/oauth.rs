//! The OAuth conversation with CMS: the authorize URL (with the PKCE S256 challenge and a state from
//! [`crate::auth::state`]), the code exchange, refresh and revocation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::{CsrfToken, PkceCodeChallenge, PkceCodeVerifier};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::auth::session::TokenSet;
use crate::config::{ApiVersion, OAuthClient};
use crate::error::Error;
use crate::ports::{Clock, HttpError, Platform, Random};
use crate::retry::{self, RetryPolicy};

/// Where to send the beneficiary (for API clients that ask for JSON instead of a redirect).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuthorizationStart {
    pub authorization_url: String,
    pub expires_in: i64,
}

/// The characters a path segment may hold unencoded (RFC 3986 `pchar`, with `%` for escapes).
const PATH_CHARS: &str = "-._~!$&'()*+,;=:@%";

/// `return_to` as the OpenAPI document states it: a plain local path of non-empty segments. Anything
/// else (a scheme, `//host`, a backslash, a control character a browser would drop) could make the app
/// an open redirector. (`$(?!\n)` ends the match at the very end in Python's dialect too.)
pub const RETURN_TO_PATTERN: &str =
    "^/([A-Za-z0-9._~!$&'()*+,;=:@%-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?)?$(?!\\n)";

pub fn is_local_path(target: &str) -> bool {
    let Some(rest) = target.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !rest.is_empty()
        && rest.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || PATH_CHARS.contains(c))
        })
}

/// Checks what the caller asked for, before anything is stored.
pub fn check_request(lang: Option<&str>, return_to: Option<&str>) -> Result<(), Error> {
    if let Some(lang) = lang {
        if !matches!(lang, "en" | "es") {
            return Err(Error::BadRequest(
                "`lang` must be `en` or `es`, the languages CMS offers".into(),
            ));
        }
    }
    if let Some(target) = return_to {
        if !is_local_path(target) {
            return Err(Error::BadRequest(
                "`return_to` must be a plain path on this server, such as /app".into(),
            ));
        }
    }
    Ok(())
}

/// A fresh PKCE S256 verifier: 64 random bytes, an 86-character verifier (RFC 7636 allows 43–128
/// characters of the unreserved set, which base64url is).
pub fn new_verifier(random: &impl Random) -> String {
    let mut bytes = [0u8; 64];
    random.fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// v3 refuses an authorization without `scope` (v2 grants the app's registered scopes).
pub fn check_scopes(client: &OAuthClient) -> Result<(), Error> {
    if client.api_version == ApiVersion::V3 && client.scopes.is_none() {
        return Err(Error::Config(
            "`cms_scopes` is empty, but Blue Button v3 refuses an authorization without a scope: \
             set it, e.g. to `openid profile patient/Patient.rs patient/Coverage.rs \
             patient/ExplanationOfBenefit.rs`"
                .into(),
        ));
    }
    Ok(())
}

/// CMS's authorize URL for a stored state and its verifier's challenge.
pub fn authorize_url(
    client: &OAuthClient,
    state: &str,
    verifier: &str,
    lang: Option<&str>,
) -> Result<String, Error> {
    check_scopes(client)?;
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.to_string()));
    let state = CsrfToken::new(state.to_string());
    let authorize = client.api_version.path("/o/authorize/");
    let mut url = Url::parse(&format!("{}{authorize}", client.cms_base_url))
        .map_err(|e| Error::Config(format!("`cms_base_url` cannot form a URL: {e}")))?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("state", state.secret())
            .append_pair("code_challenge", challenge.as_str())
            .append_pair("code_challenge_method", challenge.method().as_str());
        if let Some(scopes) = &client.scopes {
            query.append_pair("scope", scopes);
        }
        if let Some(lang) = lang {
            query.append_pair("lang", lang);
        }
    }
    Ok(url.into())
}

/// CMS's extra token response fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CmsTokenFields {
    pub patient: Option<String>,
    pub access_grant_expiration: Option<String>,
}
impl oauth2::ExtraTokenFields for CmsTokenFields {}

type CmsTokenResponse =
    oauth2::StandardTokenResponse<CmsTokenFields, oauth2::basic::BasicTokenType>;
type CmsClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    CmsTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn cms_client(client: &OAuthClient, secret: &str) -> Result<CmsClient, Error> {
    let token = client.api_version.path("/o/token/");
    let token_url = oauth2::TokenUrl::new(format!("{}{token}", client.cms_base_url))
        .map_err(|e| Error::Config(format!("`cms_base_url` cannot form the token URL: {e}")))?;
    let redirect = oauth2::RedirectUrl::new(client.redirect_uri.clone())
        .map_err(|e| Error::Config(format!("`redirect_uri` is not a URL: {e}")))?;
    // HTTP Basic client authentication is oauth2's default and what CMS tries first.
    Ok(
        oauth2::Client::new(oauth2::ClientId::new(client.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(secret.to_string()))
            .set_token_uri(token_url)
            .set_redirect_uri(redirect),
    )
}

/// Turns an oauth2 failure into our error: CMS's refusal → 502 naming CMS's `error`, silence → 504.
fn token_error(
    what: &str,
    status: u16,
    err: oauth2::RequestTokenError<
        HttpError,
        oauth2::StandardErrorResponse<oauth2::basic::BasicErrorResponseType>,
    >,
) -> TokenFailure {
    use oauth2::RequestTokenError as E;
    match err {
        E::ServerResponse(resp) => TokenFailure::Refused {
            error: resp.error().as_ref().to_string(),
            status,
        },
        E::Request(HttpError::Timeout) => TokenFailure::Failed(Error::GatewayTimeout(format!(
            "CMS's token endpoint did not answer the {what} in time"
        ))),
        E::Request(e) => {
            eprintln!("CMS's token endpoint, {what}: {e}");
            TokenFailure::Failed(Error::BadGateway(format!(
                "CMS's token endpoint could not be reached for the {what}; try again later"
            )))
        }
        // CMS's `{status_code, message}` shape is not OAuth's: its message says what went wrong.
        E::Parse(_, body) => TokenFailure::Failed(Error::BadGateway(
            match crate::upstream::error_detail(&body) {
                Some(said) => format!("CMS's token endpoint refused the {what} ({status}): {said}"),
                None => format!(
                    "CMS's token endpoint sent an unreadable answer to the {what} ({} bytes)",
                    body.len()
                ),
            },
        )),
        E::Other(e) => {
            eprintln!("CMS's token endpoint, {what}: {e}");
            TokenFailure::Failed(Error::BadGateway(format!(
                "CMS's token endpoint failed the {what}; try again later"
            )))
        }
    }
}

/// Why a token request failed: CMS said no (its OAuth `error` code and HTTP status), or the call
/// itself failed.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenFailure {
    Refused { error: String, status: u16 },
    Failed(Error),
}

impl TokenFailure {
    /// What a refused refresh means for the session: its grant is gone (authorize again), or CMS
    /// refuses this app's own credentials (an operator's problem, not the beneficiary's).
    pub fn into_refresh_error(self) -> Error {
        match self {
            // A ONE_TIME grant answers 403 `invalid_client` to any refresh: that grant is over.
            TokenFailure::Refused { error, status }
                if error != "invalid_client" || status == 403 =>
            {
                Error::Unauthorized(format!(
                    "CMS no longer accepts this session's grant (`{error}`): authorize again at \
                     /bluebutton/authorize"
                ))
            }
            TokenFailure::Refused { error, status } => Error::BadGateway(format!(
                "CMS refused this app's client credentials ({status} `{error}`): check \
                 `cms_client_id` and `cms_client_secret`"
            )),
            TokenFailure::Failed(err) => err,
        }
    }
}

/// Retries the token endpoint within a short deadline: a session waiting on a refresh waits for this.
const TOKEN_RETRIES: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_delay: std::time::Duration::from_millis(200),
    max_delay: std::time::Duration::from_secs(2),
    deadline: std::time::Duration::from_secs(15),
};

async fn token_http<P: Platform>(
    platform: &P,
    status: &std::cell::Cell<u16>,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    let retried = retry::send(platform, &request, &TOKEN_RETRIES).await;
    if let Ok(resp) = &retried.result {
        status.set(resp.status().as_u16());
    }
    retried.result
}

fn token_set(
    platform: &impl Clock,
    client: &OAuthClient,
    resp: CmsTokenResponse,
    fallback: Option<&TokenSetHint>,
) -> Result<TokenSet, Error> {
    use oauth2::TokenResponse;
    let expires_in = resp.expires_in().map_or(3600, |d| d.as_secs() as i64);
    let scope = resp
        .scopes()
        .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "))
        .or_else(|| fallback.map(|f| f.scope.clone()))
        .unwrap_or_default();
    let extra = resp.extra_fields();
    let patient = extra
        .patient
        .clone()
        .or_else(|| fallback.map(|f| f.patient.clone()))
        .ok_or_else(|| match client.api_version {
            // BB2 names the patient from its crosswalk, which has no v3 id for some beneficiaries.
            ApiVersion::V3 => Error::Forbidden(
                "CMS has no Blue Button v3 record for this beneficiary (its token names no \
                 patient): they cannot use this app until CMS moves them to v3"
                    .into(),
            ),
            ApiVersion::V2 => Error::BadGateway("CMS's token response names no `patient`".into()),
        })?;
    Ok(TokenSet {
        access_token: resp.access_token().secret().clone(),
        refresh_token: resp
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| fallback.and_then(|f| f.refresh_token.clone())),
        expires_at: platform.now().unix_timestamp() + expires_in,
        scope,
        patient,
        access_grant_expiration: extra
            .access_grant_expiration
            .clone()
            .or_else(|| fallback.and_then(|f| f.access_grant_expiration.clone())),
        api_version: client.api_version,
    })
}

/// What a refresh keeps from the previous token set when CMS's answer leaves it out.
type TokenSetHint = TokenSet;

/// Exchanges an authorization code (with its PKCE verifier) for tokens.
pub async fn exchange_code<P: Platform>(
    platform: &P,
    client: &OAuthClient,
    secret: &str,
    code: &str,
    verifier: String,
) -> Result<TokenSet, TokenFailure> {
    let status = std::cell::Cell::new(0);
    let http = |req| token_http(platform, &status, req);
    let resp = cms_client(client, secret)
        .map_err(TokenFailure::Failed)?
        .exchange_code(oauth2::AuthorizationCode::new(code.to_string()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&http)
        .await
        .map_err(|e| token_error("code exchange", status.get(), e))?;
    token_set(platform, client, resp, None).map_err(TokenFailure::Failed)
}

/// Uses the refresh token; CMS rotates it, so the answer's refresh token replaces the old one.
pub async fn refresh<P: Platform>(
    platform: &P,
    client: &OAuthClient,
    secret: &str,
    current: &TokenSet,
) -> Result<TokenSet, TokenFailure> {
    let refresh_token = current
        .refresh_token
        .clone()
        .ok_or_else(|| TokenFailure::Refused {
            error: "invalid_grant".into(),
            status: 0,
        })?;
    let status = std::cell::Cell::new(0);
    let http = |req| token_http(platform, &status, req);
    let token = oauth2::RefreshToken::new(refresh_token);
    let resp = cms_client(client, secret)
        .map_err(TokenFailure::Failed)?
        .exchange_refresh_token(&token)
        .request_async(&http)
        .await
        .map_err(|e| token_error("token refresh", status.get(), e))?;
    token_set(platform, client, resp, Some(current)).map_err(TokenFailure::Failed)
}

/// What a revocation ends at CMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The session's tokens (RFC 7009 `/o/revoke_token/`, with the refresh token, which takes its
    /// access token along; the access token itself for a ONE_TIME grant). The beneficiary's grant stays.
    Tokens,
    /// The beneficiary's data access grant for this app (`/o/revoke/`): every token of theirs goes,
    /// and the app may not read their data again until they consent again.
    Grant,
}

/// Revokes at CMS what `what` says. Both endpoints answer 200 whenever the client authenticates.
pub async fn revoke<P: Platform>(
    platform: &P,
    client: &OAuthClient,
    secret: &str,
    tokens: &TokenSet,
    what: Revocation,
) -> Result<(), Error> {
    use base64::engine::general_purpose::STANDARD;
    let (path, token) = match what {
        Revocation::Tokens => (
            "/o/revoke_token/",
            tokens
                .refresh_token
                .as_ref()
                .unwrap_or(&tokens.access_token),
        ),
        Revocation::Grant => ("/o/revoke/", &tokens.access_token),
    };
    let path = client.api_version.path(path);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    let basic = STANDARD.encode(format!("{}:{}", client.client_id, secret));
    let request = http::Request::post(format!("{}{path}", client.cms_base_url))
        .header("Authorization", format!("Basic {basic}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.into_bytes())
        .map_err(|e| Error::Config(format!("`cms_base_url` cannot form the revoke URL: {e}")))?;
    let retried = retry::send(platform, &request, &RetryPolicy::default()).await;
    match retried.result {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(Error::BadGateway(format!(
            "CMS refused the revocation ({}); the session is kept so you can retry",
            resp.status().as_u16()
        ))),
        Err(HttpError::Timeout) => Err(Error::GatewayTimeout(
            "CMS did not answer the revocation in time; the session is kept so you can retry"
                .into(),
        )),
        Err(e) => Err(Error::BadGateway(format!(
            "CMS could not be reached for the revocation: {e}; the session is kept"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;
    use sha2::{Digest, Sha256};

    fn client() -> OAuthClient {
        OAuthClient {
            cms_base_url: "https://sandbox.bluebutton.cms.gov".into(),
            api_version: Default::default(),
            client_id: "client id&x".into(),
            redirect_uri: "http://127.0.0.1:3000/bluebutton/callback?a=b".into(),
            scopes: Some("patient/Patient.rs openid".into()),
        }
    }

    fn params(url: &str) -> std::collections::HashMap<String, String> {
        Url::parse(url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }

    #[test]
    fn authorize_url_carries_every_parameter_encoded() {
        let p = FakePlatform::new();
        let verifier = new_verifier(&p);
        let url =
            authorize_url(&client(), "a-state-of-at-least-16", &verifier, Some("es")).unwrap();
        assert!(url
            .starts_with("https://sandbox.bluebutton.cms.gov/v2/o/authorize/?response_type=code&"));
        assert!(url.contains("client_id=client+id%26x"));
        assert!(url.contains(
            "redirect_uri=http%3A%2F%2F127.0.0.1%3A3000%2Fbluebutton%2Fcallback%3Fa%3Db"
        ));
        let q = params(&url);
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(
            q["code_challenge"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
        );
        assert_eq!(q["scope"], "patient/Patient.rs openid");
        assert_eq!(q["lang"], "es");
        assert_eq!(q["state"], "a-state-of-at-least-16");
        let url = authorize_url(&client(), "s", &verifier, None).unwrap();
        assert!(!params(&url).contains_key("lang"));

        let mut v3 = client();
        v3.api_version = ApiVersion::V3;
        let url = authorize_url(&v3, "s", &verifier, None).unwrap();
        assert!(url.starts_with("https://sandbox.bluebutton.cms.gov/v3/o/authorize/?"));
        v3.scopes = None;
        let err = authorize_url(&v3, "s", &verifier, None).unwrap_err();
        assert!(err.to_string().contains("`cms_scopes` is empty"), "{err}");
    }

    #[test]
    fn return_to_is_exactly_what_the_document_says() {
        let documented = regex::Regex::new(RETURN_TO_PATTERN.trim_end_matches("(?!\\n)")).unwrap();
        let pieces = [
            "/", "//", "a", "%20", "\\", "\t", ":", "@", " ", "?", "#", "~", "é",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..50_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let value: String = (0..seed % 6)
                .map(|i| pieces[((seed >> (i * 8)) % pieces.len() as u64) as usize])
                .collect();
            assert_eq!(
                is_local_path(&value),
                documented.is_match(&value),
                "{value:?}"
            );
        }
    }

    #[test]
    fn local_paths() {
        for ok in ["/", "/app", "/app/", "/a/b%20c", "/x:y@z"] {
            assert!(is_local_path(ok), "{ok}");
        }
        for bad in [
            "",
            "app",
            "//x",
            "/a//b",
            "/a\\b",
            "/\t/x",
            "/a b",
            "https://x",
        ] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }

    #[test]
    fn bad_lang_and_foreign_return_to_are_refused() {
        assert!(check_request(Some("fr"), None).is_err());
        assert!(check_request(Some(""), None).is_err());
        for target in [
            "https://evil.example",
            "//evil.example",
            "/\t/evil.example",
            "/a//evil.example",
            "/a\\b",
            "",
        ] {
            assert!(check_request(None, Some(target)).is_err(), "{target:?}");
        }
        assert!(check_request(Some("es"), Some("/app")).is_ok());
    }
}
