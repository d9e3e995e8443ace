use std::fmt;
use std::time::Duration;

use super::CircuitState;
use crate::Key;

/// A call failed at once, without being sent, because its key's breaker is
/// open (or half-open with every probe taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    pub(crate) key: Key,
    pub(crate) retry_in: Duration,
    pub(crate) state: CircuitState,
}

impl CircuitOpen {
    /// The key whose breaker is open.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Time until the breaker lets the next probe through: zero when it is
    /// half-open and waiting for its probes to finish.
    pub fn retry_in(&self) -> Duration {
        self.retry_in
    }

    /// The breaker's state: open or half-open.
    pub fn state(&self) -> CircuitState {
        self.state
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit for key `{}` is {}: next probe in {:?}",
            self.key,
            self.state.as_str(),
            self.retry_in
        )
    }
}

impl std::error::Error for CircuitOpen {}

/// A [`CircuitBreakerLayer`](super::CircuitBreakerLayer) setting that makes
/// no sense.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum InvalidCircuitBreaker {
    /// The failure rate was not in `(0, 1]`.
    FailureRate(f64),
    /// The window holds no call, or `minimum_calls` was 0.
    EmptyWindow,
    /// The open-duration jitter was not in `[0, 1)`.
    OpenJitter(f64),
    /// No probe would ever be let through.
    ZeroProbes,
    /// The open duration was longer than a year.
    OpenDuration(Duration),
    /// The time window was longer than a year.
    WindowTooLong(Duration),
    /// The count window held more than 100,000 calls.
    WindowTooLarge(usize),
    /// `forget_after` was zero or longer than a year.
    ForgetAfter(Duration),
    /// `max_keys` was 0.
    ZeroKeys,
}

impl fmt::Display for InvalidCircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidCircuitBreaker::FailureRate(rate) => {
                write!(
                    f,
                    "invalid circuit breaker: failure_rate {rate} is not in (0, 1]"
                )
            }
            InvalidCircuitBreaker::EmptyWindow => f.write_str(
                "invalid circuit breaker: the window and minimum_calls must hold at least one call",
            ),
            InvalidCircuitBreaker::OpenJitter(jitter) => {
                write!(
                    f,
                    "invalid circuit breaker: open jitter {jitter} is not in [0, 1)"
                )
            }
            InvalidCircuitBreaker::ZeroProbes => {
                f.write_str("invalid circuit breaker: half_open_probes must be at least 1")
            }
            InvalidCircuitBreaker::OpenDuration(duration) => write!(
                f,
                "invalid circuit breaker: open_duration {duration:?} is longer than a year"
            ),
            InvalidCircuitBreaker::WindowTooLong(span) => write!(
                f,
                "invalid circuit breaker: window Time({span:?}) is longer than a year"
            ),
            InvalidCircuitBreaker::WindowTooLarge(size) => write!(
                f,
                "invalid circuit breaker: window Count({size}) holds more than 100000 calls"
            ),
            InvalidCircuitBreaker::ForgetAfter(after) => write!(
                f,
                "invalid circuit breaker: forget_after {after:?} is not between zero and a year"
            ),
            InvalidCircuitBreaker::ZeroKeys => {
                f.write_str("invalid circuit breaker: max_keys must be at least 1")
            }
        }
    }
}

impl std::error::Error for InvalidCircuitBreaker {}
