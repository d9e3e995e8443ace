//! What the concurrency layer reports, in one place.

use super::Lease;
use crate::{BoxError, telemetry};

/// A request took a slot: `concurrency_limited` when it waited for one.
pub(super) fn acquired(lease: &Lease, max_in_flight: u32) {
    if !lease.waited().is_zero() {
        tracing::debug!(
            name: telemetry::CONCURRENCY_LIMITED,
            target: telemetry::TARGET,
            event = telemetry::CONCURRENCY_LIMITED,
            key = %lease.key(),
            wait_ms = lease.waited().as_millis() as u64,
            max_in_flight,
            "request waited for a concurrency slot"
        );
    }
}

/// The store answered `error` instead of a slot:
/// `rate_limit_queue_overloaded` when it is an
/// [`Overloaded`](crate::sliding_window::Overloaded).
pub(super) fn refused(error: &BoxError) {
    crate::sliding_window::overloaded(error, "no concurrency slot freed within max_wait");
}
