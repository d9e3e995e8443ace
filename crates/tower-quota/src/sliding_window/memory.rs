//! The in-process store: exact sliding logs, a FIFO queue and one timer per key.
//!
//! Each key keeps, for every quota, a log of the admissions still inside the
//! window (instant and cost), and a FIFO queue of waiting requests. Only the
//! request at the head of the queue sleeps, until the instant the oldest
//! admissions leave the window; the others are parked without a timer. When
//! the head is admitted it wakes the next one, which is admitted at once if
//! there is room, or becomes the timer owner. So each admission costs one
//! timer expiry or one wake-up, whether ten or ten thousand requests wait.
//!
//! A waiter that is dropped before admission is removed from the queue (the
//! head passes its turn on at once; others are marked and swept out), and
//! consumed nothing. Keys whose logs have emptied and whose queue is empty are
//! evicted in amortized sweeps, so memory follows the active keys.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::drift::DriftMargin;
use super::error::{ConflictingQuotas, DeadlineUnreachable, OverloadReason, Overloaded};
use super::events::{self, Adaptation};
use super::flight::InFlightPeak;
use super::lag::LagProbe;
use super::log::WindowLog;
use super::pacer::{Adapted, Pacer, TIMER_TICK};
use super::queue::{Queue, Spot};
use super::schedule::{Place, Priority};
use super::store::{Admission, Completion, QuotaChange, Store};
use super::{Limits, Quota};
use crate::keymap::{KeyHasher, KeyMap};
use crate::{Announced, BoxError, Key, Room};

const SHARDS: usize = 16;
/// A shard sweeps idle keys after this many operations, or after as many
/// operations as it has keys, whichever is more: amortized O(1) per operation.
const SWEEP_EVERY: usize = 1024;

/// The in-process [`Store`]: exact, FIFO-fair, one timer per key.
///
/// Cloning a `MemoryStore` shares its state; every service made by one
/// [`SlidingWindowLayer`](super::SlidingWindowLayer) shares the layer's store.
/// Two layers that should share a quota can share a store with
/// [`SlidingWindowLayer::store`](super::SlidingWindowLayer::store).
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Box<[Mutex<Shard>]>,
    hasher: KeyHasher,
    next_admission: AtomicU64,
    /// Operations on every shard, and the shard the next global sweep
    /// visits: idle keys are swept by traffic to any key.
    ops: AtomicUsize,
    cursor: AtomicUsize,
    lag: LagProbe,
}

impl Default for Shared {
    fn default() -> Self {
        let hasher = KeyHasher::default();
        Shared {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(hasher.clone())))
                .collect(),
            hasher,
            next_admission: AtomicU64::new(0),
            ops: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
            lag: LagProbe::new(),
        }
    }
}

struct Shard {
    keys: KeyMap<KeyState>,
    ops_since_sweep: usize,
    /// `Shared::ops` when this shard was last swept.
    swept_at: usize,
}

impl Shard {
    fn new(hasher: KeyHasher) -> Self {
        Shard {
            keys: KeyMap::new(hasher),
            ops_since_sweep: 0,
            swept_at: 0,
        }
    }
}

impl MemoryStore {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of keys the store currently holds state for (active keys,
    /// plus idle ones not yet swept).
    pub fn key_count(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| lock(shard).keys.len())
            .sum()
    }

    /// The burst `key` learned from its provider's refusals (`None`: as
    /// many as its quota allows).
    #[cfg(test)]
    pub(crate) fn learned_burst(&self, key: &Key) -> Option<u64> {
        let (hash, shard) = self.shared.shard(key);
        lock(shard)
            .keys
            .get(hash, key.as_str())
            .and_then(|state| state.pacer()?.burst())
    }

    /// Removes the state of every key that has no admission left in its
    /// windows and no waiter. Runs by itself in amortized sweeps; call it to
    /// release memory at once.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        let ops = self.shared.ops.load(Ordering::Relaxed);
        for shard in self.shared.shards.iter() {
            lock(shard).sweep(now, ops);
        }
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.key_count())
            .finish()
    }
}

impl Store for MemoryStore {
    type Acquire = Acquire;

