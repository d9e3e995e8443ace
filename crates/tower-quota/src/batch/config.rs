//! When a batch closes, and how many items may wait.

use std::fmt;
use std::time::Duration;

/// The limits of a batcher; see [`BatchLayer`](super::BatchLayer)'s setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchConfig {
    pub(super) max_items: usize,
    pub(super) max_bytes: Option<usize>,
    pub(super) max_delay: Duration,
    pub(super) max_pending: usize,
    pub(super) split_failed: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: 100,
            max_bytes: None,
            max_delay: Duration::from_millis(10),
            max_pending: 10_000,
            split_failed: false,
        }
    }
}

/// A batcher setting that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidBatch {
    /// `max_items` is 0: no batch could ever hold an item.
    ZeroMaxItems,
    /// `max_bytes` is 0.
    ZeroMaxBytes,
    /// `max_pending` is below `max_items`: a batch could never fill.
    MaxPendingBelowMaxItems {
        /// The `max_pending` asked for.
        max_pending: usize,
        /// The `max_items` set.
        max_items: usize,
    },
}

impl fmt::Display for InvalidBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidBatch::ZeroMaxItems => f.write_str("max_items must be at least 1"),
            InvalidBatch::ZeroMaxBytes => f.write_str("max_bytes must be at least 1"),
            InvalidBatch::MaxPendingBelowMaxItems {
                max_pending,
                max_items,
            } => write!(
                f,
                "max_pending ({max_pending}) must be at least max_items ({max_items})"
            ),
        }
    }
}

impl std::error::Error for InvalidBatch {}
