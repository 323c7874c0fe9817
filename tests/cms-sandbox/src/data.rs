//! The emulator's FHIR data: the CMS sample fixtures (embedded, so the binary runs from anywhere), indexed
//! per patient, with each resource kept pre-serialised so a page is built by concatenation.

use super::json::J;
use super::{
    BBUSER00001_PATIENT, BBUSER08325_PATIENT, BBUSER08325_PATIENT_V3, BBUSER29999_PATIENT,
    SYNTHETIC_USERS,
};
use anyhow::{anyhow, bail, Context};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::fixtures;

const SITE_PATIENT: &str = fixtures::SITE_PATIENT_BBUSER29999;
const SITE_COVERAGE: &str = fixtures::SITE_COVERAGE_BUNDLE_BBUSER29999;
const SITE_EOB: &str = fixtures::SITE_EOB_BUNDLE_BBUSER29999;
const SDK_EOB_PAGES: [&str; 6] = [
    fixtures::SDK_EOB_SEARCH_PAGE0,
    fixtures::SDK_EOB_SEARCH_PAGE1,
    fixtures::SDK_EOB_SEARCH_PAGE2,
    fixtures::SDK_EOB_SEARCH_PAGE3,
    fixtures::SDK_EOB_SEARCH_PAGE4,
    fixtures::SDK_EOB_SEARCH_PAGE5,
];
const WS_PATIENT_SEARCH: &str = fixtures::WEBSERVER_PATIENT_SEARCH_V2;
const WS_EOB_CARRIER: &str = fixtures::WEBSERVER_EOB_READ_CARRIER_V2;
pub(crate) const METADATA: &str = fixtures::OPENAPI_V2_FHIR_METADATA;

/// The fixtures' bundles all carry this `meta.lastUpdated` (BFD's last data load); it is the store's
/// starting "last updated" instant.
const FIXTURE_LOAD_INSTANT: &str = "2022-02-14T17:27:56.303-05:00";
/// Grown EOBs (`eob_count`) get `meta.lastUpdated` = this + n seconds, a stable spread that sorts after
/// the fixtures' own 2021-06-07 values and before the fixture load instant.
const GROWN_BASE_INSTANT: &str = "2021-06-08T00:00:00.000+00:00";
pub(crate) const EOB_TYPE_SYSTEM: &str = "https://bluebutton.cms.gov/resources/codesystem/eob-type";
pub(crate) const EOB_TYPES: [&str; 8] = [
    "carrier",
    "pde",
    "dme",
    "hha",
    "hospice",
    "inpatient",
    "outpatient",
    "snf",
];

/// `meta.tag` system of v3 claims: `Adjudicated` (final action) or `PartiallyAdjudicated`.
pub(crate) const ADJUDICATION_SYSTEM: &str =
    "https://bluebutton.cms.gov/fhir/CodeSystem/Adjudication-Status";
/// The `meta.security` label BB2 filters with `_security:not` when a beneficiary declines Part 2 data.
pub(crate) const PART2_CODE: &str = "42CFRPart2";
const PART2_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// v3 `_source` values: final action (NCH claims, DDPS drug events), partially adjudicated (the FISS,
/// MCS and VMS shared systems), and CWF.
pub(crate) const SOURCES: [&str; 6] = ["NCH", "DDPS", "FISS", "MCS", "VMS", "CWF"];
/// What BB2 asks BFD for when a v3 EOB search names neither `_tag` nor `_source`.
pub(crate) const DEFAULT_SOURCES: [&str; 2] = ["NCH", "DDPS"];
/// Pilot users start with this many final claims.
const PILOT_EOBS: usize = 30;
/// The pilot claim (by index) whose v3 rendering carries the 42 CFR Part 2 label.
const PILOT_PART2_INDEX: usize = 3;
/// Pilot claim numbers: `digits(username) * 1_000_000 + index`; partial versions of final claim n
/// are `n + PARTIAL_VERSION`, claims still partial only `base + PARTIAL_ONLY + j`.
const PILOT_CLAIM_SPACE: u64 = 1_000_000;
const PARTIAL_VERSION: u64 = 500_000;
const PARTIAL_ONLY: u64 = 900_000;
const C4DIC: &str = "http://hl7.org/fhir/us/insurance-card/StructureDefinition";

