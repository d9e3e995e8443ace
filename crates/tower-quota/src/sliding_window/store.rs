//! Where admissions are recorded.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use super::{Limits, Place, Priority, Quota};
use crate::{Announced, BoxError, Key, Room};

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

    /// Waits for room for `cost` units of `key` under `limits`, for a
    /// request standing at `place` in its key's queue: its priority class,
    /// its tenant and its deadline (see [`Place`]).
    ///
    /// A store must never admit a request after its deadline. The default
    /// keeps to that by folding the deadline into `max_wait` (the request is
    /// refused as [`Overloaded`](super::Overloaded) when it cannot be
    /// admitted in time), and orders requests as [`acquire`](Store::acquire)
    /// does, ignoring class and tenant. [`MemoryStore`](super::MemoryStore)
    /// orders by class and tenant, keeps each class's reserved share, and
    /// refuses with [`DeadlineUnreachable`](super::DeadlineUnreachable).
    fn acquire_placed(&self, key: Key, cost: u64, limits: &Limits, place: Place) -> Self::Acquire {
        match place.deadline {
            None => self.acquire(key, cost, limits),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                self.acquire(key, cost, &limits.clone().waiting_at_most(left))
            }
        }
    }

    /// Decides at once, when the store can without waiting: `Some` with the
    /// admission of `cost` units of `key` when nothing of the request's
    /// class waits on the key and every quota has room (recorded as
    /// [`acquire_placed`](Store::acquire_placed) records it), or with the
    /// error it would resolve to; `None` when the request must wait, or the
    /// store cannot tell without a round trip. The caller then awaits
    /// [`acquire_placed`](Store::acquire_placed).
    ///
    /// The layer tries this first, so that a request with room is admitted
    /// in `call` without an admission future. The default returns `None`.
    fn try_acquire(
        &self,
        key: &Key,
        cost: u64,
        limits: &Limits,
        place: &Place,
    ) -> Option<Result<Admission, BoxError>> {
        let _ = (key, cost, limits, place);
        None
    }

    /// Corrects the cost charged for `admission` to `actual_cost`, once the
    /// response told the real usage: the difference is refunded (or charged)
    /// in the window where the request was admitted. Applies to the quotas
    /// that spend the request's cost ([`Quota::new`](super::Quota::new)), not
    /// to per-request quotas. An admission that has left every window, or
    /// that the store no longer knows, is ignored.
    fn correct(&self, admission: &Admission, actual_cost: u64);

    /// Tells the store how `admission` ended, so that its slot is held for
    /// no longer than the provider can count it.
    ///
    /// A request reaches the provider no earlier than its admission and no
    /// later than its answer (a response or an error) comes back. An
    /// answered admission is held until a window (plus the safety margin)
    /// after the answer — or after the [`sent_within`](Limits::sent_within)
    /// bound, if that comes first and the limits are not
    /// [strict](Limits::is_strict). A dropped request keeps the bound of its
    /// admission; in strict mode, with no response to wait for, it is held
    /// as if answered when dropped.
    ///
    /// The default does nothing: the store then holds every admission for
    /// the `sent_within` bound past its admission instant.
    fn complete(&self, admission: &Admission, completion: Completion, limits: &Limits) {
        let _ = (admission, completion, limits);
    }

    /// Whether the caller should measure how long its task waits to run
    /// after the admission it just made (see [`Store::probed`]): the store
    /// spaces the measurements out and keeps one in progress at a time.
    ///
    /// The default is `false`: no measurement, and admissions rely on the
    /// [`sent_within`](Limits::sent_within) bound whatever the client's load.
    fn probes_lag(&self, admission: &Admission) -> bool {
        let _ = admission;
        false
    }

    /// Ends a measurement [`probes_lag`](Store::probes_lag) asked for:
    /// `lag` is how long the caller's task, woken right after it handed its
    /// admitted request on, waited to run again; `None` when the request
    /// ended first.
    ///
    /// A task's wait is what the client's other tasks wait too, the one
    /// that writes the request to its connection among them: a client that
    /// waits a good part of `sent_within` to run cannot promise that bound,
    /// and the store holds the admissions in flight until answered for a
    /// while. The default does nothing.
    fn probed(&self, lag: Option<Duration>, limits: &Limits) {
        let _ = (lag, limits);
    }

    /// Tells the store that the provider refused `admission` (a 429)
    /// although the store had room for it: the provider's window is later
    /// than the store's, and the key's margin should widen. Returns the
    /// margin the key added before and adds now, if the store adapts one.
    ///
    /// The default does nothing.
    fn refused(&self, admission: &Admission, limits: &Limits) -> Option<(Duration, Duration)> {
        let _ = (admission, limits);
        None
    }

    /// Tells the store that the provider accepted `admission` (it answered,
    /// and not with a refusal), for limits that
    /// [report refusals](Limits::reports_refusals). `room` reads what the
    /// provider says it has left, if the store asks: a store that learns
    /// the burst a provider tolerates from its answers (the
    /// [`MemoryStore`](super::MemoryStore)) asks on a key's first answers
    /// only. Called before [`complete`](Store::complete).
    ///
    /// The default does nothing.
    fn accepted(&self, admission: &Admission, room: &dyn Fn() -> Option<Room>, limits: &Limits) {
        let _ = (admission, room, limits);
    }

    /// [`accepted`](Store::accepted), then
    /// [`complete`](Store::complete) with [`Completion::Answered`]: the
    /// provider accepted `admission` and its answer came back. The layer
    /// calls this instead of the two for every accepted request it
    /// reports; a store that can do both in one step (one lock, one
    /// lookup, one read of the clock) overrides it.
    fn accepted_and_answered(
        &self,
        admission: &Admission,
        room: &dyn Fn() -> Option<Room>,
        limits: &Limits,
    ) {
        self.accepted(admission, room, limits);
        self.complete(admission, Completion::Answered, limits);
    }

    /// The provider announced `announced` in its answer to `admission`.
    /// Returns, for each configured quota whose window it names, what
    /// changed since the key's last announcement: the store reports a
    /// provider whose quota differs from the configured one once per
    /// change, and with [`Limits::follows_announced_quotas`] holds the key
    /// to the smaller of the two.
    ///
    /// The default does nothing and reports nothing.
    fn announced(
        &self,
        admission: &Admission,
        announced: &[Announced],
        limits: &Limits,
    ) -> Vec<QuotaChange> {
        let _ = (admission, announced, limits);
        Vec::new()
    }
}

