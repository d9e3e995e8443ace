//! Where the in-flight slots of each key are counted.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::{BoxError, Key};

/// Counts the requests of each key in flight and hands out slots.
///
/// A store is shared by every clone of a layer and of the services it
/// makes. [`MemoryLeases`](super::MemoryLeases) counts in this process; a
/// store backed by Redis (`tower_quota_redis::RedisLeases`) counts across
/// processes, with leases that expire so that a crashed process cannot hold
/// slots forever.
///
/// `acquire` resolves once one of the key's `max_in_flight` slots is free
/// and taken for this request. Dropping the future before it resolves takes
/// nothing. Dropping the [`Lease`] gives the slot back.
pub trait LeaseStore: Clone + Send + Sync + 'static {
    /// The future of one acquisition.
    type Acquire: Future<Output = Result<Lease, BoxError>> + Send + 'static;

    /// Waits for one of `key`'s `max_in_flight` slots, for at most
    /// `max_wait` when it is set.
    ///
    /// Errors: [`Overloaded`](crate::sliding_window::Overloaded) when no
    /// slot freed within `max_wait`, and store-specific errors (a lost
    /// connection).
    fn acquire(&self, key: Key, max_in_flight: u32, max_wait: Option<Duration>) -> Self::Acquire;
}

/// One slot of a key, held until the lease is dropped.
///
/// The concurrency layer keeps the lease in the response body
/// ([`LeasedBody`](super::LeasedBody)): the slot is given back when the body
/// ends, fails or is dropped, or when the request fails or is dropped
/// before its response.
pub struct Lease {
    key: Key,
    waited: Duration,
    // Dropped last: gives the slot back.
    _slot: Box<dyn Send + Sync>,
}

impl Lease {
    /// A lease of `key` after a wait of `waited`; dropping `slot` gives the
    /// slot back. For [`LeaseStore`] implementations.
    pub fn new(key: Key, waited: Duration, slot: impl Send + Sync + 'static) -> Self {
        Lease {
            key,
            waited,
            _slot: Box::new(slot),
        }
    }

    /// The key the slot belongs to.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// How long the request waited for its slot.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("waited", &self.waited)
            .finish_non_exhaustive()
    }
}
