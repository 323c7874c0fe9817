use std::time::Duration;

use serde_json::Value;

use super::event::APP;
use super::*;
use crate::crypto::TokenKey;
use crate::testing::FakePlatform;

fn key() -> TokenKey {
    TokenKey::parse(&"42".repeat(32)).unwrap()
}

fn settings(retention_days: u64) -> AuditSettings {
    AuditSettings {
        retention_days,
        to_connect: false,
    }
}

fn read(patient: &str, n: usize) -> Event {
    Event::new(Action::CmsRead, Outcome::Success, format!("read {n}"))
        .patient(patient)
        .peer(Peer::Cms)
        .data(Data {
            resource_type: "ExplanationOfBenefit".into(),
            ids_hash: ids_hash([("ExplanationOfBenefit", "carrier--1")]),
            query: Some("_count=50".into()),
            details: vec![("entries", n.to_string())],
        })
}

fn descs(listing: &Listing) -> Vec<String> {
    listing
        .events
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["outcomeDesc"].to_string())
        .collect()
}

fn query(patient: Option<&str>, count: usize) -> Query {
    Query {
        patient: patient.map(str::to_string),
        count,
        ..Query::default()
    }
}

#[test]
fn each_patient_reads_their_own_events_newest_first_in_pages_and_the_operator_reads_all() {
    let p = FakePlatform::new();
    let k = key();
    let vault = Vault::new(&p, &k);
    let audit = Audit::new(&vault, settings(2190), Agent::Session("abc".into()));
    for n in 0..5 {
        audit.record(read("-20140000000001", n));
        audit.record(read("-20140000000002", 100 + n));
    }
    audit.record(Event::new(
        Action::AuthorizationFailed,
        Outcome::MinorFailure,
        "declined",
    ));
    let first = list(&vault, &query(Some("-20140000000001"), 3)).unwrap();
    assert_eq!(descs(&first), [r#""read 4""#, r#""read 3""#, r#""read 2""#]);
    let mut rest = query(Some("-20140000000001"), 3);
    rest.before = first.next;
    let second = list(&vault, &rest).unwrap();
    assert_eq!(descs(&second), [r#""read 1""#, r#""read 0""#]);
    assert_eq!(second.next, None);
    let everyone = list(&vault, &query(None, 100)).unwrap();
    assert_eq!(everyone.events.len(), 11);
    assert!(everyone.events[0].contains("declined"));
    assert!(list(&vault, &query(Some("-20140000000003"), 10))
        .unwrap()
        .events
        .is_empty());
}

#[test]
fn since_keeps_only_what_was_recorded_from_then_on() {
    let p = FakePlatform::new();
    let k = key();
    let vault = Vault::new(&p, &k);
    let audit = Audit::new(&vault, settings(2190), Agent::App);
    audit.record(read("-1", 0));
    p.advance(Duration::from_secs(3600));
    let since = vault.now();
    audit.record(read("-1", 1));
    let mut q = query(Some("-1"), 10);
    q.since = Some(since);
    assert_eq!(descs(&list(&vault, &q).unwrap()), [r#""read 1""#]);
}

#[test]
fn records_are_sealed_and_name_no_one_in_their_keys() {
    let p = FakePlatform::new();
    let k = key();
    let vault = Vault::new(&p, &k);
    Audit::new(&vault, settings(2190), Agent::Session("abc".into())).record(read("-20149", 7));
    let dump = format!("{:?}", p.store.borrow());
    for secret in ["20149", "AuditEvent", "ExplanationOfBenefit", "read 7"] {
        assert!(!dump.contains(secret), "{secret} is readable at rest");
    }
}

#[test]
fn records_are_swept_after_their_retention_with_their_pointers() {
    let p = FakePlatform::new();
    let k = key();
    let vault = Vault::new(&p, &k);
    // Each in a request of its own.
    let record = |n| Audit::new(&vault, settings(1), Agent::App).record(read("-1", n));
    for n in 0..3 {
        record(n);
    }
    assert_eq!(
        p.stored_keys().len(),
        3 + 3 + 2 + 1,
        "records, their requests' pointers, two counters and a head"
    );
    p.advance(Duration::from_secs(86_400 + 1));
    assert!(list(&vault, &query(Some("-1"), 10))
        .unwrap()
        .events
        .is_empty());
    assert_eq!(sweep(&vault, 100).unwrap(), 3);
    let keys = p.stored_keys();
    assert_eq!(keys.len(), 4, "only the logs' counters and heads: {keys:?}");
    assert!(keys
        .iter()
        .all(|k| k.ends_with(":n") || k.ends_with(":head")));
    // Requests sweep on their own, one reservation in eight: the 9th request's is one.
    for n in 3..9 {
        record(n);
    }
    p.advance(Duration::from_secs(86_400 + 1));
    assert_eq!(pointers_in(&p), 6);
    // The 17th reservation sweeps again.
    for n in 9..17 {
        record(n);
    }
    let listed = descs(&list(&vault, &query(Some("-1"), 100)).unwrap());
    assert_eq!(listed.len(), 8, "{listed:?}");
    assert_eq!(listed[0], r#""read 16""#);
    assert_eq!(pointers_in(&p), 8, "the expired went with their records");
}

#[test]
fn one_request_leaves_one_pointer_and_interleaved_requests_stay_apart() {
    let p = FakePlatform::new();
    let k = key();
    let vault = Vault::new(&p, &k);
    let first = Audit::new(&vault, settings(2190), Agent::App);
    let second = Audit::new(&vault, settings(2190), Agent::App);
    for n in 0..4 {
        for (audit, patient, desc) in [
            (&first, "-1", n),
            (&second, "-2", 10 + n),
            (&second, "-1", 20 + n),
        ] {
            audit.record(read(patient, desc));
            p.advance(Duration::from_millis(1));
        }
    }
    // `second` crashed: its ranges were never closed.
    std::mem::forget(second);
    drop(first);
    assert_eq!(pointers_in(&p), 3, "one per request and patient");
    let mine = descs(&list(&vault, &query(Some("-1"), 100)).unwrap());
    let expected: Vec<String> = [23, 3, 22, 2, 21, 1, 20, 0]
        .iter()
        .map(|n| format!(r#""read {n}""#))
        .collect();
    assert_eq!(mine, expected, "newest first, none of the other patient's");
    // Pages of one go through both ranges without losing or repeating any (in the order the requests
    // reserved their slots, which only a page of its own puts in time order).
    let mut paged = Vec::new();
    let mut q = query(Some("-1"), 1);
    loop {
        let page = list(&vault, &q).unwrap();
        paged.extend(descs(&page));
        match page.next {
            Some(next) => q.before = Some(next),
            None => break,
        }
    }
    paged.sort();
    let mut all = mine.clone();
    all.sort();
    assert_eq!(paged, all);

    // Past their retention the records go, and the pointers with them, the crashed request's too.
    p.advance(Duration::from_secs(2191 * 86_400));
    sweep(&vault, 100).unwrap();
    assert_eq!(pointers_in(&p), 0);
    assert!(list(&vault, &query(Some("-1"), 100))
        .unwrap()
        .events
        .is_empty());
}

fn pointers_in(p: &FakePlatform) -> usize {
    p.stored_keys()
        .iter()
        .filter(|k| k.starts_with("audit-of:") && !k.ends_with(":n") && !k.ends_with(":head"))
        .count()
}

#[test]
fn a_record_that_cannot_be_written_is_counted_not_fatal() {
    let p = FakePlatform::new();
    let k = key();
    let vault = Vault::new(&p, &k);
    let audit = Audit::new(&vault, settings(2190), Agent::App);
    let huge = "x".repeat(crate::ports::MAX_VALUE_BYTES);
    audit.record(Event::new(Action::CmsRead, Outcome::Success, huge));
    assert_eq!(failures(&vault).unwrap(), 1);
    audit.record(read("-1", 1));
    assert_eq!(failures(&vault).unwrap(), 1);
}

#[test]
fn instants_have_three_decimals_so_they_sort_as_text() {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_796_083_200_120_000_000).unwrap();
    assert_eq!(instant(at), "2026-12-01T00:00:00.120Z");
    let whole = time::OffsetDateTime::from_unix_timestamp(1_796_083_201).unwrap();
    assert_eq!(instant(whole), "2026-12-01T00:00:01.000Z");
}

#[test]
fn an_event_is_an_r4_audit_event_with_standard_codes_and_no_data() {
    let event = read("-20140000008325", 3).to_fhir(
        "0123",
        &Agent::Session("hash".into()),
        "2026-12-02T04:00:00.123Z",
    );
    assert_eq!(event["resourceType"], "AuditEvent");
    assert_eq!(event["type"]["code"], "rest");
    assert_eq!(event["action"], "R");
    assert_eq!(event["outcome"], "0");
    assert_eq!(event["agent"][0]["requestor"], true);
    assert_eq!(event["agent"][0]["who"]["identifier"]["value"], "hash");
    assert_eq!(event["agent"][1]["who"]["display"], "CMS Blue Button API");
    assert_eq!(
        event["entity"][0]["what"]["reference"],
        "Patient/-20140000008325"
    );
    assert_eq!(event["entity"][1]["description"], "ExplanationOfBenefit");
    assert_eq!(event["entity"][1]["detail"][0]["valueString"], "3");
    assert_eq!(event["source"]["observer"]["display"], APP);
    let transmit = Event::new(Action::Delivered, Outcome::Success, "").to_fhir(
        "1",
        &Agent::App,
        "2026-12-02T04:00:00Z",
    );
    assert_eq!(transmit["type"]["code"], "transmit");
    assert!(transmit.get("entity").is_none());
}