/// A resource kept serialised, with what searches need.
#[derive(Clone, Debug)]
pub(crate) struct Resource {
    pub id: String,
    pub json: Arc<str>,
    pub last_updated_ms: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct Eob {
    pub res: Resource,
    /// Start of the claim's service date (billablePeriod.end, as BFD's "through" date), UTC millis.
    pub service_ms: Option<i64>,
    /// Lower-case eob-type code (`carrier`, `pde`, ...).
    pub eob_type: String,
    /// v3 renderings: `meta.source` (one of [`SOURCES`]); empty on v2 rows.
    pub source: &'static str,
    /// v3 renderings: `meta.security` carries [`PART2_CODE`].
    pub part2: bool,
    /// v2 rows of beneficiaries with a v3 id: the same claim as v3 serves it.
    pub v3: Option<Arc<Eob>>,
}

impl Eob {
    /// The `meta.tag` code (in [`ADJUDICATION_SYSTEM`]) of a v3 rendering.
    pub fn adjudication(&self) -> &'static str {
        if partial_source(&self.eob_type) == Some(self.source) {
            "PartiallyAdjudicated"
        } else {
            "Adjudicated"
        }
    }
}

/// The v3 side of a beneficiary with a v3 id.
#[derive(Debug)]
pub(crate) struct V3Data {
    pub id: String,
    pub patient: Resource,
    pub coverage: Vec<Resource>,
    /// Partially adjudicated claims, v3 only; searches list them after the final ones.
    pub partials: Vec<Eob>,
    /// The `entry` array of `$generate-insurance-card` (C4DIC Patient, Coverage…, Organization).
    pub card_entries: String,
}

#[derive(Debug)]
pub(crate) struct PatientData {
    pub patient: Resource,
    pub given_name: String,
    pub family_name: String,
    pub coverage: Vec<Resource>,
    pub eobs: Vec<Eob>,
    /// The fixture EOBs, cloned when EOBs are added.
    pub templates: Vec<Arc<Eob>>,
    pub v3: Option<V3Data>,
    /// Pilot users number their claims (ids, identifiers) from here instead of the store's serial.
    claim_base: Option<u64>,
}

impl PatientData {
    /// The EOBs v3 serves, in search order: every final claim, then the partially adjudicated ones.
    pub fn v3_eobs(&self) -> impl Iterator<Item = &Eob> {
        self.eobs
            .iter()
            .filter_map(|e| e.v3.as_deref())
            .chain(self.v3.iter().flat_map(|v| v.partials.iter()))
    }
}

#[derive(Debug)]
pub(crate) struct Store {
    pub patients: BTreeMap<String, PatientData>,
    /// The newest `meta.lastUpdated` in the store (bundles report it as their own `meta.lastUpdated`).
    pub last_updated_ms: i64,
    serial: u64,
}

impl Store {
    pub fn load(eob_count: Option<usize>) -> anyhow::Result<Store> {
        let site_patient = J::parse(SITE_PATIENT).context("site patient fixture")?;
        let site_coverage = bundle_resources(SITE_COVERAGE).context("site coverage fixture")?;
        let site_eobs = bundle_resources(SITE_EOB).context("site EOB fixture")?;
        let mut sdk_eobs = Vec::new();
        for page in SDK_EOB_PAGES {
            sdk_eobs.extend(bundle_resources(page).context("SDK EOB page fixture")?);
        }
        let ws_patient = bundle_resources(WS_PATIENT_SEARCH)
            .context("web-server patient fixture")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("web-server patient fixture has no entry"))?;
        let ws_eob = J::parse(WS_EOB_CARRIER).context("web-server EOB fixture")?;

        let rewrite = |j: &J, to: &str| -> anyhow::Result<J> {
            Ok(J::parse(&j.to_json().replace(BBUSER29999_PATIENT, to))?)
        };
        let clone_coverage = |to: &str| -> anyhow::Result<Vec<J>> {
            site_coverage.iter().map(|c| rewrite(c, to)).collect()
        };

        let mut store = Store {
            patients: BTreeMap::new(),
            last_updated_ms: parse_instant_ms(FIXTURE_LOAD_INSTANT)?,
            serial: 0,
        };
        store.insert(site_patient.clone(), site_coverage.clone(), site_eobs)?;
        // BBUser00001's patient exists in the SDK capture only through its EOBs, so its Patient and
        // Coverage are BBUser29999's with ids and references rewritten.
        store.insert(
            rewrite(&site_patient, BBUSER00001_PATIENT)?,
            clone_coverage(BBUSER00001_PATIENT)?,
            sdk_eobs,
        )?;
        store.insert(
            ws_patient,
            clone_coverage(BBUSER08325_PATIENT)?,
            vec![ws_eob],
        )?;
        store.enable_v3(BBUSER08325_PATIENT, BBUSER08325_PATIENT_V3)?;

