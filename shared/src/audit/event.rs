//! What happened, as a FHIR R4 `AuditEvent`: who acted (`agent`), on what (`entity`: the patient, and the
//! data by type and a hash of its ids — never the data, never a token), how it ended (`outcome`), when
//! (`recorded`) and where (`source`). Standard codes where they fit; each event also carries this app's
//! own code in `subtype` (system [`EVENT_SYSTEM`]) so that kinds are easy to filter.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crypto::hex;

/// This app's own event codes (a `subtype` of every event).
pub const EVENT_SYSTEM: &str = "urn:bluebutton-spin:audit-event";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const LIFECYCLE: &str = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
/// The `identifier.system` of a hash of the resource ids an event concerns.
pub const IDS_HASH_SYSTEM: &str = "urn:bluebutton-spin:resource-ids-sha256";
/// The name this app records itself by (`source.observer`, `source.site`).
pub const APP: &str = "bluebutton-spin";

/// Who acted.
#[derive(Debug, Clone, PartialEq)]
pub enum Agent {
    /// A beneficiary's app, by its session's keyed hash (never the session itself).
    Session(String),
    /// An operator, by the admin key's id.
    Admin(String),
    /// The sync job, run by the operator holding that admin key.
    Sync(String),
    /// A beneficiary not yet identified: an authorization that did not complete.
    Beneficiary,
    /// This app on its own (ending an idle session, say).
    App,
}

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The beneficiary authorized this app at CMS (the callback).
    AuthorizationGranted,
    /// The authorization did not complete (`access_denied`, or the code exchange failed).
    AuthorizationFailed,
    /// CMS would not renew the session's access token.
    RefreshFailed,
    /// The session's grant was revoked at CMS (`DELETE /bluebutton/session`).
    Revoked,
    /// The session ended (revoked, idle, or its grant gone at CMS).
    SessionEnded,
    /// A search of CMS for one resource type, every page.
    CmsRead,
    /// A batch delivered to connect, or queued in the outbox because connect was unavailable.
    Delivered,
    /// A batch from the outbox delivered (or queued again).
    Replayed,
    /// A resource connect refused, kept as a dead letter.
    DeadLettered,
    /// A dead letter's resource sent again.
    DeadLetterReplayed,
    /// A dead letter deleted by an operator.
    DeadLetterDeleted,
    /// An operator listed the outbox, the dead letters or the audit trail.
    AdminRead,
    /// An operator started a delivery or a sync.
    AdminDeliver,
}

impl Action {
    /// This app's code for it.
    pub fn code(self) -> &'static str {
        match self {
            Action::AuthorizationGranted => "authorization-granted",
            Action::AuthorizationFailed => "authorization-failed",
            Action::RefreshFailed => "refresh-failed",
            Action::Revoked => "revoked",
            Action::SessionEnded => "session-ended",
            Action::CmsRead => "cms-read",
            Action::Delivered => "delivered",
            Action::Replayed => "replayed",
            Action::DeadLettered => "dead-lettered",
            Action::DeadLetterReplayed => "dead-letter-replayed",
            Action::DeadLetterDeleted => "dead-letter-deleted",
            Action::AdminRead => "admin-read",
            Action::AdminDeliver => "admin-deliver",
        }
    }

    /// `type`, the standard subtypes, and FHIR's `action` (C R U D E).
    fn vocabulary(self) -> (Value, Vec<Value>, &'static str) {
        let rest = coding(EVENT_TYPE, "rest", "Restful Operation");
        let transmit = coding(EVENT_TYPE, "transmit", "Transmit Record Lifecycle Event");
        let user_auth = coding(DCM, "110114", "User Authentication");
        let login = coding(DCM, "110122", "Login");
        let logout = coding(DCM, "110123", "Logout");
        let export = coding(DCM, "110106", "Export");
        let lifecycle_transmit = coding(LIFECYCLE, "transmit", "Transmit Record Lifecycle Event");
        let search = coding(RESTFUL, "search-type", "search-type");
        match self {
            Action::AuthorizationGranted | Action::AuthorizationFailed => {
                (user_auth, vec![login], "E")
            }
            Action::RefreshFailed => (user_auth, vec![], "E"),
            Action::Revoked | Action::SessionEnded => (user_auth, vec![logout], "E"),
            Action::CmsRead => (rest, vec![search, coding(DCM, "110112", "Query")], "R"),
            Action::Delivered
            | Action::Replayed
            | Action::DeadLettered
            | Action::DeadLetterReplayed
            | Action::AdminDeliver => (transmit, vec![export, lifecycle_transmit], "E"),
            Action::DeadLetterDeleted => (rest, vec![coding(RESTFUL, "delete", "delete")], "D"),
            Action::AdminRead => (rest, vec![search], "R"),
        }
    }
}

