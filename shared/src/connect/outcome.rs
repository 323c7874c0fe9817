//! One POST to connect, and what its answer means. Connect answers 500 both when it refuses a resource
//! (pydantic's validation text) and when its own machinery fails (an LFHError), so the answer is read:
//! only a validation refusal is the resources' fault; a message too large for Kafka may pass in smaller
//! batches; everything else — a busy, down or misconfigured connect — is retried, then kept for later.
//! A busy connect (429: its rate limit, on by default) is waited for, not taken as down.

use std::time::Duration;

use serde_json::Value;

use crate::ports::{HttpError, Platform};
use crate::retry::{retry_after, RetryPolicy};

/// How connect answered a batch, after waiting out busy answers and retrying failures.
pub(crate) enum Outcome {
    /// Accepted: connect's envelope.
    Delivered(Value),
    /// Refused as invalid FHIR. `culprits` are the Bundle entries the refusal names (empty when it
    /// names none, as for a lone resource).
    Invalid {
        status: u16,
        detail: String,
        culprits: Vec<usize>,
    },
    /// Over Kafka's message cap: a smaller batch may pass.
    TooLarge { status: u16, detail: String },
    /// Down, busy past the budget, or misconfigured: keep it for later.
    Unavailable(String),
}

/// Connect's `detail` (its answers can quote whole resources), cut to what a person reads.
const DETAIL_CHARS: usize = 2000;

/// How long a busy connect is waited for, in all, before the batch is kept for later.
const BUSY_BUDGET: Duration = Duration::from_secs(60);

/// Connect answers 429 without `Retry-After`; its limit is per second.
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// Keeps posts under connect's own rate limit (`connect_rate_limit` per second; 0 = unpaced).
pub(crate) struct Pacer {
    interval: Duration,
    next: Option<time::OffsetDateTime>,
}

impl Pacer {
    pub(crate) fn new(per_second: u64) -> Pacer {
        Pacer {
            interval: if per_second == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(1) / per_second as u32
            },
            next: None,
        }
    }

    async fn wait(&mut self, platform: &impl Platform) {
        if self.interval.is_zero() {
            return;
        }
        let now = platform.now();
        if let Some(next) = self.next.filter(|next| *next > now) {
            platform.sleep((next - now).unsigned_abs()).await;
        }
        self.next = Some(platform.now() + self.interval);
    }
}

/// Posts a batch: paced, waiting out 429s (up to [`BUSY_BUDGET`]), retrying failures with `policy`.
/// Before each attempt `still_ours` renews the batch's claim; when it cannot, another delivery has the
/// batch now and this one stops without sending.
pub(crate) async fn post(
    platform: &impl Platform,
    pacer: &mut Pacer,
    policy: &RetryPolicy,
    url: &str,
    body: &[u8],
    mut still_ours: impl FnMut() -> Result<bool, crate::error::Error>,
) -> Result<Outcome, crate::error::Error> {
    let started = platform.now();
    let mut failures = 0;
    loop {
        pacer.wait(platform).await;
        if !still_ours()? {
            return Ok(Outcome::Unavailable(
                "another delivery took this batch over".into(),
            ));
        }
        let request = http::Request::post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body.to_vec());
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return Ok(Outcome::Unavailable(format!(
                    "cannot form the request: {e}"
                )))
            }
        };
        let answer = platform.send(request).await;
        let elapsed = platform.now() - started;
        let (outcome, wait) = match answer {
            Ok(resp) if resp.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                if elapsed >= BUSY_BUDGET {
                    return Ok(Outcome::Unavailable(format!(
                        "connect stayed busy (429) for {}s",
                        BUSY_BUDGET.as_secs()
                    )));
                }
                platform
                    .sleep(retry_after(&resp).unwrap_or(BUSY_WAIT))
                    .await;
                continue;
            }
            Ok(resp) => {
                let outcome = classify(&resp);
                let wait = retry_after(&resp);
                (outcome, wait)
            }
            Err(HttpError::Denied) => {
                return Ok(Outcome::Unavailable(
                    "connect's host is not in allowed_outbound_hosts (check `connect_url`)".into(),
                ))
            }
            Err(e) => (
                Outcome::Unavailable(format!("connect could not be reached: {e}")),
                None,
            ),
        };
        let Outcome::Unavailable(why) = outcome else {
            return Ok(outcome);
        };
        failures += 1;
        let wait = wait.unwrap_or_else(|| policy.backoff(failures, platform));
        if failures >= policy.max_attempts || elapsed + wait >= policy.deadline {
            return Ok(Outcome::Unavailable(format!(
                "{why} (after {failures} attempts)"
            )));
        }
        platform.sleep(wait).await;
    }
}

