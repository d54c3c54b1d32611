//! The one place that decides what is worth retrying and how long to wait.
//!
//! HTTP statuses are classified by `classify_status` for every backend (native, and later S3 and
//! tus); transport failures are always transient. Waits are capped exponential backoff with full
//! jitter, never shorter than a receiver's `Retry-After`. The random input is a parameter, so the
//! schedule is tested by tables.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a failed request calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try the same request again after a backoff (connection errors, timeouts, 408, 429, 5xx).
    Transient,
    /// The session no longer exists on the remote (`404` on a session): start a new one.
    SessionGone,
    /// Do not repeat the request: the answer will not change (every other `4xx`).
    Permanent,
}

/// Classifies an HTTP status of a request made on an existing session (PROTOCOL.md, common
/// rules). `on_session` says whether a `404` means the session is gone.
pub fn classify_status(status: u16, on_session: bool) -> ErrorClass {
    match status {
        408 | 429 | 500 | 502 | 503 | 504 => ErrorClass::Transient,
        404 if on_session => ErrorClass::SessionGone,
        // Other 5xx (501 not implemented, 505, 507 insufficient storage) will not heal by
        // repeating the request within a backoff window.
        _ => ErrorClass::Permanent,
    }
}

/// How often and how patiently a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait ceiling before the first retry; doubles with each further attempt.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Cap on any single wait (a `Retry-After` may ask for longer and is honoured).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// Ten attempts from 500 ms up to 5 minutes: rides out a receiver restart or a short network
    /// outage, and gives up on a dead remote after roughly a quarter of an hour.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry), given a uniform random
    /// `unit` in `[0, 1)` and the receiver's `Retry-After`, if any: full jitter over
    /// `min(cap, base * 2^(retry-1))`, then raised to at least `Retry-After`.
    pub fn delay(&self, retry: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let exponent = retry.saturating_sub(1).min(32);
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << exponent.min(31))
            .min(self.backoff_max);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => jittered.max(asked),
            None => jittered,
        }
    }

    /// True when a request that has failed `attempts` times may be tried again.
    pub fn allows_another(&self, attempts: u32) -> bool {
        attempts < self.max_attempts.max(1)
    }

    /// Sleeps for the wait before retry number `retry`, with fresh randomness.
    pub async fn wait(&self, retry: u32, retry_after: Option<Duration>) {
        let unit: f64 = rand::random();
        tokio::time::sleep(self.delay(retry, unit, retry_after)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases = [
            (408, true, ErrorClass::Transient),
            (429, true, ErrorClass::Transient),
            (500, false, ErrorClass::Transient),
            (502, true, ErrorClass::Transient),
            (503, false, ErrorClass::Transient),
            (504, true, ErrorClass::Transient),
            (404, true, ErrorClass::SessionGone),
            (404, false, ErrorClass::Permanent),
            (400, true, ErrorClass::Permanent),
            (401, true, ErrorClass::Permanent),
            (403, false, ErrorClass::Permanent),
            (409, true, ErrorClass::Permanent),
            (413, false, ErrorClass::Permanent),
            (422, true, ErrorClass::Permanent),
            (501, true, ErrorClass::Permanent),
            (507, false, ErrorClass::Permanent),
        ];
        for (status, on_session, expected) in cases {
            assert_eq!(
                classify_status(status, on_session),
                expected,
                "status {status}"
            );
        }
    }

    /// On tokio's paused clock: the wait is the jittered backoff, but never shorter than what
    /// the remote asked for in Retry-After.
    #[tokio::test(start_paused = true)]
    async fn a_wait_honours_retry_after_and_stays_under_the_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        let started = tokio::time::Instant::now();
        policy.wait(3, Some(Duration::from_secs(10))).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        policy.wait(60, None).await;
        assert!(
            started.elapsed() <= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn backoff_table() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        let ms = Duration::from_millis;
        let cases = [
            // (retry, unit, retry_after, expected)
            (1, 0.999_999, None, ms(100)),
            (2, 0.999_999, None, ms(200)),
            (3, 0.5, None, ms(200)),
            (4, 0.999_999, None, ms(800)),
            (5, 0.999_999, None, ms(1000)),
            (60, 0.999_999, None, ms(1000)),
            (3, 0.0, None, ms(0)),
            (1, 0.0, Some(ms(1500)), ms(1500)),
            (5, 0.999_999, Some(ms(10)), ms(1000)),
        ];
        for (retry, unit, retry_after, expected) in cases {
            let delay = policy.delay(retry, unit, retry_after);
            let difference = delay.abs_diff(expected);
            assert!(
                difference < ms(1),
                "retry {retry} unit {unit}: {delay:?} != {expected:?}"
            );
        }
        assert!(policy.allows_another(4));
        assert!(!policy.allows_another(5));
    }
}
