//! What the retry-after layer reports: each event beside its metric, in one
//! place, so that an outcome is named once.

use std::time::Duration;

use tokio::time::Instant;

use super::gate::Closed;
use crate::{Key, telemetry};

/// What the layer did with a throttled response: re-sent the request, or
/// returned the response, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ThrottleOutcome {
    /// The request waits out the server's delay and goes again.
    Resend,
    /// The server said not to retry.
    ServerSaidDoNotRetry,
    /// The server gave no delay to wait out.
    NoDelay,
    /// The server may have processed the request, and it may not be sent
    /// twice.
    NotIdempotent,
    /// The delay is longer than the request may still wait.
    DelayOverMaxWait,
    /// Every attempt of the request is spent.
    MaxAttempts,
    /// The body cannot be sent again.
    BodyNotReplayable,
}

impl ThrottleOutcome {
    /// The `outcome` field and metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ThrottleOutcome::Resend => "resend",
            ThrottleOutcome::ServerSaidDoNotRetry => "returned_server_said_do_not_retry",
            ThrottleOutcome::NoDelay => "returned_no_delay",
            ThrottleOutcome::NotIdempotent => "returned_not_idempotent",
            ThrottleOutcome::DelayOverMaxWait => "returned_delay_over_max_wait",
            ThrottleOutcome::MaxAttempts => "returned_max_attempts",
            ThrottleOutcome::BodyNotReplayable => "returned_body_not_replayable",
        }
    }
}

/// An attempt of `key` passed its gate after `waited`.
pub(super) fn gate_passed(key: &Key, waited: Duration) {
    crate::metrics::gate_passed(key, waited);
}

/// A request of `key` fails without being sent: its gate stays closed
/// longer than it may wait.
pub(super) fn gate_refused(key: &Key) {
    crate::metrics::refused(key, "gate_closed");
}

/// A response closed (or closed further) the gate of `key`: `gate_closed`
/// and its counter.
pub(super) fn gate_closed(key: &Key, closed: &Closed, now: Instant) {
    let reason = closed.reason.as_str();
    crate::metrics::gate_closed(key, reason);
    tracing::info!(
        name: telemetry::GATE_CLOSED,
        target: telemetry::TARGET,
        event = telemetry::GATE_CLOSED,
        key = %key,
        until_ms = millis(closed.until.saturating_duration_since(now)),
        reason,
        "server asked for a pause: requests of this key wait"
    );
}

/// The provider accepted a request of `key` that left the pacing layer
/// after a refusal closed the key's gate: `gate_reopened`.
pub(super) fn gate_reopened(key: &Key) {
    tracing::info!(
        name: telemetry::GATE_REOPENED,
        target: telemetry::TARGET,
        event = telemetry::GATE_REOPENED,
        key = %key,
        reason = "accepted",
        "the provider accepted a request sent after its refusal: requests of this key go again"
    );
}

/// The server throttled attempt `attempt` of `key`: `rate_limit_hit` and
/// the throttle counter.
pub(super) fn rate_limit_hit(
    key: &Key,
    status: http::StatusCode,
    signal: &quota_headers::Signal,
    attempt: u32,
    outcome: ThrottleOutcome,
) {
    let outcome = outcome.as_str();
    crate::metrics::throttled(key, status, outcome);
    tracing::warn!(
        name: telemetry::RATE_LIMIT_HIT,
        target: telemetry::TARGET,
        event = telemetry::RATE_LIMIT_HIT,
        key = %key,
        http.response.status_code = status.as_u16(),
        retry_after_ms = signal.retry_after.map(millis),
        remaining = signal.min_remaining(),
        attempt,
        outcome,
        "server throttled the request"
    );
}

/// Milliseconds for telemetry, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