/// Reads one answer that is not a 429.
fn classify(resp: &http::Response<Vec<u8>>) -> Outcome {
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return match serde_json::from_slice::<Value>(resp.body()) {
            Ok(envelope) if envelope.is_object() || envelope.is_array() => {
                Outcome::Delivered(envelope)
            }
            _ => Outcome::Unavailable(format!(
                "connect answered {status} without its JSON envelope (is `connect_url` connect?)"
            )),
        };
    }
    let detail = detail_of(resp);
    if status == 500 {
        if let Some(error_msg) = lfh_error(&detail) {
            return if error_msg.contains("MSG_SIZE_TOO_LARGE") {
                Outcome::TooLarge {
                    status,
                    detail: cut(&detail),
                }
            } else {
                Outcome::Unavailable(format!(
                    "connect answered 500, its workflow failed: {}",
                    cut(&error_msg)
                ))
            };
        }
        // connect's error handler cannot serialise an oversized message's model.
        if detail.contains("is not JSON serializable") {
            return Outcome::TooLarge {
                status,
                detail: cut(&detail),
            };
        }
        // pydantic's refusal, or fhir.resources failing on what it was given.
        if detail.contains("validation error")
            || detail.contains("fhir.resources")
            || detail.contains("object has no attribute")
        {
            return Outcome::Invalid {
                status,
                culprits: culprits(&detail),
                detail: cut(&detail),
            };
        }
    }
    Outcome::Unavailable(format!("connect answered {status}: {}", cut(&detail)))
}

/// The `detail` of connect's error body, or the body itself.
fn detail_of(resp: &http::Response<Vec<u8>>) -> String {
    serde_json::from_slice::<Value>(resp.body())
        .ok()
        .and_then(|v| v.get("detail").cloned())
        .map(|d| match d {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_else(|| String::from_utf8_lossy(resp.body()).into_owned())
}

/// A workflow failure's `error_msg`: connect puts an LFHError, as JSON text, in `detail`.
fn lfh_error(detail: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(detail).ok()?;
    parsed
        .get("error_msg")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The Bundle entries a pydantic refusal names: lines such as `entry -> 3 -> resource -> provider`.
pub(crate) fn culprits(detail: &str) -> Vec<usize> {
    let mut found: Vec<usize> = detail
        .lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(" -> ");
            (parts.next() == Some("entry")).then_some(())?;
            let index = parts.next()?.parse().ok()?;
            (parts.next() == Some("resource")).then_some(index)
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

fn cut(text: &str) -> String {
    text.chars().take(DETAIL_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> http::Response<Vec<u8>> {
        http::Response::builder()
            .status(status)
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    }

    #[test]
    fn connects_answers_are_told_apart() {
        let invalid = answer(
            500,
            json!({"detail": "2 validation errors for Bundle\nentry -> 3 -> resource -> provider\n  field required (type=value_error.missing)\nentry -> 17 -> resource -> item -> 0 -> productOrService\n  field required (type=value_error.missing)"}),
        );
        assert!(
            matches!(classify(&invalid), Outcome::Invalid { culprits, .. } if culprits == [3, 17])
        );
        let lone = answer(
            500,
            json!({"detail": "1 validation error for ExplanationOfBenefit\nprovider\n  field required (type=value_error.missing)"}),
        );
        assert!(
            matches!(classify(&lone), Outcome::Invalid { culprits, .. } if culprits.is_empty())
        );
        let kafka_down =
            json!({"uuid": "u", "error_msg": "KafkaError{code=_MSG_TIMED_OUT}"}).to_string();
        assert!(matches!(
            classify(&answer(500, json!({"detail": kafka_down}))),
            Outcome::Unavailable(_)
        ));
        let too_large = json!({"error_msg": "KafkaError{code=MSG_SIZE_TOO_LARGE}"}).to_string();
        assert!(matches!(
            classify(&answer(500, json!({"detail": too_large}))),
            Outcome::TooLarge { .. }
        ));
        let oversized = answer(
            500,
            json!({"detail": "Object of type Patient is not JSON serializable"}),
        );
        assert!(matches!(classify(&oversized), Outcome::TooLarge { .. }));
        for status in [404, 401, 403, 422, 502, 503] {
            assert!(
                matches!(
                    classify(&answer(status, json!({"detail": "Not Found"}))),
                    Outcome::Unavailable(_)
                ),
                "{status} is not the resources' fault"
            );
        }
        assert!(matches!(
            classify(&answer(500, json!({"detail": "Internal Server Error"}))),
            Outcome::Unavailable(_)
        ));
        let html = http::Response::builder()
            .status(200)
            .body(b"<html>".to_vec())
            .unwrap();
        assert!(matches!(classify(&html), Outcome::Unavailable(_)));
        assert!(matches!(
            classify(&answer(200, json!({"uuid": "x"}))),
            Outcome::Delivered(_)
        ));
    }
}