    fn acquire(&self, key: Key, cost: u64, limits: &Limits) -> Acquire {
        self.acquire_placed(key, cost, limits, Place::default())
    }

    fn acquire_placed(&self, key: Key, cost: u64, limits: &Limits, place: Place) -> Acquire {
        let priority = place.priority;
        let place = (place.tenant.is_some() || place.deadline.is_some()).then(|| Box::new(place));
        Acquire {
            shared: self.shared.clone(),
            key,
            cost,
            limits: limits.clone(),
            priority,
            place,
            state: AcquireState::Start,
            sleep: None,
        }
    }

    fn try_acquire(
        &self,
        key: &Key,
        cost: u64,
        limits: &Limits,
        place: &Place,
    ) -> Option<Result<Admission, BoxError>> {
        let (hash, shard) = self.shared.shard(key);
        let mut shard = lock(shard);
        let now = Instant::now();
        self.shared.tick(&mut shard, now);
        let state = match entered(&mut shard, hash, key, cost, limits, place.priority, now) {
            Ok(state) => state,
            Err(error) => return Some(Err(error)),
        };
        let class = place.priority;
        (state.queue.none_before(class) && state.has_room(now, cost, limits, class))
            .then(|| Ok(admit_now(&self.shared, state, key, cost, limits, now)))
    }

    fn correct(&self, admission: &Admission, actual_cost: u64) {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let Some(state) = shard.keys.get_mut(hash, admission.key().as_str()) else {
            return;
        };
        let mut changed = false;
        for window in state.windows.iter_mut().filter(|w| !w.is_per_request()) {
            changed |= window.correct(admission.id(), actual_cost);
        }
        if changed {
            // The head's instant may have moved: let it look again.
            state.wake_head();
        }
    }

    fn complete(&self, admission: &Admission, completion: Completion, limits: &Limits) {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let now = Instant::now();
        let Some(state) = shard.keys.get_mut(hash, admission.key().as_str()) else {
            return;
        };
        if state.answered(admission, completion, limits, now) {
            state.wake_head();
        }
    }

    fn accepted(&self, admission: &Admission, room: &dyn Fn() -> Option<Room>, limits: &Limits) {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let Some(state) = shard.keys.get_mut(hash, admission.key().as_str()) else {
            return;
        };
        // Past its start, a key learns nothing from an acceptance: no clock
        // read on that path.
        if state.accepted(admission, room, limits, Instant::now) {
            state.wake_head();
        }
    }

    fn accepted_and_answered(
        &self,
        admission: &Admission,
        room: &dyn Fn() -> Option<Room>,
        limits: &Limits,
    ) {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let now = Instant::now();
        let Some(state) = shard.keys.get_mut(hash, admission.key().as_str()) else {
            return;
        };
        let opened = state.accepted(admission, room, limits, || now);
        let freed = state.answered(admission, Completion::Answered, limits, now);
        if opened || freed {
            state.wake_head();
        }
    }

    fn announced(
        &self,
        admission: &Admission,
        announced: &[Announced],
        limits: &Limits,
    ) -> Vec<QuotaChange> {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        match shard.keys.get_mut(hash, admission.key().as_str()) {
            Some(state) => state.announce(announced, limits.follows_announced_quotas()),
            None => Vec::new(),
        }
    }

    fn probes_lag(&self, admission: &Admission) -> bool {
        self.shared.lag.probes(admission)
    }

    fn probed(&self, lag: Option<Duration>, limits: &Limits) {
        if !self.shared.lag.probed(lag, limits) {
            return;
        }
        // The admissions in flight were made on the same assumption.
        for shard in self.shared.shards.iter() {
            for key in lock(shard).keys.values_mut() {
                for window in &mut key.windows {
                    window.hold_until_answered();
                }
            }
        }
    }