        // The v3 pilot users: BBUser29999's Patient, Parts A, B and D, and claims cloned from the SDK
        // capture's carrier and outpatient claims and the site's drug events, interleaved.
        let pick = |p: &str, t: &str| -> Vec<Arc<Eob>> {
            let data = &store.patients[p];
            data.templates
                .iter()
                .filter(|e| e.eob_type == t)
                .cloned()
                .collect()
        };
        let groups = [
            pick(BBUSER00001_PATIENT, "carrier"),
            pick(BBUSER29999_PATIENT, "pde"),
            pick(BBUSER00001_PATIENT, "outpatient"),
        ];
        let longest = groups.iter().map(Vec::len).max().unwrap_or(0);
        let pilot_templates: Vec<Arc<Eob>> = (0..longest)
            .flat_map(|i| groups.iter().filter_map(move |g| g.get(i).cloned()))
            .take(PILOT_EOBS)
            .collect();
        for user in SYNTHETIC_USERS
            .iter()
            .filter(|u| u.username.starts_with("BBUser090"))
        {
            let (v2, v3) = (user.patient_id, user.v3_patient_id.expect("pilots have v3"));
            let coverage = clone_coverage(v2)?
                .into_iter()
                .filter(|c| {
                    c.get("id")
                        .and_then(J::as_str)
                        .is_some_and(|id| !id.starts_with("part-c"))
                })
                .collect();
            store.insert(rewrite(&site_patient, v2)?, coverage, Vec::new())?;
            let digits: u64 = user.username[6..].parse()?;
            let data = store.patients.get_mut(v2).expect("just inserted");
            data.templates = pilot_templates.clone();
            data.claim_base = Some(digits * PILOT_CLAIM_SPACE);
            store.enable_v3(v2, v3)?;
            store.add_eobs(v2, PILOT_EOBS, false)?;
            store.add_partials(v2)?;
        }

