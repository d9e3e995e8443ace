//! The breakers of every key: a sharded map that forgets idle keys.
//!
//! Every call examines a few entries of another shard, each shard taking
//! the others in turn, and forgets those that are idle (see
//! [`Breaker::is_idle`]): [`SWEEP_STEP`] entries per call at most, the
//! work per call is bounded, and every key of every shard is looked at
//! again after about `len / SWEEP_STEP` calls to any key (the largest
//! shard's length times `SHARDS / SWEEP_STEP`), so idle keys give their
//! memory back without traffic to their own key or shard. A shard whose
//! entries fall below a quarter of its capacity is shrunk.
//!
//! A call writes nothing shared by all keys: only its own shard and the one
//! it visits (each on cache lines of its own, and the shard to visit next
//! is the calling shard's own, kept under its lock). Two threads calling
//! keys of different shards take each other's cache lines only on the
//! visits that meet the other's shard (one call in 16).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::config::Config;
use super::state::{Admit, Breaker, Transition};
use crate::Key;
use crate::key::StoredKey;
use crate::keymap::{
    CachePadded, KeyHasher, KeyMap, Visits, lock, padded_shards, try_lock_for_visit,
};
use crate::time::LazyNow;

/// Shards, each with its own lock.
const SHARDS: usize = 16;

/// Entries a call examines for idleness, in the shard it visits.
const SWEEP_STEP: usize = 16;

/// A shard is not shrunk below this capacity.
const MIN_CAPACITY: usize = 16;

/// Generations start at 1; a call of a key that is not kept (the map was
/// full) carries 0, which belongs to no breaker.
const UNTRACKED: u64 = 0;

/// The breakers of every key, shared by all clones of a layer.
#[derive(Clone)]
pub(crate) struct Breakers {
    shared: Arc<Shared>,
}

#[repr(align(128))]
struct Shared {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Chooses a key's shard.
    hasher: KeyHasher,
    /// The next generation: every period of every breaker gets its own.
    generations: AtomicU64,
    /// Keys kept, in all shards.
    keys: AtomicUsize,
}

/// Breakers in a vector, so that a sweep can resume where it stopped, and
/// an index from key to position.
struct Shard {
    /// Shares the store's hasher: the hash that chose the shard finds the key.
    index: KeyMap<usize>,
    /// Each breaker with its key as the index keeps it (24 bytes).
    entries: Vec<(StoredKey, Breaker)>,
    /// The next entry the sweep examines.
    cursor: usize,
    /// When it visits the shards in turn.
    visits: Visits,
}

impl Default for Breakers {
    fn default() -> Self {
        let hasher = KeyHasher::default();
        Breakers {
            shared: Arc::new(Shared {
                shards: padded_shards(SHARDS, &hasher, |at, hasher| Shard {
                    index: KeyMap::new(hasher),
                    entries: Vec::new(),
                    cursor: 0,
                    visits: Visits::of(at),
                }),
                hasher,
                generations: AtomicU64::new(UNTRACKED + 1),
                keys: AtomicUsize::new(0),
            }),
        }
    }
}

impl Breakers {
    /// The number of keys kept.
    pub(crate) fn len(&self) -> usize {
        self.shared.keys.load(Ordering::Relaxed)
    }

