//! The FHIR R4 this app handles: the three resource types Blue Button serves, and resources kept as the
//! JSON text they came in (parsing every claim into a tree and writing it out again is most of a fetch's
//! CPU), with only what the pipeline needs read out of them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The resource types Blue Button 2.0 serves.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum ResourceType {
    Patient,
    Coverage,
    ExplanationOfBenefit,
}

impl ResourceType {
    pub const ALL: [ResourceType; 3] = [
        ResourceType::Patient,
        ResourceType::Coverage,
        ResourceType::ExplanationOfBenefit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Patient => "Patient",
            ResourceType::Coverage => "Coverage",
            ResourceType::ExplanationOfBenefit => "ExplanationOfBenefit",
        }
    }

    pub fn parse(name: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// "Patient, Coverage, ExplanationOfBenefit", for messages.
    pub fn names() -> String {
        ResourceType::ALL.map(ResourceType::as_str).join(", ")
    }

    /// The search parameter that names the patient (CMS scopes each search to the token's patient).
    pub fn patient_param(self) -> &'static str {
        match self {
            ResourceType::Patient => "_id",
            ResourceType::Coverage => "beneficiary",
            ResourceType::ExplanationOfBenefit => "patient",
        }
    }

    /// The search filters a caller may pass through to CMS (anything else is refused, not dropped).
    pub fn filters(self) -> &'static [&'static str] {
        match self {
            ResourceType::ExplanationOfBenefit => &["_lastUpdated", "type", "service-date"],
            ResourceType::Patient | ResourceType::Coverage => &["_lastUpdated"],
        }
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why some JSON is not the FHIR this app expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FhirError {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("a resource without a resourceType ({0})")]
    NoResourceType(String),
    #[error("not a Bundle")]
    NotABundle,
    #[error("an entry without a resource")]
    EntryWithoutResource,
}

/// One resource as JSON text, with its identity and `meta.lastUpdated` read out.
#[derive(Debug, Clone)]
pub struct Resource {
    pub resource_type: String,
    /// Empty when the resource has none.
    pub id: String,
    pub last_updated: Option<time::OffsetDateTime>,
    /// For a claim (an ExplanationOfBenefit): what tells its versions apart.
    pub claim: Option<ClaimVersion>,
    pub json: Box<RawValue>,
}

/// Which version of a claim an ExplanationOfBenefit is. v3 can serve a claim twice: partially
/// adjudicated (from FISS, MCS or VMS) and final (NCH, DDPS), with the same claim identifier.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimVersion {
    /// The claim's identifiers, `system|value`.
    pub identifiers: Vec<String>,
    pub partial: bool,
}

/// The tag code CMS gives a partially adjudicated claim (in `meta.tag`).
pub const PARTIALLY_ADJUDICATED: &str = "PartiallyAdjudicated";

/// The systems a v3 claim comes from (`_source`): final action `NCH` and `DDPS`, partially adjudicated
/// `FISS`, `MCS` and `VMS` ([`PARTIAL_SOURCES`]), and `CWF`.
pub const CLAIM_SOURCES: [&str; 6] = ["NCH", "DDPS", "FISS", "MCS", "VMS", "CWF"];

/// The end of the identifier system of a claim's group (`…/identifier/claim-group`).
const CLAIM_GROUP: &str = "/claim-group";

/// The `_source` values of partially adjudicated claims.
pub const PARTIAL_SOURCES: [&str; 3] = ["FISS", "MCS", "VMS"];

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(default)]
    id: String,
    #[serde(borrow)]
    meta: Option<HeadMeta<'a>>,
    #[serde(default, borrow)]
    identifier: Vec<Coded<'a>>,
}

#[derive(Deserialize)]
struct HeadMeta<'a> {
    #[serde(rename = "lastUpdated")]
    last_updated: Option<String>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tag: Vec<Coded<'a>>,
}

