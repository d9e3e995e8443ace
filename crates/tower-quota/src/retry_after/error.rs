use std::fmt;
use std::time::Duration;

use super::GateReason;
use crate::Key;

/// A request was refused without being sent: its key's gate stays closed
/// longer than the request may still wait (`max_wait`, less what it has
/// waited already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateClosed {
    pub(crate) key: Key,
    pub(crate) wait: Duration,
    pub(crate) reason: GateReason,
}

impl GateClosed {
    /// The key whose gate is closed.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// How long until the gate opens (or, while a probe is out or a
    /// reopened gate ramps up, how long the probe or the ramp may last):
    /// never more than the layer's `max_pause`.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Why the gate is closed.
    pub fn reason(&self) -> GateReason {
        self.reason
    }
}

impl fmt::Display for GateClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests for key `{}` are paused for {:?} more ({}), longer than this request may still wait (max_wait)",
            self.key,
            self.wait,
            self.reason.as_str()
        )
    }
}

impl std::error::Error for GateClosed {}

/// A [`RetryAfterLayer`](super::RetryAfterLayer) setting that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidRetryAfter {
    /// `max_attempts` was 0: not even the first attempt could be sent.
    ZeroMaxAttempts,
    /// `max_pause` was zero: a gate that never closes ignores every server.
    ZeroMaxPause,
}

impl fmt::Display for InvalidRetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidRetryAfter::ZeroMaxAttempts => {
                f.write_str("invalid retry-after setting: max_attempts must be at least 1")
            }
            InvalidRetryAfter::ZeroMaxPause => {
                f.write_str("invalid retry-after setting: max_pause must be above zero")
            }
        }
    }
}

impl std::error::Error for InvalidRetryAfter {}
