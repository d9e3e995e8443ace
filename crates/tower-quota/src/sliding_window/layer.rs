use std::fmt;
use std::time::Duration;

use tower_layer::Layer;

use super::{InvalidQuota, Limits, MemoryStore, Priority, Quota, SlidingWindow, Store, Unplaced};
use crate::{GlobalKey, NoUsage, UnitCost};

/// Applies exact sliding-window pacing to a service; see the
/// [module docs](super) for what it does and where it goes in a stack.
///
/// Every service this layer makes shares the layer's [`Store`], so cloning
/// the layer or the services never multiplies the limit.
#[derive(Clone)]
pub struct SlidingWindowLayer<
    K = GlobalKey,
    C = UnitCost,
    St = MemoryStore,
    U = NoUsage,
    P = Unplaced,
> {
    pub(super) limits: Limits,
    pub(super) key_fn: K,
    pub(super) cost_fn: C,
    pub(super) store: St,
    pub(super) usage_fn: U,
    pub(super) place_fn: P,
}

impl SlidingWindowLayer {
    /// At most `max_calls` requests in any window of `window` length, one
    /// quota shared by all requests, kept in this process.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] when `max_calls` is 0, `window` is zero, or `window`
    /// is longer than [`MAX_WINDOW`](super::MAX_WINDOW).
    pub fn new(max_calls: u64, window: Duration) -> Result<Self, InvalidQuota> {
        Self::with_quotas([Quota::new(max_calls, window)?])
    }

    /// Several quotas at once, all respected: for example 10 per second and
    /// 100 per minute.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::NoQuota`] when `quotas` is empty.
    pub fn with_quotas(quotas: impl IntoIterator<Item = Quota>) -> Result<Self, InvalidQuota> {
        Ok(SlidingWindowLayer {
            limits: Limits::new(quotas.into_iter().collect())?,
            key_fn: GlobalKey,
            cost_fn: UnitCost,
            store: MemoryStore::new(),
            usage_fn: NoUsage,
            place_fn: Unplaced,
        })
    }
}

impl<K, C, St, U, P> SlidingWindowLayer<K, C, St, U, P> {
    /// Adds a quota of `max_calls` per `window`; every quota is respected.
    /// The safety margin is left as it was.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] as for [`SlidingWindowLayer::new`].
    pub fn and_quota(mut self, max_calls: u64, window: Duration) -> Result<Self, InvalidQuota> {
        self.limits.push_quota(Quota::new(max_calls, window)?);
        Ok(self)
    }