/// What a provider announced, since its last announcement, for one
/// configured quota of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaChange {
    /// The configured quota.
    pub configured: Quota,
    /// The size the provider announces now for the quota's window.
    pub announced: u64,
    /// The size the key is held to from now on: the configured
    /// `max_calls`, or the announced size (at least 1, at most the
    /// configured) when the limits follow announcements.
    pub held_to: u64,
}

/// How an admitted request ended, as far as the pacing layer saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// The inner service answered, with a response or an error: the request
    /// reached the provider by now, if it did at all.
    Answered,
    /// The response future was dropped before the inner service answered.
    Dropped,
}

/// A request admitted by a [`Store`].
#[derive(Clone, PartialEq, Eq)]
pub struct Admission {
    pub(crate) key: Key,
    pub(crate) id: u64,
    pub(crate) cost: u64,
    pub(crate) priority: Priority,
    /// What only a request that waited, or named a tenant, has: boxed, so
    /// that an admission made at once stays small (it moves with its
    /// response future).
    detail: Option<Box<Detail>>,
}

#[derive(Clone, Default, PartialEq, Eq)]
struct Detail {
    waited: Duration,
    queued: usize,
    limited_by: Option<Quota>,
    tenant: Option<Key>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("cost", &self.cost)
            .field("waited", &self.waited())
            .field("queued", &self.queued())
            .field("limited_by", &self.limited_by())
            .field("priority", &self.priority)
            .field("tenant", &self.tenant())
            .finish()
    }
}

