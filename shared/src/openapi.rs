//! The OpenAPI 3.1 document, generated from the route annotations below and from the types the handlers
//! really serialize, so the published spec cannot drift from the code. Only the `docs` component's build
//! script uses this module (feature `openapi`), so no `.wasm` carries the generator.

// The path functions and the doc-only types exist for their annotations: utoipa reads them, nothing
// calls or builds them.
#![allow(dead_code)]

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::auth::oauth::AuthorizationStart;
use crate::cms::search::{
    CLAIM_SOURCES_PATTERN, CLAIM_TYPES_PATTERN, DATE_FILTER_PATTERN, TOKENS_PATTERN,
};
use crate::cms::sync::SyncReport;
use crate::config::ApiVersion;
use crate::connect::dead_letters::DeadLetter;
use crate::connect::outbox::OutboxEntry;
use crate::connect::DeliveryResult;
use crate::fhir::ResourceType;
use crate::http::health::Health;
use crate::http::problem::Problem;
use crate::http::routes::callback::SessionGranted;
use crate::http::routes::connect::{DeadLetterReplay, Listing};

/// The language of CMS's pages.
#[derive(ToSchema)]
#[allow(non_camel_case_types)]
enum Lang {
    en,
    es,
}

/// `since`'s one value.
#[derive(ToSchema)]
#[allow(non_camel_case_types)]
enum Since {
    /// What changed since this patient's last complete fetch of the type.
    last,
}

/// A FHIR R4 `searchset` Bundle holding every entry of every CMS page once, in CMS order.
#[derive(ToSchema)]
struct SearchsetBundle {
    #[schema(rename = "resourceType", example = "Bundle")]
    resource_type: String,
    #[schema(rename = "type", example = "searchset")]
    kind: String,
    /// One link, `self`, to this endpoint.
    link: Vec<BundleLink>,
    entry: Vec<BundleEntry>,
    /// The number of entries.
    total: usize,
}

#[derive(ToSchema)]
struct BundleLink {
    relation: String,
    url: String,
}

#[derive(ToSchema)]
struct BundleEntry {
    /// A Patient, Coverage or ExplanationOfBenefit as CMS sent it.
    #[schema(value_type = Object)]
    resource: serde_json::Value,
}

/// Any FHIR R4 resource (a Bundle's entries are delivered one by one).
#[derive(ToSchema)]
struct FhirResource {
    #[schema(
        rename = "resourceType",
        example = "Bundle",
        pattern = "^[A-Z][A-Za-z]+$"
    )]
    resource_type: String,
}

/// A date filter: `lt|le|gt|ge` and a FHIR date (`2024`, `2024-05`, `2024-05-31`,
/// `2024-05-31T12:00:00Z`).
struct DateFilter;

impl utoipa::PartialSchema for DateFilter {
    fn schema() -> RefOr<Schema> {
        string_matching(
            DATE_FILTER_PATTERN,
            "lt|le|gt|ge and a date, e.g. `gt2024-01-31`",
        )
    }
}
impl ToSchema for DateFilter {}

/// Claim types, comma-separated.
struct ClaimTypes;

impl utoipa::PartialSchema for ClaimTypes {
    fn schema() -> RefOr<Schema> {
        string_matching(
            CLAIM_TYPES_PATTERN,
            "claim types, comma-separated, e.g. `carrier,pde`",
        )
    }
}
impl ToSchema for ClaimTypes {}

fn string_matching(pattern: &str, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

/// `POST /bluebutton/sync`'s optional body.
#[derive(ToSchema)]
struct SyncRequest {
    /// Sync only this patient (by default, every patient with a session).
    #[schema(example = "-20140000010000")]
    patient: Option<String>,
}

/// The parameters every `GET /bluebutton/fhir/{type}` takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct FetchParams {
    /// Must be the session's own patient.
    patient: Option<String>,
    /// When CMS last updated the resource: `lt|le|gt|ge` + date, repeatable.
    #[param(rename = "_lastUpdated", inline)]
    last_updated: Option<Vec<DateFilter>>,
    /// `last`: only what changed since the last complete fetch.
    #[param(inline)]
    since: Option<Since>,
    /// Also deliver to connect (default true).
    push: Option<bool>,
    /// Answer with the Bundle (default true), or with the delivery to connect (empty with `push=false`).
    return_cms: Option<bool>,
}

