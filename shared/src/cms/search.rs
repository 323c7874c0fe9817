//! One search at CMS: the type, the page size and concurrency, the caller's filters, and the page URLs
//! they make (the patient named by the type's own search parameter, offsets by `startIndex`).

use url::Url;

use crate::config::FetchLimits;
use crate::fhir::ResourceType;

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
