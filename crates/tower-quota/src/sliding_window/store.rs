//! Where admissions are recorded.

use std::future::Future;
use std::time::Duration;

use super::Limits;
use crate::{BoxError, Key};

/// Records admissions and decides when the next request of a key may go.
///
/// A store is shared by every clone of a layer and of the services it makes.
/// [`MemoryStore`](super::MemoryStore) keeps the state in this process; a
/// store backed by Redis lets many processes share one quota.
///
/// `acquire` returns a future that resolves once the request is admitted:
/// its cost has been recorded in every quota of `limits`, and no window of
/// any quota holds more than its `max_calls`. Dropping the future before it
/// resolves must leave no trace: the request consumes nothing and no longer
/// delays the requests behind it.
pub trait Store: Clone + Send + Sync + 'static {
    /// The future of one admission.
    type Acquire: Future<Output = Result<Admission, BoxError>> + Send + 'static;

    /// Waits for room for `cost` units of `key` under `limits`.
    ///
    /// Errors: [`Overloaded`](super::Overloaded) when the wait exceeds
    /// `limits.max_wait()` or the queue is full,
    /// [`CostTooLarge`](super::CostTooLarge) when `cost` exceeds a quota's
    /// `max_calls`, and store-specific errors (a lost connection).
    fn acquire(&self, key: Key, cost: u64, limits: &Limits) -> Self::Acquire;
}

/// A request admitted by a [`Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub(crate) key: Key,
    pub(crate) cost: u64,
    pub(crate) waited: Duration,
    pub(crate) queued: usize,
}

impl Admission {
    /// An admission of `cost` units of `key` after waiting `waited`, with
    /// `queued` requests waiting on the key (this one included) when it
    /// arrived; 0 when it was admitted without waiting.
    pub fn new(key: Key, cost: u64, waited: Duration, queued: usize) -> Self {
        Admission {
            key,
            cost,
            waited,
            queued,
        }
    }

    /// The key the request was admitted under.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The units spent.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// How long the request waited for room.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// How many requests waited on the key, this one included, when it
    /// arrived; 0 when it did not wait.
    pub fn queued(&self) -> usize {
        self.queued
    }
}
