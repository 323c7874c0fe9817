//! CMS's sample FHIR JSON (`fixtures/`, with the origin of each file in `fixtures/README.md`), embedded so
//! the emulator runs from anywhere and other crates' tests can use the same data.

pub const OPENAPI_V2_FHIR_METADATA: &str =
    include_str!("../fixtures/openapi_v2_fhir_metadata.json");
pub const OPENAPI_V2_WELLKNOWN_EXAMPLES: &str =
    include_str!("../fixtures/openapi_v2_wellknown_examples.json");
pub const SDK_EOB_SEARCH_PAGE0: &str = include_str!("../fixtures/sdk_eob_search_page0.min.json");
pub const SDK_EOB_SEARCH_PAGE1: &str = include_str!("../fixtures/sdk_eob_search_page1.min.json");
pub const SDK_EOB_SEARCH_PAGE2: &str = include_str!("../fixtures/sdk_eob_search_page2.min.json");
pub const SDK_EOB_SEARCH_PAGE3: &str = include_str!("../fixtures/sdk_eob_search_page3.min.json");
pub const SDK_EOB_SEARCH_PAGE4: &str = include_str!("../fixtures/sdk_eob_search_page4.min.json");
pub const SDK_EOB_SEARCH_PAGE5: &str = include_str!("../fixtures/sdk_eob_search_page5.min.json");
pub const SITE_COVERAGE_BUNDLE_BBUSER29999: &str =
    include_str!("../fixtures/site_coverage_bundle_bbuser29999.json");
pub const SITE_EOB_BUNDLE_BBUSER29999: &str =
    include_str!("../fixtures/site_eob_bundle_bbuser29999.json");
pub const SITE_PATIENT_BBUSER29999: &str =
    include_str!("../fixtures/site_patient_bbuser29999.json");
pub const WEBSERVER_EOB_READ_CARRIER_V2: &str =
    include_str!("../fixtures/webserver_eob_read_carrier_v2.json");
pub const WEBSERVER_PATIENT_SEARCH_V2: &str =
    include_str!("../fixtures/webserver_patient_search_v2.json");
pub const WEBSERVER_RESOURCE_ERROR_RESPONSE: &str =
    include_str!("../fixtures/webserver_resource_error_response.json");
pub const WEBSERVER_USERINFO_V2: &str = include_str!("../fixtures/webserver_userinfo_v2.json");

/// Every fixture by file name.
pub const ALL: &[(&str, &str)] = &[
    ("openapi_v2_fhir_metadata.json", OPENAPI_V2_FHIR_METADATA),
    (
        "openapi_v2_wellknown_examples.json",
        OPENAPI_V2_WELLKNOWN_EXAMPLES,
    ),
    ("sdk_eob_search_page0.min.json", SDK_EOB_SEARCH_PAGE0),
    ("sdk_eob_search_page1.min.json", SDK_EOB_SEARCH_PAGE1),
    ("sdk_eob_search_page2.min.json", SDK_EOB_SEARCH_PAGE2),
    ("sdk_eob_search_page3.min.json", SDK_EOB_SEARCH_PAGE3),
    ("sdk_eob_search_page4.min.json", SDK_EOB_SEARCH_PAGE4),
    ("sdk_eob_search_page5.min.json", SDK_EOB_SEARCH_PAGE5),
    (
        "site_coverage_bundle_bbuser29999.json",
        SITE_COVERAGE_BUNDLE_BBUSER29999,
    ),
    (
        "site_eob_bundle_bbuser29999.json",
        SITE_EOB_BUNDLE_BBUSER29999,
    ),
    ("site_patient_bbuser29999.json", SITE_PATIENT_BBUSER29999),
    (
        "webserver_eob_read_carrier_v2.json",
        WEBSERVER_EOB_READ_CARRIER_V2,
    ),
    (
        "webserver_patient_search_v2.json",
        WEBSERVER_PATIENT_SEARCH_V2,
    ),
    (
        "webserver_resource_error_response.json",
        WEBSERVER_RESOURCE_ERROR_RESPONSE,
    ),
    ("webserver_userinfo_v2.json", WEBSERVER_USERINFO_V2),
];

/// The fixture of a file name, e.g. `site_patient_bbuser29999.json`.
pub fn get(name: &str) -> Option<&'static str> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}