        if let Some(n) = eob_count {
            store.set_eob_count(BBUSER29999_PATIENT, n, false)?;
        }
        Ok(store)
    }

    fn insert(&mut self, patient: J, coverage: Vec<J>, eobs: Vec<J>) -> anyhow::Result<()> {
        let patient_res = resource_from(&patient)?;
        let name = patient
            .get("name")
            .and_then(|n| n.as_array())
            .and_then(|n| n.first());
        let given_name = name
            .and_then(|n| n.get("given"))
            .and_then(|g| g.as_array())
            .and_then(|g| g.first())
            .and_then(|g| g.as_str())
            .unwrap_or("")
            .to_string();
        let family_name = name
            .and_then(|n| n.get("family"))
            .and_then(|f| f.as_str())
            .unwrap_or("")
            .to_string();
        let coverage = coverage
            .iter()
            .map(resource_from)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut templates = Vec::with_capacity(eobs.len());
        let mut eob_rows = Vec::with_capacity(eobs.len());
        for mut eob in eobs {
            // Every EOB needs a lastUpdated so `_lastUpdated` filters can apply to it.
            if eob.at(&["meta", "lastUpdated"]).is_none() {
                set_last_updated(&mut eob, self.last_updated_ms);
            }
            let row = eob_from(&eob)?;
            templates.push(Arc::new(row.clone()));
            eob_rows.push(row);
        }
        for r in std::iter::once(&patient_res)
            .chain(coverage.iter())
            .chain(eob_rows.iter().map(|e| &e.res))
        {
            self.last_updated_ms = self.last_updated_ms.max(r.last_updated_ms);
        }
        self.patients.insert(
            patient_res.id.clone(),
            PatientData {
                patient: patient_res,
                given_name,
                family_name,
                coverage,
                eobs: eob_rows,
                templates,
                v3: None,
                claim_base: None,
            },
        );
        Ok(())
    }

    pub fn patient(&self, id: &str) -> Option<&PatientData> {
        self.patients.get(id)
    }

    /// Grows (with clones) or shrinks (dropping the newest) a patient's EOB list to exactly `n`.
    /// `newest` gives the clones `meta.lastUpdated` values after everything in the store (run-time
    /// additions); otherwise they get the stable spread used for `--eob-count`.
    pub fn set_eob_count(
        &mut self,
        patient: &str,
        n: usize,
        newest: bool,
    ) -> anyhow::Result<Vec<String>> {
        let have = self
            .patients
            .get(patient)
            .ok_or_else(|| anyhow!("unknown patient {patient}"))?
            .eobs
            .len();
        if n <= have {
            let data = self.patients.get_mut(patient).expect("checked above");
            data.eobs.truncate(n);
            return Ok(Vec::new());
        }
        self.add_eobs(patient, n - have, newest)
    }

    /// Appends `count` EOBs cloned from the patient's own fixture EOBs (or BBUser29999's if it has none),
    /// with new stable ids `<type>--<serial>` (pilot users: `<type>--<claim number>`, see
    /// [`pilot_claim`]). Beneficiaries with a v3 id get each claim's v3 rendering too.
    pub fn add_eobs(
        &mut self,
        patient: &str,
        count: usize,
        newest: bool,
    ) -> anyhow::Result<Vec<String>> {
        let grown_base = parse_instant_ms(GROWN_BASE_INSTANT)?;
        let data = self
            .patients
            .get(patient)
            .ok_or_else(|| anyhow!("unknown patient {patient}"))?;
        let templates = if data.templates.is_empty() {
            self.patients[BBUSER29999_PATIENT].templates.clone()
        } else {
            data.templates.clone()
        };
        if templates.is_empty() {
            bail!("no EOB to clone for patient {patient}");
        }
        let (claim_base, v3_id) = (data.claim_base, data.v3.as_ref().map(|v| v.id.clone()));
        let mut taken: HashSet<String> = self
            .patients
            .values()
            .flat_map(|p| p.eobs.iter().map(|e| e.res.id.clone()))
            .collect();
        let start_len = data.eobs.len();
        let mut added = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        for k in 0..count {
            let index = start_len + k;
            let template = &templates[index % templates.len()];
            let last_updated = if newest {
                // Strictly newer than anything served so far, and not in the past.
                let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                let t = (self.last_updated_ms + 1).max(now as i64);
                self.last_updated_ms = t;
                t
            } else {
                grown_base + index as i64 * 1000
            };
            let mut row = match claim_base {
                Some(base) => pilot_claim(template, base + index as u64, last_updated, patient),
                None => {
                    let prefix = id_prefix(&template.res.id);
                    let id = loop {
                        self.serial += 1;
                        let candidate = format!("{prefix}--{}", self.serial);
                        if taken.insert(candidate.clone()) {
                            break candidate;
                        }
                    };
                    clone_eob(template, &id, last_updated, patient)
                }
            };
            if let Some(v3) = &v3_id {
                let part2 = claim_base.is_some() && index == PILOT_PART2_INDEX;
                row.v3 = Some(Arc::new(v3_final(&row, patient, v3, part2)));
            }
            self.last_updated_ms = self.last_updated_ms.max(last_updated);
            added.push(row.res.id.clone());
            rows.push(row);
        }
        self.patients
            .get_mut(patient)
            .expect("checked above")
            .eobs
            .extend(rows);
        Ok(added)
    }

    /// Gives a patient a v3 id: its Patient, Coverage and EOBs as v3 serves them, and its insurance card.
    fn enable_v3(&mut self, v2: &str, v3: &str) -> anyhow::Result<()> {
        let data = self
            .patients
            .get_mut(v2)
            .ok_or_else(|| anyhow!("unknown patient {v2}"))?;
        let convert = |r: &Resource| resource_from(&J::parse(&to_v3_text(&r.json, v2, v3))?);
        let patient = convert(&data.patient)?;
        let coverage = data
            .coverage
            .iter()
            .map(convert)
            .collect::<anyhow::Result<Vec<_>>>()?;
        for e in &mut data.eobs {
            e.v3 = Some(Arc::new(v3_final(e, v2, v3, false)));
        }
        let card_entries = insurance_card_entries(&patient, &coverage)?;
        data.v3 = Some(V3Data {
            id: v3.to_string(),
            patient,
            coverage,
            partials: Vec::new(),
            card_entries,
        });
        Ok(())
    }

    /// A pilot user's partially adjudicated claims: earlier versions of their first carrier (MCS) and
    /// outpatient (FISS) claims, sharing those claims' identifiers, and one of each still without a
    /// final version.
    fn add_partials(&mut self, patient: &str) -> anyhow::Result<()> {
        let grown_base = parse_instant_ms(GROWN_BASE_INSTANT)?;
        let data = self
            .patients
            .get_mut(patient)
            .ok_or_else(|| anyhow!("unknown patient {patient}"))?;
        let (Some(base), Some(v3)) = (data.claim_base, data.v3.as_ref().map(|v| v.id.clone()))
        else {
            return Ok(());
        };
        let mut partials = Vec::new();
        for source in ["MCS", "FISS"] {
            let final_claim = data
                .eobs
                .iter()
                .enumerate()
                .find(|(_, e)| partial_source(&e.eob_type) == Some(source));
            if let Some((index, e)) = final_claim {
                let id = (base + index as u64 + PARTIAL_VERSION).to_string();
                partials.push(v3_eob(e, patient, &v3, &id, source, false));
            }
        }
        for (j, source) in ["MCS", "FISS"].into_iter().enumerate() {
            let template = data
                .templates
                .iter()
                .find(|t| partial_source(&t.eob_type) == Some(source));
            if let Some(t) = template {
                let claim = base + PARTIAL_ONLY + j as u64;
                let lu = grown_base + (PARTIAL_ONLY as i64 + j as i64) * 1000;
                let row = pilot_claim(t, claim, lu, patient);
                partials.push(v3_eob(
                    &row,
                    patient,
                    &v3,
                    &claim.to_string(),
                    source,
                    false,
                ));
            }
        }
        data.v3.as_mut().expect("checked above").partials = partials;
        Ok(())
    }
}

/// The shared system that partially adjudicates a claim type (v3 `_source`), if any does.
pub(crate) fn partial_source(eob_type: &str) -> Option<&'static str> {
    match eob_type {
        "pde" => None,
        "carrier" => Some("MCS"),
        "dme" => Some("VMS"),
        _ => Some("FISS"),
    }
}

