//! One search at CMS: the type, the page size and concurrency, the caller's filters, and the page URLs
//! they make (the patient named by the type's own search parameter, offsets by `startIndex`).

use url::Url;

use crate::config::{ApiVersion, FetchLimits};
use crate::error::Error;
use crate::fhir::{ResourceType, CLAIM_SOURCES};

/// A FHIR date or dateTime, as a regular expression's body (a macro, so that `concat!` can use it).
macro_rules! fhir_date {
    () => {
        concat!(
            "[0-9]{4}(-(0[1-9]|1[0-2]))?",
            "|(",
            "[0-9]{4}-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])",
            "|[0-9]{4}-(0[469]|11)-(0[1-9]|[12][0-9]|30)",
            "|[0-9]{4}-02-(0[1-9]|1[0-9]|2[0-8])",
            "|([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)-02-29",
            ")(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,9})?)?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])?)?",
        )
    };
}

/// A date filter (`_lastUpdated`, `service-date`): a comparison and a FHIR date, a year, a month, a
/// calendar day, or a day and a time with an optional zone. This is the pattern the OpenAPI document
/// states and [`check_filter`] enforces (the property test below holds them together); `$(?!\n)` ends
/// the match at the very end in Python's dialect as in ECMA-262's.
pub const DATE_FILTER_PATTERN: &str = concat!("^(lt|le|gt|ge)(", fhir_date!(), ")$(?!\\n)");

/// What [`fhir_date_start`] takes.
pub const FHIR_DATE_PATTERN: &str = concat!("^(", fhir_date!(), ")$(?!\\n)");

/// The EOB claim types CMS knows, as a comma-separated list.
pub const CLAIM_TYPES: [&str; 8] = [
    "carrier",
    "pde",
    "dme",
    "hha",
    "hospice",
    "inpatient",
    "outpatient",
    "snf",
];

/// `type`'s pattern: [`CLAIM_TYPES`], comma-separated.
pub const CLAIM_TYPES_PATTERN: &str = concat!(
    "^(carrier|pde|dme|hha|hospice|inpatient|outpatient|snf)",
    "(,(carrier|pde|dme|hha|hospice|inpatient|outpatient|snf))*$(?!\\n)"
);

/// The claim filters only v3 takes, as CMS names them.
pub const V3_CLAIM_FILTERS: [&str; 3] = ["_tag", "_source", "_security:not"];

/// `_source`'s pattern: [`CLAIM_SOURCES`], comma-separated.
pub const CLAIM_SOURCES_PATTERN: &str = concat!(
    "^(NCH|DDPS|FISS|MCS|VMS|CWF)",
    "(,(NCH|DDPS|FISS|MCS|VMS|CWF))*$(?!\\n)"
);

/// `_tag`'s and `_security:not`'s pattern: FHIR tokens (`[system|]code`), comma-separated.
pub const TOKENS_PATTERN: &str = "^([^\\s,|]+\\|)?[^\\s,|]+(,([^\\s,|]+\\|)?[^\\s,|]+)*$(?!\\n)";

fn is_token_list(value: &str) -> bool {
    value.split(',').all(|token| {
        let (system, code) = token.split_once('|').unwrap_or(("x", token));
        let plain = |s: &str| !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '|');
        plain(system) && plain(code)
    })
}

/// Checks a filter the caller passes through to CMS, so a malformed one is the caller's clear 400 here
/// and never a CMS error later.
pub fn check_filter(name: &str, value: &str) -> Result<(), Error> {
    let ok = match name {
        "_lastUpdated" | "service-date" => is_date_filter(value),
        "type" => value.split(',').all(|t| CLAIM_TYPES.contains(&t)),
        "_source" => value.split(',').all(|t| CLAIM_SOURCES.contains(&t)),
        "_tag" | "_security:not" => is_token_list(value),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        let expected = match name {
            "type" => format!("a comma-separated list of {}", CLAIM_TYPES.join(", ")),
            "_source" => format!("a comma-separated list of {}", CLAIM_SOURCES.join(", ")),
            "_tag" | "_security:not" => {
                "comma-separated FHIR tokens, `code` or `system|code`, e.g. 42CFRPart2".to_string()
            }
            _ => "lt, le, gt or ge followed by a date: 2024, 2024-05, 2024-05-31 or \
                  2024-05-31T12:00:00Z"
                .to_string(),
        };
        Err(Error::BadRequest(format!(
            "`{name}={value}` is not a valid filter: expected {expected}"
        )))
    }
}

