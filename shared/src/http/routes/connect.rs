//! `/bluebutton/connect/...` (admin key): deliver FHIR resources to connect, and see and replay what is
//! queued or refused.

use serde::Serialize;

use crate::auth::admin::require_admin;
use crate::config::ConnectSettings;
use crate::connect::{dead_letters, outbox, replay, Delivery};
use crate::error::Error;
use crate::fhir;
use crate::http::{
    bearer, json_response, no_store, path_info, query_param, require_method, Response,
};
use crate::ports::{Platform, RequestBody};

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

enum Route {
    Deliver,
    Outbox,
    Replay,
    DeadLetters,
}

pub async fn handle(
    platform: &impl Platform,
    head: &http::request::Parts,
    body: impl RequestBody,
) -> Result<Response, Error> {
    let info = path_info(head);
    let (route, method) = match info.as_str() {
        "/deliver" => (Route::Deliver, "POST"),
        "/outbox/replay" => (Route::Replay, "POST"),
        "/outbox" => (Route::Outbox, "GET"),
        "/dead-letters" => (Route::DeadLetters, "GET"),
        other => {
            return Err(Error::NotFound(format!(
                "no route /bluebutton/connect{other}: see POST /bluebutton/connect/deliver, GET \
                 /bluebutton/connect/outbox, POST /bluebutton/connect/outbox/replay and GET \
                 /bluebutton/connect/dead-letters"
            )))
        }
    };
    require_admin(platform, bearer(&head.headers))?;
    require_method(head, method)?;
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
            let connect = ConnectSettings::load(platform)?;
            let patient = query_param(&head.uri, "patient")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "-".into());
            let mut delivery = Delivery::new(platform, connect, &patient);
            delivery.add(&resources).await?;
            let result = delivery.finish().await?;
            json_response(result.status(), &result)
        }
        Route::Replay => {
            let connect = ConnectSettings::load(platform)?;
            let replayed = replay::replay(platform, &connect).await?;
            json_response(replayed.result.status(), &replayed)
        }
        Route::Outbox => json_response(200, &Listing::new(outbox::list(platform)?)),
        Route::DeadLetters => json_response(200, &Listing::new(dead_letters::list(platform)?)),
    };
    Ok(no_store(answer))
}

/// `Patient`, `ExplanationOfBenefit`…: what connect's `/fhir/{type}` route could name.
fn is_type_name(name: &str) -> bool {
    name.len() > 1
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphabetic())
}