/// How it ended (`AuditEvent.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Done in part, or put off (queued in the outbox).
    MinorFailure,
    /// Refused or failed; nothing is lost (a dead letter, an error answered).
    SeriousFailure,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
        }
    }
}

/// The other party: where data came from, or where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Cms,
    Connect,
}

/// The data an event concerns: its type, a hash of its ids, the query that found it and the figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Data {
    pub resource_type: String,
    /// [`ids_hash`] of the resources, when there were any.
    pub ids_hash: Option<String>,
    /// The search's parameters, as sent (for a read).
    pub query: Option<String>,
    /// Figures and references: `entries`, `pages`, `batch`, `dataRecordLocation`, `outbox`…
    pub details: Vec<(&'static str, String)>,
}

/// One event, before it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub action: Action,
    pub outcome: Outcome,
    /// How it ended, in words (for a failure: why, as the caller was told).
    pub outcome_desc: String,
    /// The beneficiary whose data it is (their FHIR Patient id), when known.
    pub patient: Option<String>,
    pub peer: Option<Peer>,
    pub data: Option<Data>,
}

impl Event {
    pub fn new(action: Action, outcome: Outcome, outcome_desc: impl Into<String>) -> Event {
        Event {
            action,
            outcome,
            outcome_desc: outcome_desc.into(),
            patient: None,
            peer: None,
            data: None,
        }
    }

    pub fn patient(mut self, patient: &str) -> Event {
        // `-` stands for "no patient named" in admin deliveries.
        if !patient.is_empty() && patient != "-" {
            self.patient = Some(patient.to_string());
        }
        self
    }

    pub fn peer(mut self, peer: Peer) -> Event {
        self.peer = Some(peer);
        self
    }

    pub fn data(mut self, data: Data) -> Event {
        self.data = Some(data);
        self
    }