fn is_date_filter(value: &str) -> bool {
    ["lt", "le", "gt", "ge"]
        .iter()
        .find_map(|op| value.strip_prefix(op))
        .and_then(fhir_date_start)
        .is_some()
}

/// When a FHIR date or dateTime as [`FHIR_DATE_PATTERN`] has it (`2024`, `2024-05`, `2024-05-31`,
/// `2024-05-31T12:00[:59[.123]][Z|±hh:mm]`) begins, in Unix seconds (UTC when no zone is given);
/// `None` for anything else, a day the calendar lacks included.
pub fn fhir_date_start(date: &str) -> Option<i64> {
    let (day, clock) = match date.split_once('T') {
        Some((day, clock)) => (day, Some(clock)),
        None => (date, None),
    };
    let parts: Vec<&str> = day.split('-').collect();
    let year = digits(parts[0], 4, 9999)?;
    let month = |text| digits(text, 2, 12).filter(|m| *m >= 1);
    let (month, day) = match (parts.as_slice(), clock) {
        ([_], None) => (1, 1),
        ([_, m], None) => (month(m)?, 1),
        ([_, m, d], _) => (month(m)?, digits(d, 2, 31)?),
        _ => return None,
    };
    let month = time::Month::try_from(month as u8).ok()?;
    let date = time::Date::from_calendar_date(year as i32, month, day as u8).ok()?;
    let (at, offset) = match clock {
        Some(clock) => parse_clock(clock)?,
        None => (time::Time::MIDNIGHT, time::UtcOffset::UTC),
    };
    Some(date.with_time(at).assume_offset(offset).unix_timestamp())
}

/// `text` as a number of exactly `len` digits, at most `max`.
fn digits(text: &str, len: usize, max: u32) -> Option<u32> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u32>().ok())
        .flatten()
        .filter(|n| *n <= max)
}

/// `hh:mm[:ss[.fraction]]` and an optional zone, `Z` or `±hh:mm` (up to ±14:59).
fn parse_clock(clock: &str) -> Option<(time::Time, time::UtcOffset)> {
    let (at, zone) = match clock.find(['Z', '+', '-']) {
        Some(i) => clock.split_at(i),
        None => (clock, ""),
    };
    let offset = match zone.as_bytes().first() {
        None => time::UtcOffset::UTC,
        Some(b'Z') if zone.len() == 1 => time::UtcOffset::UTC,
        Some(b'Z') => return None,
        Some(sign) => {
            let (h, m) = zone[1..].split_once(':')?;
            let (h, m) = (digits(h, 2, 14)? as i8, digits(m, 2, 59)? as i8);
            let sign = if *sign == b'-' { -1 } else { 1 };
            time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()?
        }
    };
    let (hms, fraction) = match at.split_once('.') {
        Some((hms, fraction)) => (hms, Some(fraction)),
        None => (at, None),
    };
    let fields: Vec<&str> = hms.split(':').collect();
    let (h, m, s) = match fields.as_slice() {
        [h, m] if fraction.is_none() => (digits(h, 2, 23)?, digits(m, 2, 59)?, 0),
        [h, m, s] => (digits(h, 2, 23)?, digits(m, 2, 59)?, digits(s, 2, 59)?),
        _ => return None,
    };
    let fraction_ok = fraction
        .is_none_or(|f| (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()));
    fraction_ok.then_some(())?;
    let at = time::Time::from_hms(h as u8, m as u8, s as u8).ok()?;
    Some((at, offset))
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub resource_type: ResourceType,
    pub limits: FetchLimits,
    /// Filters passed through to CMS as given (`_lastUpdated`, `type`, `service-date`).
    pub filters: Vec<(String, String)>,
    /// Not a search: v3's digital insurance card (`Patient/$generate-insurance-card`), one Bundle of
    /// the beneficiary's Patient, Coverage and the payer's Organization. `resource_type` is Patient.
    pub insurance_card: bool,
}

impl SearchRequest {
    /// Whether CMS pages this search. v3 answers Patient and Coverage whole, and refuses paging
    /// parameters there (HAPI's 400).
    pub fn paged(&self, version: ApiVersion) -> bool {
        version == ApiVersion::V2 || self.resource_type == ResourceType::ExplanationOfBenefit
    }

