//! What a caller of a [`Batch`](super::Batch) gets instead of its output.

use std::fmt;
use std::sync::Arc;

/// The error a batch's caller gets instead of its slice of the response.
///
/// Returned boxed (as a [`BoxError`](crate::BoxError)) by the service;
/// downcast to tell the cases apart.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BatchError {
    /// `call` was made without a ready `poll_ready`, and `max_pending`
    /// items are already queued or in flight.
    QueueFull {
        /// The bound that was reached.
        max_pending: usize,
    },
    /// The batcher's worker task is gone (its runtime shut down): the item
    /// was not sent, or its answer was lost.
    Closed,
    /// The batch this item was in failed: the inner service returned an
    /// error, shared by every item of the batch.
    Failed {
        /// How many items the failed batch held.
        items: usize,
        /// The inner service's error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The batch's response could not be split into one output per item:
    /// the split function failed, or gave another number of outputs.
    Split {
        /// How many items the batch held.
        items: usize,
        /// What went wrong.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl BatchError {
    pub(super) fn failed(items: usize, error: crate::BoxError) -> Self {
        BatchError::Failed {
            items,
            source: Arc::from(error),
        }
    }

    pub(super) fn split(items: usize, error: crate::BoxError) -> Self {
        BatchError::Split {
            items,
            source: Arc::from(error),
        }
    }

    /// A short stable name of the case, for telemetry.
    pub fn kind(&self) -> &'static str {
        match self {
            BatchError::QueueFull { .. } => "queue_full",
            BatchError::Closed => "closed",
            BatchError::Failed { .. } => "failed",
            BatchError::Split { .. } => "split",
        }
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::QueueFull { max_pending } => write!(
                f,
                "batch queue full: {max_pending} items pending (call made without poll_ready)"
            ),
            BatchError::Closed => f.write_str("batch worker closed"),
            BatchError::Failed { items, source } => {
                write!(f, "batch of {items} items failed: {source}")
            }
            BatchError::Split { items, source } => write!(
                f,
                "response to a batch of {items} items could not be split: {source}"
            ),
        }
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BatchError::Failed { source, .. } | BatchError::Split { source, .. } => {
                Some(&**source as &(dyn std::error::Error + 'static))
            }
            BatchError::QueueFull { .. } | BatchError::Closed => None,
        }
    }
}

/// The split function gave `got` outputs for a batch of `expected` items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitCountMismatch {
    /// Items in the batch.
    pub expected: usize,
    /// Outputs the split function gave.
    pub got: usize,
}

impl fmt::Display for SplitCountMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "split gave {} outputs for {} items",
            self.got, self.expected
        )
    }
}

impl std::error::Error for SplitCountMismatch {}
