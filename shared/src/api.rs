//! The shapes of this API's JSON answers, and the OpenAPI 3.1 document generated from them and from the
//! route annotations, so the published spec cannot drift from the code.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::connect::{DeadLetter, OutboxEntry};

/// `GET /bluebutton/callback`'s answer: the caller's session. The CMS tokens stay on the server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionGranted {
    /// Opaque bearer for `Authorization: Bearer <session>`; shown once, stored only as its SHA-256.
    pub session: String,
    /// The FHIR id of the beneficiary who consented; the session reaches only this patient.
    #[schema(example = "-20140000010000")]
    pub patient: String,
    /// What the beneficiary granted, space-separated.
    pub scope: String,
    /// When the current CMS access token expires (RFC 3339); it is refreshed before that.
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
}

/// A list of items.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Listing<T> {
    pub count: usize,
    pub items: Vec<T>,
}

impl<T> Listing<T> {
    pub fn new(items: Vec<T>) -> Self {
        Listing {
            count: items.len(),
            items,
        }
    }
}

/// A batch waiting in the outbox (its payload is kept but never listed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OutboxItem {
    pub id: String,
    pub patient: String,
    /// Where on connect it goes, e.g. `/fhir/Bundle`.
    pub target: String,
    pub resources: usize,
    pub bytes: usize,
    pub attempts: u32,
    pub last_error: String,
    pub queued_at: String,
    pub updated_at: String,
}

impl From<OutboxEntry> for OutboxItem {
    fn from(e: OutboxEntry) -> Self {
        OutboxItem {
            id: e.id,
            patient: e.patient,
            target: e.target,
            resources: e.resources,
            bytes: e.bytes,
            attempts: e.attempts,
            last_error: e.last_error,
            queued_at: e.queued_at,
            updated_at: e.updated_at,
        }
    }
}

/// A resource connect refused, with connect's answer (the resource itself is kept but not listed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterItem {
    pub patient: String,
    pub resource_type: String,
    pub id: String,
    pub status: u16,
    pub detail: String,
    pub time: String,
}

impl From<DeadLetter> for DeadLetterItem {
    fn from(d: DeadLetter) -> Self {
        DeadLetterItem {
            patient: d.patient,
            resource_type: d.resource_type,
            id: d.id,
            status: d.status,
            detail: d.detail,
            time: d.time,
        }
    }
}

/// A FHIR R4 `searchset` Bundle holding every entry of every CMS page once, in CMS order.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchsetBundle {
    #[schema(example = "Bundle")]
    pub resource_type: String,
    #[serde(rename = "type")]
    #[schema(example = "searchset")]
    pub kind: String,
    /// One link, `self`, to this endpoint.
    pub link: Vec<BundleLink>,
    pub entry: Vec<BundleEntry>,
    /// The number of entries.
    pub total: usize,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BundleLink {
    pub relation: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BundleEntry {
    /// A Patient, Coverage or ExplanationOfBenefit as CMS sent it.
    #[schema(value_type = Object)]
    pub resource: serde_json::Value,
}

/// The resource types Blue Button 2.0 serves.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ResourceType {
    Patient,
    Coverage,
    ExplanationOfBenefit,
}

/// `since`'s one value.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Since {
    /// What changed since this patient's last complete fetch of the type.
    Last,
}

/// Any FHIR R4 resource (a Bundle's entries are delivered one by one).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FhirResource {
    #[serde(rename = "resourceType")]
    #[schema(example = "Bundle", pattern = "^[A-Z][A-Za-z]+$")]
    pub resource_type: String,
}

/// `GET /bluebutton/healthz`: whether the deployment's settings are usable (values never shown).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `misconfigured` (then the answer is 503).
    pub status: String,
    /// Per setting: `ok`, `unset` or why it is unusable.
    pub checks: std::collections::BTreeMap<String, String>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("opaque session from /bluebutton/callback")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("the admin_api_key variable")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bluebutton-spin",
        description = "A CMS Blue Button 2.0 client on Spin: authorize a Medicare beneficiary (OAuth 2.0 \
            with PKCE), fetch their claims data as FHIR R4 — every page — and deliver it to \
            LinuxForHealth connect. Errors are RFC 9457 problem documents.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::handlers::authorize_doc,
        crate::handlers::callback_doc,
        crate::handlers::end_session_doc,
        crate::fetch::fhir_fetch_doc,
        crate::fetch::sync_doc,
        crate::handlers::deliver_doc,
        crate::handlers::outbox_doc,
        crate::handlers::replay_doc,
        crate::handlers::dead_letters_doc,
        crate::handlers::health_doc,
        crate::handlers::openapi_doc,
    ),
    components(schemas(crate::problem::Problem, ResourceType, Since)),
    modifiers(&Security),
    tags(
        (name = "authorization", description = "The beneficiary's consent at CMS, and sessions"),
        (name = "fhir", description = "Claims data from CMS"),
        (name = "connect", description = "Delivery to LinuxForHealth connect (admin)"),
        (name = "operations", description = "Health and this document"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI 3.1 document, as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into())
}