/// The filters only `GET /bluebutton/fhir/ExplanationOfBenefit` takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct ClaimFilters {
    /// Claim types, e.g. `carrier,pde`.
    #[param(rename = "type", inline)]
    kind: Option<ClaimTypes>,
    /// When the service was provided: `lt|le|gt|ge` + date, repeatable.
    #[param(rename = "service-date", inline)]
    service_date: Option<Vec<DateFilter>>,
}

/// A `GET /bluebutton/fhir/{type}` path: each type its own, with the same answers.
macro_rules! fetch_path {
    ($name:ident, $path:literal, params($($params:ty),+), $summary:literal, $description:literal) => {
        #[doc = $summary]
        #[doc = ""]
        #[doc = $description]
        #[utoipa::path(get, path = $path, tag = "fhir",
            security(("session" = [])),
            params($($params),+),
            responses(
                (status = 200, description = "The Bundle (or, with `return_cms=false`, the delivery to connect)", content(
                    (SearchsetBundle = "application/fhir+json"),
                    (DeliveryResult = "application/json"),
                )),
                (status = 202, description = "With `return_cms=false`: some batches are queued for connect", body = DeliveryResult),
                (status = 400, response = Problem),
                (status = 401, response = Problem),
                (status = 403, response = Problem),
                (status = 502, response = Problem),
                (status = 504, response = Problem),
            ))]
        fn $name() {}
    };
}

/// Start the beneficiary's authorization at CMS.
///
/// Creates a single-use `state` (valid 10 minutes) and a PKCE S256 verifier, and redirects the browser to
/// CMS's consent page. API clients that send `Accept: application/json` get the URL instead.
#[utoipa::path(get, path = "/bluebutton/authorize", tag = "authorization",
    params(
        ("lang" = inline(Option<Lang>), Query, description = "CMS page language"),
        ("return_to" = Option<String>, Query,
            pattern = "^/([A-Za-z0-9._~!$&'()*+,;=:@%-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?)?$(?!\\n)",
            description = "A plain path on this server, echoed by the callback"),
    ),
    responses(
        (status = 302, description = "Redirect to CMS", headers(("location" = String, description = "CMS's authorize URL"))),
        (status = 200, description = "The authorize URL, for `Accept: application/json`", body = AuthorizationStart),
        (status = 400, response = Problem),
        (status = 500, response = Problem),
    ))]
fn authorize() {}

/// CMS sends the beneficiary back here.
///
/// Takes the state back (once), exchanges the code with the PKCE verifier, seals the tokens in the store,
/// and answers with an opaque session. A refusal at CMS arrives as `error=access_denied` (403). A state
/// this server did not issue, or issued and already used or let expire, is refused (403) before CMS is
/// called; a missing `code` is a 400.
#[utoipa::path(get, path = "/bluebutton/callback", tag = "authorization",
    params(
        ("code" = Option<String>, Query, description = "The authorization code from CMS"),
        ("state" = String, Query, min_length = 1, description = "The state `/bluebutton/authorize` created"),
        ("error" = Option<String>, Query, description = "CMS's error, e.g. `access_denied`"),
    ),
    responses(
        (status = 200, description = "A session for this beneficiary", body = SessionGranted),
        (status = 400, response = Problem),
        (status = 403, response = Problem),
        (status = 500, response = Problem),
        (status = 502, response = Problem),
        (status = 504, response = Problem),
    ))]
fn callback() {}

