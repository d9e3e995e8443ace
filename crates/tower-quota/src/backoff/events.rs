//! What the backoff layer reports: each event beside its metric, in one
//! place, so that a reason is named once.

use std::time::Duration;

use crate::telemetry;

/// Why a retryable failure went back to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GiveUp {
    /// A method that is not idempotent, without an `Idempotency-Key`: it
    /// may have been processed, and a retry could do it twice.
    NotIdempotent,
    /// The body was larger than `max_replay_bytes`: it cannot be sent again.
    BodyNotReplayable,
    /// The shared retry budget is spent: retries stay a fraction of the
    /// traffic.
    BudgetExhausted,
    /// The wait before a retry (the backoff, or the server's delay) is
    /// longer than the waiting left to the request.
    MaxWait,
    /// Every attempt of the request is spent.
    MaxAttempts,
    /// The retry would end past `max_elapsed`.
    MaxElapsed,
}

impl GiveUp {
    /// The `reason` field and metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            GiveUp::NotIdempotent => "not_idempotent",
            GiveUp::BodyNotReplayable => "body_not_replayable",
            GiveUp::BudgetExhausted => "budget_exhausted",
            GiveUp::MaxWait => "max_wait",
            GiveUp::MaxAttempts => "max_attempts",
            GiveUp::MaxElapsed => "max_elapsed",
        }
    }

    /// A retry the request had attempts for, skipped for another reason
    /// (`retry_skipped`); otherwise its retries ran out
    /// (`retries_exhausted`).
    fn is_skip(self) -> bool {
        !matches!(self, GiveUp::MaxAttempts | GiveUp::MaxElapsed)
    }
}

/// The failure a retry was decided on: what telemetry says about it.
pub(super) struct Failure {
    pub(super) attempt: u32,
    pub(super) status: Option<u16>,
    pub(super) error_kind: Option<&'static str>,
    /// The server's delay, if it asked for one.
    pub(super) retry_after: Option<Duration>,
}

/// A retryable failure goes back to the caller: `retry_skipped` or
/// `retries_exhausted`, and the give-up counter.
pub(super) fn gave_up(reason: GiveUp, failure: &Failure) {
    crate::metrics::retries_exhausted(reason.as_str());
    let attempt = failure.attempt;
    let status = failure.status;
    let kind = failure.error_kind;
    let retry_after_ms = failure.retry_after.map(millis);
    let reason_str = reason.as_str();
    let message = match reason {
        GiveUp::NotIdempotent => {
            "retry skipped: the request's method is not idempotent and it has no Idempotency-Key"
        }
        GiveUp::BodyNotReplayable => {
            "retry skipped: the request body was larger than max_replay_bytes and cannot be sent again"
        }
        GiveUp::BudgetExhausted => "retry skipped: the retry budget is spent",
        GiveUp::MaxWait => "retry skipped: the wait it needs is longer than the wait left",
        GiveUp::MaxAttempts => "retryable failure returned: no attempts left",
        GiveUp::MaxElapsed => "retryable failure returned: max_elapsed would pass",
    };
    if reason.is_skip() {
        tracing::warn!(
            name: telemetry::RETRY_SKIPPED,
            target: telemetry::TARGET,
            event = telemetry::RETRY_SKIPPED,
            attempt,
            reason = reason_str,
            http.response.status_code = status,
            error.kind = kind,
            retry_after_ms,
            "{message}"
        );
    } else {
        tracing::warn!(
            name: telemetry::RETRIES_EXHAUSTED,
            target: telemetry::TARGET,
            event = telemetry::RETRIES_EXHAUSTED,
            attempt,
            reason = reason_str,
            http.response.status_code = status,
            error.kind = kind,
            retry_after_ms,
            "{message}"
        );
    }
}

/// Why a retry is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryReason {
    /// The server throttled the request (429, `RESOURCE_EXHAUSTED`).
    Throttled,
    /// A failure that may pass: a connect error, a timeout, a 5xx.
    Transient,
}

impl RetryReason {
    fn as_str(self) -> &'static str {
        match self {
            RetryReason::Throttled => "throttled",
            RetryReason::Transient => "transient",
        }
    }
}

/// A retry is sent after `wait`: `server_error_retry` for a 5xx response,
/// `retry_scheduled` otherwise, and the retry metrics.
pub(super) fn retry_scheduled(reason: RetryReason, wait: Duration, failure: &Failure) {
    let reason = reason.as_str();
    crate::metrics::retry_scheduled(reason, wait);
    let attempt = failure.attempt;
    let status = failure.status;
    let backoff_ms = millis(wait);
    if status.is_some_and(|status| status >= 500) {
        tracing::info!(
            name: telemetry::SERVER_ERROR_RETRY,
            target: telemetry::TARGET,
            event = telemetry::SERVER_ERROR_RETRY,
            attempt,
            backoff_ms,
            reason,
            http.response.status_code = status,
            "server error: retrying after a backoff"
        );
    } else {
        tracing::info!(
            name: telemetry::RETRY_SCHEDULED,
            target: telemetry::TARGET,
            event = telemetry::RETRY_SCHEDULED,
            attempt,
            backoff_ms,
            reason,
            http.response.status_code = status,
            error.kind = failure.error_kind,
            "retrying after a backoff"
        );
    }
}

/// Milliseconds for telemetry, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
