//! Injected failures: error statuses, 503s with Retry-After, latency, reset
//! connections, and scripted responses.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;

/// A failure the server injects into requests the quota admitted.
///
/// Faults are drawn in configuration order from the server's RNG (seed it
/// with [`MockServerBuilder::seed`](crate::MockServerBuilder::seed) for
/// repeatable runs); the first status-changing fault that fires decides the
/// response, and every [`Fault::Latency`] adds its delay. Faulted requests
/// have already consumed quota, like a real provider that counts every
/// request it processes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// A random `fraction` of admitted requests get one of `statuses` (picked
    /// uniformly) instead of 200.
    ErrorRate {
        /// Probability in `[0, 1]`.
        fraction: f64,
        /// Statuses to pick from, e.g. 500, 502, 503. Empty means the fault
        /// never fires.
        statuses: Vec<StatusCode>,
    },
    /// A random `fraction` of admitted requests get a 503 with `Retry-After`
    /// (delay-seconds, rounded up).
    ServiceUnavailableRetryAfter {
        /// Probability in `[0, 1]`.
        fraction: f64,
        /// The delay announced in `Retry-After`.
        retry_after: Duration,
    },
    /// A delay before every response (including 429s and scripted ones).
    ///
    /// For a delay that only admitted requests pay, after the quota
    /// decision, as a provider spends time doing the work, see
    /// [`MockServerBuilder::processing`](crate::MockServerBuilder::processing).
    Latency(Latency),
    /// A random `fraction` of admitted requests get no response: on HTTP/1.1
    /// the connection is closed, on HTTP/2 the stream is reset. Recorded
    /// with status `0`.
    ConnectionReset {
        /// Probability in `[0, 1]`.
        fraction: f64,
    },
}

/// How long [`Fault::Latency`] delays a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly distributed in `[min, max]`.
    Uniform {
        /// The shortest delay.
        min: Duration,
        /// The longest delay.
        max: Duration,
    },
}

impl Latency {
    /// One delay: the fixed one, or one drawn uniformly from `[min, max]`
    /// (the bounds are swapped if given the wrong way round).
    pub(crate) fn draw(self, rng: &mut impl Rng) -> Duration {
        match self {
            Latency::Fixed(delay) => delay,
            Latency::Uniform { min, max } => {
                let (low, high) = if min <= max { (min, max) } else { (max, min) };
                let low_ns = u64::try_from(low.as_nanos()).unwrap_or(u64::MAX);
                let high_ns = u64::try_from(high.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rng.random_range(low_ns..=high_ns))
            }
        }
    }
}

impl Fault {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let fraction = match self {
            Fault::ErrorRate { fraction, .. }
            | Fault::ServiceUnavailableRetryAfter { fraction, .. }
            | Fault::ConnectionReset { fraction } => *fraction,
            Fault::Latency(_) => return Ok(()),
        };
        if (0.0..=1.0).contains(&fraction) {
            Ok(())
        } else {
            Err(format!(
                "fault fraction must be within [0, 1], got {fraction} in {self:?}"
            ))
        }
    }
}

/// A canned response for the next `count` requests, served before the quota
/// check (so it consumes no quota), e.g. "the next 3 requests get 503 with
/// `Retry-After: 2`".
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use quota_mock::Scripted;
///
/// let outage = Scripted::new(3, StatusCode::SERVICE_UNAVAILABLE).retry_after(Duration::from_secs(2));
/// assert_eq!(outage.count(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scripted {
    count: u32,
    status: StatusCode,
    retry_after: Option<Duration>,
}

impl Scripted {
    /// The next `count` requests get `status`.
    pub fn new(count: u32, status: StatusCode) -> Self {
        Scripted {
            count,
            status,
            retry_after: None,
        }
    }

    /// Adds `Retry-After` (delay-seconds, rounded up) to each response.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// How many requests this script still answers.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Retry-After` delay it announces, if any.
    pub fn retry_after_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Takes one response off the script.
    pub(crate) fn take_one(&mut self) -> Option<(StatusCode, Option<Duration>)> {
        if self.count == 0 {
            return None;
        }
        self.count -= 1;
        Some((self.status, self.retry_after))
    }
}