    fn refused(&self, admission: &Admission, limits: &Limits) -> Option<(Duration, Duration)> {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let now = Instant::now();
        let state = shard.keys.get_mut(hash, admission.key().as_str())?;
        // A provider that refuses well under the quota has a lower rate,
        // which the pacer learns; so does one that refuses evenly spaced
        // requests (a sliding-window counter, a late window: a little less
        // rate serves both). A refusal of bursts near the quota says the
        // provider's window runs late.
        // The probe past a fresh key's first window, refused, may be either
        // (a sliding log whose window runs late, or a counter of the rate):
        // the key widens its margin and is spaced.
        let near_quota = match state.learned.as_deref_mut() {
            Some(learned) => {
                learned.pacer.burst() != Some(1) && learned.pacer.near_quota(now, limits)
            }
            // Nothing learned yet (its caller did not say it reports
            // refusals), so nothing counted: the log holds what went out.
            None => state.log_near_quota(),
        };
        let learned = state.learned();
        let starting = learned.pacer.starting();
        let drift = if near_quota {
            learned.drift.refused(now, limits)
        } else {
            None
        };
        if let Some((before, after)) = drift {
            // The provider's window runs late for every admission in the
            // log, not only for those to come.
            let delta = after.saturating_sub(before);
            for window in &mut state.windows {
                window.extend(delta);
            }
        }
        // It may also refuse bursts the log allows: space what follows.
        let learned = state.learned();
        let before = (learned.pacer.burst(), learned.pacer.interval(limits));
        let adapted = learned.pacer.refused(now, limits);
        if starting {
            // The key's waiters waited for this answer: spacing, not the
            // answer, decides from now on.
            state.wake_head();
        }
        if adapted.burst == Some(1) && !starting {
            // Evenly spaced from now on: the pacer's rate, not a wider
            // margin, answers what the provider refuses.
            state.learned().drift = Default::default();
        }
        if (adapted.burst, adapted.interval) != before {
            events::rate_adapted(admission.key(), adapted, Adaptation::Refused);
        }
        drift
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // The state is consistent between statements: a panic elsewhere while the
    // lock was held cannot leave it half-updated, so a poisoned lock is safe.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The key's hash and its shard: the one hash of an operation.
    fn shard(&self, key: &Key) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash(key.as_str());
        (
            hash,
            &self.shards[KeyHasher::shard_of(hash, self.shards.len())],
        )
    }
}

impl Shared {
    /// One operation on `shard`: sweeps it every so often, and every
    /// `SWEEP_EVERY / SHARDS` operations on any shard, visits the next shard
    /// in turn and sweeps it if at least as many operations (and
    /// `SWEEP_EVERY`) have passed since its last sweep as it has keys:
    /// amortized O(1) per operation, and idle keys go even when their own
    /// shard sees no traffic.
    fn tick(&self, shard: &mut Shard, now: Instant) {
        let ops = self.ops.fetch_add(1, Ordering::Relaxed);
        shard.ops_since_sweep += 1;
        if shard.ops_since_sweep >= SWEEP_EVERY.max(shard.keys.len()) {
            shard.sweep(now, ops);
        }
        if !ops.is_multiple_of(SWEEP_EVERY / SHARDS) {
            return;
        }
        let next = self.cursor.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        // Never wait for another shard while holding one: skip it if busy
        // (or if it is the one held).
        let mut other = match self.shards[next].try_lock() {
            Ok(other) => other,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if ops.wrapping_sub(other.swept_at) >= SWEEP_EVERY.max(other.keys.len()) {
            other.sweep(now, ops);
        }
    }
}

impl Shard {
    fn sweep(&mut self, now: Instant, ops: usize) {
        self.ops_since_sweep = 0;
        self.swept_at = ops;
        self.keys.retain(|state| {
            state.prune(now);
            !state.is_idle()
        });
        // Give the memory of a crowd of idle keys back.
        self.keys.shrink_if_sparse(64);
    }
}

/// The state of one key, kept small: a map of 100,000 keys holds 100,000
/// of these (and a third more room), so what only some keys need is boxed.
struct KeyState {
    /// One log per quota.
    windows: Box<[WindowLog]>,
    /// Its waiters (and the limits' `promote_after`), boxed with the first.
    queue: Queue,
    /// What the key learns from its provider, boxed: made with the key when
    /// its caller reports refusals, otherwise with the first announcement
    /// or refusal. `None` is a pacer that never spaces and no drift.
    learned: Option<Box<Learned>>,
    /// Until then the key is cold: its admissions get the cold bound.
    warm_at: Instant,
    /// Its requests in flight, and the most in flight at once lately.
    flight: InFlightPeak,
}

/// What a key learns from its provider.
#[derive(Default)]
struct Learned {
    drift: DriftMargin,
    /// The burst and rate the key's provider tolerates, learned from its
    /// refusals.
    pacer: Pacer,
    /// What the provider last announced for each window's quota; empty
    /// until its first announcement.
    announced: Vec<Option<u64>>,
}

impl KeyState {
    fn new(limits: &Limits, now: Instant) -> Self {
        let shortest = limits
            .quotas()
            .iter()
            .map(Quota::window)
            .min()
            .unwrap_or(Duration::ZERO);
        KeyState {
            warm_at: now + shortest,
            flight: InFlightPeak::new(now),
            windows: Self::windows_for(limits),
            queue: Queue::default(),
            learned: limits.reports_refusals().then(|| {
                Box::new(Learned {
                    pacer: Pacer::new(true),
                    ..Learned::default()
                })
            }),
        }
    }

