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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Limits;
use super::events::{self, Adaptation};
use super::lag::LagProbe;
use super::log::ID_LIMIT;
use super::schedule::Place;
use super::store::{Admission, Completion, QuotaChange, Store};
use crate::keymap::{
    Boxed, CachePadded, KeyHasher, KeyMap, Visits, lock, padded_shards, try_lock_for_visit,
};
use crate::{Announced, BoxError, Key, Room};

mod acquire;
mod key_state;

pub use acquire::Acquire;
use acquire::{admit_now, entered};
use key_state::KeyState;

const SHARDS: usize = 16;
/// A shard sweeps idle keys after this many operations, or after as many
/// operations as it kept keys at its last sweep, whichever is more, once
/// the shortest window of those keys has passed (or after
/// [`SWEEP_AT_MOST`] times that many operations): amortized O(1) per
/// operation (a sweep examines the keys it kept last time and at most one
/// new key per operation since), and far less when the keys stay busy.
const SWEEP_EVERY: usize = 1024;
/// A shard whose keys stay busy is swept after this many times the
/// operations of [`SWEEP_EVERY`] at the latest, whether or not their window
/// has passed: keys that never held an admission (a request refused at
/// once, a waiter given up) are idle at once.
const SWEEP_AT_MOST: usize = 4;
/// A shard visits the next shard in turn (and adds its operations to the
/// count of all shards) once every this many of its own operations: the
/// count of all shards is then short of fewer than `SWEEP_EVERY / 4`
/// operations (the others' not yet added), and a visit, which takes the
/// lock of another shard, comes once in 16 operations of a shard. Sweeps
/// are decided by that count, not by the visits: more visits examine no
/// more keys.
const VISIT_EVERY: usize = SWEEP_EVERY / SHARDS / 4;

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

/// What every service of a store shares. Each operation reads `shards`
/// and `hasher` and writes its shard and `written`, from whichever thread
/// runs it: so every shard, `written`, and the part read by all (the
/// struct's own alignment keeps it off the line of the `Arc`'s counts,
/// which every request's clone of the store writes) has cache lines of its
/// own. Two tasks on two threads admitting keys of different shards then
/// do not take each other's lines at every operation.
#[repr(align(128))]
struct Shared {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    hasher: KeyHasher,
    written: CachePadded<Written>,
}

/// The part of [`Shared`] that operations write.
struct Written {
    /// Operations on every shard, counted [`VISIT_EVERY`] at a time: each
    /// shard counts its own under its lock ([`Visits`]) and adds them here
    /// when it visits the next shard in turn, so that idle keys are swept
    /// by traffic to any key. One write to this line every `VISIT_EVERY`
    /// operations of a shard, not one per operation.
    ops: AtomicUsize,
    lag: LagProbe,
}

impl Default for Shared {
    fn default() -> Self {
        let hasher = KeyHasher::default();
        Shared {
            shards: padded_shards(SHARDS, &hasher, Shard::new),
            hasher,
            written: CachePadded(Written {
                ops: AtomicUsize::new(0),
                lag: LagProbe::new(),
            }),
        }
    }
}

struct Shard {
    keys: KeyMap<KeyState, Boxed<KeyState>>,
    ids: AdmissionIds,
    /// Its own operations not yet added to `Written::ops`, and the shard
    /// it visits next.
    visits: Visits,
    ops_since_sweep: usize,
    /// `Written::ops` when this shard was last swept.
    swept_at: usize,
    /// The keys its last sweep kept.
    kept: usize,
    /// When it was last swept (`None`: never), and the shortest window of
    /// the keys it kept (zero if none): once that window has passed, those
    /// of them that saw no traffic since are idle.
    swept_time: Option<Instant>,
    kept_window: Duration,
    /// Keys its sweeps examined, for the tests of their cost.
    #[cfg(test)]
    examined: usize,
}

impl Shard {
    /// Shard number `at`, empty.
    fn new(at: usize, hasher: KeyHasher) -> Self {
        Shard {
            keys: KeyMap::new(hasher),
            ids: AdmissionIds::new(),
            visits: Visits::of(at),
            ops_since_sweep: 0,
            swept_at: 0,
            kept: 0,
            swept_time: None,
            kept_window: Duration::ZERO,
            #[cfg(test)]
            examined: 0,
        }
    }
}

/// The ids a shard gives its admissions, under its lock. A key's
/// admissions take ids one after another while its log knows the next one
/// (see [`KeyState::next_id`]): its ring then keeps no id per entry. Else
/// (a new key, or one whose log held no two entries since it last held
/// none) the shard gives one past every id it gave so far, so that an
/// admission never takes the id of an earlier one of its key, also one
/// whose state was swept since and made again. Increasing per key, and
/// below 2^56 ([`ID_LIMIT`]): that many admissions of one shard would take
/// 2.3 years at one a nanosecond; past them, ids stay at the last.
struct AdmissionIds {
    next: u64,
}