    /// The URL of the page starting at entry `start` (the first page has none).
    pub fn page_url(
        &self,
        base: &str,
        version: ApiVersion,
        patient: &str,
        start: Option<u64>,
    ) -> String {
        if self.insurance_card {
            let path = version.path("/fhir/Patient/$generate-insurance-card");
            return format!("{base}{path}");
        }
        let path = version.path(&format!("/fhir/{}/", self.resource_type));
        let mut url = Url::parse(&format!("{base}{path}")).expect("the base URL was validated");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair(self.resource_type.patient_param(), patient);
            if self.paged(version) {
                q.append_pair("_count", &self.limits.page_size.to_string());
            }
            for (name, value) in &self.filters {
                q.append_pair(name, value);
            }
            // Which claims: the caller's `_tag` or `_source`, else the deployment's sources.
            let chosen = |f: &(String, String)| f.0 == "_tag" || f.0 == "_source";
            if version == ApiVersion::V3
                && self.resource_type == ResourceType::ExplanationOfBenefit
                && !self.filters.iter().any(chosen)
            {
                q.append_pair("_source", &self.limits.claim_sources.to_string());
            }
            if let Some(start) = start {
                q.append_pair("startIndex", &start.to_string());
            }
        }
        url.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented pattern, as the `regex` crate reads it (its `$` is already the very end).
    fn documented(pattern: &str) -> regex::Regex {
        regex::Regex::new(pattern.trim_end_matches("(?!\\n)")).unwrap()
    }

