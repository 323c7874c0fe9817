//! The admin sync: first whatever waits in the outbox, then, for each authorized patient (or one), what
//! changed at CMS since their cursor for each type, delivered to connect — the cursor moved only once that
//! delivery is durable. A type the beneficiary withheld is skipped, not fatal; a patient whose grant is
//! gone is reported, not fatal. On the way it sweeps what has expired (abandoned authorizations, ended
//! sessions), a bounded amount each run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::audit::{Action, Agent, Audit, Event, Outcome};
use crate::auth::session::{self, Session};
use crate::auth::state;
use crate::auth::tokens::TokenContext;
use crate::cms::pipeline::{self, FetchSummary};
use crate::cms::search::SearchRequest;
use crate::config::{ConnectSettings, FetchLimits};
use crate::connect::delivery::{audit_to_connect, replay_outbox, Before};
use crate::connect::{cursor, Delivery, DeliveryResult};
use crate::error::Error;
use crate::fhir::ResourceType;
use crate::ports::Platform;
use crate::store::Vault;

/// Expired authorizations one sync sweeps at most (the rest wait for the next).
const STATE_SWEEP: usize = 20_000;

/// `POST /bluebutton/sync`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncReport {
    /// The outbox's replay, before anything new.
    pub outbox: DeliveryResult,
    pub patients: Vec<PatientSync>,
    /// Expired authorizations removed.
    pub swept_states: usize,
}

impl SyncReport {
    /// 202 while anything waits in the outbox, else 200.
    pub fn status(&self) -> u16 {
        let queued = !self.outbox.queued.is_empty()
            || self
                .patients
                .iter()
                .any(|p| p.types.values().any(|t| t.delivery.status() == 202));
        if queued {
            202
        } else {
            200
        }
    }
}

/// One resource type of one patient's sync.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct TypeSync {
    /// `ok`; `withheld` (the beneficiary did not share this type); or `error` (see `error`).
    #[schema(example = "ok")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub fetch: FetchSummary,
    pub delivery: DeliveryResult,
}

/// One patient's sync: `ok`, or `error` with why (a grant that is gone, say).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PatientSync {
    pub patient: String,
    #[schema(example = "ok")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// By resource type.
    pub types: BTreeMap<ResourceType, TypeSync>,
}

/// Syncs `only` that patient, or every patient with a live session; run by the operator holding the
/// admin key `admin` (its id).
pub async fn run<P: Platform>(
    platform: &P,
    only: Option<String>,
    admin: String,
) -> Result<SyncReport, Error> {
    let ctx = TokenContext::load(platform)?;
    let connect = ConnectSettings::load(platform)?;
    let limits = FetchLimits::load(platform)?;
    let vault = ctx.vault(platform);
    let audit = Audit::new(&vault, ctx.audit, Agent::Sync(admin));
    let report = run_with(&vault, &audit, &ctx, connect, limits, only).await;
    audit_to_connect(&vault, &audit, true).await;
    report
}

async fn run_with<'a, P: Platform>(
    vault: &'a Vault<'a, P>,
    audit: &'a Audit<'a, P>,
    ctx: &TokenContext,
    connect: ConnectSettings,
    limits: FetchLimits,
    only: Option<String>,
) -> Result<SyncReport, Error> {
    let swept_states = state::sweep(vault, STATE_SWEEP)?;
    let outbox = replay_outbox(vault, Some(audit), connect.clone()).await?;
    // While connect is unavailable, what the sync fetches is queued behind what already waits.
    let before = match outbox.queued.is_empty() {
        true => Before::Drain(None),
        false => Before::QueueBehind("older batches still wait in the outbox".into()),
    };
    let mut sessions = session::newest_by_patient(vault, &ctx.limits, audit)?;
    let patients: Vec<String> = match only {
        Some(p) => vec![p],
        None => sessions.keys().cloned().collect(),
    };
    let mut report = Vec::new();
    for patient in patients {
        let mut entry = PatientSync {
            patient: patient.clone(),
            status: "ok",
            error: None,
            types: BTreeMap::new(),
        };
        let result = match sessions.remove(&patient) {
            Some(session) => {
                let job = PatientJob {
                    vault,
                    audit,
                    ctx,
                    connect: &connect,
                    limits,
                    before: &before,
                };
                job.sync(session, &mut entry).await
            }
            None => Err(Error::Unauthorized(format!(
                "no live session for patient {patient}: they must authorize again"
            ))),
        };
        if let Err(err) = result {
            entry.status = "error";
            entry.error = Some(err.to_string());
        }
        let (outcome, desc) = match &entry.error {
            None => (Outcome::Success, format!("synced patient {patient}")),
            Some(why) => (Outcome::SeriousFailure, why.clone()),
        };
        audit.record(Event::new(Action::AdminDeliver, outcome, desc).patient(&patient));
        report.push(entry);
    }
    Ok(SyncReport {
        outbox,
        patients: report,
        swept_states,
    })
}

struct PatientJob<'a, P: Platform> {
    vault: &'a Vault<'a, P>,
    audit: &'a Audit<'a, P>,
    ctx: &'a TokenContext,
    connect: &'a ConnectSettings,
    limits: FetchLimits,
    before: &'a Before,
}

impl<P: Platform> PatientJob<'_, P> {
    async fn sync(&self, mut session: Session, entry: &mut PatientSync) -> Result<(), Error> {
        for resource_type in ResourceType::ALL {
            let outcome = if !session.may_search(resource_type) {
                Err(Error::Forbidden(format!(
                    "the beneficiary did not share {resource_type} with this app"
                )))
            } else {
                self.sync_type(&mut session, resource_type).await
            };
            let result = match outcome {
                Ok(result) => result,
                // CMS also answers 403 for a type whose scope was withheld at consent.
                Err(Error::Forbidden(why)) => TypeSync {
                    status: "withheld",
                    error: Some(why),
                    ..TypeSync::default()
                },
                // The grant is gone: nothing else of this patient's can be read.
                Err(err @ Error::Unauthorized(_)) => return Err(err),
                Err(err) => {
                    entry.status = "error";
                    TypeSync {
                        status: "error",
                        error: Some(err.to_string()),
                        ..TypeSync::default()
                    }
                }
            };
            entry.types.insert(resource_type, result);
        }
        session::note_use(self.vault, &session)
    }

    async fn sync_type(
        &self,
        session: &mut Session,
        resource_type: ResourceType,
    ) -> Result<TypeSync, Error> {
        let patient = session.patient().to_string();
        let search = SearchRequest {
            resource_type,
            limits: self.limits,
            filters: cursor::since_filter(self.vault, &patient, resource_type)?
                .into_iter()
                .collect(),
            insurance_card: false,
        };
        let mut delivery = Delivery::start(
            self.vault,
            Some(self.audit),
            self.connect.clone(),
            &patient,
            self.before.clone(),
        )
        .await?;
        let fetch = pipeline::run(
            self.vault,
            self.audit,
            self.ctx,
            session,
            &search,
            &mut delivery,
        )
        .await?;
        let delivery = delivery.finish().await?;
        // Every resource up to `newest` is now delivered, queued or a dead letter.
        if let Some(newest) = fetch.newest {
            cursor::advance(self.vault, &patient, resource_type, newest)?;
        }
        Ok(TypeSync {
            status: "ok",
            error: None,
            fetch,
            delivery,
        })
    }
}