/// v2 text → v3 text: Coverage ids such as `part-a--20140000008325` become `part-a-30250000008325`, then
/// every other occurrence of the v2 id (references, identifiers) the v3 id.
fn to_v3_text(text: &str, v2: &str, v3: &str) -> String {
    text.replace(
        &format!("-{v2}"),
        &format!("-{}", v3.trim_start_matches('-')),
    )
    .replace(v2, v3)
}

/// A final claim as v3 serves it: its v3 id is the number in its v2 id (`carrier--9001000000` →
/// `9001000000`, `carrier-22639159481` → `22639159481`).
fn v3_final(e: &Eob, v2: &str, v3: &str, part2: bool) -> Eob {
    let id = e.res.id.trim_start_matches(|c: char| !c.is_ascii_digit());
    let source = if e.eob_type == "pde" { "DDPS" } else { "NCH" };
    v3_eob(e, v2, v3, id, source, part2)
}

/// A claim as v3 serves it: `id`, the v3 patient in references, and the `meta.source`, `meta.tag`
/// (and `meta.security`) that v3 searches filter on. Text edits, as in [`clone_eob`].
fn v3_eob(e: &Eob, v2: &str, v3: &str, id: &str, source: &'static str, part2: bool) -> Eob {
    let q = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let mut row = Eob {
        source,
        part2,
        v3: None,
        ..e.clone()
    };
    let mut meta = format!(
        "\"source\":{},\"tag\":[{{\"system\":{},\"code\":{}}}],",
        q(source),
        q(ADJUDICATION_SYSTEM),
        q(row.adjudication())
    );
    if part2 {
        meta.push_str(&format!(
            "\"security\":[{{\"system\":{},\"code\":{},\"display\":\"42 CFR Part 2\"}}],",
            q(PART2_SYSTEM),
            q(PART2_CODE)
        ));
    }
    let mut json = to_v3_text(&e.res.json, v2, v3)
        .replacen(
            &format!("\"id\":{}", q(&e.res.id)),
            &format!("\"id\":{}", q(id)),
            1,
        )
        .replacen("\"meta\":{", &format!("\"meta\":{{{meta}"), 1);
    if row.adjudication() == "PartiallyAdjudicated" {
        json = json.replacen("\"outcome\":\"complete\"", "\"outcome\":\"partial\"", 1);
    }
    row.res = Resource {
        id: id.to_string(),
        json: Arc::from(json),
        last_updated_ms: e.res.last_updated_ms,
    };
    row
}

/// A pilot user's claim number `claim`: v2 id `<type>--<claim>`, claim identifier `-<claim>` (partial
/// versions share it), and the template's patient replaced everywhere (its Coverage references too).
fn pilot_claim(template: &Eob, claim: u64, last_updated_ms: i64, patient: &str) -> Eob {
    let id = format!("{}--{claim}", id_prefix(&template.res.id));
    let mut row = clone_eob(template, &id, last_updated_ms, patient);
    let mut json = match referenced_patient(&template.res.json) {
        Some(old) => row.res.json.replace(old, patient),
        None => row.res.json.to_string(),
    };
    // The unique claim id: BFD's `clm_id` (claims) or `pde_id` (drug events) identifier. Searched by
    // system, as contained resources carry identifiers of their own.
    let at = ["clm_id", "pde_id"].iter().find_map(|v| {
        let needle = format!("/resources/variables/{v}\",\"value\":\"");
        json.find(&needle).map(|at| at + needle.len())
    });
    if let Some(start) = at {
        let end = start + json[start..].find('"').unwrap_or(0);
        json.replace_range(start..end, &format!("-{claim}"));
    }
    row.res.json = Arc::from(json);
    row
}

/// The patient id an EOB's `patient` reference names.
fn referenced_patient(json: &str) -> Option<&str> {
    let reference = "\"patient\":{\"reference\":\"Patient/";
    let start = json.find(reference)? + reference.len();
    Some(&json[start..start + json[start..].find('"')?])
}