    #[test]
    fn a_date_starts_when_it_says_and_the_document_agrees() {
        assert_eq!(fhir_date_start("2026-12-01"), Some(1_796_083_200));
        assert_eq!(
            fhir_date_start("2026-12-01T01:00:00+01:00"),
            Some(1_796_083_200)
        );
        assert_eq!(fhir_date_start("2026"), Some(1_767_225_600));
        let pattern = documented(FHIR_DATE_PATTERN);
        for good in [
            "2026",
            "2026-12",
            "2026-12-01T10:00",
            "2026-12-01T10:00:00.5Z",
            "2024-02-29",
        ] {
            assert!(
                pattern.is_match(good) && fhir_date_start(good).is_some(),
                "{good}"
            );
        }
        for bad in [
            "2026-13",
            "26-12-01",
            "2026-12-01T",
            "2025-02-29",
            "2026-12-01 ",
            "gt2026",
        ] {
            assert!(
                !pattern.is_match(bad) && fhir_date_start(bad).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn date_filters_are_exactly_what_the_document_says() {
        let pattern = documented(DATE_FILTER_PATTERN);
        let good = [
            "gt2024",
            "le2024-05",
            "ge2024-02-29",
            "lt2000-02-29",
            "lt0000-02-29",
            "gt2024-05-31T12:00",
            "gt2024-05-31T12:00:59.123Z",
            "lt1999-12-31T23:59:59+14:00",
            "ge2021-06-30T00:00-05:30",
        ];
        let bad = [
            "2024",
            "gt24",
            "gt2024-13",
            "gt2024-00",
            "gt2023-02-29",
            "gt1900-02-29",
            "gt2024-04-31",
            "gt2024-05-31T24:00",
            "gt2024-05T12:00",
            "gt2024-05-31T12:00:00.",
            "gt2024-05-31T12:00.5",
            "gt2024-05-31T12:00+15:00",
            "gt2024-05-31T12:00Z0",
            "gt2024\n",
            " gt2024",
            "eq2024",
            "gt2024-05-31T",
            "gt٢٠٢٤",
        ];
        for value in good {
            assert!(is_date_filter(value), "{value} is accepted");
            assert!(pattern.is_match(value), "{value} is documented");
        }
        for value in bad {
            assert!(!is_date_filter(value), "{value} is refused");
            assert!(!pattern.is_match(value), "{value} is not documented");
        }
    }

    #[test]
    fn date_filters_agree_with_the_pattern_over_many_generated_values() {
        let pattern = documented(DATE_FILTER_PATTERN);
        let pieces = [
            "lt", "gt", "le", "ge", "eq", "0", "1", "2", "3", "4", "5", "9", "00", "02", "12",
            "13", "29", "30", "31", "2024", "1900", "2000", "0000", "9999", "-", "T", ":", ".",
            "Z", "+", "+14:00", "-15:00", "23", "24", "59", "60", "-02-29", "-04-31", "-02-28",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for _ in 0..200_000 {
            let mut value = ["lt", "gt", "le", "ge"][(next() % 4) as usize].to_string();
            value.push_str(["2024", "2000", "1900", "0000", "9999"][(next() % 5) as usize]);
            for _ in 0..(next() % 8) {
                value.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            assert_eq!(
                is_date_filter(&value),
                pattern.is_match(&value),
                "{value}: the check and the document disagree"
            );
            accepted += usize::from(is_date_filter(&value));
        }
        assert!(
            accepted > 1_000,
            "the generator reaches valid values too ({accepted})"
        );
    }

    #[test]
    fn claim_types_are_exactly_what_the_document_says() {
        let pattern = documented(CLAIM_TYPES_PATTERN);
        for value in ["carrier", "pde,carrier", "snf,snf"] {
            assert!(check_filter("type", value).is_ok(), "{value}");
            assert!(pattern.is_match(value), "{value}");
        }
        for value in ["", "PDE", "pde,", ",pde", "pde carrier", "x"] {
            assert!(check_filter("type", value).is_err(), "{value}");
            assert!(!pattern.is_match(value), "{value}");
        }
    }

    #[test]
    fn v3_claim_filters_are_checked_as_documented() {
        let sources = documented(CLAIM_SOURCES_PATTERN);
        let tokens = documented(TOKENS_PATTERN);
        for (name, value, ok) in [
            ("_source", "NCH,DDPS", true),
            ("_source", "FISS", true),
            ("_source", "nch", false),
            ("_source", "NCH,", false),
            ("_tag", "PartiallyAdjudicated", true),
            (
                "_tag",
                "https://bluebutton.cms.gov/fhir/CodeSystem/Adjudication-Status|Adjudicated",
                true,
            ),
            ("_security:not", "42CFRPart2", true),
            ("_security:not", "a|b|c", false),
            ("_tag", "a b", false),
            ("_tag", "|x", false),
            ("_tag", "", false),
        ] {
            assert_eq!(check_filter(name, value).is_ok(), ok, "{name}={value}");
            let pattern = if name == "_source" { &sources } else { &tokens };
            assert_eq!(pattern.is_match(value), ok, "{name}={value} documented");
        }
    }

    #[test]
    fn page_urls_carry_count_filters_and_offsets() {
        let search = SearchRequest {
            resource_type: ResourceType::ExplanationOfBenefit,
            limits: FetchLimits {
                page_size: 50,
                concurrency: 4,
                response_buffer_bytes: 1,
                claim_sources: crate::config::ClaimSources::FINAL_ACTION,
            },
            filters: vec![
                ("_lastUpdated".into(), "gt2024-01-01".into()),
                ("type".into(), "carrier,pde".into()),
            ],
            insurance_card: false,
        };
        let url = search.page_url("https://cms.test", ApiVersion::V2, "-1", Some(100));
        assert_eq!(
            url,
            "https://cms.test/v2/fhir/ExplanationOfBenefit/?patient=-1&_count=50\
             &_lastUpdated=gt2024-01-01&type=carrier%2Cpde&startIndex=100"
        );
        assert_eq!(
            search.page_url("https://cms.test", ApiVersion::V3, "-3", None),
            "https://cms.test/v3/fhir/ExplanationOfBenefit/?patient=-3&_count=50\
             &_lastUpdated=gt2024-01-01&type=carrier%2Cpde&_source=NCH%2CDDPS",
            "v3 names the claim sources unless the caller did"
        );
        let mut chosen = search.clone();
        chosen.filters = vec![("_tag".into(), "PartiallyAdjudicated".into())];
        assert!(!chosen
            .page_url("https://cms.test", ApiVersion::V3, "-3", None)
            .contains("_source"));
        let coverage = SearchRequest {
            resource_type: ResourceType::Coverage,
            ..search
        };
        assert_eq!(
            coverage.page_url("https://cms.test", ApiVersion::V3, "-3", None),
            "https://cms.test/v3/fhir/Coverage/?beneficiary=-3\
             &_lastUpdated=gt2024-01-01&type=carrier%2Cpde"
        );
    }
}