impl Admission {
    /// An admission of `cost` units of `key` after waiting `waited`, with
    /// `queued` requests waiting on the key (this one included) when it
    /// arrived (0 when it was admitted without waiting). `id` is the store's
    /// own name for the admission, used by [`Store::correct`].
    pub fn new(key: Key, id: u64, cost: u64, waited: Duration, queued: usize) -> Self {
        let detail = (!waited.is_zero() || queued > 0).then(|| {
            Box::new(Detail {
                waited,
                queued,
                ..Detail::default()
            })
        });
        Admission {
            key,
            id,
            cost,
            priority: Priority::default(),
            detail,
        }
    }

    /// Sets one optional field of the detail to `value`: boxing the
    /// detail for a value, and dropping a detail left with nothing to say
    /// (so that equal admissions compare equal).
    fn set_detail<T>(&mut self, value: Option<T>, field: fn(&mut Detail) -> &mut Option<T>) {
        if value.is_some() {
            *field(self.detail.get_or_insert_with(Box::default)) = value;
        } else if let Some(detail) = self.detail.as_deref_mut() {
            *field(detail) = None;
            if *detail == Detail::default() {
                self.detail = None;
            }
        }
    }

    /// Names the quota that made the request wait.
    pub fn with_limited_by(mut self, quota: Option<Quota>) -> Self {
        self.set_detail(quota, |detail| &mut detail.limited_by);
        self
    }

    /// Names the tenant the request was admitted for.
    pub(crate) fn set_tenant(&mut self, tenant: Option<Key>) {
        self.set_detail(tenant, |detail| &mut detail.tenant);
    }

    /// The class the request was admitted in.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The tenant the request was admitted for, if it named one.
    pub fn tenant(&self) -> Option<&Key> {
        self.detail.as_deref()?.tenant.as_ref()
    }

    /// The quota that made the request wait, if it waited.
    pub fn limited_by(&self) -> Option<&Quota> {
        self.detail.as_deref()?.limited_by.as_ref()
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
        self.detail
            .as_deref()
            .map_or(Duration::ZERO, |detail| detail.waited)
    }

    /// How many requests waited on the key, this one included, when it
    /// arrived; 0 when it did not wait.
    pub fn queued(&self) -> usize {
        self.detail.as_deref().map_or(0, |detail| detail.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admission_reads_back_what_it_was_given_and_compares_by_it() {
        let quota = Quota::new(10, Duration::from_secs(1)).unwrap();
        let at_once = Admission::new(Key::from("k"), 1, 1, Duration::ZERO, 0);
        assert_eq!(at_once.waited(), Duration::ZERO);
        assert_eq!(at_once.queued(), 0);
        assert_eq!(at_once.limited_by(), None);
        assert_eq!(at_once.tenant(), None);

        let mut waited = Admission::new(Key::from("k"), 2, 1, Duration::from_millis(5), 3)
            .with_limited_by(Some(quota));
        waited.set_tenant(Some(Key::from("tenant")));
        assert_eq!(waited.waited(), Duration::from_millis(5));
        assert_eq!(waited.queued(), 3);
        assert_eq!(waited.limited_by(), Some(&quota));
        assert_eq!(waited.tenant(), Some(&Key::from("tenant")));
        assert!(format!("{waited:?}").contains("waited: 5ms"), "{waited:?}");

        // A field set and cleared again leaves nothing behind.
        let mut cleared = at_once.clone().with_limited_by(Some(quota));
        assert_ne!(cleared, at_once);
        cleared = cleared.with_limited_by(None);
        cleared.set_tenant(None);
        assert_eq!(cleared, at_once);
    }
}