    /// What the key learned, made now if it had nothing to learn yet.
    fn learned(&mut self) -> &mut Learned {
        self.learned.get_or_insert_with(Box::default)
    }

    fn pacer(&self) -> Option<&Pacer> {
        self.learned.as_deref().map(|learned| &learned.pacer)
    }

    fn windows_for(limits: &Limits) -> Box<[WindowLog]> {
        let margin = limits.safety_margin();
        limits
            .quotas()
            .iter()
            .map(|quota| WindowLog::new(quota, margin))
            .collect()
    }

    /// One key has one set of quotas. A layer with other quotas may take
    /// over an idle key; a busy one is not replaced (its admissions would go
    /// uncounted): returns `false`.
    fn conform(&mut self, limits: &Limits) -> bool {
        let margin = limits.safety_margin();
        let same = self.windows.len() == limits.quotas().len()
            && self
                .windows
                .iter()
                .zip(limits.quotas())
                .all(|(w, q)| w.matches(q, margin));
        if same {
            self.queue.set_promote_after(limits.promote_after());
            return true;
        }
        if !self.is_idle() {
            return false;
        }
        self.windows = Self::windows_for(limits);
        if let Some(learned) = self.learned.as_deref_mut() {
            learned.announced = Vec::new();
        }
        self.queue.set_promote_after(limits.promote_after());
        true
    }

    /// The provider announced `announced`: compares it with each window's
    /// quota, remembers it, and with `follow` holds the window to it.
    fn announce(&mut self, announced: &[Announced], follow: bool) -> Vec<QuotaChange> {
        let mut changes = Vec::new();
        for quota in announced {
            // Requests and tokens announced for one window (OpenAI, Anthropic)
            // go to a per-request and a weighted quota; a lone announcement
            // goes to the window's quota, unless it counts tokens and the
            // quota counts only requests.
            let shared_window = announced
                .iter()
                .filter(|other| other.window == quota.window)
                .count()
                > 1;
            let quotas_of_window = self
                .windows
                .iter()
                .filter(|window| window.quota().window() == quota.window)
                .count();
            if shared_window && quotas_of_window < 2 {
                // Which of the two the one quota counts is not known.
                continue;
            }
            let mut candidates = self.windows.iter().enumerate().filter(|(_, window)| {
                let kind = if shared_window {
                    quota.weighted != window.is_per_request()
                } else {
                    !quota.weighted || !window.is_per_request()
                };
                window.quota().window() == quota.window && kind
            });
            // One quota per window, or the announcement is ambiguous.
            let (Some((index, _)), None) = (candidates.next(), candidates.next()) else {
                continue;
            };
            let windows = self.windows.len();
            let announced = &mut self.learned().announced;
            if announced.len() < windows {
                announced.resize(windows, None);
            }
            if announced[index] == Some(quota.max_calls) {
                continue;
            }
            let first = announced[index].is_none();
            announced[index] = Some(quota.max_calls);
            let window = &mut self.windows[index];
            let configured = window.quota();
            let before = window.size();
            let held_to = if follow {
                window.resize(quota.max_calls)
            } else {
                configured.max_calls()
            };
            if held_to > before {
                self.wake_head();
            }
            // A first announcement that matches the configuration is no news.
            if !(first && quota.max_calls == configured.max_calls()) {
                changes.push(QuotaChange {
                    configured,
                    announced: quota.max_calls,
                    held_to,
                });
            }
        }
        changes
    }

