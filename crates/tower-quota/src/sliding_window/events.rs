//! What the sliding-window layer reports: each event beside its metric, in
//! one place, so that a reason is named once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Priority;
use super::error::{CostTooLarge, DeadlineUnreachable, OverloadReason, Overloaded};
use super::pacer::Adapted;
use super::store::{Admission, QuotaChange};
use crate::{BoxError, Key, telemetry};

/// Why a sliding window's store answered an error instead of an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The wait for room would exceed `max_wait`.
    MaxWait,
    /// `max_queue` requests were already waiting on the key.
    QueueFull,
    /// The request costs more than a quota's whole capacity.
    CostTooLarge,
    /// The request could not be admitted before its deadline.
    Deadline,
    /// The store failed.
    StoreError,
}

impl Refusal {
    /// The `reason` metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxWait => "max_wait",
            Refusal::QueueFull => "queue_full",
            Refusal::CostTooLarge => "cost_too_large",
            Refusal::Deadline => "deadline",
            Refusal::StoreError => "store_error",
        }
    }

    /// What `error` refused the request for, and the key it names (a
    /// store's own error does not say which key it was for).
    fn of(error: &BoxError) -> (Option<&Key>, Refusal) {
        if let Some(overloaded) = error.downcast_ref::<Overloaded>() {
            let reason = match overloaded.reason() {
                OverloadReason::QueueFull(_) => Refusal::QueueFull,
                _ => Refusal::MaxWait,
            };
            (Some(overloaded.key()), reason)
        } else if let Some(late) = error.downcast_ref::<DeadlineUnreachable>() {
            (Some(late.key()), Refusal::Deadline)
        } else if let Some(too_large) = error.downcast_ref::<CostTooLarge>() {
            (Some(too_large.key()), Refusal::CostTooLarge)
        } else {
            (None, Refusal::StoreError)
        }
    }
}

/// Why the requests a key sends back to back changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Adaptation {
    /// The provider refused a burst the sliding window allowed.
    Refused,
    /// A window passed without refusals.
    Recovered,
    /// The provider's answer to a fresh key's first request said how much
    /// it has left: less than a quota at once.
    Announced,
}

impl Adaptation {
    /// The `reason` field.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Adaptation::Refused => "refused",
            Adaptation::Recovered => "recovered",
            Adaptation::Announced => "announced",
        }
    }
}

/// A request was admitted: the time-in-queue and request metrics, and
/// `rate_pacing_active` when it waited or found others waiting.
pub(super) fn admitted(admission: &Admission) {
    crate::metrics::pacing_admitted(admission.key(), admission.priority(), admission.waited());
    if !admission.waited().is_zero() || admission.queued() > 0 {
        tracing::debug!(
            name: telemetry::RATE_PACING_ACTIVE,
            target: telemetry::TARGET,
            event = telemetry::RATE_PACING_ACTIVE,
            key = %admission.key(),
            wait_ms = admission.waited().as_millis() as u64,
            queued = admission.queued() as u64,
            cost = admission.cost(),
            quota = admission.limited_by().map(tracing::field::display),
            class = admission.priority().as_str(),
            tenant = admission.tenant().map(tracing::field::display),
            "request waited for room in its sliding window"
        );
    }
}

/// The store answered `error` instead of an admission: the refusal
/// metrics, and `rate_limit_queue_overloaded` for an [`Overloaded`] error.
pub(super) fn refused(error: &BoxError, class: Priority) {
    let (key, reason) = Refusal::of(error);
    crate::metrics::admission_refused(key, class, reason.as_str());
    overloaded(error, "its quota is overloaded");
    if let Some(late) = error.downcast_ref::<DeadlineUnreachable>() {
        deadline_unreachable(late, class);
    }
}

/// A request was refused because it could not be admitted before its
/// deadline.
fn deadline_unreachable(late: &DeadlineUnreachable, class: Priority) {
    let now = tokio::time::Instant::now();
    tracing::info!(
        name: telemetry::DEADLINE_UNREACHABLE,
        target: telemetry::TARGET,
        event = telemetry::DEADLINE_UNREACHABLE,
        key = %late.key(),
        class = class.as_str(),
        deadline_ms = late.deadline().saturating_duration_since(now).as_millis() as u64,
        earliest_ms = late
            .earliest()
            .map(|at| at.saturating_duration_since(now).as_millis() as u64),
        queued = late.queued() as u64,
        "request refused: it cannot be admitted before its deadline"
    );
}

