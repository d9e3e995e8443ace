//! Errors of the sliding-window limiter.
//!
//! The service's error type is [`BoxError`](crate::BoxError), as in tower's own
//! middleware: the limiter's errors below, a store's errors, and the inner
//! service's errors (unchanged, boxed) can all be told apart with
//! `downcast_ref`.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::Key;

/// A request was refused because waiting for room would take longer than
/// `max_wait`, or because its key's queue was full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overloaded {
    pub(crate) key: Key,
    pub(crate) wait: Duration,
    pub(crate) queued: usize,
    pub(crate) reason: OverloadReason,
}

/// Which bound an [`Overloaded`] request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverloadReason {
    /// The wait the request needs exceeds `max_wait`.
    MaxWait(Duration),
    /// `max_queue` requests were already waiting on the key.
    QueueFull(usize),
}

impl Overloaded {
    /// A refusal of a request of `key` that would have needed `wait`, with
    /// `queued` requests waiting (this one included); for [`Store`]
    /// implementations.
    ///
    /// [`Store`]: super::Store
    pub fn new(key: Key, wait: Duration, queued: usize, reason: OverloadReason) -> Self {
        Overloaded {
            key,
            wait,
            queued,
            reason,
        }
    }

    /// The key whose quota was overloaded.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The wait the request would have needed: exact for a request at the
    /// head of the queue, otherwise a lower bound computed from the
    /// admissions already queued ahead of it.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// How many requests were waiting on the key.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The bound that was hit.
    pub fn reason(&self) -> OverloadReason {
        self.reason
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            OverloadReason::MaxWait(max_wait) => write!(
                f,
                "rate limit for key `{}` is overloaded: admission needs a wait of {:?}, over max_wait {:?} ({} queued)",
                self.key, self.wait, max_wait, self.queued
            ),
            OverloadReason::QueueFull(max_queue) => write!(
                f,
                "rate limit for key `{}` is overloaded: {} requests already queued (max_queue {}), admission needs a wait of at least {:?}",
                self.key, self.queued, max_queue, self.wait
            ),
        }
    }
}

impl std::error::Error for Overloaded {}

/// A request costs more than a quota's whole capacity: it could never be
/// admitted, so it is refused at once instead of waiting forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostTooLarge {
    pub(crate) key: Key,
    pub(crate) cost: u64,
    pub(crate) max_calls: u64,
    pub(crate) window: Duration,
}

impl CostTooLarge {
    /// A refusal of a request of `key` costing `cost`, over the capacity of
    /// a quota of `max_calls` per `window`; for [`Store`] implementations,
    /// which usually get it from [`Limits::check_cost`].
    ///
    /// [`Store`]: super::Store
    /// [`Limits::check_cost`]: super::Limits::check_cost
    pub fn new(key: Key, cost: u64, max_calls: u64, window: Duration) -> Self {
        CostTooLarge {
            key,
            cost,
            max_calls,
            window,
        }
    }

    /// The key of the request.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// What the request costs.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// The capacity of the quota it exceeds.
    pub fn max_calls(&self) -> u64 {
        self.max_calls
    }

    /// The window of the quota it exceeds.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl fmt::Display for CostTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request for key `{}` costs {}, more than the whole quota of {} per {:?}",
            self.key, self.cost, self.max_calls, self.window
        )
    }
}

impl std::error::Error for CostTooLarge {}

/// A request was refused because its key already holds admissions under
/// other quotas: two layers sharing one store gave the same key different
/// quota lists (or safety margins). Admitting it under either list would let
/// the other's requests through uncounted, so neither replaces the other;
/// the key takes new quotas once its admissions have left their windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictingQuotas {
    pub(crate) key: Key,
}

impl ConflictingQuotas {
    /// A refusal of a request of `key`; for [`Store`](super::Store)
    /// implementations.
    pub fn new(key: Key) -> Self {
        ConflictingQuotas { key }
    }

    /// The key whose quotas differ between layers.
    pub fn key(&self) -> &Key {
        &self.key
    }
}

impl fmt::Display for ConflictingQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} is already limited by other quotas: layers that share a store must give a key the same quotas and safety margin",
            self.key
        )
    }
}

impl std::error::Error for ConflictingQuotas {}

/// A request was refused because it could not be admitted before its
/// [deadline](super::Deadline): its earliest possible slot, over every quota
/// of its key and after the requests that go before it, lies past it.
/// Refused at once when that is known on arrival, otherwise at the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineUnreachable {
    pub(crate) key: Key,
    pub(crate) deadline: Instant,
    pub(crate) earliest: Option<Instant>,
    pub(crate) queued: usize,
}

impl DeadlineUnreachable {
    /// A refusal of a request of `key` with `deadline` that could have gone
    /// at `earliest` (`None`: not before an answer or a later event), with
    /// `queued` requests ahead of it; for [`Store`](super::Store)
    /// implementations.
    pub fn new(key: Key, deadline: Instant, earliest: Option<Instant>, queued: usize) -> Self {
        DeadlineUnreachable {
            key,
            deadline,
            earliest,
            queued,
        }
    }

    /// The key of the request.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The request's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the request could have gone, as far as the store could tell:
    /// `None` when no instant was known (its slot frees when an answer
    /// comes back, or it reached its deadline still waiting).
    pub fn earliest(&self) -> Option<Instant> {
        self.earliest
    }

    /// How many requests went before it in the queue.
    pub fn queued(&self) -> usize {
        self.queued
    }
}

impl fmt::Display for DeadlineUnreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = Instant::now();
        write!(
            f,
            "request for key `{}` cannot be admitted before its deadline ({:?} from now, {} queued ahead)",
            self.key,
            self.deadline.saturating_duration_since(now),
            self.queued
        )?;
        if let Some(earliest) = self.earliest {
            write!(
                f,
                ": its earliest slot is {:?} from now",
                earliest.saturating_duration_since(now)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for DeadlineUnreachable {}
