//! The emulator's FHIR data: the CMS sample fixtures (embedded, so the binary runs from anywhere), indexed
//! per patient, with each resource kept pre-serialised so a page is built by concatenation.

use super::json::J;
use super::{BBUSER00001_PATIENT, BBUSER08325_PATIENT, BBUSER29999_PATIENT};
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
    /// with new stable ids `<type>--<serial>`.
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
        let mut taken: HashSet<String> = self
            .patients
            .values()
            .flat_map(|p| p.eobs.iter().map(|e| e.res.id.clone()))
            .collect();
        let start_len = data.eobs.len();
        let mut added = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        for k in 0..count {
            let template = &templates[(start_len + k) % templates.len()];
            let prefix = id_prefix(&template.res.id);
            let id = loop {
                self.serial += 1;
                let candidate = format!("{prefix}--{}", self.serial);
                if taken.insert(candidate.clone()) {
                    break candidate;
                }
            };
            let last_updated = if newest {
                // Strictly newer than anything served so far, and not in the past.
                let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                let t = (self.last_updated_ms + 1).max(now as i64);
                self.last_updated_ms = t;
                t
            } else {
                grown_base + (start_len + k) as i64 * 1000
            };
            rows.push(clone_eob(template, &id, last_updated, patient));
            self.last_updated_ms = self.last_updated_ms.max(last_updated);
            added.push(id);
        }
        self.patients
            .get_mut(patient)
            .expect("checked above")
            .eobs
            .extend(rows);
        Ok(added)
    }
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