/// Reports a request refused as [`Overloaded`] (a `rate_limit_queue_overloaded`
/// event saying `why`); other errors are not reported here.
pub(crate) fn overloaded(error: &BoxError, why: &str) {
    if let Some(overloaded) = error.downcast_ref::<Overloaded>() {
        tracing::warn!(
            name: telemetry::RATE_LIMIT_QUEUE_OVERLOADED,
            target: telemetry::TARGET,
            event = telemetry::RATE_LIMIT_QUEUE_OVERLOADED,
            key = %overloaded.key(),
            wait_ms = overloaded.wait().as_millis() as u64,
            queued = overloaded.queued() as u64,
            reason = ?overloaded.reason(),
            "request refused: {why}"
        );
    }
}

/// The provider announced another size for a configured quota than it
/// did before (or than the configuration, the first time).
pub(super) fn quota_mismatch(key: &Key, change: &QuotaChange) {
    crate::metrics::quota_mismatch(key);
    let quota = change.configured;
    tracing::warn!(
        name: telemetry::QUOTA_MISMATCH,
        target: telemetry::TARGET,
        event = telemetry::QUOTA_MISMATCH,
        key = %key,
        quota = %quota,
        announced = change.announced,
        held_to = change.held_to,
        "the provider announces another quota than the configured one"
    );
}

/// A layer that re-sends requests sits below the sliding window: said
/// once per process, as a WARN naming the fix.
pub(super) fn layer_order() {
    static SAID: AtomicBool = AtomicBool::new(false);
    if SAID.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::warn!(
        name: telemetry::LAYER_ORDER,
        target: telemetry::TARGET,
        event = telemetry::LAYER_ORDER,
        below = "RetryAfterLayer",
        "a RetryAfterLayer is below the SlidingWindowLayer: requests it re-sends skip the pacing \
         and spend quota unpaced; put the SlidingWindowLayer innermost, below RetryAfterLayer \
         and JitterBackoffLayer (see the README's stack)"
    );
}

/// The provider refused a request of `key` the log had room for: its
/// margin widened from `before` to `margin`.
pub(super) fn pacing_drift(key: &Key, before: Duration, margin: Duration) {
    crate::metrics::pacing_drift(key);
    tracing::warn!(
        name: telemetry::PACING_DRIFT,
        target: telemetry::TARGET,
        event = telemetry::PACING_DRIFT,
        key = %key,
        gap_ms = margin.saturating_sub(before).as_millis() as u64,
        margin_ms = margin.as_millis() as u64,
        "the provider refused a request the sliding window had room for: widening the key's margin"
    );
}

/// The client's tasks waited `lag` to run, too long for `sent_within`:
/// admissions are held until answered (a window unless answered, through
/// the Redis store).
pub(super) fn pacing_lagging(lag: Duration, sent_within: Duration) {
    crate::metrics::pacing_lagging();
    tracing::warn!(
        name: telemetry::PACING_LAGGING,
        target: telemetry::TARGET,
        event = telemetry::PACING_LAGGING,
        lag_ms = lag.as_secs_f64() * 1000.0,
        sent_within_ms = sent_within.as_millis() as u64,
        "the client's tasks wait too long to run for requests to leave within sent_within: admissions are held until answered (through Redis: a window unless answered)"
    );
}

/// Reports a change of a key's learned burst.
pub(super) fn rate_adapted(key: &Key, adapted: Adapted, reason: Adaptation) {
    crate::metrics::rate_adapted(key, adapted.burst, adapted.interval);
    tracing::info!(
        name: telemetry::RATE_ADAPTED,
        target: telemetry::TARGET,
        event = telemetry::RATE_ADAPTED,
        key = %key,
        burst = adapted.burst.unwrap_or(0),
        interval_ms = adapted.interval.as_secs_f64() * 1000.0,
        reason = reason.as_str(),
        "the requests a key sends back to back changed"
    );
}