/// An Identifier or a Coding: a system and a value or code.
#[derive(Deserialize)]
struct Coded<'a> {
    #[serde(borrow)]
    system: Option<Cow<'a, str>>,
    #[serde(borrow, alias = "code")]
    value: Option<Cow<'a, str>>,
}

impl Head<'_> {
    fn claim(&self) -> Option<ClaimVersion> {
        if self.resource_type != "ExplanationOfBenefit" {
            return None;
        }
        let meta = self.meta.as_ref();
        let tagged = meta.is_some_and(|m| {
            m.tag
                .iter()
                .any(|t| t.value.as_deref() == Some(PARTIALLY_ADJUDICATED))
        });
        // `meta.source` is a URI; its last segment names the source system.
        let from_partial_source = meta.and_then(|m| m.source.as_deref()).is_some_and(|s| {
            let last = s.rsplit(['#', '/', ':']).next().unwrap_or(s);
            PARTIAL_SOURCES.iter().any(|p| last.eq_ignore_ascii_case(p))
        });
        // CMS types the claim group `uc` too, but many claims share one: it names no single claim.
        let identifiers = self
            .identifier
            .iter()
            .filter(|i| !i.system.as_deref().unwrap_or("").ends_with(CLAIM_GROUP))
            .filter_map(|i| {
                let value = i.value.as_deref()?;
                Some(format!("{}|{value}", i.system.as_deref().unwrap_or("")))
            })
            .collect();
        Some(ClaimVersion {
            identifiers,
            partial: tagged || from_partial_source,
        })
    }
}

impl Resource {
    pub fn from_raw(json: Box<RawValue>) -> Result<Resource, FhirError> {
        let head: Head = serde_json::from_str(json.get())
            .map_err(|e| FhirError::NoResourceType(e.to_string()))?;
        let claim = head.claim();
        let last_updated = head.meta.and_then(|m| m.last_updated).and_then(|t| {
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        });
        Ok(Resource {
            resource_type: head.resource_type,
            id: head.id,
            last_updated,
            claim,
            json,
        })
    }

    pub fn from_value(value: &serde_json::Value) -> Result<Resource, FhirError> {
        let json = serde_json::value::to_raw_value(value)
            .map_err(|e| FhirError::NotJson(e.to_string()))?;
        Resource::from_raw(json)
    }

    /// `Type/id`, its identity within a Bundle.
    pub fn key(&self) -> Option<String> {
        (!self.id.is_empty()).then(|| format!("{}/{}", self.resource_type, self.id))
    }
}

/// A Bundle read without building a tree of its entries.
#[derive(Deserialize)]
pub struct Bundle {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    pub total: Option<u64>,
    #[serde(default)]
    link: Vec<BundleLink>,
    entry: Option<Vec<BundleEntry>>,
}

#[derive(Deserialize)]
struct BundleLink {
    relation: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct BundleEntry {
    resource: Option<Box<RawValue>>,
}

impl Bundle {
    pub fn parse(json: &[u8]) -> Result<Bundle, FhirError> {
        let bundle: Bundle =
            serde_json::from_slice(json).map_err(|e| FhirError::NotJson(e.to_string()))?;
        if bundle.resource_type.as_deref() != Some("Bundle") {
            return Err(FhirError::NotABundle);
        }
        Ok(bundle)
    }

    /// The URL of the link with this relation (`next`, say).
    pub fn link(&self, relation: &str) -> Option<&str> {
        self.link
            .iter()
            .find(|l| l.relation.as_deref() == Some(relation))
            .and_then(|l| l.url.as_deref())
    }

