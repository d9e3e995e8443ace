//! The future of one admission by a [`MemoryStore`](super::MemoryStore):
//! it enters the key's queue, waits for its turn and its instant, and
//! admits itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::{AdmissionIds, KeyState, Shared, lock};
use crate::keymap::{Boxed, KeyMap};
use crate::sliding_window::Limits;
use crate::sliding_window::error::{
    ConflictingQuotas, DeadlineUnreachable, OverloadReason, Overloaded,
};
use crate::sliding_window::events::{self, Adaptation};
use crate::sliding_window::pacer::TIMER_TICK;
use crate::sliding_window::queue::{Queue, Spot};
use crate::sliding_window::schedule::{Place, Priority};
use crate::sliding_window::stamp::Stamp;
use crate::sliding_window::store::Admission;
use crate::{BoxError, Key};

/// The future of one admission by a [`MemoryStore`](super::MemoryStore).
///
/// 128 bytes (a size test pins it), because a queued request keeps it for as
/// long as it waits, and each admission polls the one of the next waiter:
/// with thousands queued, every cache line of it is a miss.
pub struct Acquire {
    shared: Arc<Shared>,
    key: Key,
    cost: u64,
    limits: Limits,
    // The request's tenant and deadline, if it has either, boxed: most
    // requests have neither, and a waiting future stays small. (Its class
    // is in `state`.)
    place: Option<Box<Place>>,
    /// While `Queued`, the request holds a place in its key's queue, which
    /// dropping the future gives up.
    state: AcquireState,
    /// Boxed: only the head of a queue or a request with a deadline
    /// sleeps, and a timer is as large as the rest of the future.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let AcquireState::Queued { spot, .. } = self.state else {
            return;
        };
        let (hash, shard) = self.shared.shard(&self.key);
        let mut shard = lock(shard);
        if let Some(state) = shard.keys.get_mut(hash, &self.key) {
            state.leave(spot, false, Instant::now());
        }
    }
}

impl Acquire {
    pub(super) fn new(
        shared: Arc<Shared>,
        key: Key,
        cost: u64,
        limits: &Limits,
        place: Place,
    ) -> Self {
        let priority = place.priority;
        let place = (place.tenant.is_some() || place.deadline.is_some()).then(|| Box::new(place));
        Acquire {
            shared,
            key,
            cost,
            limits: limits.clone(),
            place,
            state: AcquireState::Start { priority },
            sleep: None,
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("place", &self.place)
            .field("state", &self.state)
            .finish()
    }
}

/// Each field as small as it can be (see [`Acquire`]).
enum AcquireState {
    /// Not yet in its key's queue, with its class.
    Start {
        priority: Priority,
    },
    /// In its key's queue, at `spot` (which names its class).
    Queued {
        spot: Spot,
        enqueued_at: Stamp,
        /// Its place in the queue when it joined, 1 at the front (at most
        /// `u32::MAX`: only reported).
        queued: u32,
        /// The index in its limits of the quota that last held it back
        /// (none past the 65,536th quota: it is only reported).
        limited_by: Option<u16>,
        /// It was the head when it last looked.
        was_head: bool,
    },
    Done,
}

impl fmt::Debug for AcquireState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireState::Start { priority } => {
                f.debug_struct("Start").field("priority", priority).finish()
            }
            AcquireState::Queued { queued, .. } => {
                f.debug_struct("Queued").field("queued", queued).finish()
            }
            AcquireState::Done => f.write_str("Done"),
        }
    }
}

enum Step {
    Ready(Result<Admission, BoxError>),
    Sleep(Instant),
    Park,
    /// Queued just now: look at the queue again, as its head or not.
    Queued,
    /// The key's state is gone: arrive again.
    Restart,
}