    fn shortest_window(&self) -> Duration {
        self.windows
            .iter()
            .map(|w| w.quota().window())
            .min()
            .unwrap_or(Duration::ZERO)
    }

    /// Whether a log of the shortest window holds nine tenths of its size
    /// or more: about a whole quota went out in the window.
    fn log_near_quota(&self) -> bool {
        let shortest = self.shortest_window();
        self.windows
            .iter()
            .filter(|window| window.quota().window() == shortest)
            .any(|window| window.held().saturating_mul(10) >= u128::from(window.size()) * 9)
    }

    fn extra_margin(&self, now: Instant) -> Duration {
        self.learned.as_deref().map_or(Duration::ZERO, |learned| {
            learned.drift.extra(now, self.shortest_window())
        })
    }

    fn prune(&mut self, now: Instant) {
        for window in &mut self.windows {
            window.prune(now);
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.windows.iter().all(WindowLog::is_empty)
    }

    fn has_room(&self, now: Instant, cost: u64, limits: &Limits, class: Priority) -> bool {
        self.windows
            .iter()
            .all(|w| w.has_room(cost, w.keep(limits, class, cost)))
            && self.pacer().is_none_or(|pacer| {
                pacer.earliest(cost, limits).is_none_or(|at| at <= now)
                    && pacer.awaits_answer(now, limits).is_none()
            })
    }

    /// Records an admission; returns the pacer's new burst if it changed.
    #[must_use]
    fn record(
        &mut self,
        now: Instant,
        cost: u64,
        id: u64,
        limits: &Limits,
        lagging: bool,
    ) -> Option<Adapted> {
        // A cold key (its first window) is opening connections and growing
        // pools, perhaps under a burst of work, and so is a key with more
        // requests in flight than it had at once lately: its requests may
        // take longer to get out, so its slots wait for their answers or
        // for Limits::cold_sent_within. Only a caller that reports answers
        // gets one (and counts its requests in flight).
        let answers = limits.reports_answers();
        let warm = !answers || (now >= self.warm_at && !self.flight.exceeds(now, 1));
        if answers {
            self.flight.sent(now);
        }
        let sent_within = if warm {
            limits.sent_within()
        } else {
            limits.cold_sent_within()
        };
        // A client that lags cannot promise the bound: until answered.
        let until_answered = limits.is_strict() || (lagging && answers);
        let sent_by = (!until_answered).then(|| now + sent_within);
        let extra = self.extra_margin(now);
        for window in &mut self.windows {
            window.record(cost, id, sent_by, extra, answers);
        }
        let learned = self.learned.as_deref_mut()?;
        learned.pacer.admitted(now, id, cost, limits)
    }

    /// The earliest instant the head fits (`None`: once an answer comes
    /// back), and the quota that decides it.
    fn earliest(
        &self,
        now: Instant,
        cost: u64,
        limits: &Limits,
        class: Priority,
    ) -> (Option<Instant>, Option<Quota>) {
        let pacer = self.pacer();
        if let Some(until) = pacer.and_then(|pacer| pacer.awaits_answer(now, limits)) {
            // At the answer, or when the key stops waiting for it.
            return (Some(until), None);
        }
        let paced = pacer.and_then(|pacer| pacer.earliest(cost, limits));
        let mut latest: (Option<Instant>, Option<Quota>) =
            (Some(paced.map_or(now, |at| at.max(now))), None);
        for window in &self.windows {
            let at = window.earliest(now, cost, window.keep(limits, class, cost));
            let later = match (at, latest.0) {
                (None, Some(_)) => true,
                (Some(at), Some(current)) => at > current,
                (_, None) => false,
            };
            if later {
                latest = (at, Some(window.quota()));
            }
        }
        latest
    }

    fn projected_wait(
        &self,
        now: Instant,
        cost: u64,
        requests: u64,
        limits: &Limits,
        class: Priority,
    ) -> Duration {
        self.windows
            .iter()
            .map(|w| w.projected_wait(now, cost, requests, w.keep(limits, class, cost)))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The request that goes next.
    fn head(&self, now: Instant) -> Option<Spot> {
        self.queue.head(now, self.queue.promote_after())
    }

    fn wake_head(&self) {
        if self.queue.is_empty() {
            // Nobody to wake: no clock read.
            return;
        }
        if let Some(head) = self.head(Instant::now()) {
            self.queue.wake(head);
        }
    }

    /// The provider accepted `admission`; `now` is read only while the key
    /// is in its start. Returns whether a waiting request may now go.
    fn accepted(
        &mut self,
        admission: &Admission,
        room: &dyn Fn() -> Option<Room>,
        limits: &Limits,
        now: impl FnOnce() -> Instant,
    ) -> bool {
        let Some(learned) = self
            .learned
            .as_deref_mut()
            .filter(|learned| learned.pacer.starting())
        else {
            return false;
        };
        let (adapted, opened) = learned.pacer.accepted(now(), admission.id(), room, limits);
        if let Some(adapted) = adapted {
            events::rate_adapted(admission.key(), adapted, Adaptation::Announced);
        }
        opened
    }

    /// `admission` ended at `now`, answered or dropped. Returns whether
    /// anything changed that a waiting request may look at.
    fn answered(
        &mut self,
        admission: &Admission,
        completion: Completion,
        limits: &Limits,
        now: Instant,
    ) -> bool {
        // A dropped request may still be on its way: it keeps its bound, if
        // it has one (strict mode assumes a drop stops it).
        let dropped = (completion == Completion::Dropped && !limits.is_strict())
            .then(|| limits.sent_within());
        if limits.reports_answers() {
            self.flight.ended();
        }
        let extra = self.extra_margin(now);
        let mut changed = self
            .learned
            .as_deref_mut()
            .is_some_and(|learned| learned.pacer.answered(admission.id()));
        for window in &mut self.windows {
            changed |= window.answer(admission.id(), now, extra, dropped);
        }
        changed
    }

    /// Removes a waiter (admitted or given up) and wakes the one that goes
    /// next.
    fn leave(&mut self, spot: Spot, admitted: bool, now: Instant) {
        if self.queue.remove(spot, admitted, now)
            && let Some(head) = self.head(now)
        {
            self.queue.wake(head);
        }
    }
}

pin_project! {
    /// The future of one admission by a [`MemoryStore`].
    pub struct Acquire {
        shared: Arc<Shared>,
        key: Key,
        cost: u64,
        limits: Limits,
        // The request's class; its tenant and deadline, if it has either,
        // boxed: most requests have neither, and a waiting future stays
        // small.
        priority: Priority,
        place: Option<Box<Place>>,
        state: AcquireState,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("priority", &self.priority)
            .field("place", &self.place)
            .field("state", &self.state)
            .finish()
    }
}

enum AcquireState {
    Start,
    Queued {
        ticket: Ticket,
        enqueued_at: Instant,
        queued: usize,
        /// The quota that last held this request back.
        limited_by: Option<Quota>,
        /// It was the head when it last looked.
        was_head: bool,
    },
    Done,
}

impl fmt::Debug for AcquireState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireState::Start => f.write_str("Start"),
            AcquireState::Queued { queued, .. } => {
                f.debug_struct("Queued").field("queued", queued).finish()
            }
            AcquireState::Done => f.write_str("Done"),
        }
    }
}