    /// Adds a quota that every request spends 1 of, whatever its cost: the
    /// "500 requests per minute" beside "200,000 tokens per minute".
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] as for [`SlidingWindowLayer::new`].
    pub fn and_request_quota(
        mut self,
        max_calls: u64,
        window: Duration,
    ) -> Result<Self, InvalidQuota> {
        self.limits
            .push_quota(Quota::per_request(max_calls, window)?);
        Ok(self)
    }

    /// Chooses the key of each request: requests with equal keys share the
    /// quotas, each key has quotas of its own. The default is one key for
    /// all requests.
    pub fn key_fn<K2>(self, key_fn: K2) -> SlidingWindowLayer<K2, C, St, U, P> {
        SlidingWindowLayer {
            limits: self.limits,
            key_fn,
            cost_fn: self.cost_fn,
            store: self.store,
            usage_fn: self.usage_fn,
            place_fn: self.place_fn,
        }
    }

    /// Chooses what each request costs. The default is 1.
    pub fn cost_fn<C2>(self, cost_fn: C2) -> SlidingWindowLayer<K, C2, St, U, P> {
        SlidingWindowLayer {
            limits: self.limits,
            key_fn: self.key_fn,
            cost_fn,
            store: self.store,
            usage_fn: self.usage_fn,
            place_fn: self.place_fn,
        }
    }

    /// Corrects the cost charged at admission once the response tells the
    /// real usage: `usage_fn` reads it from the response (a closure over the
    /// response, or [`UsageFromExtension`](crate::UsageFromExtension) for the
    /// [`Usage`](crate::Usage) extension set by user code). The difference
    /// is refunded or charged in the window where the request was admitted,
    /// so a request that used less than its estimate lets the next one go
    /// earlier.
    pub fn usage_fn<U2>(self, usage_fn: U2) -> SlidingWindowLayer<K, C, St, U2, P> {
        SlidingWindowLayer {
            limits: self.limits,
            key_fn: self.key_fn,
            cost_fn: self.cost_fn,
            store: self.store,
            usage_fn,
            place_fn: self.place_fn,
        }
    }

    /// Keeps the admissions in `store`: another layer's store to share its
    /// quotas, or a store shared by many processes.
    pub fn store<St2: Store>(self, store: St2) -> SlidingWindowLayer<K, C, St2, U, P> {
        SlidingWindowLayer {
            limits: self.limits,
            key_fn: self.key_fn,
            cost_fn: self.cost_fn,
            store,
            usage_fn: self.usage_fn,
            place_fn: self.place_fn,
        }
    }

    /// Chooses where each request stands in its key's queue: its priority
    /// class, its tenant and its deadline (see [`Place`](super::Place)). The
    /// default, [`Unplaced`], puts every request in the same place: one FIFO
    /// queue per key. [`PlaceFromExtensions`](super::PlaceFromExtensions)
    /// reads an HTTP request's [`Priority`], [`Tenant`](super::Tenant) and
    /// [`Deadline`](super::Deadline) extensions (and `grpc-timeout`); a
    /// closure `Fn(&Request) -> Place` can derive them from anything.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_quota::sliding_window::{Place, Priority, SlidingWindowLayer, Tenant};
    ///
    /// let layer = SlidingWindowLayer::new(100, Duration::from_secs(60))?
    ///     .place_fn(|request: &http::Request<()>| {
    ///         let batch = request.uri().path().starts_with("/bulk");
    ///         let team = request
    ///             .headers()
    ///             .get("x-team")
    ///             .and_then(|v| v.to_str().ok())
    ///             .unwrap_or("none")
    ///             .to_owned();
    ///         Place::new()
    ///             .priority(if batch { Priority::Batch } else { Priority::Interactive })
    ///             .tenant(Tenant::new(team))
    ///     })
    ///     // Batch requests leave a tenth of the quota to the classes above.
    ///     .reserve(Priority::Interactive, 0.1)?;
    /// # Ok::<(), tower_quota::sliding_window::InvalidQuota>(())
    /// ```
    pub fn place_fn<P2>(self, place_fn: P2) -> SlidingWindowLayer<K, C, St, U, P2> {
        SlidingWindowLayer {
            limits: self.limits,
            key_fn: self.key_fn,
            cost_fn: self.cost_fn,
            store: self.store,
            usage_fn: self.usage_fn,
            place_fn,
        }
    }

    /// Reserves `share` (0 up to, not including, 1) of every quota for
    /// requests of `class` and the classes above it: requests of the
    /// classes below leave it free (rounded up to whole units, and never so
    /// much that a request could not fit alone). With
    /// `reserve(Priority::Critical, 0.1)`, batch and interactive work can
    /// saturate at most 90% of the quota, and a critical request finds room
    /// at once. Each call adds a reservation; a class leaves free the
    /// largest share reserved above it.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::InvalidReserve`] when `share` is outside `0..1` (or
    /// not a number), or `class` is [`Priority::Batch`].
    pub fn reserve(mut self, class: Priority, share: f64) -> Result<Self, InvalidQuota> {
        self.limits.set_reserve(class, share)?;
        Ok(self)
    }

    /// How long the front of a lower class waits before it goes before the
    /// waiting requests of every class but [`Priority::Critical`] (aging:
    /// no class starves). The default is the shortest quota's window.
    pub fn promote_after(mut self, after: Duration) -> Self {
        self.limits.set_promote_after(after);
        self
    }

    /// Refuses a request with [`Overloaded`](super::Overloaded) when the wait
    /// it needs exceeds `max_wait`, instead of queueing it. Checked when the
    /// request arrives, from the admissions queued ahead of it, and again
    /// when it reaches the head of the queue. No request waits longer,
    /// wherever it stands: when the queue ahead moves slower than projected
    /// at arrival (a rate cut, a usage correction, a strict slot whose answer
    /// does not come), a request still waiting once `max_wait` has passed is
    /// refused then.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.limits.set_max_wait(Some(max_wait));
        self
    }

    /// Refuses a request with [`Overloaded`](super::Overloaded) when
    /// `max_queue` requests already wait on its key.
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.limits.set_max_queue(Some(max_queue));
        self
    }

    /// Holds each admission in the window for `margin` longer than the
    /// window (counted from its answer, or from its `sent_within` bound), so
    /// that a server whose window boundaries or clock differ slightly from
    /// the client's never counts more than `max_calls` in its own window.
    /// The default is [`default_safety_margin`](super::default_safety_margin):
    /// 0.01% of the shortest window, between 1 ms and 25 ms.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::SafetyMarginTooLong`] above
    /// [`MAX_SAFETY_MARGIN`](super::MAX_SAFETY_MARGIN).
    pub fn safety_margin(mut self, margin: Duration) -> Result<Self, InvalidQuota> {
        self.limits.set_safety_margin(margin)?;
        Ok(self)
    }

    /// Assumes that a request whose answer has not come back reached the
    /// provider within `bound` of its admission: its slot is then released a
    /// window after `admitted + bound` (plus the safety margin) even while the
    /// request is still in flight. A request answered earlier is released a
    /// window after its answer. The default is
    /// [`default_sent_within`](super::default_sent_within): a tenth of the
    /// shortest window, between 1 ms and 100 ms.
    ///
    /// Raise it when requests may spend longer than that between admission
    /// and the provider (a connection pool that queues, a proxy, a slow
    /// network) *and* answers are slow; or use [`strict`](Self::strict).
    ///
    /// # Errors
    ///
    /// [`InvalidQuota::SentWithinOutOfRange`] when zero or above
    /// [`MAX_SENT_WITHIN`](super::MAX_SENT_WITHIN).
    pub fn sent_within(mut self, bound: Duration) -> Result<Self, InvalidQuota> {
        self.limits.set_sent_within(bound)?;
        Ok(self)
    }

    /// Strict mode: an admission is held until its answer comes back, and a
    /// window (plus the safety margin) after that, however long the request
    /// took. Nothing about the network is assumed, so the provider never
    /// counts more than `max_calls` in any window of its own (see the
    /// [module docs](super#strict-mode) for the argument); each slot costs
    /// one round trip more per window than the default.
    pub fn strict(mut self) -> Self {
        self.limits.set_strict(true);
        self
    }

    /// Follows the quotas the provider announces, within the configured
    /// ones: when a response announces a smaller quota for one of the
    /// configured windows (IETF `RateLimit-Policy` `q` and `w`, or a
    /// dialect that names its window), the key is held to it from its next
    /// admission; a larger one raises it back, at most to the configured
    /// `max_calls`, which stays the ceiling. Needs a usage function that
    /// reads announcements, such as [`HttpFeedback`](crate::HttpFeedback),
    /// and the in-process store (the Redis store reports differences but
    /// does not follow them). Off by default: the configured quota is what
    /// the user agreed to, and an announced one is evidence, reported with
    /// a `quota_mismatch` event either way.
    pub fn follow_announced_quotas(mut self) -> Self {
        self.limits.set_follow_announced(true);
        self
    }

    /// The limits this layer enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store that holds the admissions.
    pub fn get_store(&self) -> &St {
        &self.store
    }
}

impl<S, K: Clone, C: Clone, St: Clone, U: Clone, P: Clone> Layer<S>
    for SlidingWindowLayer<K, C, St, U, P>
{
    type Service = SlidingWindow<S, K, C, St, U, P>;

    fn layer(&self, inner: S) -> Self::Service {
        SlidingWindow::from_parts(
            inner,
            self.limits.clone(),
            self.key_fn.clone(),
            self.cost_fn.clone(),
            self.store.clone(),
            self.usage_fn.clone(),
            self.place_fn.clone(),
        )
    }
}

impl<K, C, St: fmt::Debug, U, P> fmt::Debug for SlidingWindowLayer<K, C, St, U, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingWindowLayer")
            .field("limits", &self.limits)
            .field("key_fn", &std::any::type_name::<K>())
            .field("cost_fn", &std::any::type_name::<C>())
            .field("store", &self.store)
            .field("usage_fn", &std::any::type_name::<U>())
            .field("place_fn", &std::any::type_name::<P>())
            .finish()
    }
}
