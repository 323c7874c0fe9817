//! One handler per route, grouped by the component that serves them, and [`handle`]: the single way every
//! component enters `shared`. A route checks its method and its caller before it reads any body, and
//! reads no more than its limit. Each component is its own type, so its `.wasm` holds only its routes.

pub mod audit;
pub mod authorize;
pub mod callback;
pub mod connect;
#[cfg(feature = "docs")]
pub mod docs;
pub mod fhir;
pub mod sync;

use std::future::Future;

use crate::http::health::{self, Check, Upstream};
use crate::http::problem::respond;
use crate::http::write_full;
use crate::ports::{Platform, RequestBody, ResponseWriter};

/// A component of the app (spin.toml's `[component.*]`): the routes it serves and what it depends on.
pub trait Component {
    /// The settings it reads and the services it calls, for its health report; `None` when it answers
    /// `/bluebutton/healthz` itself (the docs component adds up the others').
    fn health(&self) -> Option<(&'static [Check], &'static [Upstream])>;

    fn serve(
        &self,
        platform: &impl Platform,
        head: http::request::Parts,
        body: impl RequestBody,
        writer: impl ResponseWriter,
    ) -> impl Future<Output = ()>;
}

/// Serves one request for `component`.
pub async fn handle(
    component: impl Component,
    platform: &impl Platform,
    head: http::request::Parts,
    body: impl RequestBody,
    writer: impl ResponseWriter,
) {
    match component.health() {
        // Reached only through Spin's local service chaining: the docs component's health asks it.
        Some((checks, upstreams)) if head.uri.path() == health::PATH => {
            let report = health::component(platform, checks, upstreams).await;
            write_full(writer, report.response())
        }
        _ => component.serve(platform, head, body, writer).await,
    }
}

/// `GET /bluebutton/authorize`.
pub struct Authorize;

impl Component for Authorize {
    fn health(&self) -> Option<(&'static [Check], &'static [Upstream])> {
        Some((&[Check::OAuthClient, Check::TokenKey, Check::StateTtl], &[]))
    }

    async fn serve(
        &self,
        platform: &impl Platform,
        head: http::request::Parts,
        _: impl RequestBody,
        writer: impl ResponseWriter,
    ) {
        write_full(writer, respond(authorize::authorize(platform, &head)))
    }
}

/// `GET /bluebutton/callback`, `DELETE /bluebutton/session`.
pub struct Callback;

impl Component for Callback {
    fn health(&self) -> Option<(&'static [Check], &'static [Upstream])> {
        Some((
            &[
                Check::OAuthClient,
                Check::ClientSecret,
                Check::TokenKey,
                Check::SessionLimits,
                Check::Connect,
                Check::Audit,
            ],
            &[Upstream::Cms],
        ))
    }

    async fn serve(
        &self,
        platform: &impl Platform,
        head: http::request::Parts,
        _: impl RequestBody,
        writer: impl ResponseWriter,
    ) {
        let answer = if head.uri.path() == callback::SESSION_PATH {
            callback::end_session(platform, &head).await
        } else {
            callback::callback(platform, &head).await
        };
        write_full(writer, respond(answer))
    }
}

/// `GET /bluebutton/fhir/{type}`, `POST /bluebutton/sync`, `GET /bluebutton/audit`.
pub struct FhirFetch;

impl Component for FhirFetch {
    fn health(&self) -> Option<(&'static [Check], &'static [Upstream])> {
        Some((
            &[
                Check::OAuthClient,
                Check::ClientSecret,
                Check::TokenKey,
                Check::SessionLimits,
                Check::FetchLimits,
                Check::Connect,
                Check::AdminKey,
                Check::Audit,
            ],
            &[Upstream::Cms, Upstream::Connect],
        ))
    }

    async fn serve(
        &self,
        platform: &impl Platform,
        head: http::request::Parts,
        body: impl RequestBody,
        writer: impl ResponseWriter,
    ) {
        if head.uri.path() == sync::PATH {
            write_full(writer, respond(sync::sync(platform, &head, body).await))
        } else if head.uri.path() == audit::PATH {
            write_full(writer, respond(audit::audit(platform, &head).await))
        } else {
            fhir::fetch(platform, &head, writer).await
        }
    }
}

/// `/bluebutton/connect/...` (admin).
pub struct ConnectPush;

impl Component for ConnectPush {
    fn health(&self) -> Option<(&'static [Check], &'static [Upstream])> {
        Some((
            &[
                Check::Connect,
                Check::TokenKey,
                Check::AdminKey,
                Check::Audit,
            ],
            &[Upstream::Connect],
        ))
    }

    async fn serve(
        &self,
        platform: &impl Platform,
        head: http::request::Parts,
        body: impl RequestBody,
        writer: impl ResponseWriter,
    ) {
        write_full(
            writer,
            respond(connect::handle(platform, &head, body).await),
        )
    }
}

/// `/docs`, `/openapi.json`, `/bluebutton/healthz`, and a problem+json 404 for every other path.
#[cfg(feature = "docs")]
pub struct Docs(pub &'static docs::Assets);

#[cfg(feature = "docs")]
impl Component for Docs {
    fn health(&self) -> Option<(&'static [Check], &'static [Upstream])> {
        None
    }

    async fn serve(
        &self,
        platform: &impl Platform,
        head: http::request::Parts,
        _: impl RequestBody,
        writer: impl ResponseWriter,
    ) {
        write_full(writer, docs::handle(platform, &head, self.0).await)
    }
}