    /// Entries the shards have room for, without growing.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|shard| {
                let shard = lock(shard);
                shard.entries.capacity().max(shard.index.capacity())
            })
            .sum()
    }

    fn next_generation(&self) -> u64 {
        self.shared.generations.fetch_add(1, Ordering::Relaxed)
    }

    /// The key's hash and its shard, locked: the one hash of an operation.
    fn shard(&self, key: &Key) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.shared.hasher.hash(key);
        let at = KeyHasher::shard_of(hash, self.shared.shards.len());
        let shard = lock(&self.shared.shards[at]);
        (hash, shard)
    }

    /// Lets a call of `key` go or rejects it. A closed breaker with no
    /// failure in its window needs no time: `now` is read only for an
    /// open or half-open breaker, a new key, or a swept entry with
    /// failures.
    pub(crate) fn admit(&self, key: &Key, config: &Config, now: &LazyNow) -> Admit {
        let (admit, visit) = self.admit_in_shard(key, config, now);
        if let Some(at) = visit {
            self.sweep_step(at, config, now);
        }
        admit
    }

    /// The call's admission, and the shard its shard visits now.
    fn admit_in_shard(&self, key: &Key, config: &Config, now: &LazyNow) -> (Admit, Option<usize>) {
        let (hash, mut shard) = self.shard(key);
        let visit = shard.visits.step(1, self.shared.shards.len());
        let at = match shard.index.get(hash, key) {
            Some(&at) => at,
            None => {
                let reserved =
                    self.shared
                        .keys
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |keys| {
                            (keys < config.max_keys).then_some(keys + 1)
                        });
                if reserved.is_err() {
                    // Full: the call passes unjudged.
                    let admit = Admit::Go {
                        generation: UNTRACKED,
                        transition: None,
                    };
                    return (admit, visit);
                }
                shard.insert(hash, key, Breaker::new(self.next_generation(), now.get()))
            }
        };
        let admit = shard.entries[at]
            .1
            .admit(config, now, || self.next_generation());
        (admit, visit)
    }

    /// Records the outcome of a call that [`admit`](Self::admit) let go in
    /// `generation`; see [`Breaker::record`].
    pub(crate) fn record(
        &self,
        key: &Key,
        config: &Config,
        generation: u64,
        failure: Option<bool>,
        now: Instant,
    ) -> Option<Transition> {
        if generation == UNTRACKED {
            return None;
        }
        let (hash, mut shard) = self.shard(key);
        let at = *shard.index.get(hash, key)?;
        shard.entries[at]
            .1
            .record(config, generation, failure, now, || self.next_generation())
    }

    /// Examines the next entries of shard `at` (`SWEEP_STEP` for each of
    /// the calls since the last visit) and forgets the idle ones. A shard
    /// another call holds is skipped, never waited for.
    fn sweep_step(&self, at: usize, config: &Config, now: &LazyNow) {
        let Some(mut shard) = try_lock_for_visit(&self.shared.shards[at]) else {
            return;
        };
        let removed = shard.sweep(SWEEP_STEP, config, now);
        if removed > 0 {
            self.shared.keys.fetch_sub(removed, Ordering::Relaxed);
        }
    }
}

impl Shard {
    /// Adds `key` (whose hash is `hash`), which is not in the shard;
    /// returns its position.
    fn insert(&mut self, hash: u64, key: &Key, breaker: Breaker) -> usize {
        let at = self.entries.len();
        let (stored, _) = self.index.get_key_value_or_insert_with(hash, key, || at);
        // A copy of the index's key, which costs no allocation.
        self.entries.push((stored.clone(), breaker));
        at
    }

    fn remove_at(&mut self, at: usize) {
        let (key, _) = self.entries.swap_remove(at);
        self.index.remove(self.index.hash(&key), &key);
        if let Some((moved, _)) = self.entries.get(at) {
            let hash = self.index.hash(moved);
            if let Some(position) = self.index.get_mut(hash, moved) {
                *position = at;
            }
        }
    }

    /// Examines up to `budget` entries from the cursor on, forgets the idle
    /// ones, and returns how many it forgot.
    fn sweep(&mut self, budget: usize, config: &Config, now: &LazyNow) -> usize {
        let mut removed = 0;
        // No entry twice in one step.
        for _ in 0..budget.min(self.entries.len()) {
            if self.entries.is_empty() {
                break;
            }
            if self.cursor >= self.entries.len() {
                self.cursor = 0;
            }
            if self.entries[self.cursor].1.is_idle(config, now) {
                // The last entry moves here; it is examined next.
                self.remove_at(self.cursor);
                removed += 1;
            } else {
                self.cursor += 1;
            }
        }
        if removed > 0 {
            self.shrink_if_sparse();
        }
        removed
    }

    /// Gives memory back once the shard holds less than a quarter of what
    /// it has room for; amortized O(1) per removal.
    fn shrink_if_sparse(&mut self) {
        let len = self.entries.len();
        if self.entries.capacity() > MIN_CAPACITY && len < self.entries.capacity() / 4 {
            self.entries.shrink_to(len * 2);
        }
        self.index.shrink_if_sparse(MIN_CAPACITY);
    }
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("keys", &self.len())
            .finish()
    }
}
