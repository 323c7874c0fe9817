//! Conformance repair before delivery (`connect_repair = data-absent-reason`, the default). Connect
//! validates every resource as strict FHIR R4, and CMS's claims leave out elements R4 requires
//! (`ExplanationOfBenefit.provider`, `item.productOrService`, …). FHIR's own way to say "required, but
//! not known" is the data-absent-reason extension: each missing required element gets it, and nothing
//! else changes — no value is invented. A repaired resource carries a `meta.tag` saying so.

mod r4_required;

use serde_json::{json, Map, Value};

use crate::fhir::FhirError;

/// An element a repair must know (see the generated [`r4_required::TYPES`]).
pub(super) struct Element {
    pub name: &'static str,
    /// Its FHIR type.
    pub of: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub list: bool,
}

#[derive(PartialEq)]
pub(super) enum Kind {
    Primitive,
    Complex,
}

pub const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// The tag a repaired resource carries.
pub const REPAIR_TAG_SYSTEM: &str = "https://bluebutton-spin.dev/fhir/CodeSystem/repair";
pub const REPAIR_TAG_CODE: &str = "data-absent-reason";

fn elements_of(fhir_type: &str) -> Option<&'static [Element]> {
    r4_required::TYPES
        .binary_search_by(|(name, _)| name.cmp(&fhir_type))
        .ok()
        .map(|i| r4_required::TYPES[i].1)
}

fn absent() -> Value {
    json!({"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]})
}

fn present(value: Option<&Value>) -> bool {
    !matches!(value, None | Some(Value::Null))
}

/// The resource with every missing required element marked absent, or `None` when nothing was missing.
pub fn repair(json: &[u8]) -> Result<Option<Vec<u8>>, FhirError> {
    let mut resource: Value =
        serde_json::from_slice(json).map_err(|e| FhirError::NotJson(e.to_string()))?;
    let Some(object) = resource.as_object_mut() else {
        return Ok(None);
    };
    let Some(elements) = object
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(elements_of)
    else {
        return Ok(None);
    };
    if mark(object, elements) == 0 {
        return Ok(None);
    }
    tag(object);
    Ok(Some(
        serde_json::to_vec(&resource).expect("a Value serializes"),
    ))
}

/// Marks what is missing in `object` and below; returns how many elements it marked.
fn mark(object: &mut Map<String, Value>, elements: &[Element]) -> usize {
    let mut marked = 0;
    for element in elements {
        match element.kind {
            Kind::Primitive => {
                let twin = format!("_{}", element.name);
                let missing = !present(object.get(element.name)) && !present(object.get(&twin));
                // A list of primitives would need matching nulls beside it: left for connect to refuse.
                if missing && element.required && !element.list {
                    object.insert(twin, absent());
                    marked += 1;
                }
            }
            Kind::Complex => match object.get_mut(element.name) {
                Some(value) if !value.is_null() => {
                    if let Some(children) = elements_of(element.of) {
                        marked += mark_within(value, children);
                    }
                }
                _ if element.required => {
                    let value = if element.list {
                        json!([absent()])
                    } else {
                        absent()
                    };
                    object.insert(element.name.to_string(), value);
                    marked += 1;
                }
                _ => {}
            },
        }
    }
    marked
}

/// Marks within a present complex element: one object, or each object of a list.
fn mark_within(value: &mut Value, children: &[Element]) -> usize {
    match value {
        Value::Object(object) => mark(object, children),
        Value::Array(items) => items
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .map(|object| mark(object, children))
            .sum(),
        _ => 0,
    }
}

fn tag(resource: &mut Map<String, Value>) {
    let meta = resource.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let tags = meta
        .as_object_mut()
        .expect("made an object above")
        .entry("tag")
        .or_insert_with(|| json!([]));
    if !tags.is_array() {
        *tags = json!([]);
    }
    tags.as_array_mut().expect("made an array above").push(json!({
        "system": REPAIR_TAG_SYSTEM,
        "code": REPAIR_TAG_CODE,
        "display": "Required elements the source left out are marked with the data-absent-reason extension",
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repaired(resource: Value) -> Value {
        serde_json::from_slice(
            &repair(&serde_json::to_vec(&resource).unwrap())
                .unwrap()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_table_is_sorted_for_lookups() {
        let names: Vec<&str> = r4_required::TYPES.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(elements_of("ExplanationOfBenefit").is_some());
        assert!(elements_of("Encounter").is_none());
    }

    #[test]
    fn missing_required_elements_get_the_extension_and_nothing_else_changes() {
        let eob = json!({
            "resourceType": "ExplanationOfBenefit", "id": "carrier--1", "status": "active",
            "type": {"text": "carrier"}, "use": "claim", "patient": {"reference": "Patient/-1"},
            "created": "2024-01-01",
            "meta": {"lastUpdated": "2024-01-02T00:00:00Z"},
            "insurance": [{"coverage": {"reference": "Coverage/part-b--1"}}],
            "item": [{"sequence": 1}, {"sequence": 2, "productOrService": {"text": "x"}}],
        });
        let out = repaired(eob.clone());
        assert_eq!(out["provider"], absent());
        assert_eq!(out["insurer"], absent());
        assert_eq!(out["_outcome"], absent());
        assert!(out.get("outcome").is_none());
        assert_eq!(out["insurance"][0]["_focal"], absent());
        assert_eq!(out["item"][0]["productOrService"], absent());
        assert_eq!(out["item"][1]["productOrService"], json!({"text": "x"}));
        assert_eq!(out["status"], "active");
        assert_eq!(out["meta"]["lastUpdated"], "2024-01-02T00:00:00Z");
        assert_eq!(out["meta"]["tag"][0]["code"], REPAIR_TAG_CODE);
        // Once repaired, nothing is missing any more.
        let again = repair(&serde_json::to_vec(&out).unwrap()).unwrap();
        assert!(again.is_none());
    }

    #[test]
    fn complete_and_unknown_resources_are_left_as_they_are() {
        let patient = json!({"resourceType": "Patient", "id": "-1", "name": [{"family": "Doe"}]});
        assert!(repair(&serde_json::to_vec(&patient).unwrap())
            .unwrap()
            .is_none());
        let other = json!({"resourceType": "Encounter", "id": "e"});
        assert!(repair(&serde_json::to_vec(&other).unwrap())
            .unwrap()
            .is_none());
        assert!(repair(b"[1]").unwrap().is_none());
        assert!(repair(b"{").is_err());
    }
}
