//! `/bluebutton/connect/...` (admin key): deliver FHIR resources to connect; see and replay what is
//! queued; see, replay and delete what connect refused.

use serde::Serialize;

use crate::audit::{ids_hash, Action, Agent, Audit, Data, Event, Outcome, Peer};
use crate::auth::admin::require_admin;
use crate::config::{ApiVersion, AuditSettings, ConnectSettings};
use crate::connect::dead_letters::{self, DeadLetter};
use crate::connect::delivery::{audit_to_connect, replay_outbox, Before};
use crate::connect::{outbox, Delivery, DeliveryResult};
use crate::crypto::TokenKey;
use crate::error::Error;
use crate::fhir::{self, Resource};
use crate::http::{
    bearer, json_response, no_store, path_info, query_param, require_method, Response,
};
use crate::ports::{Platform, RequestBody};
use crate::store::Vault;

/// A Bundle to deliver; connect itself takes at most `connect_batch_bytes` per POST, so more is split.
const DELIVER_BODY_LIMIT: usize = 32 << 20;

/// A list of items.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub count: usize,
    pub items: Vec<T>,
}

impl<T> Listing<T> {
    pub fn new(items: Vec<T>) -> Self {
        Listing {
            count: items.len(),
            items,
        }
    }
}

/// What replaying dead letters did: each replayed one leaves the list, whatever became of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeadLetterReplay {
    /// The dead letters replayed (now gone from the list).
    pub replayed_letters: Vec<String>,
    #[serde(flatten)]
    pub delivery: DeliveryResult,
}

enum Route {
    Deliver,
    Outbox,
    Replay,
    DeadLetters,
    ReplayDeadLetters,
    ReplayDeadLetter(String),
    DeadLetter(String),
}

fn route_of(info: &str) -> Option<(Route, &'static str)> {
    let parts: Vec<&str> = info.trim_matches('/').split('/').collect();
    Some(match parts.as_slice() {
        ["deliver"] => (Route::Deliver, "POST"),
        ["outbox"] => (Route::Outbox, "GET"),
        ["outbox", "replay"] => (Route::Replay, "POST"),
        ["dead-letters"] => (Route::DeadLetters, "GET"),
        ["dead-letters", "replay"] => (Route::ReplayDeadLetters, "POST"),
        ["dead-letters", id, "replay"] => (Route::ReplayDeadLetter(id.to_string()), "POST"),
        ["dead-letters", id] => (Route::DeadLetter(id.to_string()), "DELETE"),
        _ => return None,
    })
}

pub async fn handle(
    platform: &impl Platform,
    head: &http::request::Parts,
    body: impl RequestBody,
) -> Result<Response, Error> {
    let info = path_info(head);
    let (route, method) = route_of(&info).ok_or_else(|| {
        Error::NotFound(format!(
            "no route /bluebutton/connect{info}: see POST /bluebutton/connect/deliver, GET \
             /bluebutton/connect/outbox, POST /bluebutton/connect/outbox/replay, GET \
             /bluebutton/connect/dead-letters, POST …/dead-letters/replay, POST \
             …/dead-letters/{{id}}/replay and DELETE …/dead-letters/{{id}}"
        ))
    })?;
    let admin = require_admin(platform, bearer(&head.headers))?;
    require_method(head, method)?;
    let key = TokenKey::load(platform)?;
    let vault = Vault::new(platform, &key).on(ApiVersion::load(platform)?);
    let audit = Audit::new(&vault, AuditSettings::load(platform)?, Agent::Admin(admin));
    let answer = serve(&vault, &audit, route, head, body).await;
    audit_to_connect(&vault, &audit, true).await;
    Ok(no_store(answer?))
}

