use std::fmt;
use std::time::Duration;

use tower_layer::Layer;

use super::{Concurrency, LeaseStore, MemoryLeases};
use crate::GlobalKey;
use crate::sliding_window::InvalidQuota;

/// Holds each key to at most `max_in_flight` requests in flight at once; see
/// the [module docs](super).
///
/// Every service this layer makes shares the layer's [`LeaseStore`], so
/// cloning the layer or the services never multiplies the limit.
#[derive(Clone)]
pub struct ConcurrencyLayer<K = GlobalKey, St = MemoryLeases> {
    pub(super) max_in_flight: u32,
    pub(super) max_wait: Option<Duration>,
    pub(super) key_fn: K,
    pub(super) store: St,
}

impl ConcurrencyLayer {
    /// At most `max_in_flight` requests in flight at once, one count shared
    /// by all requests, kept in this process.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::ZeroMaxCalls`] when `max_in_flight` is 0.
    pub fn new(max_in_flight: u32) -> Result<Self, InvalidQuota> {
        if max_in_flight == 0 {
            return Err(InvalidQuota::ZeroMaxCalls);
        }
        Ok(ConcurrencyLayer {
            max_in_flight,
            max_wait: None,
            key_fn: GlobalKey,
            store: MemoryLeases::new(),
        })
    }
}

impl<K, St> ConcurrencyLayer<K, St> {
    /// Chooses the key of each request: each key has `max_in_flight` slots
    /// of its own. The default is one key for all requests.
    pub fn key_fn<K2>(self, key_fn: K2) -> ConcurrencyLayer<K2, St> {
        ConcurrencyLayer {
            max_in_flight: self.max_in_flight,
            max_wait: self.max_wait,
            key_fn,
            store: self.store,
        }
    }

    /// Counts the slots in `store`: a `tower_quota_redis::RedisLeases`
    /// shares them between processes.
    pub fn store<St2: LeaseStore>(self, store: St2) -> ConcurrencyLayer<K, St2> {
        ConcurrencyLayer {
            max_in_flight: self.max_in_flight,
            max_wait: self.max_wait,
            key_fn: self.key_fn,
            store,
        }
    }

    /// A request that found no free slot within `max_wait` fails with
    /// [`Overloaded`](crate::sliding_window::Overloaded). The default is to
    /// wait as long as it takes.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// The most requests of one key in flight at once.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    /// The store the slots are counted in.
    pub fn get_store(&self) -> &St {
        &self.store
    }
}

impl<S, K: Clone, St: Clone> Layer<S> for ConcurrencyLayer<K, St> {
    type Service = Concurrency<S, K, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Concurrency::from_parts(
            inner,
            self.max_in_flight,
            self.max_wait,
            self.key_fn.clone(),
            self.store.clone(),
        )
    }
}

impl<K, St: fmt::Debug> fmt::Debug for ConcurrencyLayer<K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLayer")
            .field("max_in_flight", &self.max_in_flight)
            .field("max_wait", &self.max_wait)
            .field("key_fn", &std::any::type_name::<K>())
            .field("store", &self.store)
            .finish()
    }
}