/// End a session: revoke its tokens at CMS (with `grant=true`, the beneficiary's data access grant for
/// this app too) and forget them. If CMS cannot be reached the session is kept, so the call can be
/// retried.
#[utoipa::path(delete, path = "/bluebutton/session", tag = "authorization",
    security(("session" = [])),
    params(("grant" = Option<bool>, Query, description = "Also end the data access grant at CMS (`/o/revoke/`): the app reads nothing of this beneficiary's until they consent again. Default `false`: only this session's tokens (`/o/revoke_token/`)")),
    responses(
        (status = 204, description = "Revoked and forgotten"),
        (status = 400, response = Problem),
        (status = 401, response = Problem),
        (status = 502, response = Problem),
        (status = 504, response = Problem),
    ))]
fn end_session() {}

fetch_path!(
    fetch_patient,
    "/bluebutton/fhir/Patient",
    params(FetchParams),
    "Every page of the session's Patient resource from CMS.",
    "One `searchset` Bundle with each entry once, in CMS order. Large results stream (`x-streamed: \
     true`); smaller ones carry `x-pages-fetched` and `x-upstream-retries`. Unless `push=false`, the \
     resources are also delivered to connect; `return_cms=false` answers with that delivery instead. \
     401: unknown session, or the grant is gone (authorize again); 403: another patient, or a scope \
     withheld at consent; 502/504: a page failed for good at CMS (named)."
);
fetch_path!(
    fetch_coverage,
    "/bluebutton/fhir/Coverage",
    params(FetchParams),
    "Every page of the session's Coverage resources from CMS (Parts A, B, C and D).",
    "As for Patient: one Bundle, each entry once, delivered to connect unless `push=false`."
);
fetch_path!(
    fetch_claims,
    "/bluebutton/fhir/ExplanationOfBenefit",
    params(FetchParams, ClaimFilters),
    "Every page of the session's claims (ExplanationOfBenefit) from CMS.",
    "As for Patient, with the claim filters `type` and `service-date` besides."
);
fetch_path!(
    fetch_claims_v3,
    "/bluebutton/fhir/ExplanationOfBenefit",
    params(FetchParams, ClaimFilters, V3ClaimFilters),
    "Every page of the session's claims (ExplanationOfBenefit) from CMS.",
    "As for Patient, with the claim filters `type`, `service-date`, `_tag`, `_source` and \
     `_security:not` besides. Without `_tag` or `_source`, the claims of `cms_eob_sources` are \
     fetched (by default final action claims, NCH and DDPS). A partially adjudicated claim is left \
     out when its final version (the same claim identifier) comes in the same fetch."
);
fetch_path!(
    fetch_insurance_card,
    "/bluebutton/fhir/insurance-card",
    params(CardParams),
    "The beneficiary's digital insurance card, from CMS's `Patient/$generate-insurance-card`.",
    "A `collection` Bundle (CARIN Digital Insurance Card) of the beneficiary's Patient, their \
     Coverage and the payer's Organization, delivered to connect unless `push=false`. Needs the \
     Patient and Coverage scopes."
);

/// `_source`: claim sources, comma-separated.
struct ClaimSourcesParam;

impl utoipa::PartialSchema for ClaimSourcesParam {
    fn schema() -> RefOr<Schema> {
        string_matching(
            CLAIM_SOURCES_PATTERN,
            "claim sources, comma-separated, e.g. `NCH,DDPS` or `FISS,MCS,VMS`",
        )
    }
}
impl ToSchema for ClaimSourcesParam {}

/// FHIR tokens, comma-separated.
struct Tokens;

impl utoipa::PartialSchema for Tokens {
    fn schema() -> RefOr<Schema> {
        string_matching(
            TOKENS_PATTERN,
            "FHIR tokens (`code` or `system|code`), comma-separated",
        )
    }
}
impl ToSchema for Tokens {}

/// The claim filters Blue Button v3 adds.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct V3ClaimFilters {
    /// Claims with these `meta.tag` codes, e.g. `Adjudicated` or `PartiallyAdjudicated`.
    #[param(rename = "_tag", inline)]
    tag: Option<Tokens>,
    /// Claims from these systems: final action `NCH`, `DDPS`; partially adjudicated `FISS`, `MCS`,
    /// `VMS`; `CWF`.
    #[param(rename = "_source", inline)]
    source: Option<ClaimSourcesParam>,
    /// Leave out claims with these security labels, e.g. `42CFRPart2`.
    #[param(rename = "_security:not", inline)]
    security_not: Option<Tokens>,
}

