//! The keyed maps of the layers (a store's shards, the Retry-After gates):
//! one hash per operation.
//!
//! A key is hashed once, with foldhash (randomly seeded per map), and the
//! hash serves every lookup of the operation; the in-process store also
//! picks its shard with bits 32 and up, while the table inside indexes by
//! the low bits and tags by the top seven. A lookup borrows the key and
//! hashes and compares its name's bytes (an inline name is not checked as
//! UTF-8 again on every lookup); the key is stored (a [`StoredKey`]) only
//! when it is inserted.
//!
//! The sharded maps (the store's, the breakers', the gates') keep each
//! shard on cache lines of its own ([`CachePadded`]), and sweep idle keys
//! of shards that see no traffic by [`Visits`] from the shards that do.

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use hashbrown::HashTable;

use crate::Key;
use crate::key::StoredKey;

/// A value on cache lines of its own: 128 bytes, the pair of 64-byte lines
/// that x86's adjacent-line prefetcher fetches together (and the line of
/// Apple's ARM cores). The shards of the keyed maps are each padded so:
/// two threads locking shards side by side do not take each other's lines.
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// `count` shards, each made by `shard` from its number and the hasher
/// they share, behind a lock of its own on cache lines of its own. `count`
/// is a power of two, so that a hash finds its shard with a mask
/// ([`KeyHasher::shard_of`]) rather than a division.
pub(crate) fn padded_shards<T>(
    count: usize,
    hasher: &KeyHasher,
    shard: impl Fn(usize, KeyHasher) -> T,
) -> Box<[CachePadded<Mutex<T>>]> {
    assert!(
        count.is_power_of_two(),
        "each map's shard count is a constant power of two"
    );
    (0..count)
        .map(|at| CachePadded(Mutex::new(shard(at, hasher.clone()))))
        .collect()
}

/// When a shard visits the others (to sweep idle keys that see no traffic
/// of their own): every `every` operations of the shard, the next shard in
/// turn. Kept by the shard, under its lock, so that taking a turn writes
/// nothing the other shards share.
#[derive(Debug)]
pub(crate) struct Visits {
    ops: usize,
    next: usize,
}

impl Visits {
    /// The visits of shard `shard`: from the shard after it on, so that
    /// shards with as much traffic visit different shards at once, not
    /// the same one in step.
    pub(crate) fn of(shard: usize) -> Self {
        Visits {
            ops: 0,
            next: shard + 1,
        }
    }

    /// Counts one operation of the shard; on its turn, the shard (of
    /// `shards`, a power of two: see [`padded_shards`]) it visits now.
    pub(crate) fn step(&mut self, every: usize, shards: usize) -> Option<usize> {
        self.ops += 1;
        if self.ops < every {
            return None;
        }
        self.ops = 0;
        let at = self.next & shards.saturating_sub(1);
        self.next = at + 1;
        Some(at)
    }
}

