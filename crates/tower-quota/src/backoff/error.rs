use std::fmt;
use std::time::Duration;

/// A setting of [`JitterBackoffLayer`](super::JitterBackoffLayer) or
/// [`RetryBudget`](super::RetryBudget) that makes no sense, rejected when the
/// layer is built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// The base delay is zero: every backoff would be zero.
    ZeroBase,
    /// The cap is below the base delay.
    MaxBelowBase {
        /// The base delay given.
        base: Duration,
        /// The cap given.
        max: Duration,
    },
    /// `max_attempts` is zero: not even the first attempt could be sent.
    ZeroMaxAttempts,
    /// `max_elapsed` is zero: no retry could ever be sent.
    ZeroMaxElapsed,
    /// The retry budget's time-to-live is outside 1 to 60 seconds.
    BudgetTtlOutOfRange(Duration),
    /// The retry budget's retry ratio is negative, not a number, or above 1000.
    BudgetRatioOutOfRange,
    /// The retry budget's floor of retries per second is too large.
    BudgetMinPerSecondTooLarge(u32),
    /// The attempt header name is not a valid HTTP header name.
    InvalidHeaderName(String),
}

impl fmt::Display for InvalidBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidBackoff::ZeroBase => f.write_str("backoff base delay must be above zero"),
            InvalidBackoff::MaxBelowBase { base, max } => write!(
                f,
                "backoff cap ({max:?}) must not be below the base delay ({base:?})"
            ),
            InvalidBackoff::ZeroMaxAttempts => f.write_str("max_attempts must be at least 1"),
            InvalidBackoff::ZeroMaxElapsed => f.write_str("max_elapsed must be above zero"),
            InvalidBackoff::BudgetTtlOutOfRange(ttl) => write!(
                f,
                "retry budget ttl must be between 1 and 60 seconds, got {ttl:?}"
            ),
            InvalidBackoff::BudgetRatioOutOfRange => {
                f.write_str("retry budget ratio must be a number between 0 and 1000")
            }
            InvalidBackoff::BudgetMinPerSecondTooLarge(min) => {
                write!(
                    f,
                    "retry budget floor of {min} retries per second is too large"
                )
            }
            InvalidBackoff::InvalidHeaderName(name) => {
                write!(f, "{name:?} is not a valid HTTP header name")
            }
        }
    }
}

impl std::error::Error for InvalidBackoff {}
