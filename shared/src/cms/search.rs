//! One search at CMS: the type, the page size and concurrency, the caller's filters, and the page URLs
//! they make (the patient named by the type's own search parameter, offsets by `startIndex`).

use url::Url;

use crate::config::FetchLimits;
use crate::error::Error;
use crate::fhir::ResourceType;

/// A date filter (`_lastUpdated`, `service-date`): a comparison and a FHIR date, a year, a month, a
/// calendar day, or a day and a time with an optional zone. This is the pattern the OpenAPI document
/// states and [`check_filter`] enforces (the property test below holds them together); `$(?!\n)` ends
/// the match at the very end in Python's dialect as in ECMA-262's.
pub const DATE_FILTER_PATTERN: &str = concat!(
    "^(lt|le|gt|ge)(",
    "[0-9]{4}(-(0[1-9]|1[0-2]))?",
    "|(",
    "[0-9]{4}-(0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])",
    "|[0-9]{4}-(0[469]|11)-(0[1-9]|[12][0-9]|30)",
    "|[0-9]{4}-02-(0[1-9]|1[0-9]|2[0-8])",
    "|([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)-02-29",
    ")(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,9})?)?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])?)?",
    ")$(?!\\n)"
);

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

/// Checks a filter the caller passes through to CMS, so a malformed one is the caller's clear 400 here
/// and never a CMS error later.
pub fn check_filter(name: &str, value: &str) -> Result<(), Error> {
    let ok = match name {
        "_lastUpdated" | "service-date" => is_date_filter(value),
        "type" => value.split(',').all(|t| CLAIM_TYPES.contains(&t)),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        let expected = match name {
            "type" => format!("a comma-separated list of {}", CLAIM_TYPES.join(", ")),
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
    let Some(date) = ["lt", "le", "gt", "ge"]
        .iter()
        .find_map(|op| value.strip_prefix(op))
    else {
        return false;
    };
    let (day, clock) = match date.split_once('T') {
        Some((day, clock)) => (day, Some(clock)),
        None => (date, None),
    };
    let parts: Vec<&str> = day.split('-').collect();
    let number = |text: &str, digits: usize, max: u32| {
        (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n <= max)
    };
    let Some(year) = number(parts[0], 4, 9999) else {
        return false;
    };
    let month = |text| number(text, 2, 12).filter(|m| *m >= 1);
    match (parts.as_slice(), clock) {
        ([_], None) => true,
        ([_, m], None) => month(m).is_some(),
        ([_, m, d], clock) => {
            let calendar_day = month(m).zip(number(d, 2, 31)).is_some_and(|(m, d)| {
                time::Month::try_from(m as u8)
                    .is_ok_and(|m| time::Date::from_calendar_date(year as i32, m, d as u8).is_ok())
            });
            calendar_day && clock.is_none_or(is_clock)
        }
        _ => false,
    }
}

/// `hh:mm[:ss[.fraction]]` and an optional zone, `Z` or `±hh:mm`.
fn is_clock(clock: &str) -> bool {
    let two = |text: &str, max: u32| {
        text.len() == 2
            && text.bytes().all(|b| b.is_ascii_digit())
            && text.parse::<u32>().is_ok_and(|n| n <= max)
    };
    let (time, zone) = match clock.find(['Z', '+', '-']) {
        Some(at) => clock.split_at(at),
        None => (clock, ""),
    };
    let zone_ok = match zone.as_bytes().first() {
        None => true,
        Some(b'Z') => zone.len() == 1,
        Some(_) => zone[1..]
            .split_once(':')
            .is_some_and(|(h, m)| two(h, 14) && two(m, 59)),
    };
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, fraction)) => (hms, Some(fraction)),
        None => (time, None),
    };
    let fields: Vec<&str> = hms.split(':').collect();
    let hms_ok = match fields.as_slice() {
        [h, m] => fraction.is_none() && two(h, 23) && two(m, 59),
        [h, m, s] => two(h, 23) && two(m, 59) && two(s, 59),
        _ => false,
    };
    let fraction_ok = fraction
        .is_none_or(|f| (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()));
    zone_ok && hms_ok && fraction_ok
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub resource_type: ResourceType,
    pub limits: FetchLimits,
    /// Filters passed through to CMS as given (`_lastUpdated`, `type`, `service-date`).
    pub filters: Vec<(String, String)>,
}

impl SearchRequest {
    /// The URL of the page starting at entry `start` (the first page has none).
    pub fn page_url(&self, base: &str, patient: &str, start: Option<u64>) -> String {
        let mut url = Url::parse(&format!("{base}/v2/fhir/{}/", self.resource_type))
            .expect("the base URL was validated");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair(self.resource_type.patient_param(), patient);
            q.append_pair("_count", &self.limits.page_size.to_string());
            for (name, value) in &self.filters {
                q.append_pair(name, value);
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
    fn page_urls_carry_count_filters_and_offsets() {
        let search = SearchRequest {
            resource_type: ResourceType::ExplanationOfBenefit,
            limits: FetchLimits {
                page_size: 50,
                concurrency: 4,
                response_buffer_bytes: 1,
            },
            filters: vec![
                ("_lastUpdated".into(), "gt2024-01-01".into()),
                ("type".into(), "carrier,pde".into()),
            ],
        };
        let url = search.page_url("https://cms.test", "-1", Some(100));
        assert_eq!(
            url,
            "https://cms.test/v2/fhir/ExplanationOfBenefit/?patient=-1&_count=50\
             &_lastUpdated=gt2024-01-01&type=carrier%2Cpde&startIndex=100"
        );
    }
}
