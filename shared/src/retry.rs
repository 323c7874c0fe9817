//! Retrying upstream calls: 429 (honouring `Retry-After`), 500, 502, 503, 504, timeouts and connection
//! failures, with capped exponential backoff and full jitter, within an overall deadline.

use std::time::Duration;

use crate::ports::{Clock, HttpClient, HttpError, Random};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }
}

/// The outcome of a retried call: the final answer and how many retries it took.
#[derive(Debug)]
pub struct Retried {
    pub result: Result<http::Response<Vec<u8>>, HttpError>,
    pub retries: u32,
}

pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// The longest `Retry-After` believed: a larger one (`1e20`, say) is clamped, never trusted to sleep on.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// A `Retry-After` in seconds (what CMS sends), clamped to [`MAX_RETRY_AFTER`].
pub fn retry_after(resp: &http::Response<Vec<u8>>) -> Option<Duration> {
    let value = resp
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())))
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): full jitter over a capped exponential.
    pub fn backoff(&self, retry: u32, random: &impl Random) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_delay);
        let mut b = [0u8; 4];
        random.fill(&mut b);
        let fraction = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        // Never less than half the step: spreads clients without retrying in a burst.
        exp.mul_f64(0.5 + fraction / 2.0)
    }
}

/// Sends `request` until it succeeds, fails for good, or the policy runs out.
pub async fn send<P: HttpClient + Clock + Random>(
    platform: &P,
    request: &http::Request<Vec<u8>>,
    policy: &RetryPolicy,
) -> Retried {
    send_with(platform, request, policy, |resp| {
        is_retryable_status(resp.status().as_u16())
    })
    .await
}

/// As [`send`], with the caller deciding which answers are worth another try (connect's 500 can mean a
/// refusal that no retry will change).
pub async fn send_with<P: HttpClient + Clock + Random>(
    platform: &P,
    request: &http::Request<Vec<u8>>,
    policy: &RetryPolicy,
    retryable: impl Fn(&http::Response<Vec<u8>>) -> bool,
) -> Retried {
    let started = platform.now();
    let mut retries = 0;
    loop {
        let result = platform.send(clone_request(request)).await;
        let wait = match &result {
            Ok(resp) if retryable(resp) => {
                let backoff = policy.backoff(retries + 1, platform);
                Some(retry_after(resp).unwrap_or(backoff))
            }
            Err(HttpError::Timeout | HttpError::Connection(_)) => {
                Some(policy.backoff(retries + 1, platform))
            }
            _ => None,
        };
        let elapsed = platform.now() - started;
        match wait {
            Some(wait) if retries + 1 < policy.max_attempts && elapsed + wait < policy.deadline => {
                platform.sleep(wait).await;
                retries += 1;
            }
            _ => return Retried { result, retries },
        }
    }
}

pub fn clone_request(request: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;
    use std::cell::Cell;
    use std::rc::Rc;

    fn status(code: u16, retry_after: Option<&str>) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder().status(code);
        if let Some(ra) = retry_after {
            b = b.header("Retry-After", ra);
        }
        b.body(Vec::new()).unwrap()
    }

    fn get() -> http::Request<Vec<u8>> {
        http::Request::get("https://cms.example/x")
            .body(Vec::new())
            .unwrap()
    }

    #[test]
    fn retries_transient_failures_then_succeeds() {
        let p = FakePlatform::new();
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        p.on_send(move |_| {
            c.set(c.get() + 1);
            match c.get() {
                1 => Ok(status(503, None)),
                2 => Err(HttpError::Timeout),
                _ => Ok(status(200, None)),
            }
        });
        let out = futures::executor::block_on(send(&p, &get(), &RetryPolicy::default()));
        assert_eq!(out.result.unwrap().status(), 200);
        assert_eq!(out.retries, 2);
    }

    #[test]
    fn honours_retry_after() {
        let p = FakePlatform::new();
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        p.on_send(move |_| {
            c.set(c.get() + 1);
            Ok(if c.get() == 1 {
                status(429, Some("3"))
            } else {
                status(200, None)
            })
        });
        let before = p.now.get();
        futures::executor::block_on(send(&p, &get(), &RetryPolicy::default()));
        assert!(p.now.get() - before >= Duration::from_secs(3));
    }

    #[test]
    fn gives_up_after_max_attempts_and_never_retries_client_errors() {
        let p = FakePlatform::new();
        p.on_send(|_| Ok(status(502, None)));
        let out = futures::executor::block_on(send(&p, &get(), &RetryPolicy::default()));
        assert_eq!(out.result.unwrap().status(), 502);
        assert_eq!(out.retries, 4);
        assert_eq!(p.sent.borrow().len(), 5);
        let p = FakePlatform::new();
        p.on_send(|_| Ok(status(404, None)));
        let out = futures::executor::block_on(send(&p, &get(), &RetryPolicy::default()));
        assert_eq!(out.retries, 0);
        let p = FakePlatform::new();
        p.on_send(|_| Err(HttpError::Denied));
        let out = futures::executor::block_on(send(&p, &get(), &RetryPolicy::default()));
        assert_eq!(out.result.unwrap_err(), HttpError::Denied);
        assert_eq!(out.retries, 0);
    }

    #[test]
    fn an_absurd_retry_after_is_clamped() {
        assert_eq!(
            retry_after(&status(429, Some("1e20"))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(&status(429, Some("-1"))), None);
        assert_eq!(retry_after(&status(429, Some("NaN"))), None);
        assert_eq!(
            retry_after(&status(429, Some("2"))),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = FakePlatform::new();
        let policy = RetryPolicy::default();
        for retry in 1..20 {
            let d = policy.backoff(retry, &p);
            assert!(d <= policy.max_delay);
            assert!(d >= policy.base_delay / 2);
        }
    }
}