/// A shard to visit, locked, or `None` while another operation holds it: a
/// visit never waits, nor holds one shard while it waits for another.
/// Every update leaves a shard consistent, so a poisoned lock is taken.
pub(crate) fn try_lock_for_visit<T>(shard: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match shard.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// A shard, locked: the one way the keyed maps take their shards (and
/// the concurrency store its map). Every update leaves a shard consistent,
/// so a poisoned lock is taken.
///
/// A plain `Mutex::lock`: a wait that spins before it sleeps (tried with
/// 64 and with 127 spin-loop hints) made two threads admitting one key
/// 20 % faster in some runs on the measuring VM and 16 % slower in
/// others (that row moves with how the VM runs its two vCPUs).
pub(crate) fn lock<T>(shard: &Mutex<T>) -> MutexGuard<'_, T> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hasher of a store: foldhash's fast hash with a per-process random
/// seed. Keys can come from requests (a host, a tenant), so the seed keeps
/// their placement unpredictable from outside.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyHasher(foldhash::fast::RandomState);

/// A key's name, whether a [`Key`] or as a map stores it ([`StoredKey`]):
/// the two hash and compare alike, so a map finds a key by either.
pub(crate) trait Named {
    fn name_bytes(&self) -> &[u8];
}

impl Named for Key {
    fn name_bytes(&self) -> &[u8] {
        Key::name_bytes(self)
    }
}

impl Named for StoredKey {
    fn name_bytes(&self) -> &[u8] {
        StoredKey::name_bytes(self)
    }
}

impl KeyHasher {
    /// The hash of a key's name: a stored key hashes as the [`Key`] it
    /// came from.
    pub(crate) fn hash<N: Named + ?Sized>(&self, key: &N) -> u64 {
        self.0.hash_one(key.name_bytes())
    }

    /// The shard of a hash among `shards`, a power of two (see
    /// [`padded_shards`]): bits the table does not use, masked. A division
    /// by the count, a slice's length the compiler cannot see, took as
    /// long as the rest of finding the shard, on every operation.
    pub(crate) fn shard_of(hash: u64, shards: usize) -> usize {
        debug_assert!(shards.is_power_of_two(), "a power of two of shards");
        // Truncation intended: bits 32..64 are ample for a handful of shards.
        ((hash >> 32) as usize) & shards.saturating_sub(1)
    }
}

/// Whether a stored key has the name of `key`: at once when both point at
/// the same bytes (a static name such as [`Key::GLOBAL`], stored as its
/// pointer), else byte by byte.
#[inline]
fn same_name<N: Named + ?Sized>(stored: &StoredKey, key: &N) -> bool {
    let (stored, key) = (stored.name_bytes(), key.name_bytes());
    stored.len() == key.len() && (std::ptr::eq(stored.as_ptr(), key.as_ptr()) || stored == key)
}

/// How a [`KeyMap`] keeps a key and its value in its table: side by side
/// ([`InPlace`], for small values), or boxed together ([`Boxed`], for a
/// large value: the table, which keeps room for more entries than it
/// holds, then holds a pointer per entry).
pub(crate) trait Slot {
    /// The value kept for a key.
    type Value;

    fn new(key: StoredKey, value: Self::Value) -> Self;
    fn pair(&self) -> &(StoredKey, Self::Value);
    fn pair_mut(&mut self) -> &mut (StoredKey, Self::Value);

    fn key(&self) -> &StoredKey {
        &self.pair().0
    }

    fn value(&self) -> &Self::Value {
        &self.pair().1
    }

    fn value_mut(&mut self) -> &mut Self::Value {
        &mut self.pair_mut().1
    }
}

/// A key and its value in the table itself.
pub(crate) struct InPlace<V>((StoredKey, V));

impl<V> Slot for InPlace<V> {
    type Value = V;

    fn new(key: StoredKey, value: V) -> Self {
        InPlace((key, value))
    }

    fn pair(&self) -> &(StoredKey, V) {
        &self.0
    }

    fn pair_mut(&mut self) -> &mut (StoredKey, V) {
        &mut self.0
    }
}

/// A key and its value in one allocation, the table holding its pointer.
pub(crate) struct Boxed<V>(Box<(StoredKey, V)>);

impl<V> Slot for Boxed<V> {
    type Value = V;

    fn new(key: StoredKey, value: V) -> Self {
        Boxed(Box::new((key, value)))
    }

    fn pair(&self) -> &(StoredKey, V) {
        &self.0
    }

    fn pair_mut(&mut self) -> &mut (StoredKey, V) {
        &mut self.0
    }
}

/// Keys and their state in one shard, each key kept as a [`StoredKey`].
pub(crate) struct KeyMap<V, S: Slot<Value = V> = InPlace<V>> {
    table: HashTable<S>,
    hasher: KeyHasher,
}

impl<V, S: Slot<Value = V>> Default for KeyMap<V, S> {
    fn default() -> Self {
        KeyMap::new(KeyHasher::default())
    }
}

impl<V, S: Slot<Value = V>> KeyMap<V, S> {
    pub(crate) fn new(hasher: KeyHasher) -> Self {
        KeyMap {
            table: HashTable::new(),
            hasher,
        }
    }

    /// The hash of `key` in this map.
    pub(crate) fn hash<N: Named + ?Sized>(&self, key: &N) -> u64 {
        self.hasher.hash(key)
    }

    pub(crate) fn get<N: Named + ?Sized>(&self, hash: u64, key: &N) -> Option<&V> {
        self.table
            .find(hash, |slot| same_name(slot.key(), key))
            .map(Slot::value)
    }

    pub(crate) fn get_mut<N: Named + ?Sized>(&mut self, hash: u64, key: &N) -> Option<&mut V> {
        self.table
            .find_mut(hash, |slot| same_name(slot.key(), key))
            .map(Slot::value_mut)
    }

    /// The state of `key`, made by `make` (and the key stored) if absent.
    pub(crate) fn get_or_insert_with(
        &mut self,
        hash: u64,
        key: &Key,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        self.get_key_value_or_insert_with(hash, key, make).1
    }

    /// As [`get_or_insert_with`](Self::get_or_insert_with), with the key as
    /// this map keeps it (a copy of which costs no allocation).
    pub(crate) fn get_key_value_or_insert_with(
        &mut self,
        hash: u64,
        key: &Key,
        make: impl FnOnce() -> V,
    ) -> (&StoredKey, &mut V) {
        let hasher = &self.hasher;
        let entry = self.table.entry(
            hash,
            |slot| same_name(slot.key(), key),
            |slot| hasher.hash(slot.key()),
        );
        let (key, value) = entry
            .or_insert_with(|| S::new(key.to_stored(), make()))
            .into_mut()
            .pair_mut();
        (&*key, value)
    }

    /// The state of `key`, with the key as this map keeps it (a copy of
    /// which costs no allocation).
    pub(crate) fn get_key_value_mut<N: Named + ?Sized>(
        &mut self,
        hash: u64,
        key: &N,
    ) -> Option<(&StoredKey, &mut V)> {
        self.table
            .find_mut(hash, |slot| same_name(slot.key(), key))
            .map(|slot| {
                let (key, value) = slot.pair_mut();
                (&*key, value)
            })
    }

    /// Removes `key` and its state; returns whether it was there.
    pub(crate) fn remove<N: Named + ?Sized>(&mut self, hash: u64, key: &N) -> bool {
        self.table
            .find_entry(hash, |slot| same_name(slot.key(), key))
            .map(|entry| drop(entry.remove()))
            .is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(Slot::value)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.table.iter_mut().map(Slot::value_mut)
    }

    /// Keeps the keys whose state `keep` says to keep.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.table.retain(|slot| keep(slot.value_mut()));
    }

    /// Gives memory back once the table holds less than a quarter of its
    /// capacity, and more than `slack` entries would fit.
    pub(crate) fn shrink_if_sparse(&mut self, slack: usize) {
        let len = self.table.len();
        if self.table.capacity() > 4 * len + slack {
            let hasher = &self.hasher;
            self.table
                .shrink_to(2 * len, |slot| hasher.hash(slot.key()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_visits_every_shard_in_turn_from_the_one_after_it() {
        let mut visits = Visits::of(2);
        let visited: Vec<_> = (0..4 * 8).filter_map(|_| visits.step(4, 4)).collect();
        assert_eq!(
            visited,
            [3, 0, 1, 2, 3, 0, 1, 2],
            "every 4th operation, in turn"
        );
        // Shards in step visit different shards at once.
        let mut first = Visits::of(0);
        let mut second = Visits::of(1);
        for _ in 0..16 {
            assert_ne!(first.step(1, 16), second.step(1, 16));
        }
    }

    #[test]
    fn a_visit_never_waits_for_a_shard_held_elsewhere() {
        let shard = Mutex::new(1);
        let held = shard.lock().unwrap();
        assert!(try_lock_for_visit(&shard).is_none());
        drop(held);
        assert_eq!(try_lock_for_visit(&shard).as_deref(), Some(&1));
    }

    #[test]
    fn keys_are_found_by_their_text_and_cloned_only_on_insert() {
        let hasher = KeyHasher::default();
        let mut map: KeyMap<i32> = KeyMap::new(hasher.clone());
        // Kept in place; looked up below as a static name: the same text.
        let key = Key::from(String::from("api.example.com"));
        let same = Key::from_static("api.example.com");
        let hash = hasher.hash(&key);
        assert_eq!(hasher.hash(&same), hash);
        *map.get_or_insert_with(hash, &key, || 1) += 1;
        *map.get_or_insert_with(hash, &key, || 100) += 1;
        assert_eq!(map.get(hash, &same), Some(&3));
        assert_eq!(map.len(), 1);
        for i in 0..1000 {
            let other = Key::from(format!("host-{i}"));
            map.get_or_insert_with(hasher.hash(&other), &other, || i + 10);
        }
        let seventh = Key::from_static("host-7");
        assert_eq!(map.get(hasher.hash(&seventh), &seventh), Some(&17));
        map.retain(|value| *value == 3);
        map.shrink_if_sparse(64);
        assert_eq!(map.len(), 1);
        assert!(map.capacity() < 128, "memory given back");
        assert_eq!(map.get_mut(hash, &same), Some(&mut 3));
        assert!(map.get(hasher.hash(&seventh), &seventh).is_none());
    }

    /// Every form of a key, short or long, is found again by any other
    /// form of the same name, whether the map keeps its values in place or
    /// boxed with their keys.
    #[test]
    fn every_form_of_a_key_is_stored_as_the_same_name() {
        fn check<S: Slot<Value = usize>>(mut map: KeyMap<usize, S>) {
            let hasher = map.hasher.clone();
            let names = ["", "a", &"b".repeat(22), &"c".repeat(23), &"d".repeat(39)];
            for (index, name) in names.iter().enumerate() {
                let static_name: &'static str = String::from(*name).leak();
                let forms = [
                    Key::new(name),
                    Key::from_static(static_name),
                    Key::from(std::sync::Arc::<str>::from(*name)),
                ];
                for (inserted, form) in forms.iter().enumerate() {
                    let mut fresh: KeyMap<usize, S> = KeyMap::new(hasher.clone());
                    fresh.get_or_insert_with(hasher.hash(form), form, || index);
                    for other in &forms {
                        assert_eq!(
                            fresh.get(hasher.hash(other), other),
                            Some(&index),
                            "{name:?} stored from form {inserted}"
                        );
                    }
                }
                map.get_or_insert_with(hasher.hash(&forms[0]), &forms[0], || index);
            }
            assert_eq!(map.len(), names.len());
            for (index, name) in names.iter().enumerate() {
                let key = Key::new(name);
                assert_eq!(map.get(hasher.hash(&key), &key), Some(&index));
                assert!(map.remove(hasher.hash(&key), &key));
                assert!(!map.remove(hasher.hash(&key), &key));
            }
            assert_eq!(map.len(), 0);
            // A URI's authority, kept in place by a short key and copied
            // out of the URI by a long one.
            for host in ["api.example.com", "a-much-longer-host-name.example.com"] {
                let uri = format!("https://{host}/v1/items?token=secret");
                let request = http::Request::get(uri).body(()).expect("a valid URI");
                let key = crate::key::host_key(&request).expect("the URI has a host");
                map.get_or_insert_with(hasher.hash(&key), &key, || host.len());
                let same = Key::new(host);
                assert_eq!(map.get(hasher.hash(&same), &same), Some(&host.len()));
            }
        }
        check::<InPlace<usize>>(KeyMap::default());
        check::<Boxed<usize>>(KeyMap::default());
    }

    #[test]
    fn a_stored_key_is_24_bytes() {
        assert_eq!(std::mem::size_of::<StoredKey>(), 24);
        assert_eq!(std::mem::size_of::<Boxed<[u8; 200]>>(), 8);
    }
}