impl AdmissionIds {
    fn new() -> Self {
        AdmissionIds { next: 0 }
    }

    /// The id of the next admission of the key whose state is `state`.
    fn take(&mut self, state: &KeyState) -> u64 {
        let last = ID_LIMIT - 1;
        let id = state.next_id().unwrap_or(self.next).min(last);
        self.next = self.next.max(id.saturating_add(1)).min(last);
        id
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
            .get(hash, key)
            .and_then(|state| state.pacer()?.burst())
    }

    /// Keys examined by sweeps so far, on every shard.
    #[cfg(test)]
    pub(crate) fn examined_by_sweeps(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| lock(shard).examined)
            .sum()
    }

    /// Removes the state of every key that has no admission left in its
    /// windows and no waiter. Runs by itself in amortized sweeps; call it to
    /// release memory at once.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        let ops = self.shared.written.ops.load(Ordering::Relaxed);
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
        Acquire::new(self.shared.clone(), key, cost, limits, place)
    }

    fn try_acquire(
        &self,
        key: &Key,
        cost: u64,
        limits: &Limits,
        place: &Place,
    ) -> Option<Result<Admission, BoxError>> {
        let (hash, shard) = self.shared.shard(key);
        let mut guard = lock(shard);
        let shard = &mut *guard;
        // Kept for the layers around: a retrying layer above takes it for
        // the request's start.
        let now = crate::time::read();
        self.shared.tick(shard, now);
        let (state, stamp) = match entered(
            &mut shard.keys,
            hash,
            key,
            cost,
            limits,
            place.priority,
            now,
        ) {
            Ok(entered) => entered,
            Err(error) => return Some(Err(error)),
        };
        let class = place.priority;
        (state.queue().none_before(class) && state.has_room((now, stamp), cost, limits, class))
            .then(|| {
                let id = shard.ids.take(state);
                Ok(admit_now(
                    &self.shared,
                    state,
                    id,
                    key,
                    cost,
                    limits,
                    (now, stamp),
                ))
            })
    }

    fn correct(&self, admission: &Admission, actual_cost: u64) {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let Some(state) = shard.keys.get_mut(hash, admission.key()) else {
            return;
        };
        if state.correct(admission.id(), actual_cost) {
            // The head's instant may have moved: let it look again.
            state.wake_head();
        }
    }

    fn complete(&self, admission: &Admission, completion: Completion, limits: &Limits) {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let now = match completion {
            Completion::Answered => crate::time::read(),
            Completion::Dropped => Instant::now(),
        };
        let Some(state) = shard.keys.get_mut(hash, admission.key()) else {
            return;
        };
        if state.answered(admission, completion, limits, now) {
            state.wake_head();
        }
    }

    fn accepted(&self, admission: &Admission, room: &dyn Fn() -> Option<Room>, limits: &Limits) {
        let (hash, shard) = self.shared.shard(admission.key());
        let mut shard = lock(shard);
        let Some(state) = shard.keys.get_mut(hash, admission.key()) else {
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
        let now = crate::time::read();
        let Some(state) = shard.keys.get_mut(hash, admission.key()) else {
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
        match shard.keys.get_mut(hash, admission.key()) {
            Some(state) => state.announce(announced, limits.follows_announced_quotas()),
            None => Vec::new(),
        }
    }

    fn probes_lag(&self, admission: &Admission) -> bool {
        self.shared.written.lag.probes(admission)
    }

    fn probed(&self, lag: Option<Duration>, limits: &Limits) {
        if !self.shared.written.lag.probed(lag, limits) {
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
        let state = shard.keys.get_mut(hash, admission.key())?;
        // A provider that refuses well under the quota has a lower rate,
        // which the pacer learns; so does one that refuses evenly spaced
        // requests (a sliding-window counter, a late window: a little less
        // rate serves both). A refusal of bursts near the quota says the
        // provider's window runs late.
        // The probe past a fresh key's first window, refused, may be either
        // (a sliding log whose window runs late, or a counter of the rate):
        // the key widens its margin and is spaced.
        let near_quota = match state.learned_mut() {
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

impl Shared {
    /// The key's hash and its shard: the one hash of an operation.
    fn shard(&self, key: &Key) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash(key);
        (
            hash,
            &self.shards[KeyHasher::shard_of(hash, self.shards.len())],
        )
    }
}

impl Shared {
    /// One operation on `shard`: sweeps it after as many operations on it
    /// as its last sweep kept keys (and `SWEEP_EVERY`) once the shortest
    /// window of those keys has passed since (or after `SWEEP_AT_MOST`
    /// times as many operations), and every [`VISIT_EVERY`] operations of
    /// its own, visits the next shard in turn and sweeps it if enough
    /// operations on all shards have passed since its last sweep (and
    /// `SWEEP_EVERY`; counted `VISIT_EVERY` at a time, so fewer than
    /// `SWEEP_EVERY / 4` are not yet counted), so that idle keys go even
    /// when their own shard sees no traffic. Enough is as many as it has
    /// keys once the shortest window of the keys it kept has passed since
    /// (they may all be idle by then: their memory comes back within that
    /// window and a pass over the keys), and `SWEEP_AT_MOST` times as many
    /// as it kept keys times the shards before. Either way amortized O(1)
    /// per operation: a shard whose keys stay busy is swept about once a
    /// window, by then it has seen a window's traffic to them, or once per
    /// `SWEEP_AT_MOST` times its kept keys' worth of its share of the
    /// operations.
    ///
    /// Kept keys, not the keys a shard has now, for its own sweeps: when
    /// every operation brings a new key, a shard has more keys than
    /// operations since its last sweep for ever, and would never be swept.
    ///
    /// The window, for both: before it passes, a key kept busy at the last
    /// sweep may have gone idle, but so may few of them, and every key
    /// admitted since under a window as long is still held by its
    /// admission. So a sweep within the window would examine the shard's
    /// busy keys for little (at 100,000 keys, each admission examined about
    /// one other key and paid its cache misses), while waiting holds the
    /// keys live at the last sweep and those live now, besides the keys
    /// that never held an admission or held one under a shorter window,
    /// which `SWEEP_AT_MOST` bounds.
    fn tick(&self, shard: &mut Shard, now: Instant) {
        shard.ops_since_sweep += 1;
        let due = SWEEP_EVERY.max(shard.kept);
        if shard.ops_since_sweep >= due
            && (shard.window_passed(now)
                || shard.ops_since_sweep >= due.saturating_mul(SWEEP_AT_MOST))
        {
            shard.sweep(now, self.written.ops.load(Ordering::Relaxed));
        }
        let Some(next) = shard.visits.step(VISIT_EVERY, self.shards.len()) else {
            return;
        };
        let ops = self
            .written
            .ops
            .fetch_add(VISIT_EVERY, Ordering::Relaxed)
            .wrapping_add(VISIT_EVERY);
        // Skipped if busy, or if it is the one held (swept by its own rule).
        let Some(mut other) = try_lock_for_visit(&self.shards[next]) else {
            return;
        };
        let due = if other.window_passed(now) {
            other.keys.len()
        } else {
            other
                .kept
                .saturating_mul(self.shards.len())
                .saturating_mul(SWEEP_AT_MOST)
        };
        if ops.wrapping_sub(other.swept_at) >= SWEEP_EVERY.max(due) {
            other.sweep(now, ops);
        }
    }
}

impl Shard {
    /// Whether the shortest window of the keys its last sweep kept has
    /// passed since (or it was never swept).
    fn window_passed(&self, now: Instant) -> bool {
        self.swept_time
            .is_none_or(|at| now.saturating_duration_since(at) >= self.kept_window)
    }

    fn sweep(&mut self, now: Instant, ops: usize) {
        self.ops_since_sweep = 0;
        self.swept_at = ops;
        #[cfg(test)]
        {
            self.examined += self.keys.len();
        }
        let mut kept_window = Duration::MAX;
        self.keys.retain(|state| {
            state.prune(now);
            let idle = state.is_idle();
            if !idle {
                kept_window = kept_window.min(state.shortest_window());
            }
            !idle
        });
        self.kept = self.keys.len();
        self.swept_time = Some(now);
        // Nothing kept: nothing to wait for.
        self.kept_window = if self.kept == 0 {
            Duration::ZERO
        } else {
            kept_window
        };
        // Give the memory of a crowd of idle keys back.
        self.keys.shrink_if_sparse(64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sliding_window::Quota;

    /// A key's admissions take ids one after another, also when others of
    /// its shard come between and when one costs nothing (it leaves no
    /// entry); a new key, and a key made again after a sweep, takes one
    /// past every id its shard gave.
    #[tokio::test(start_paused = true)]
    async fn a_keys_ids_run_on_and_a_new_key_starts_past_its_shards() {
        let store = MemoryStore::new();
        let limits = Limits::new(vec![Quota::new(100, Duration::from_secs(1)).unwrap()]).unwrap();
        let place = Place::default();
        let admit = |key: &Key, cost: u64| {
            store
                .try_acquire(key, cost, &limits, &place)
                .expect("room")
                .expect("admitted")
                .id()
        };
        let a = Key::from_static("a");
        let shard_of = |key: &Key| store.shared.shard(key).1 as *const Mutex<Shard>;
        let b = (0..)
            .map(|i| Key::from(format!("b{i}")))
            .find(|key| shard_of(key) == shard_of(&a))
            .expect("some key shares a's shard");
        let first: Vec<u64> = (0..4).map(|_| admit(&a, 1)).collect();
        assert_eq!(first, [first[0], first[0] + 1, first[0] + 2, first[0] + 3]);
        let b0 = admit(&b, 1);
        assert!(b0 > first[3], "a new key: past every id of its shard");
        let mut last_a = first[3];
        for _ in 0..3 {
            assert_eq!(admit(&a, 1), last_a + 1);
            assert_eq!(admit(&a, 0), last_a + 2, "a free one takes the next id");
            last_a += 2;
        }
        assert_eq!(admit(&b, 1), b0 + 1);
        let last = last_a.max(b0 + 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        store.evict_idle();
        assert_eq!(store.key_count(), 0);
        let again = admit(&a, 1);
        assert!(again > last, "made again: {again} after {last}");
        assert_eq!(admit(&a, 1), again + 1);
    }

    mod ids {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;
        use crate::sliding_window::store::Completion;

        #[derive(Debug, Clone)]
        enum Op {
            /// An admission of key `key` (of 3, sharing shards or not) that
            /// costs `cost` (0: no entry).
            Admit {
                key: u8,
                cost: u64,
            },
            /// The answer, or the drop, of the `pick`-th admission still
            /// outstanding.
            Complete {
                pick: usize,
                dropped: bool,
            },
            Advance {
                millis: u64,
            },
            Evict,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0u8..3, prop_oneof![5 => Just(1u64), 1 => Just(0u64), 1 => Just(2u64)])
                    .prop_map(|(key, cost)| Op::Admit { key, cost }),
                3 => (any::<usize>(), any::<bool>())
                    .prop_map(|(pick, dropped)| Op::Complete { pick, dropped }),
                2 => (0u64..1_500).prop_map(|millis| Op::Advance { millis }),
                1 => Just(Op::Evict),
            ]
        }

        proptest! {
            /// Whatever the interleaving of keys, free admissions,
            /// answers, drops, idle spells and sweeps, each key's
            /// admissions take increasing ids: an answer never reaches
            /// another admission's entry, also once the key was swept and
            /// made again.
            #[test]
            fn a_keys_ids_always_increase(ops in proptest::collection::vec(op(), 1..120)) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .unwrap();
                let _entered = runtime.enter();
                let store = MemoryStore::new();
                let limits = Limits::new(vec![Quota::new(5, Duration::from_secs(1)).unwrap()])
                    .unwrap()
                    .reporting_answers();
                let keys = [Key::from_static("a"), Key::from_static("b"), Key::from_static("c")];
                let mut last: HashMap<u8, u64> = HashMap::new();
                let mut outstanding: Vec<Admission> = Vec::new();
                for op in ops {
                    match op {
                        Op::Admit { key, cost } => {
                            let admitted = store.try_acquire(&keys[usize::from(key)], cost, &limits, &Place::default());
                            if let Some(Ok(admission)) = admitted {
                                if let Some(&before) = last.get(&key) {
                                    prop_assert!(admission.id() > before, "{} after {before}", admission.id());
                                }
                                last.insert(key, admission.id());
                                outstanding.push(admission);
                            }
                        }
                        Op::Complete { pick, dropped } if !outstanding.is_empty() => {
                            let admission = outstanding.swap_remove(pick % outstanding.len());
                            let completion = if dropped { Completion::Dropped } else { Completion::Answered };
                            store.complete(&admission, completion, &limits);
                        }
                        Op::Complete { .. } => {}
                        Op::Advance { millis } => {
                            runtime.block_on(tokio::time::advance(Duration::from_millis(millis)));
                        }
                        Op::Evict => store.evict_idle(),
                    }
                }
            }
        }
    }

    /// Ids stay below the logs' limit, at the last one once it is reached.
    #[test]
    fn ids_stay_below_the_limit() {
        let limits = Limits::new(vec![Quota::new(1, Duration::from_secs(1)).unwrap()]).unwrap();
        let state = KeyState::new(&limits, Instant::now());
        let mut ids = AdmissionIds { next: ID_LIMIT - 2 };
        assert_eq!(ids.take(&state), ID_LIMIT - 2);
        assert_eq!(ids.take(&state), ID_LIMIT - 1);
        assert_eq!(ids.take(&state), ID_LIMIT - 1);
    }
}