/// The parameters of `GET /bluebutton/fhir/insurance-card`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
struct CardParams {
    /// Must be the session's own patient.
    patient: Option<String>,
    /// Also deliver to connect (default true).
    push: Option<bool>,
    /// Answer with the Bundle (default true), or with the delivery to connect.
    return_cms: Option<bool>,
}

/// Sync every authorized patient (or one) to connect: what changed since the last sync of each type.
#[utoipa::path(post, path = "/bluebutton/sync", tag = "connect",
    security(("admin_key" = [])),
    request_body(content = Option<SyncRequest>, description = "Optional: one patient to sync", content_type = "application/json"),
    responses(
        (status = 200, description = "Per patient and type", body = SyncReport),
        (status = 202, description = "As 200, with some batches queued for connect", body = SyncReport),
        (status = 400, response = Problem),
        (status = 401, response = Problem),
        (status = 404, description = "Admin routes are disabled (no `admin_api_key`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = Problem),
    ))]
fn sync() {}

/// Deliver FHIR resources to connect (a Bundle's entries, or one resource).
#[utoipa::path(post, path = "/bluebutton/connect/deliver", tag = "connect",
    security(("admin_key" = [])),
    params(("patient" = Option<String>, Query, description = "Whose resources these are (names dead letters)")),
    request_body(content = FhirResource, description = "A FHIR R4 Bundle or resource", content_type = "application/json"),
    responses(
        (status = 200, description = "Everything delivered or dead-lettered", body = DeliveryResult),
        (status = 202, description = "Some batches are queued in the outbox", body = DeliveryResult),
        (status = 400, response = Problem),
        (status = 401, response = Problem),
        (status = 404, description = "Admin routes are disabled (no `admin_api_key`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, response = Problem),
    ))]
fn deliver() {}

/// Batches waiting for connect, oldest first (their payloads are kept but never listed).
#[utoipa::path(get, path = "/bluebutton/connect/outbox", tag = "connect",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The outbox", body = Listing<OutboxEntry>),
        (status = 401, response = Problem),
        (status = 404, description = "Admin routes are disabled (no `admin_api_key`)", body = Problem, content_type = "application/problem+json"),
    ))]
fn outbox() {}

/// Deliver the outbox again, oldest first; each batch leaves it only once connect confirms it.
/// (Every delivery and every sync does this first, too.)
#[utoipa::path(post, path = "/bluebutton/connect/outbox/replay", tag = "connect",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The outbox is empty", body = DeliveryResult),
        (status = 202, description = "Some batches still wait: connect is unavailable", body = DeliveryResult),
        (status = 401, response = Problem),
        (status = 404, description = "Admin routes are disabled (no `admin_api_key`)", body = Problem, content_type = "application/problem+json"),
    ))]
fn replay() {}

/// Resources connect refused, with its answers (the resources are kept, sealed, but not listed).
#[utoipa::path(get, path = "/bluebutton/connect/dead-letters", tag = "connect",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The dead letters, oldest first", body = Listing<DeadLetter>),
        (status = 401, response = Problem),
        (status = 404, description = "Admin routes are disabled (no `admin_api_key`)", body = Problem, content_type = "application/problem+json"),
    ))]
fn dead_letters() {}

/// Deliver every dead letter's resource again (repaired, if `connect_repair` is on now); each leaves
/// the list once delivered, queued, or refused again as a new dead letter.
#[utoipa::path(post, path = "/bluebutton/connect/dead-letters/replay", tag = "connect",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Replayed", body = DeadLetterReplay),
        (status = 202, description = "Replayed; some resources wait in the outbox", body = DeadLetterReplay),
        (status = 401, response = Problem),
        (status = 404, description = "Admin routes are disabled (no `admin_api_key`)", body = Problem, content_type = "application/problem+json"),
    ))]
fn replay_dead_letters() {}