    /// The entries' resources, in order.
    pub fn into_resources(self) -> Result<Vec<Resource>, FhirError> {
        self.entry
            .unwrap_or_default()
            .into_iter()
            .map(|e| Resource::from_raw(e.resource.ok_or(FhirError::EntryWithoutResource)?))
            .collect()
    }
}

/// The resources a body carries: a Bundle's entries, or the one resource it is.
pub fn resources_in(json: &[u8]) -> Result<Vec<Resource>, FhirError> {
    let raw: Box<RawValue> =
        serde_json::from_slice(json).map_err(|e| FhirError::NotJson(e.to_string()))?;
    let resource = Resource::from_raw(raw)?;
    if resource.resource_type == "Bundle" {
        Bundle::parse(resource.json.get().as_bytes())?.into_resources()
    } else {
        Ok(vec![resource])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_names_the_patient_its_own_way() {
        assert_eq!(ResourceType::Patient.patient_param(), "_id");
        assert_eq!(ResourceType::Coverage.patient_param(), "beneficiary");
        assert_eq!(
            ResourceType::ExplanationOfBenefit.patient_param(),
            "patient"
        );
        assert_eq!(ResourceType::parse("Encounter"), None);
        assert_eq!(
            ResourceType::parse("ExplanationOfBenefit"),
            Some(ResourceType::ExplanationOfBenefit)
        );
        assert_eq!(
            ResourceType::names(),
            "Patient, Coverage, ExplanationOfBenefit"
        );
    }

    #[test]
    fn filters_per_type() {
        assert!(ResourceType::Patient.filters().contains(&"_lastUpdated"));
        assert!(!ResourceType::Patient.filters().contains(&"type"));
        assert!(ResourceType::ExplanationOfBenefit
            .filters()
            .contains(&"service-date"));
        assert!(!ResourceType::Coverage.filters().contains(&"startIndex"));
    }

    #[test]
    fn a_claims_version_is_read_from_its_tag_or_source() {
        let claim = |json: &str| {
            Resource::from_raw(RawValue::from_string(json.into()).unwrap())
                .unwrap()
                .claim
        };
        let partial = claim(
            r#"{"resourceType":"ExplanationOfBenefit","id":"1","meta":{"tag":[
            {"system":"https://bluebutton.cms.gov/fhir/CodeSystem/Adjudication-Status",
             "code":"PartiallyAdjudicated"}]},
            "identifier":[{"system":"https://bluebutton.cms.gov/claim-id","value":"c\u00e91"},
              {"system":"https://bluebutton.cms.gov/resources/identifier/claim-group","value":"-4"}]}"#,
        )
        .unwrap();
        assert!(partial.partial);
        assert_eq!(
            partial.identifiers,
            ["https://bluebutton.cms.gov/claim-id|cé1"]
        );
        let by_source =
            claim(r#"{"resourceType":"ExplanationOfBenefit","meta":{"source":"urn:cms:MCS"}}"#);
        assert!(by_source.unwrap().partial);
        let fin = claim(r#"{"resourceType":"ExplanationOfBenefit","meta":{"source":"NCH"}}"#);
        assert!(!fin.unwrap().partial);
        assert_eq!(claim(r#"{"resourceType":"Patient","identifier":[]}"#), None);
    }

    #[test]
    fn a_body_is_a_bundles_entries_or_one_resource() {
        let bundle = br#"{"resourceType":"Bundle","type":"collection","entry":[
            {"resource":{"resourceType":"Patient","id":"a","meta":{"lastUpdated":"2024-01-02T03:04:05Z"}}},
            {"resource":{"resourceType":"Coverage","id":"b"}}]}"#;
        let resources = resources_in(bundle).unwrap();
        assert_eq!(resources.len(), 2);
        assert_eq!(resources[0].key().as_deref(), Some("Patient/a"));
        assert!(resources[0].last_updated.is_some());
        let one = resources_in(br#"{"resourceType":"Coverage","id":"c"}"#).unwrap();
        assert_eq!(one[0].key().as_deref(), Some("Coverage/c"));
        assert!(resources_in(br#"{"id":"c"}"#).is_err());
        assert!(resources_in(br#"{"resourceType":"Bundle","entry":[{}]}"#).is_err());
    }
}
