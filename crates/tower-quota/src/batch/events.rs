//! What the batcher reports, in one place.

use super::BatchError;
use crate::telemetry;

/// Why a batch left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// It held `max_items` items.
    Items,
    /// The next item would have taken it past `max_bytes`, or it reached it.
    Bytes,
    /// `max_delay` passed since its first item.
    Delay,
    /// Every handle was dropped: what was left went out.
    Shutdown,
    /// It is half of a failed batch, sent again.
    Resplit,
}

impl Closed {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Closed::Items => "max_items",
            Closed::Bytes => "max_bytes",
            Closed::Delay => "max_delay",
            Closed::Shutdown => "shutdown",
            Closed::Resplit => "resplit",
        }
    }
}

/// A batch of `items` items costing `cost` was sent: `batch_sent`.
pub(super) fn sent(items: usize, cost: u64, closed: Closed) {
    tracing::debug!(
        name: telemetry::BATCH_SENT,
        target: telemetry::TARGET,
        event = telemetry::BATCH_SENT,
        items,
        cost,
        reason = closed.as_str(),
        "batch sent"
    );
    crate::metrics::batch_sent(items, closed.as_str());
}

/// A batch of `items` items failed: `batch_failed`, its halves sent again
/// when `resplit`.
pub(super) fn failed(error: &BatchError, items: usize, resplit: bool) {
    let outcome = if resplit { "resplit" } else { "failed" };
    tracing::warn!(
        name: telemetry::BATCH_FAILED,
        target: telemetry::TARGET,
        event = telemetry::BATCH_FAILED,
        items,
        error.kind = error.kind(),
        outcome,
        "batch failed"
    );
    crate::metrics::batch_failed(outcome);
}
