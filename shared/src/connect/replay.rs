//! Delivering the outbox again, oldest first. A batch leaves the outbox only once connect confirms it, or
//! once each of its resources is delivered or dead-lettered through a fresh delivery.

use serde::Serialize;

use crate::config::ConnectSettings;
use crate::connect::delivery::{now_text, post, Outcome};
use crate::connect::{outbox, Delivery, DeliveryResult};
use crate::error::Error;
use crate::fhir;
use crate::ports::Platform;

/// What a replay of the outbox did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReplayResult {
    pub attempted: usize,
    /// Outbox ids that left the outbox.
    pub replayed: Vec<String>,
    #[serde(flatten)]
    pub result: DeliveryResult,
}

pub async fn replay(
    platform: &impl Platform,
    settings: &ConnectSettings,
) -> Result<ReplayResult, Error> {
    let mut summary = ReplayResult::default();
    let mut outage: Option<String> = None;
    for mut entry in outbox::list(platform)? {
        if outage.is_some() {
            // Connect is still down: leave the rest queued as they are.
            summary.result.queued.push(entry.id);
            continue;
        }
        let Some(payload) = outbox::payload(platform, &entry.id)? else {
            return Err(Error::Store(crate::ports::StoreError::Backend(format!(
                "the outbox entry {} has lost its payload",
                entry.id
            ))));
        };
        summary.attempted += 1;
        let url = format!("{}{}", settings.url, entry.target);
        match post(platform, &url, payload.clone()).await {
            Outcome::Delivered(envelope) => {
                outbox::remove(platform, &entry.id)?;
                summary.result.delivered += entry.resources;
                summary.result.batches.push(envelope);
                summary.replayed.push(entry.id);
            }
            Outcome::Refused { .. } => {
                // Some of it is refused now: deliver it again through the splitter, which isolates the
                // refused resources as dead letters.
                let resources = fhir::resources_in(&payload).map_err(|e| {
                    Error::Store(crate::ports::StoreError::Backend(format!(
                        "the outbox entry {} holds an unreadable payload: {e}",
                        entry.id
                    )))
                })?;
                let mut delivery = Delivery::new(platform, settings.clone(), &entry.patient);
                delivery.add(&resources).await?;
                let result = delivery.finish().await?;
                outbox::remove(platform, &entry.id)?;
                summary.replayed.push(entry.id);
                summary.result.merge(result);
            }
            Outcome::Failed(error) => {
                outage = Some(error.clone());
                entry.attempts += 1;
                entry.last_error = error;
                entry.updated_at = now_text(platform);
                summary.result.queued.push(entry.id.clone());
                outbox::update(platform, &entry)?;
            }
        }
    }
    Ok(summary)
}