/// The C4DIC entries of a v3 patient's insurance card: Patient, each Coverage (payer: the
/// Organization), and CMS as the Organization, with `urn:uuid` ids and references as BFD gives them.
fn insurance_card_entries(patient: &Resource, coverage: &[Resource]) -> anyhow::Result<String> {
    let (patient_id, org_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let urn = |id: &uuid::Uuid| format!("urn:uuid:{id}");
    let profiled = |mut j: J, id: &uuid::Uuid, profile: &str| {
        j.set("id", J::str(id.to_string()));
        j.set(
            "meta",
            J::obj(vec![(
                "profile",
                J::strs(&[format!("{C4DIC}/C4DIC-{profile}")]),
            )]),
        );
        J::obj(vec![("fullUrl", J::str(urn(id))), ("resource", j)])
    };
    let mut entries = vec![profiled(J::parse(&patient.json)?, &patient_id, "Patient")];
    for c in coverage {
        let mut j = J::parse(&c.json)?;
        j.set(
            "beneficiary",
            J::obj(vec![("reference", J::str(urn(&patient_id)))]),
        );
        j.set(
            "payor",
            J::Arr(vec![J::obj(vec![("reference", J::str(urn(&org_id)))])]),
        );
        entries.push(profiled(j, &uuid::Uuid::new_v4(), "Coverage"));
    }
    let telecom = |system: &str, value: &str| {
        J::obj(vec![("system", J::str(system)), ("value", J::str(value))])
    };
    let org = J::obj(vec![
        ("resourceType", J::str("Organization")),
        ("id", J::str("")),
        ("meta", J::Null),
        ("active", J::Bool(true)),
        ("name", J::str("Centers for Medicare and Medicaid Services")),
        (
            "telecom",
            J::Arr(vec![
                telecom("phone", "1-800-633-4227"),
                telecom("url", "https://www.medicare.gov"),
            ]),
        ),
    ]);
    entries.push(profiled(org, &org_id, "Organization"));
    Ok(J::Arr(entries).to_json())
}

/// A copy of `template` with a new id, `meta.lastUpdated` and patient. Done on the serialised text
/// (the id and `meta` lead every resource) because growing a patient to thousands of EOBs by
/// re-serialising trees is too slow in debug builds.
fn clone_eob(template: &Eob, id: &str, last_updated_ms: i64, patient: &str) -> Eob {
    let t = &template.res;
    let q = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let mut json = t.json.replacen(
        &format!("\"id\":{}", q(&t.id)),
        &format!("\"id\":{}", q(id)),
        1,
    );
    let new_lu = format!("\"lastUpdated\":{}", q(&format_instant_ms(last_updated_ms)));
    json = match json.find("\"lastUpdated\":") {
        // Fixture values keep their own offsets, so replace whatever string sits there.
        Some(at) => {
            let value_start = at + "\"lastUpdated\":".len();
            let value_end = value_start + 1 + json[value_start + 1..].find('"').unwrap_or(0) + 1;
            format!("{}{}{}", &json[..at], new_lu, &json[value_end..])
        }
        None => json,
    };
    let reference = "\"patient\":{\"reference\":\"Patient/";
    if let Some(at) = json.find(reference) {
        let start = at + reference.len();
        let end = start + json[start..].find('"').unwrap_or(0);
        json = format!("{}{}{}", &json[..start], patient, &json[end..]);
    }
    Eob {
        res: Resource {
            id: id.to_string(),
            json: Arc::from(json),
            last_updated_ms,
        },
        service_ms: template.service_ms,
        eob_type: template.eob_type.clone(),
        source: "",
        part2: false,
        v3: None,
    }
}

fn id_prefix(id: &str) -> &str {
    id.split('-')
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or("pde")
}

fn set_last_updated(j: &mut J, ms: i64) {
    let value = J::str(format_instant_ms(ms));
    match j.get_mut("meta") {
        Some(meta) => meta.set("lastUpdated", value),
        None => {
            // Keep `meta` right after `id`, where FHIR servers put it.
            if let J::Obj(pairs) = j {
                let at = pairs
                    .iter()
                    .position(|(k, _)| k == "id")
                    .map_or(0, |p| p + 1);
                pairs.insert(
                    at,
                    ("meta".to_string(), J::obj(vec![("lastUpdated", value)])),
                );
            }
        }
    }
}

fn bundle_resources(text: &str) -> anyhow::Result<Vec<J>> {
    let bundle = J::parse(text)?;
    Ok(bundle
        .get("entry")
        .and_then(J::as_array)
        .unwrap_or(&[])
        .iter()
        .filter_map(|e| e.get("resource").cloned())
        .collect())
}

fn resource_from(j: &J) -> anyhow::Result<Resource> {
    let id = j
        .get("id")
        .and_then(J::as_str)
        .ok_or_else(|| anyhow!("resource without id"))?
        .to_string();
    let last_updated_ms = match j.at(&["meta", "lastUpdated"]).and_then(J::as_str) {
        Some(s) => parse_instant_ms(s)?,
        None => 0,
    };
    Ok(Resource {
        id,
        json: Arc::from(j.to_json()),
        last_updated_ms,
    })
}

fn eob_from(j: &J) -> anyhow::Result<Eob> {
    let res = resource_from(j)?;
    let eob_type = j
        .at(&["type", "coding"])
        .and_then(J::as_array)
        .unwrap_or(&[])
        .iter()
        .find(|c| c.get("system").and_then(J::as_str) == Some(EOB_TYPE_SYSTEM))
        .and_then(|c| c.get("code").and_then(J::as_str))
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| id_prefix(&res.id).to_string());
    let item0 = j.get("item").and_then(J::as_array).and_then(|i| i.first());
    let service = j
        .at(&["billablePeriod", "end"])
        .or_else(|| j.at(&["billablePeriod", "start"]))
        .or_else(|| item0.and_then(|i| i.get("servicedDate")))
        .or_else(|| item0.and_then(|i| i.at(&["servicedPeriod", "start"])))
        .and_then(J::as_str);
    let service_ms = service
        .and_then(|s| parse_fhir_date(s).ok())
        .map(|(lo, _)| lo);
    Ok(Eob {
        res,
        service_ms,
        eob_type,
        source: "",
        part2: false,
        v3: None,
    })
}