/// Deliver one dead letter's resource again.
#[utoipa::path(post, path = "/bluebutton/connect/dead-letters/{id}/replay", tag = "connect",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "Replayed", body = DeadLetterReplay),
        (status = 202, description = "Replayed; the resource waits in the outbox", body = DeadLetterReplay),
        (status = 401, response = Problem),
        (status = 404, response = Problem),
    ))]
fn replay_dead_letter() {}

/// Delete one dead letter (its resource too).
#[utoipa::path(delete, path = "/bluebutton/connect/dead-letters/{id}", tag = "connect",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The dead letter's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Problem),
        (status = 404, response = Problem),
    ))]
fn delete_dead_letter() {}

/// The accounting of disclosures: every authorization, read from CMS and delivery to connect that
/// touched a beneficiary's data, as FHIR R4 AuditEvents in a `searchset` Bundle, newest first. With a
/// session: that beneficiary's own (`patient`, if given, must be theirs). With the admin key: one
/// beneficiary's (`patient`), or every event. Events name the data by type and a hash of its ids, never
/// its content, and the session by a keyed hash. Kept `audit_retention_days` (six years by default).
#[utoipa::path(get, path = "/bluebutton/audit", tag = "audit",
    security(("session" = []), ("admin_key" = [])),
    params(
        ("_count" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Events per page (50 unless given); the `next` link gives the following page"),
        ("_since" = Option<String>, Query, pattern = "^([0-9]{4}(-(0[1-9]|1[0-2]))?|([0-9]{4}-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|[0-9]{4}-(0[469]|11)-(0[1-9]|[12][0-9]|30)|[0-9]{4}-02-(0[1-9]|1[0-9]|2[0-8])|([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)-02-29)(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,9})?)?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])?)?)$(?!\\n)",
            description = "Only events recorded from the start of this FHIR date or dateTime on (`2026-12-01`, `2026-12-01T10:00:00Z`; UTC when no zone is given)"),
        ("_before" = Option<u64>, Query, minimum = 0, maximum = 9007199254740991.0, description = "Where a page starts: taken from a `next` link"),
        ("patient" = Option<String>, Query, description = "The beneficiary (`-20140000008325` or `Patient/-20140000008325`); with a session, only its own"),
    ),
    responses(
        (status = 200, description = "A FHIR `searchset` Bundle of AuditEvents", content_type = "application/fhir+json", body = Object),
        (status = 400, response = Problem),
        (status = 401, response = Problem),
        (status = 403, response = Problem),
    ))]
fn audit() {}

/// Whether the deployment's settings are usable, and whether CMS and connect can be reached. Values are
/// never shown.
#[utoipa::path(get, path = "/bluebutton/healthz", tag = "operations",
    responses(
        (status = 200, description = "Ready (`ok`), or ready but an upstream is unreachable (`degraded`)", body = Health),
        (status = 503, description = "A setting is unusable, or a component did not answer", body = Health),
    ))]
fn health() {}

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
fn openapi() {}

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
        authorize,
        callback,
        end_session,
        fetch_patient,
        fetch_coverage,
        sync,
        deliver,
        outbox,
        replay,
        dead_letters,
        replay_dead_letters,
        replay_dead_letter,
        delete_dead_letter,
        audit,
        health,
        openapi,
    ),
    components(schemas(Problem, ResourceType), responses(Problem)),
    modifiers(&Security),
    tags(
        (name = "authorization", description = "The beneficiary's consent at CMS, and sessions"),
        (name = "fhir", description = "Claims data from CMS"),
        (name = "connect", description = "Delivery to LinuxForHealth connect (admin)"),
        (name = "audit", description = "The accounting of disclosures (FHIR AuditEvents)"),
        (name = "operations", description = "Health and this document"),
    )
)]
struct ApiDoc;

/// The claims route as v2 serves it.
#[derive(OpenApi)]
#[openapi(paths(fetch_claims))]
struct V2Routes;

/// The claims route with v3's filters, and the insurance card.
#[derive(OpenApi)]
#[openapi(paths(fetch_claims_v3, fetch_insurance_card))]
struct V3Routes;