    /// The event as an R4 AuditEvent; `recorded` is an `instant`.
    pub fn to_fhir(&self, id: &str, agent: &Agent, recorded: &str) -> Value {
        let (event_type, mut subtype, action) = self.action.vocabulary();
        subtype.push(coding(EVENT_SYSTEM, self.action.code(), self.action.code()));
        let mut agents = vec![agent_json(agent)];
        if let Some(peer) = self.peer {
            agents.push(peer_json(peer));
        }
        let mut entities = Vec::new();
        if let Some(patient) = &self.patient {
            entities.push(json!({
                "what": {"reference": format!("Patient/{patient}")},
                "type": coding(ENTITY_TYPE, "1", "Person"),
                "role": coding(OBJECT_ROLE, "1", "Patient"),
            }));
        }
        if let Some(data) = &self.data {
            entities.push(data_json(data));
        }
        let purpose = match agent {
            Agent::Session(_) | Agent::Beneficiary => ("PATRQT", "patient requested"),
            _ => ("HOPERAT", "healthcare operations"),
        };
        let mut event = json!({
            "resourceType": "AuditEvent",
            "id": id,
            "type": event_type,
            "subtype": subtype,
            "action": action,
            "recorded": recorded,
            "outcome": self.outcome.code(),
            "purposeOfEvent": [{"coding": [coding(ACT_REASON, purpose.0, purpose.1)]}],
            "agent": agents,
            "source": {
                "site": APP,
                "observer": {"display": APP},
                "type": [coding(SOURCE_TYPE, "4", "Application Server")],
            },
        });
        // FHIR strings are never empty.
        if !self.outcome_desc.is_empty() {
            event["outcomeDesc"] = self.outcome_desc.clone().into();
        }
        if !entities.is_empty() {
            event["entity"] = Value::Array(entities);
        }
        event
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn agent_json(agent: &Agent) -> Value {
    let (role, who) = match agent {
        Agent::Session(hidden) => (
            coding(ROLE_CLASS, "PAT", "patient"),
            json!({
                "identifier": {"system": "urn:bluebutton-spin:session-hash", "value": hidden},
                "display": "the beneficiary's app (a session of theirs)",
            }),
        ),
        Agent::Admin(key_id) => (
            coding(DCM, "110150", "Application"),
            json!({
                "identifier": {"system": "urn:bluebutton-spin:admin-key", "value": key_id},
                "display": "an operator holding the admin key",
            }),
        ),
        Agent::Sync(key_id) => (
            coding(DCM, "110150", "Application"),
            json!({
                "identifier": {"system": "urn:bluebutton-spin:job", "value": "sync"},
                "display": format!("the sync job, run with admin key {key_id}"),
            }),
        ),
        Agent::Beneficiary => (
            coding(ROLE_CLASS, "PAT", "patient"),
            json!({"display": "a beneficiary at CMS's consent screen (not identified)"}),
        ),
        Agent::App => (
            coding(DCM, "110150", "Application"),
            json!({"display": APP}),
        ),
    };
    json!({"type": {"coding": [role]}, "who": who, "requestor": true})
}

fn peer_json(peer: Peer) -> Value {
    let (role, name) = match peer {
        Peer::Cms => (
            coding(DCM, "110153", "Source Role ID"),
            "CMS Blue Button API",
        ),
        Peer::Connect => (
            coding(DCM, "110152", "Destination Role ID"),
            "LinuxForHealth connect",
        ),
    };
    json!({"type": {"coding": [role]}, "who": {"display": name}, "requestor": false})
}

fn data_json(data: &Data) -> Value {
    let role = match data.query {
        Some(_) => coding(OBJECT_ROLE, "24", "Query"),
        None => coding(OBJECT_ROLE, "4", "Domain Resource"),
    };
    let mut entity = json!({
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": role,
    });
    if !data.resource_type.is_empty() {
        entity["description"] = data.resource_type.clone().into();
    }
    if let Some(hash) = &data.ids_hash {
        entity["what"] = json!({"identifier": {"system": IDS_HASH_SYSTEM, "value": hash}});
    }
    if let Some(query) = data.query.as_ref().filter(|q| !q.is_empty()) {
        use base64::Engine;
        entity["query"] = base64::engine::general_purpose::STANDARD
            .encode(query)
            .into();
    }
    let details: Vec<Value> = data
        .details
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| json!({"type": name, "valueString": value}))
        .collect();
    if !details.is_empty() {
        entity["detail"] = Value::Array(details);
    }
    entity
}

/// The SHA-256 of `Type/id` lines, in order: names exactly which resources, reveals none.
#[derive(Default)]
pub struct IdsHash {
    hash: Sha256,
    count: usize,
}

impl IdsHash {
    pub fn add(&mut self, resource_type: &str, id: &str) {
        self.hash.update(resource_type.as_bytes());
        self.hash.update(b"/");
        self.hash.update(id.as_bytes());
        self.hash.update(b"\n");
        self.count += 1;
    }

    /// The hash, when any id was added.
    pub fn finish(self) -> Option<String> {
        (self.count > 0).then(|| hex(&self.hash.finalize()))
    }
}

/// [`IdsHash`] of a list.
pub fn ids_hash<'a>(ids: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    let mut hash = IdsHash::default();
    for (resource_type, id) in ids {
        hash.add(resource_type, id);
    }
    hash.finish()
}
