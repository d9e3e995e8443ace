//! Where admissions are recorded.

use std::future::Future;
use std::time::Duration;

use super::{Limits, Quota};
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

    /// Corrects the cost charged for `admission` to `actual_cost`, once the
    /// response told the real usage: the difference is refunded (or charged)
    /// in the window where the request was admitted. Applies to the quotas
    /// that spend the request's cost ([`Quota::new`](super::Quota::new)), not
    /// to per-request quotas. An admission that has left every window, or
    /// that the store no longer knows, is ignored.
    fn correct(&self, admission: &Admission, actual_cost: u64);
}

/// A request admitted by a [`Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub(crate) key: Key,
    pub(crate) id: u64,
    pub(crate) cost: u64,
    pub(crate) waited: Duration,
    pub(crate) queued: usize,
    pub(crate) limited_by: Option<Quota>,
}

impl Admission {
    /// An admission of `cost` units of `key` after waiting `waited`, with
    /// `queued` requests waiting on the key (this one included) when it
    /// arrived (0 when it was admitted without waiting). `id` is the store's
    /// own name for the admission, used by [`Store::correct`].
    pub fn new(key: Key, id: u64, cost: u64, waited: Duration, queued: usize) -> Self {
        Admission {
            key,
            id,
            cost,
            waited,
            queued,
            limited_by: None,
        }
    }

    /// Names the quota that made the request wait.
    pub fn with_limited_by(mut self, quota: Option<Quota>) -> Self {
        self.limited_by = quota;
        self
    }

    /// The quota that made the request wait, if it waited.
    pub fn limited_by(&self) -> Option<&Quota> {
        self.limited_by.as_ref()
    }

    /// The store's name for this admission.
    pub fn id(&self) -> u64 {
        self.id
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