/// The OpenAPI 3.1 document of a deployment on Blue Button `version`, as JSON.
pub fn json(version: ApiVersion) -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(match version {
        ApiVersion::V2 => V2Routes::openapi(),
        ApiVersion::V3 => V3Routes::openapi(),
    });
    doc.to_pretty_json().expect("the document serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cms::search::V3_CLAIM_FILTERS;

    #[test]
    fn every_resource_type_has_its_own_path_and_only_claims_take_claim_filters() {
        let doc: serde_json::Value = serde_json::from_str(&json(ApiVersion::V2)).unwrap();
        for resource_type in ResourceType::ALL {
            let path = format!("/bluebutton/fhir/{resource_type}");
            let params: Vec<&str> = doc["paths"][&path]["get"]["parameters"]
                .as_array()
                .unwrap_or_else(|| panic!("{path} is documented"))
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for filter in resource_type.filters() {
                assert!(params.contains(filter), "{path} documents {filter}");
            }
            for name in ["type", "service-date"] {
                assert_eq!(
                    params.contains(&name),
                    resource_type.filters().contains(&name),
                    "{path} and {name}"
                );
            }
        }
    }

    #[test]
    fn v3_documents_its_claim_filters_and_the_insurance_card_and_v2_neither() {
        let doc = |v| serde_json::from_str::<serde_json::Value>(&json(v)).unwrap();
        let (v2, v3) = (doc(ApiVersion::V2), doc(ApiVersion::V3));
        let claims = "/bluebutton/fhir/ExplanationOfBenefit";
        for name in V3_CLAIM_FILTERS {
            parameter(&v3, claims, name);
            let params = v2["paths"][claims]["get"]["parameters"].as_array().unwrap();
            assert!(params.iter().all(|p| p["name"] != name), "{name} on v2");
        }
        assert_eq!(
            parameter(&v3, claims, "_source")["schema"]["pattern"],
            CLAIM_SOURCES_PATTERN
        );
        let card = "/bluebutton/fhir/insurance-card";
        assert!(v3["paths"][card]["get"].is_object());
        assert!(v2["paths"].get(card).is_none());
    }

    fn parameter<'a>(doc: &'a serde_json::Value, path: &str, name: &str) -> &'a serde_json::Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} documents {name}"))
    }

    #[test]
    fn the_documented_filter_patterns_are_the_ones_enforced() {
        let doc: serde_json::Value = serde_json::from_str(&json(ApiVersion::V2)).unwrap();
        let claims = "/bluebutton/fhir/ExplanationOfBenefit";
        for name in ["_lastUpdated", "service-date"] {
            let schema = &parameter(&doc, claims, name)["schema"];
            assert_eq!(schema["items"]["pattern"], DATE_FILTER_PATTERN, "{schema}");
        }
        let schema = &parameter(&doc, claims, "type")["schema"];
        assert_eq!(schema["pattern"], CLAIM_TYPES_PATTERN, "{schema}");
    }

    #[test]
    fn the_documented_since_pattern_is_the_one_enforced() {
        let doc: serde_json::Value = serde_json::from_str(&json(ApiVersion::V2)).unwrap();
        let schema = &parameter(&doc, "/bluebutton/audit", "_since")["schema"];
        assert_eq!(
            schema["pattern"],
            crate::cms::search::FHIR_DATE_PATTERN,
            "{schema}"
        );
    }

    #[test]
    fn the_documented_return_to_pattern_is_the_one_enforced() {
        let doc: serde_json::Value = serde_json::from_str(&json(ApiVersion::V2)).unwrap();
        let params = doc["paths"]["/bluebutton/authorize"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let return_to = params.iter().find(|p| p["name"] == "return_to").unwrap();
        assert_eq!(
            return_to["schema"]["pattern"],
            crate::auth::oauth::RETURN_TO_PATTERN
        );
        let lang = params.iter().find(|p| p["name"] == "lang").unwrap();
        assert!(
            lang["schema"].to_string().contains(r#"["en","es"]"#),
            "{}",
            lang["schema"]
        );
    }
}
