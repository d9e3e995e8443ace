//! The keyed maps of the layers (a store's shards, the Retry-After gates):
//! one hash per operation.
//!
//! A key is hashed once, with foldhash (randomly seeded per map), and the
//! hash serves every lookup of the operation; the in-process store also
//! picks its shard with bits 32 and up, while the table inside indexes by
//! the low bits and tags by the top seven. A lookup borrows the key and
//! hashes and compares its name's bytes (an inline name is not checked as
//! UTF-8 again on every lookup); the key is cloned only when it is
//! inserted.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::Key;

/// The hasher of a store: foldhash's fast hash with a per-process random
/// seed. Keys can come from requests (a host, a tenant), so the seed keeps
/// their placement unpredictable from outside.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyHasher(foldhash::fast::RandomState);

impl KeyHasher {
    pub(crate) fn hash(&self, key: &Key) -> u64 {
        self.0.hash_one(key.name_bytes())
    }

    /// The shard of a hash among `shards`: bits the table does not use.
    pub(crate) fn shard_of(hash: u64, shards: usize) -> usize {
        // Truncation intended: bits 32..64 are ample for a handful of shards.
        ((hash >> 32) as usize) % shards
    }
}

/// Keys and their state in one shard.
pub(crate) struct KeyMap<V> {
    table: HashTable<(Key, V)>,
    hasher: KeyHasher,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap::new(KeyHasher::default())
    }
}

impl<V> KeyMap<V> {
    pub(crate) fn new(hasher: KeyHasher) -> Self {
        KeyMap {
            table: HashTable::new(),
            hasher,
        }
    }

    /// The hash of `key` in this map.
    pub(crate) fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash(key)
    }

    pub(crate) fn get(&self, hash: u64, key: &Key) -> Option<&V> {
        self.table
            .find(hash, |(stored, _)| stored.name_bytes() == key.name_bytes())
            .map(|(_, value)| value)
    }

    pub(crate) fn get_mut(&mut self, hash: u64, key: &Key) -> Option<&mut V> {
        self.table
            .find_mut(hash, |(stored, _)| stored.name_bytes() == key.name_bytes())
            .map(|(_, value)| value)
    }

    /// The state of `key`, made by `make` (and the key cloned) if absent.
    pub(crate) fn get_or_insert_with(
        &mut self,
        hash: u64,
        key: &Key,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        let hasher = &self.hasher;
        let entry = self.table.entry(
            hash,
            |(stored, _)| stored.name_bytes() == key.name_bytes(),
            |(stored, _)| hasher.hash(stored),
        );
        &mut entry.or_insert_with(|| (key.clone(), make())).into_mut().1
    }

    /// Removes `key` and its state.
    pub(crate) fn remove(&mut self, hash: u64, key: &Key) -> Option<V> {
        self.table
            .find_entry(hash, |(stored, _)| stored.name_bytes() == key.name_bytes())
            .ok()
            .map(|entry| entry.remove().0.1)
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
        self.table.iter().map(|(_, value)| value)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.table.iter_mut().map(|(_, value)| value)
    }

    /// Keeps the keys whose state `keep` says to keep.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.table.retain(|(_, value)| keep(value));
    }

    /// Gives memory back once the table holds less than a quarter of its
    /// capacity, and more than `slack` entries would fit.
    pub(crate) fn shrink_if_sparse(&mut self, slack: usize) {
        let len = self.table.len();
        if self.table.capacity() > 4 * len + slack {
            let hasher = &self.hasher;
            self.table
                .shrink_to(2 * len, |(stored, _)| hasher.hash(stored));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_text_and_cloned_only_on_insert() {
        let hasher = KeyHasher::default();
        let mut map = KeyMap::new(hasher.clone());
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
}
