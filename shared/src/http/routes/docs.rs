//! The `docs` component's routes: `/docs/` (Swagger UI, served from the component itself, offline),
//! `/openapi.json`, `/bluebutton/healthz` for the whole app, and a problem+json 404 for any path no
//! other component serves.

use std::io::Read;

use crate::config::ApiVersion;
use crate::error::Error;
use crate::http::health::{self, PATH as HEALTH_PATH};
use crate::http::problem::respond;
use crate::http::{header, Response};
use crate::ports::Platform;

/// What the docs component serves, generated and gzip-compressed at build time: Swagger UI's files (the
/// bundle is 1.5 MB as it comes) and the OpenAPI document (so the component carries no generator).
pub struct Assets {
    /// Under `/docs/`.
    pub files: &'static [Asset],
    /// `/openapi.json`, for Blue Button v2 and v3 deployments.
    pub openapi: [Asset; 2],
}

impl Assets {
    fn openapi(&self, version: ApiVersion) -> &Asset {
        match version {
            ApiVersion::V2 => &self.openapi[0],
            ApiVersion::V3 => &self.openapi[1],
        }
    }
}

pub struct Asset {
    /// Under `/docs/`, e.g. `index.html`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub gzip: &'static [u8],
}

/// The components whose health the app's health adds up (their ids in spin.toml).
const COMPONENTS: [&str; 4] = ["authorize", "callback", "fhir-fetch", "connect-push"];

const DOCS_PREFIX: &str = "/docs/";

pub async fn handle(
    platform: &impl Platform,
    head: &http::request::Parts,
    assets: &Assets,
) -> Response {
    let path = head.uri.path();
    let ours = matches!(path, "/" | "/docs" | "/openapi.json" | HEALTH_PATH)
        || path.starts_with(DOCS_PREFIX);
    if head.method != http::Method::GET && head.method != http::Method::HEAD {
        return if ours {
            Error::method_not_allowed(&head.method, "GET").into_response()
        } else {
            not_found(path)
        };
    }
    match path {
        "/" | "/docs" => redirect("/docs/"),
        // The routes a deployment serves depend on its API version (v3 adds filters and a route).
        "/openapi.json" => {
            respond(ApiVersion::load(platform).and_then(|v| send(head, assets.openapi(v))))
        }
        HEALTH_PATH => health::app(platform, &COMPONENTS).await.response(),
        _ => match path.strip_prefix(DOCS_PREFIX) {
            Some(name) => respond(asset(head, assets, name)),
            None => not_found(path),
        },
    }
}

fn asset(head: &http::request::Parts, assets: &Assets, name: &str) -> Result<Response, Error> {
    let name = if name.is_empty() { "index.html" } else { name };
    let asset = assets
        .files
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| Error::NotFound(format!("no file /docs/{name}")))?;
    send(head, asset)
}

/// The file gzip-encoded when the client takes that, else decompressed.
fn send(head: &http::request::Parts, asset: &Asset) -> Result<Response, Error> {
    let takes_gzip = header(&head.headers, "accept-encoding").is_some_and(|accepted| {
        accepted
            .split(',')
            .any(|coding| coding.split(';').next().unwrap_or("").trim() == "gzip")
    });
    if takes_gzip {
        return Ok(file(asset.content_type, asset.gzip.to_vec(), Some("gzip")));
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(asset.gzip)
        .read_to_end(&mut plain)
        .map_err(|e| Error::Config(format!("the bundled {} is corrupt: {e}", asset.name)))?;
    Ok(file(asset.content_type, plain, None))
}

fn file(content_type: &str, body: Vec<u8>, encoding: Option<&str>) -> Response {
    let mut builder = http::Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("vary", "accept-encoding");
    if let Some(encoding) = encoding {
        builder = builder.header("content-encoding", encoding);
    }
    builder.body(body).expect("a valid response")
}

fn redirect(to: &'static str) -> Response {
    http::Response::builder()
        .status(302)
        .header("location", to)
        .body(Vec::new())
        .expect("a valid response")
}

fn not_found(path: &str) -> Response {
    Error::NotFound(format!(
        "no route {path}: see /docs for the API, or /openapi.json"
    ))
    .into_response()
}