/// A place in a key's queue; dropping it before admission gives the place up.
struct Ticket {
    shared: Arc<Shared>,
    key: Key,
    spot: Spot,
    armed: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (hash, shard) = self.shared.shard(&self.key);
        let mut shard = lock(shard);
        if let Some(state) = shard.keys.get_mut(hash, self.key.as_str()) {
            state.leave(self.spot, false, Instant::now());
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
        let mut this = self.project();
        loop {
            let step = {
                let (hash, shard) = this.shared.shard(this.key);
                let mut shard = lock(shard);
                // Read under the lock, so that admissions are recorded in the
                // order of their instants.
                let now = Instant::now();
                this.shared.tick(&mut shard, now);
                match this.state {
                    AcquireState::Start => match entered(
                        &mut shard,
                        hash,
                        this.key,
                        *this.cost,
                        this.limits,
                        *this.priority,
                        now,
                    ) {
                        Err(error) => Step::Ready(Err(error)),
                        Ok(state) => arrive(
                            state,
                            Arrival {
                                shared: this.shared,
                                key: this.key,
                                cost: *this.cost,
                                limits: this.limits,
                                priority: *this.priority,
                                place: this.place.as_deref(),
                            },
                            this.state,
                            now,
                            cx,
                        ),
                    },
                    AcquireState::Queued {
                        ticket,
                        enqueued_at,
                        queued,
                        limited_by,
                        was_head,
                    } => match shard.keys.get_mut(hash, this.key.as_str()) {
                        Some(state) if state.queue.contains(ticket.spot) => waiting(
                            state,
                            Waiting {
                                shared: this.shared,
                                key: this.key,
                                cost: *this.cost,
                                limits: this.limits,
                                deadline: this.place.as_ref().and_then(|place| place.deadline),
                                ticket,
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
                        _ => {
                            ticket.armed = false;
                            Step::Restart
                        }
                    },
                    AcquireState::Done => {
                        panic!("sliding_window::Acquire polled after completion")
                    }
                }
            };
            match step {
                Step::Ready(result) => {
                    *this.state = AcquireState::Done;
                    this.sleep.set(None);
                    return Poll::Ready(result);
                }
                Step::Park => return Poll::Pending,
                Step::Queued => {}
                Step::Restart => {
                    *this.state = AcquireState::Start;
                }
                Step::Sleep(at) => {
                    match this.sleep.as_mut().as_pin_mut() {
                        Some(sleep) => {
                            if sleep.deadline() != at {
                                sleep.reset(at);
                            }
                        }
                        None => this.sleep.set(Some(tokio::time::sleep_until(at))),
                    }
                    if let Some(sleep) = this.sleep.as_mut().as_pin_mut()
                        && sleep.poll(cx).is_pending()
                    {
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
    key: &'a Key,
    cost: u64,
    limits: &'a Limits,
    deadline: Option<Instant>,
    ticket: &'a mut Ticket,
    enqueued_at: Instant,
    queued: usize,
    limited_by: &'a mut Option<Quota>,
    was_head: &'a mut bool,
}

/// A queued request looks at the queue again: admitted if it goes next and
/// fits; refused once its deadline or `max_wait` cannot be met; otherwise
/// asleep until it could fit (the head) or until its deadline.
fn waiting(state: &mut KeyState, this: Waiting<'_>, now: Instant, cx: &mut Context<'_>) -> Step {
    let spot = this.ticket.spot;
    let class = Queue::priority(spot);
    let unreachable = |earliest: Option<Instant>, deadline: Instant| -> Step {
        Step::Ready(Err(DeadlineUnreachable::new(
            this.key.clone(),
            deadline,
            earliest,
            this.queued.saturating_sub(1),
        )
        .into()))
    };
    if state.head(now) != Some(spot) {
        if let Some(deadline) = this.deadline.filter(|deadline| now >= *deadline) {
            state.leave(spot, false, now);
            this.ticket.armed = false;
            return unreachable(None, deadline);
        }
        state.queue.register(spot, cx.waker());
        if std::mem::take(this.was_head) {
            // It was the head and is no longer (a front aged past
            // `promote_after` while it slept): the new head may be parked
            // without a timer. Woken once per change, so that waiters
            // polled by one task cannot wake each other for ever.
            state.wake_head();
        }
        return match this.deadline {
            Some(deadline) => Step::Sleep(deadline),
            None => Step::Park,
        };
    }
    *this.was_head = true;
    state.prune(now);
    let (at, limit) = state.earliest(now, this.cost, this.limits, class);
    if limit.is_some() {
        *this.limited_by = limit;
    }
    let needed = at
        .unwrap_or(now)
        .saturating_duration_since(this.enqueued_at);
    if at.is_some_and(|at| at <= now) {
        let id = this.shared.next_admission.fetch_add(1, Ordering::Relaxed);
        let lagging = this.shared.lag.is_lagging(now);
        if let Some(adapted) = state.record(now, this.cost, id, this.limits, lagging) {
            events::rate_adapted(this.key, adapted, Adaptation::Recovered);
        }
        state.leave(spot, true, now);
        this.ticket.armed = false;
        return Step::Ready(Ok(Admission::new(
            this.key.clone(),
            id,
            this.cost,
            needed,
            this.queued,
        )
        .with_limited_by(*this.limited_by)));
    }
    if let Some(max_wait) = this.limits.max_wait().filter(|max_wait| needed > *max_wait) {
        state.leave(spot, false, now);
        this.ticket.armed = false;
        return Step::Ready(Err(Overloaded {
            key: this.key.clone(),
            wait: needed,
            queued: this.queued,
            reason: OverloadReason::MaxWait(max_wait),
        }
        .into()));
    }
    if let Some(deadline) = this
        .deadline
        .filter(|deadline| at.map_or(now >= *deadline, |at| at > *deadline))
    {
        // Its slot comes after its deadline (or, strict, the deadline
        // passed waiting for an answer).
        state.leave(spot, false, now);
        this.ticket.armed = false;
        return unreachable(at, deadline);
    }
    // A correction or an answer may move the instant: be wakeable.
    state.queue.register(spot, cx.waker());
    match (at, this.deadline) {
        // Spacing decides: an interval, where a millisecond counts.
        (Some(at), _) if limit.is_none() => Step::Sleep(early_wake(at, now)),
        (Some(at), _) => Step::Sleep(at),
        // Strict: the next slot frees when an answer comes back, and the
        // answer wakes the head; its deadline too, if it has one.
        (None, Some(deadline)) => Step::Sleep(deadline),
        (None, None) => Step::Park,
    }
}

/// The state of `key` for a request of `cost` in class `priority` arriving
/// at `now`, created if new and pruned; the request's error when its cost
/// exceeds a quota or the key is busy under other quotas.
fn entered<'a>(
    shard: &'a mut Shard,
    hash: u64,
    key: &Key,
    cost: u64,
    limits: &Limits,
    priority: Priority,
    now: Instant,
) -> Result<&'a mut KeyState, BoxError> {
    limits.check_cost_for(key, cost, Some(priority))?;
    let state = shard
        .keys
        .get_or_insert_with(hash, key, || KeyState::new(limits, now));
    state.prune(now);
    if !state.conform(limits) {
        return Err(ConflictingQuotas::new(key.clone()).into());
    }
    Ok(state)
}

/// Admits a request that arrived to room and nobody before it.
fn admit_now(
    shared: &Shared,
    state: &mut KeyState,
    key: &Key,
    cost: u64,
    limits: &Limits,
    now: Instant,
) -> Admission {
    let id = shared.next_admission.fetch_add(1, Ordering::Relaxed);
    let lagging = shared.lag.is_lagging(now);
    if let Some(adapted) = state.record(now, cost, id, limits, lagging) {
        events::rate_adapted(key, adapted, Adaptation::Recovered);
    }
    Admission::new(key.clone(), id, cost, Duration::ZERO, 0)
}

struct Arrival<'a> {
    shared: &'a Arc<Shared>,
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
    if state.queue.none_before(class) && state.has_room(now, cost, this.limits, class) {
        return Step::Ready(Ok(admit_now(
            this.shared,
            state,
            this.key,
            cost,
            this.limits,
            now,
        )));
    }
    let queued = state.queue.len() + 1;
    let tenant = this.place.and_then(|place| place.tenant.as_ref());
    let spot = state.queue.spot(class, tenant);
    let bounded =
        this.limits.max_queue().is_some() || this.limits.max_wait().is_some() || deadline.is_some();
    // The wait the requests ahead leave it (only when a bound needs it).
    let (ahead, wait) = if bounded {
        let (ahead, ahead_cost) = state.queue.ahead(spot);
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
    state.queue.insert(spot, tenant, cost, now, cx.waker());
    state.queue.set_promote_after(this.limits.promote_after());
    *slot = AcquireState::Queued {
        ticket: Ticket {
            shared: this.shared.clone(),
            key: this.key.clone(),
            spot,
            armed: true,
        },
        enqueued_at: now,
        queued,
        limited_by: None,
        was_head: false,
    };
    Step::Queued
}