impl Future for Acquire {
    type Output = Result<Admission, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let step = {
                let (hash, shard) = this.shared.shard(&this.key);
                let mut guard = lock(shard);
                let shard = &mut *guard;
                // Read under the lock, so that admissions are recorded in the
                // order of their instants; kept for the layers around, as in
                // `try_acquire`.
                let now = crate::time::read();
                this.shared.tick(shard, now);
                match &mut this.state {
                    AcquireState::Start { priority } => match entered(
                        &mut shard.keys,
                        hash,
                        &this.key,
                        this.cost,
                        &this.limits,
                        *priority,
                        now,
                    ) {
                        Err(error) => Step::Ready(Err(error)),
                        Ok((state, stamp)) => arrive(
                            state,
                            Arrival {
                                stamp,
                                shared: &this.shared,
                                ids: &mut shard.ids,
                                key: &this.key,
                                cost: this.cost,
                                limits: &this.limits,
                                priority: *priority,
                                place: this.place.as_deref(),
                            },
                            &mut this.state,
                            now,
                            cx,
                        ),
                    },
                    AcquireState::Queued {
                        spot,
                        enqueued_at,
                        queued,
                        limited_by,
                        was_head,
                    } => match shard.keys.get_mut(hash, &this.key) {
                        Some(state) if state.queue().contains(*spot) => waiting(
                            state,
                            Waiting {
                                shared: &this.shared,
                                ids: &mut shard.ids,
                                key: &this.key,
                                cost: this.cost,
                                limits: &this.limits,
                                deadline: this.place.as_ref().and_then(|place| place.deadline),
                                spot: *spot,
                                enqueued_at: *enqueued_at,
                                queued: *queued,
                                limited_by,
                                was_head,
                            },
                            now,
                            cx,
                        ),
                        // The key is never evicted while it has waiters, nor
                        // a waiter removed but by itself; should it be gone
                        // all the same, arrive again.
                        _ => Step::Restart,
                    },
                    AcquireState::Done => {
                        panic!("sliding_window::Acquire polled after completion")
                    }
                }
            };
            // Every step but `Park`, `Sleep` and `Queued` has taken the
            // request out of its queue, if it was in one: its state leaves
            // `Queued` here, before anything could drop the future.
            match step {
                Step::Ready(result) => {
                    this.state = AcquireState::Done;
                    this.sleep = None;
                    return Poll::Ready(result);
                }
                Step::Park => return Poll::Pending,
                Step::Queued => {}
                Step::Restart => {
                    if let AcquireState::Queued { spot, .. } = this.state {
                        this.state = AcquireState::Start {
                            priority: Queue::priority(spot),
                        };
                    }
                }
                Step::Sleep(at) => {
                    let sleep = match &mut this.sleep {
                        Some(sleep) => {
                            if sleep.deadline() != at {
                                sleep.as_mut().reset(at);
                            }
                            sleep
                        }
                        None => this.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// tokio's timer fires on the first millisecond tick at or after a
/// deadline, and its thread parks in whole milliseconds: a sleep ends a
/// millisecond late on average, a tenth of the interval at 100 per second.
/// A head that spacing holds sleeps until a tick before its instant, and
/// is admitted if the timer woke it at its instant or after; woken
/// earlier, it sleeps until the instant itself. Admission still checks
/// the exact instant: the early wake-up costs one look, never a slot.
/// (A window's slot is not worth it: a millisecond of a window is little.)
fn early_wake(at: Instant, now: Instant) -> Instant {
    match at.checked_sub(TIMER_TICK) {
        Some(early) if early > now => early,
        _ => at,
    }
}

struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    ids: &'a mut AdmissionIds,
    key: &'a Key,
    cost: u64,
    limits: &'a Limits,
    deadline: Option<Instant>,
    spot: Spot,
    enqueued_at: Stamp,
    queued: u32,
    limited_by: &'a mut Option<u16>,
    was_head: &'a mut bool,
}

/// A queued request looks at the queue again: admitted if it goes next and
/// fits; refused once its deadline or `max_wait` cannot be met; otherwise
/// asleep until it could fit (the head) or until its deadline.
fn waiting(state: &mut KeyState, this: Waiting<'_>, now: Instant, cx: &mut Context<'_>) -> Step {
    let spot = this.spot;
    let class = Queue::priority(spot);
    let unreachable = |earliest: Option<Instant>, deadline: Instant| -> Step {
        Step::Ready(Err(DeadlineUnreachable::new(
            this.key.clone(),
            deadline,
            earliest,
            (this.queued as usize).saturating_sub(1),
        )
        .into()))
    };
    // `max_wait` bounds the wait wherever the request stands: a wait the
    // queue ahead took longer than projected at arrival (a rate cut, a
    // correction) ends there too, not only once it is the head.
    let waited_out = this
        .limits
        .max_wait()
        .and_then(|max_wait| Some((max_wait, this.enqueued_at.instant().checked_add(max_wait)?)));
    // It leaves, refused by `max_wait`, having needed `wait`.
    let over_max_wait = |state: &mut KeyState, max_wait: Duration, wait: Duration| -> Step {
        state.leave(spot, false, now);
        Step::Ready(Err(Overloaded {
            key: this.key.clone(),
            wait,
            queued: this.queued as usize,
            reason: OverloadReason::MaxWait(max_wait),
        }
        .into()))
    };
    let waited = || Stamp::of(now).saturating_duration_since(this.enqueued_at);
    let wake_by = first_of(this.deadline, waited_out.map(|(_, end)| end));
    if state.head(now) != Some(spot) {
        if let Some(deadline) = this.deadline.filter(|deadline| now >= *deadline) {
            state.leave(spot, false, now);
            return unreachable(None, deadline);
        }
        if let Some((max_wait, _)) = waited_out.filter(|(_, end)| now >= *end) {
            return over_max_wait(state, max_wait, waited());
        }
        state.queue_mut().register(spot, cx.waker());
        if std::mem::take(this.was_head) {
            // It was the head and is no longer (a front aged past
            // `promote_after` while it slept): the new head may be parked
            // without a timer. Woken once per change, so that waiters
            // polled by one task cannot wake each other for ever.
            state.wake_head();
        }
        return wake_by.map_or(Step::Park, Step::Sleep);
    }
    *this.was_head = true;
    let stamp = Stamp::of(now);
    state.prune_at(stamp);
    let (at, limit) = state.earliest(now, this.cost, this.limits, class);
    if let Some(limit) = limit {
        *this.limited_by = this
            .limits
            .quotas()
            .iter()
            .position(|quota| *quota == limit)
            .and_then(|index| u16::try_from(index).ok());
    }
    let needed = at
        .map_or(stamp, Stamp::of)
        .saturating_duration_since(this.enqueued_at);
    let queued = this.queued as usize;
    if at.is_some_and(|at| at <= now) {
        let id = this.ids.take(state);
        let lagging = this.shared.written.lag.is_lagging_at(stamp);
        if let Some(adapted) = state.record(now, stamp, this.cost, id, this.limits, lagging) {
            events::rate_adapted(this.key, adapted, Adaptation::Recovered);
        }
        state.leave(spot, true, now);
        return Step::Ready(Ok(Admission::new(
            this.key.clone(),
            id,
            this.cost,
            needed,
            queued,
        )
        .with_limited_by(
            this.limited_by
                .and_then(|index| this.limits.quotas().get(usize::from(index)).copied()),
        )));
    }
    if at.is_none()
        && let Some((max_wait, _)) = waited_out.filter(|(_, end)| now >= *end)
    {
        // Strict, and no answer freed a slot within `max_wait`.
        return over_max_wait(state, max_wait, waited());
    }
    if let Some(max_wait) = this.limits.max_wait().filter(|max_wait| needed > *max_wait) {
        return over_max_wait(state, max_wait, needed);
    }
    if let Some(deadline) = this
        .deadline
        .filter(|deadline| at.map_or(now >= *deadline, |at| at > *deadline))
    {
        // Its slot comes after its deadline (or, strict, the deadline
        // passed waiting for an answer).
        state.leave(spot, false, now);
        return unreachable(at, deadline);
    }
    // A correction or an answer may move the instant: be wakeable.
    state.queue_mut().register(spot, cx.waker());
    match at {
        // Spacing decides: an interval, where a millisecond counts.
        Some(at) if limit.is_none() => Step::Sleep(early_wake(at, now)),
        Some(at) => Step::Sleep(at),
        // Strict: the next slot frees when an answer comes back, and the
        // answer wakes the head; its deadline or `max_wait` too, if it has
        // one.
        None => wake_by.map_or(Step::Park, Step::Sleep),
    }
}

/// The earlier of two instants either of which may be absent.
fn first_of(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The state of `key` for a request of `cost` in class `priority` arriving
/// at `now`, created if new and pruned, and the stamp of `now`; the
/// request's error when its cost exceeds a quota or the key is busy under
/// other quotas.
pub(super) fn entered<'a>(
    keys: &'a mut KeyMap<KeyState, Boxed<KeyState>>,
    hash: u64,
    key: &Key,
    cost: u64,
    limits: &Limits,
    priority: Priority,
    now: Instant,
) -> Result<(&'a mut KeyState, Stamp), BoxError> {
    limits.check_cost_for(key, cost, Some(priority))?;
    let state = keys.get_or_insert_with(hash, key, || KeyState::new(limits, now));
    let stamp = Stamp::of(now);
    state.prune_at(stamp);
    if !state.conform(limits) {
        return Err(ConflictingQuotas::new(key.clone()).into());
    }
    Ok((state, stamp))
}

/// Admits a request that arrived at `now` (stamped `stamp`) to room and
/// nobody before it.
pub(super) fn admit_now(
    shared: &Shared,
    state: &mut KeyState,
    id: u64,
    key: &Key,
    cost: u64,
    limits: &Limits,
    (now, stamp): (Instant, Stamp),
) -> Admission {
    let lagging = shared.written.lag.is_lagging_at(stamp);
    if let Some(adapted) = state.record(now, stamp, cost, id, limits, lagging) {
        events::rate_adapted(key, adapted, Adaptation::Recovered);
    }
    Admission::new(key.clone(), id, cost, Duration::ZERO, 0)
}

struct Arrival<'a> {
    /// The stamp of the instant it arrives at.
    stamp: Stamp,
    shared: &'a Arc<Shared>,
    ids: &'a mut AdmissionIds,
    key: &'a Key,
    cost: u64,
    limits: &'a Limits,
    priority: Priority,
    place: Option<&'a Place>,
}

/// A request arrives at its key: admitted at once when nobody of its class
/// or above waits and every quota has room; otherwise refused by the
/// overload bounds or its deadline, or queued.
fn arrive(
    state: &mut KeyState,
    this: Arrival<'_>,
    slot: &mut AcquireState,
    now: Instant,
    cx: &mut Context<'_>,
) -> Step {
    let cost = this.cost;
    let class = this.priority;
    let deadline = this.place.and_then(|place| place.deadline);
    if state.queue().none_before(class)
        && state.has_room((now, this.stamp), cost, this.limits, class)
    {
        let id = this.ids.take(state);
        return Step::Ready(Ok(admit_now(
            this.shared,
            state,
            id,
            this.key,
            cost,
            this.limits,
            (now, this.stamp),
        )));
    }
    let queued = state.queue().len() + 1;
    let tenant = this.place.and_then(|place| place.tenant.as_ref());
    let spot = state.queue().spot(class, tenant);
    let bounded =
        this.limits.max_queue().is_some() || this.limits.max_wait().is_some() || deadline.is_some();
    // The wait the requests ahead leave it (only when a bound needs it).
    let (ahead, wait) = if bounded {
        let (ahead, ahead_cost) = state.queue().ahead(spot);
        let wait = state.projected_wait(
            now,
            ahead_cost.saturating_add(cost),
            ahead as u64 + 1,
            this.limits,
            class,
        );
        (ahead, wait)
    } else {
        (0, Duration::ZERO)
    };
    let overload = |reason| -> Step {
        Step::Ready(Err(Overloaded {
            key: this.key.clone(),
            wait,
            queued,
            reason,
        }
        .into()))
    };
    if let Some(max_queue) = this.limits.max_queue()
        && queued > max_queue
    {
        return overload(OverloadReason::QueueFull(max_queue));
    }
    if let Some(max_wait) = this.limits.max_wait()
        && wait > max_wait
    {
        return overload(OverloadReason::MaxWait(max_wait));
    }
    if let Some(deadline) = deadline {
        let earliest = now.checked_add(wait);
        if earliest.is_none_or(|earliest| earliest > deadline) {
            return Step::Ready(Err(DeadlineUnreachable::new(
                this.key.clone(),
                deadline,
                earliest,
                ahead,
            )
            .into()));
        }
    }
    let queue = state.queue_mut();
    queue.insert(spot, tenant, cost, now, cx.waker());
    queue.set_promote_after(this.limits);
    *slot = AcquireState::Queued {
        spot,
        enqueued_at: Stamp::of(now),
        queued: u32::try_from(queued).unwrap_or(u32::MAX),
        limited_by: None,
        was_head: false,
    };
    Step::Queued
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued request keeps its future for as long as it waits: its key,
    /// limits and place in the queue in two cache lines, and pointers to
    /// the rest. (It was 312 bytes with its timer and a second copy of the
    /// key in place.)
    #[test]
    fn an_acquire_future_is_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Acquire>(), 128);
    }

    /// Its timer is boxed: the future moves freely, pinned or not.
    #[test]
    fn an_acquire_future_is_unpin() {
        fn unpin<T: Unpin>() {}
        unpin::<Acquire>();
    }
}
