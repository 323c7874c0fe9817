//! Spin variables, read and validated per request into typed settings. A missing or malformed one is an
//! `Error::Config` naming it (a clear 500), never a panic.

use url::Url;

use crate::ports::Variables;
use crate::problem::Error;

/// Reads a variable the component must have.
pub fn required(vars: &impl Variables, name: &str) -> Result<String, Error> {
    match vars.variable(name) {
        Ok(Some(value)) if !value.trim().is_empty() => Ok(value),
        Ok(_) => Err(Error::Config(format!("the variable `{name}` is not set"))),
        Err(err) => Err(Error::Config(format!("cannot read `{name}`: {err}"))),
    }
}

/// Reads a variable that may be empty (then `None`).
pub fn optional(vars: &impl Variables, name: &str) -> Result<Option<String>, Error> {
    match vars.variable(name) {
        Ok(value) => Ok(value.filter(|v| !v.trim().is_empty())),
        Err(err) => Err(Error::Config(format!("cannot read `{name}`: {err}"))),
    }
}

/// An origin (`scheme://host[:port]`) without a trailing slash, as allow-lists and URL joins need.
pub fn origin(vars: &impl Variables, name: &str) -> Result<String, Error> {
    let value = required(vars, name)?;
    let url =
        Url::parse(&value).map_err(|e| Error::Config(format!("`{name}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Config(format!(
            "`{name}` must be an http(s) origin such as https://sandbox.bluebutton.cms.gov"
        )));
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// A whole number within bounds, with a default when unset.
pub fn number(
    vars: &impl Variables,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, Error> {
    match optional(vars, name)? {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                Error::Config(format!(
                    "`{name}` must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

/// The OAuth client settings that `authorize` and `callback` share.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthClient {
    pub cms_base_url: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Option<String>,
}

impl OAuthClient {
    pub fn load(vars: &impl Variables) -> Result<OAuthClient, Error> {
        let redirect_uri = required(vars, "redirect_uri")?;
        Url::parse(&redirect_uri)
            .map_err(|e| Error::Config(format!("`redirect_uri` is not a URL ({e})")))?;
        Ok(OAuthClient {
            cms_base_url: origin(vars, "cms_base_url")?,
            client_id: required(vars, "cms_client_id")?,
            redirect_uri,
            scopes: optional(vars, "cms_scopes")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let p = FakePlatform::new().with_var("cms_base_url", "not a url");
        let err = OAuthClient::load(&p).unwrap_err();
        assert!(err.to_string().contains("redirect_uri"), "{err}");
        let p = p.with_var("redirect_uri", "http://127.0.0.1:3000/bluebutton/callback");
        let err = OAuthClient::load(&p).unwrap_err();
        assert!(err.to_string().contains("cms_base_url"), "{err}");
        assert_eq!(err.status(), 500);
    }

    #[test]
    fn numbers_are_bounded() {
        let p = FakePlatform::new().with_var("page_size", "51");
        assert!(number(&p, "page_size", 50, 1..=50).is_err());
        let p = p.with_var("page_size", "20");
        assert_eq!(number(&p, "page_size", 50, 1..=50).unwrap(), 20);
        assert_eq!(number(&p, "unset", 4, 1..=16).unwrap(), 4);
    }

    #[test]
    fn origins_lose_their_trailing_slash() {
        let p = FakePlatform::new().with_var("cms_base_url", "https://sandbox.bluebutton.cms.gov/");
        assert_eq!(
            origin(&p, "cms_base_url").unwrap(),
            "https://sandbox.bluebutton.cms.gov"
        );
        let p = p.with_var("cms_base_url", "ftp://x");
        assert!(origin(&p, "cms_base_url").is_err());
    }
}
