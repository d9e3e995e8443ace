//! The in-process lease store: one fair semaphore per key that has
//! requests in flight or waiting.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Lease, LeaseStore};
use crate::sliding_window::{OverloadReason, Overloaded};
use crate::{BoxError, Key};

/// Maps at or below this capacity are not shrunk.
const MIN_CAPACITY: usize = 64;

/// Counts the in-flight requests of each key in this process.
///
/// Waiters of a key take its slots in the order they came (a fair
/// semaphore). A key is kept only while it has requests in flight or
/// waiting: the last one out removes it, so a million keys that go idle
/// leave nothing behind. The slot count of a key is the `max_in_flight` of
/// the request that found it absent; layers that share a store should
/// agree on it.
///
/// Cloning shares the counts.
#[derive(Clone, Default)]
pub struct MemoryLeases {
    keys: Arc<Mutex<HashMap<Key, Arc<Slots>>>>,
}

/// The slots of one key.
struct Slots {
    semaphore: Semaphore,
    max_in_flight: u32,
    /// Requests waiting for a slot.
    waiting: AtomicUsize,
}

impl MemoryLeases {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Slots>>> {
        crate::keymap::lock(&self.keys)
    }

    /// How many keys have requests in flight or waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key has requests in flight or waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many requests of `key` hold a slot now.
    pub fn in_flight(&self, key: &Key) -> u32 {
        self.lock().get(key).map_or(0, |slots| {
            let available = u32::try_from(slots.semaphore.available_permits()).unwrap_or(u32::MAX);
            slots.max_in_flight.saturating_sub(available)
        })
    }

    /// The capacity of the key map.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.lock().capacity()
    }
}

/// A hold on a key's slots: while any exists, the key stays in the map; the
/// last one dropped removes it.
struct Hold {
    store: MemoryLeases,
    key: Key,
    slots: Arc<Slots>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut keys = self.store.lock();
        // Under the lock nobody can take a new hold; only the map's reference
        // and this one left means no other request of the key is in flight
        // or waiting.
        if keys
            .get(&self.key)
            .is_some_and(|slots| Arc::ptr_eq(slots, &self.slots) && Arc::strong_count(slots) == 2)
        {
            keys.remove(&self.key);
            if keys.capacity() > MIN_CAPACITY && keys.len() * 4 < keys.capacity() {
                let len = keys.len();
                keys.shrink_to(len * 2);
            }
        }
    }
}

/// A slot taken: dropped, it gives the slot back, then lets go of the hold.
struct Taken(Hold);

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.slots.semaphore.add_permits(1);
    }
}

/// Counts a waiter for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LeaseStore for MemoryLeases {
    type Acquire = Pin<Box<dyn Future<Output = Result<Lease, BoxError>> + Send>>;

    fn acquire(&self, key: Key, max_in_flight: u32, max_wait: Option<Duration>) -> Self::Acquire {
        let slots = {
            let mut keys = self.lock();
            keys.entry(key.clone())
                .or_insert_with(|| {
                    let max_in_flight = max_in_flight.max(1);
                    let permits = usize::try_from(max_in_flight)
                        .unwrap_or(usize::MAX)
                        .min(Semaphore::MAX_PERMITS);
                    Arc::new(Slots {
                        semaphore: Semaphore::new(permits),
                        max_in_flight,
                        waiting: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        let hold = Hold {
            store: self.clone(),
            key: key.clone(),
            slots,
        };
        Box::pin(async move {
            let started = Instant::now();
            let slots = &*hold.slots;
            match slots.semaphore.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => {
                    let queued = slots.waiting.fetch_add(1, Ordering::Relaxed) + 1;
                    let _waiting = Waiting(&slots.waiting);
                    let acquire = slots.semaphore.acquire();
                    let permit = match max_wait {
                        Some(max_wait) => {
                            tokio::time::timeout(max_wait, acquire).await.map_err(|_| {
                                Overloaded::new(
                                    key.clone(),
                                    started.elapsed(),
                                    queued,
                                    OverloadReason::MaxWait(max_wait),
                                )
                            })?
                        }
                        None => acquire.await,
                    };
                    // The semaphore is never closed.
                    permit
                        .map_err(|closed| -> BoxError { Box::new(closed) })?
                        .forget();
                }
            }
            Ok(Lease::new(key, started.elapsed(), Taken(hold)))
        })
    }
}

impl fmt::Debug for MemoryLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLeases")
            .field("keys", &self.len())
            .finish()
    }
}