async fn serve<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: &'a Audit<'a, P>,
    route: Route,
    head: &http::request::Parts,
    body: impl RequestBody,
) -> Result<Response, Error> {
    let platform = vault.platform;
    let answer = match route {
        Route::Deliver => {
            let body = body.read(DELIVER_BODY_LIMIT).await?;
            let resources = fhir::resources_in(&body).map_err(|e| {
                Error::BadRequest(format!("the body must be a FHIR resource or Bundle: {e}"))
            })?;
            if let Some(bad) = resources.iter().find(|r| !is_type_name(&r.resource_type)) {
                return Err(Error::BadRequest(format!(
                    "the body must be a FHIR resource or Bundle: `{}` is not an R4 resource type",
                    bad.resource_type
                )));
            }
            let patient = query_param(&head.uri, "patient")
                .map(|p| p.trim_start_matches("Patient/").to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "-".into());
            let result = deliver(vault, audit, &patient, &resources).await?;
            json_response(result.status(), &result)
        }
        Route::Replay => {
            let settings = ConnectSettings::load(platform)?;
            let result = replay_outbox(vault, Some(audit), settings).await?;
            json_response(result.status(), &result)
        }
        Route::Outbox => {
            let entries = outbox::list(vault)?;
            let patients = entries.iter().map(|e| e.patient.as_str());
            note_listing(audit, "the outbox", patients);
            json_response(200, &Listing::new(entries))
        }
        Route::DeadLetters => {
            let letters = dead_letters::list(vault)?;
            note_listing(
                audit,
                "the dead letters",
                letters.iter().map(|l| l.patient.as_str()),
            );
            json_response(200, &Listing::new(letters))
        }
        Route::ReplayDeadLetters => {
            let letters = dead_letters::list(vault)?;
            let replay = replay_dead_letters(vault, audit, letters).await?;
            json_response(replay.delivery.status(), &replay)
        }
        Route::ReplayDeadLetter(id) => {
            let (letter, _) = dead_letters::get(vault, &id)?;
            let replay = replay_dead_letters(vault, audit, vec![letter]).await?;
            json_response(replay.delivery.status(), &replay)
        }
        Route::DeadLetter(id) => {
            let (letter, _) = dead_letters::get(vault, &id)?;
            dead_letters::remove(vault, &letter)?;
            audit.record(letter_event(
                Action::DeadLetterDeleted,
                &letter,
                format!("dead letter {} deleted by an operator", letter.id),
            ));
            let mut resp = http::Response::new(Vec::new());
            *resp.status_mut() = http::StatusCode::NO_CONTENT;
            resp
        }
    };
    Ok(answer)
}

/// An operator saw a listing naming these patients: each of them is told (once per listing).
fn note_listing<'p, P: Platform>(
    audit: &Audit<'_, P>,
    what: &str,
    patients: impl Iterator<Item = &'p str>,
) {
    let mut seen: Vec<&str> = patients.collect();
    seen.sort_unstable();
    seen.dedup();
    for patient in seen {
        let desc = format!("an operator listed {what}, which holds this patient's data");
        audit.record(Event::new(Action::AdminRead, Outcome::Success, desc).patient(patient));
    }
}

fn letter_event(action: Action, letter: &DeadLetter, desc: String) -> Event {
    let data = Data {
        resource_type: letter.resource_type.clone(),
        ids_hash: ids_hash([(letter.resource_type.as_str(), letter.resource_id.as_str())]),
        query: None,
        details: vec![("deadLetter", letter.id.clone())],
    };
    Event::new(action, Outcome::Success, desc)
        .patient(&letter.patient)
        .peer(Peer::Connect)
        .data(data)
}

async fn deliver<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: &'a Audit<'a, P>,
    patient: &str,
    resources: &[Resource],
) -> Result<DeliveryResult, Error> {
    let settings = ConnectSettings::load(vault.platform)?;
    let mut delivery =
        Delivery::start(vault, Some(audit), settings, patient, Before::Drain(None)).await?;
    delivery.add(resources).await?;
    delivery.finish().await
}

/// Delivers dead letters' resources again (repaired, if repair is on now). Each leaves the list once
/// its resource is delivered, queued, or — refused again — a new dead letter with connect's new answer.
async fn replay_dead_letters<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: &'a Audit<'a, P>,
    letters: Vec<DeadLetter>,
) -> Result<DeadLetterReplay, Error> {
    let mut replay = DeadLetterReplay {
        replayed_letters: Vec::new(),
        delivery: DeliveryResult::default(),
    };
    for letter in letters {
        let (_, resource) = dead_letters::get(vault, &letter.id)?;
        let resources = fhir::resources_in(&resource).map_err(|e| {
            Error::Store(crate::ports::StoreError::Backend(format!(
                "dead letter {} holds an unreadable resource: {e}",
                letter.id
            )))
        })?;
        let result = deliver(vault, audit, &letter.patient, &resources).await?;
        dead_letters::remove(vault, &letter)?;
        let fate = match (result.delivered, result.queued.len()) {
            (1.., _) => "delivered".to_string(),
            (_, 1..) => format!("queued in the outbox as {}", result.queued.join(", ")),
            _ => format!(
                "refused again: dead letter {}",
                result.dead_letters.join(", ")
            ),
        };
        let desc = format!("dead letter {} sent again: {fate}", letter.id);
        audit.record(letter_event(Action::DeadLetterReplayed, &letter, desc));
        replay.replayed_letters.push(letter.id);
        merge(&mut replay.delivery, result);
    }
    Ok(replay)
}

fn merge(into: &mut DeliveryResult, from: DeliveryResult) {
    into.delivered += from.delivered;
    into.batches.extend(from.batches);
    into.queued.extend(from.queued);
    into.rejected += from.rejected;
    into.dead_letters.extend(from.dead_letters);
    into.repaired += from.repaired;
    into.replayed += from.replayed;
}

/// `Patient`, `ExplanationOfBenefit`…: what connect's `/fhir/{type}` route could name.
fn is_type_name(name: &str) -> bool {
    name.len() > 1
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphabetic())
}