pub(crate) fn parse_instant_ms(s: &str) -> anyhow::Result<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).with_context(|| format!("bad instant {s}"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// `2021-06-08T00:00:00.000+00:00`, the form BFD gives its own timestamps.
pub(crate) fn format_instant_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses a FHIR date/dateTime of any precision (`2020`, `2020-05`, `2020-05-01`,
/// `2020-05-01T10:00`, `2020-05-01T10:00:00.123Z`, `…+02:00`) into the half-open UTC millisecond
/// interval it denotes. A dateTime without a zone is read as UTC.
pub(crate) fn parse_fhir_date(s: &str) -> Result<(i64, i64), ()> {
    let ms = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
    let day_start = |d: Date| ms(PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc());
    let num = |t: &str, len: usize| -> Result<u32, ()> {
        if t.len() == len && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().map_err(|_| ())
        } else {
            Err(())
        }
    };
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date_part.split('-').collect();
    let year = num(parts[0], 4)? as i32;
    match (parts.len(), time_part) {
        (1, None) => {
            let lo = Date::from_calendar_date(year, Month::January, 1).map_err(|_| ())?;
            let hi = Date::from_calendar_date(year + 1, Month::January, 1).map_err(|_| ())?;
            Ok((day_start(lo), day_start(hi)))
        }
        (2, None) => {
            let month = Month::try_from(num(parts[1], 2)? as u8).map_err(|_| ())?;
            let lo = Date::from_calendar_date(year, month, 1).map_err(|_| ())?;
            let (ny, nm) = if month == Month::December {
                (year + 1, Month::January)
            } else {
                (year, month.next())
            };
            let hi = Date::from_calendar_date(ny, nm, 1).map_err(|_| ())?;
            Ok((day_start(lo), day_start(hi)))
        }
        (3, None) => {
            let month = Month::try_from(num(parts[1], 2)? as u8).map_err(|_| ())?;
            let d =
                Date::from_calendar_date(year, month, num(parts[2], 2)? as u8).map_err(|_| ())?;
            Ok((day_start(d), day_start(d) + 86_400_000))
        }
        (3, Some(t)) => {
            let month = Month::try_from(num(parts[1], 2)? as u8).map_err(|_| ())?;
            let d =
                Date::from_calendar_date(year, month, num(parts[2], 2)? as u8).map_err(|_| ())?;
            // Split off the zone designator.
            let (clock, offset) = if let Some(c) = t.strip_suffix('Z') {
                (c, UtcOffset::UTC)
            } else if let Some(pos) = t.rfind(['+', '-']) {
                let (c, z) = t.split_at(pos);
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let (h, m) = z[1..].split_once(':').ok_or(())?;
                let off = UtcOffset::from_hms(sign * num(h, 2)? as i8, sign * num(m, 2)? as i8, 0)
                    .map_err(|_| ())?;
                (c, off)
            } else {
                (t, UtcOffset::UTC)
            };
            let (hms, frac) = match clock.split_once('.') {
                Some((a, b)) => (a, Some(b)),
                None => (clock, None),
            };
            let f: Vec<&str> = hms.split(':').collect();
            let (h, m, sec, unit) = match f.len() {
                2 => (num(f[0], 2)?, num(f[1], 2)?, 0, 60_000),
                3 => (num(f[0], 2)?, num(f[1], 2)?, num(f[2], 2)?, 1_000),
                _ => return Err(()),
            };
            let mut millis = 0u16;
            let mut unit = unit;
            if let Some(fr) = frac {
                if fr.is_empty() || !fr.bytes().all(|b| b.is_ascii_digit()) || f.len() != 3 {
                    return Err(());
                }
                let padded = format!("{fr:0<3}");
                millis = padded[..3].parse().map_err(|_| ())?;
                unit = 1;
            }
            let time = Time::from_hms_milli(h as u8, m as u8, sec as u8, millis).map_err(|_| ())?;
            let lo = ms(PrimitiveDateTime::new(d, time).assume_offset(offset));
            Ok((lo, lo + unit))
        }
        _ => Err(()),
    }
}

/// `%Y-%m-%dT%H:%M:%SZ`, the format of `access_grant_expiration`.
pub(crate) fn format_grant_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Adds calendar months, clamping the day to the target month's length (what dateutil's relativedelta
/// does for BB2's 13-month grants).
pub(crate) fn add_months(t: OffsetDateTime, months: u32) -> OffsetDateTime {
    let total = t.year() * 12 + (t.month() as i32 - 1) + months as i32;
    let (year, month0) = (total.div_euclid(12), total.rem_euclid(12));
    let month = Month::try_from(month0 as u8 + 1).expect("month in range");
    let day = t.day().min(month.length(year));
    let date = Date::from_calendar_date(year, month, day).expect("clamped date is valid");
    t.replace_date(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_dates_of_every_precision() {
        let day = parse_fhir_date("2020-05-01").unwrap();
        assert_eq!(day.1 - day.0, 86_400_000);
        assert_eq!(day.0, parse_instant_ms("2020-05-01T00:00:00Z").unwrap());
        let year = parse_fhir_date("2020").unwrap();
        assert_eq!(year.0, parse_instant_ms("2020-01-01T00:00:00Z").unwrap());
        assert_eq!(year.1, parse_instant_ms("2021-01-01T00:00:00Z").unwrap());
        let month = parse_fhir_date("2020-12").unwrap();
        assert_eq!(month.1, parse_instant_ms("2021-01-01T00:00:00Z").unwrap());
        let instant = parse_fhir_date("2021-06-07T21:51:33.688-04:00").unwrap();
        assert_eq!(
            instant.0,
            parse_instant_ms("2021-06-08T01:51:33.688Z").unwrap()
        );
        assert_eq!(instant.1 - instant.0, 1);
        let minute = parse_fhir_date("2021-06-07T21:51").unwrap();
        assert_eq!(minute.1 - minute.0, 60_000);
        for bad in [
            "",
            "20",
            "2020-13-01",
            "2020-02-30",
            "yesterday",
            "2020-01-01T25:00",
            "2020-1-1",
        ] {
            assert!(parse_fhir_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thirteen_months_clamps_the_day() {
        let t = OffsetDateTime::parse("2025-01-31T10:00:00Z", &Rfc3339).unwrap();
        assert_eq!(format_grant_time(add_months(t, 13)), "2026-02-28T10:00:00Z");
        assert_eq!(format_instant_ms(0), "1970-01-01T00:00:00.000+00:00");
    }

    #[test]
    fn store_loads_fixtures_and_grows() {
        let store = Store::load(Some(25)).unwrap();
        let p = store.patient(BBUSER29999_PATIENT).unwrap();
        assert_eq!(p.eobs.len(), 25);
        assert_eq!(p.coverage.len(), 4);
        assert_eq!(p.eobs[10].res.id, "pde--1");
        let grown = J::parse(&p.eobs[24].res.json).unwrap();
        assert_eq!(grown.get("id").and_then(J::as_str), Some("pde--15"));
        assert_eq!(
            grown.at(&["meta", "lastUpdated"]).and_then(J::as_str),
            Some(format_instant_ms(p.eobs[24].res.last_updated_ms).as_str())
        );
        assert_eq!(
            grown.at(&["patient", "reference"]).and_then(J::as_str),
            Some("Patient/-20140000010000")
        );
        assert!(p.eobs[11].res.last_updated_ms > p.eobs[10].res.last_updated_ms);
        assert!(p.eobs.iter().all(|e| e.eob_type == "pde"));
        let b = store.patient(BBUSER00001_PATIENT).unwrap();
        assert_eq!(b.eobs.len(), 52);
        assert!(b.patient.json.contains(BBUSER00001_PATIENT));
        assert!(!b.patient.json.contains(BBUSER29999_PATIENT));
        assert!(b.coverage[0]
            .json
            .starts_with(r#"{"resourceType":"Coverage","id":"part-a--19990000000001""#));
        let w = store.patient(BBUSER08325_PATIENT).unwrap();
        assert_eq!(w.eobs[0].res.id, "carrier-22639159481");
        assert_eq!(w.given_name, "Jane");

        let mut store = store;
        let before = store.last_updated_ms;
        let added = store.add_eobs(BBUSER08325_PATIENT, 2, true).unwrap();
        assert_eq!(
            added,
            vec!["carrier--16".to_string(), "carrier--17".to_string()]
        );
        let w = store.patient(BBUSER08325_PATIENT).unwrap();
        assert!(w.eobs[1].res.last_updated_ms > before);
        assert!(w.eobs[2].res.last_updated_ms > w.eobs[1].res.last_updated_ms);
        assert_eq!(w.eobs[2].eob_type, "carrier");
        store.set_eob_count(BBUSER08325_PATIENT, 1, false).unwrap();
        assert_eq!(store.patient(BBUSER08325_PATIENT).unwrap().eobs.len(), 1);
    }
}
