//! The admin sync: for each authorized patient (or one), what changed at CMS since the last sync of each
//! type, delivered to connect. A patient whose grant is gone is reported, not fatal.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::auth::session::{self, Session};
use crate::auth::tokens::TokenContext;
use crate::cms::pipeline::{self, FetchSummary};
use crate::cms::search::SearchRequest;
use crate::cms::watermark;
use crate::config::{ConnectSettings, FetchLimits};
use crate::connect::Delivery;
use crate::error::Error;
use crate::fhir::ResourceType;
use crate::ports::Platform;

/// `POST /bluebutton/sync`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncReport {
    pub patients: Vec<PatientSync>,
}

impl SyncReport {
    /// 202 while anything waits in the outbox, else 200.
    pub fn status(&self) -> u16 {
        let queued = self
            .patients
            .iter()
            .any(|p| p.types.values().any(|t| t.queued > 0));
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
    #[serde(flatten)]
    pub fetch: FetchSummary,
    pub delivered: usize,
    pub queued: usize,
    pub rejected: usize,
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

/// Syncs `only` that patient, or every patient with a session.
pub async fn run(platform: &impl Platform, only: Option<String>) -> Result<SyncReport, Error> {
    let ctx = TokenContext::load(platform)?;
    let connect = ConnectSettings::load(platform)?;
    let limits = FetchLimits::load(platform)?;
    let patients = match only {
        Some(p) => vec![p],
        None => session::patients(platform)?,
    };
    let mut report = Vec::new();
    for patient in patients {
        let mut entry = PatientSync {
            patient: patient.clone(),
            status: "ok",
            error: None,
            types: BTreeMap::new(),
        };
        if let Err(err) = sync_patient(platform, &ctx, &connect, limits, &mut entry).await {
            entry.status = "error";
            entry.error = Some(err.to_string());
        }
        report.push(entry);
    }
    Ok(SyncReport { patients: report })
}

/// The patient's newest session that still opens: older ones may belong to a grant since replaced.
fn newest_session(
    platform: &impl Platform,
    ctx: &TokenContext,
    patient: &str,
) -> Result<Session, Error> {
    session::sessions_of(platform, patient)?
        .iter()
        .rev()
        .find_map(|hash| session::load(platform, &ctx.key, hash).ok())
        .ok_or_else(|| {
            Error::Unauthorized(format!(
                "no usable session for patient {patient}: authorize again"
            ))
        })
}

async fn sync_patient(
    platform: &impl Platform,
    ctx: &TokenContext,
    connect: &ConnectSettings,
    limits: FetchLimits,
    entry: &mut PatientSync,
) -> Result<(), Error> {
    let mut session = newest_session(platform, ctx, &entry.patient)?;
    for resource_type in ResourceType::ALL {
        let search = SearchRequest {
            resource_type,
            limits,
            filters: watermark::since_filter(platform, &entry.patient, resource_type)?
                .into_iter()
                .collect(),
        };
        let mut delivery = Delivery::new(platform, connect.clone(), &entry.patient);
        let fetch =
            pipeline::run(platform, ctx, &mut session, &search, true, &mut delivery).await?;
        let delivered = delivery.finish().await?;
        entry.types.insert(
            resource_type,
            TypeSync {
                fetch,
                delivered: delivered.delivered,
                queued: delivered.queued.len(),
                rejected: delivered.rejected,
            },
        );
    }
    Ok(())
}
