use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::{
    InvalidQuota, Limits, MemoryStore, PlaceFn, ResponseFuture, SlidingWindowLayer, Store, Unplaced,
};
use crate::{BoxError, CostFn, GlobalKey, KeyFn, NoUsage, UnitCost, UsageFn};

/// Paces requests so that no window of any quota holds more than its
/// `max_calls`; made by [`SlidingWindowLayer`].
///
/// `poll_ready` is the inner service's own. The wait for room happens inside
/// the response future, because the key of a request is known only in
/// `call`: the readied inner service is moved into the future and called
/// once the request is admitted.
#[derive(Clone)]
pub struct SlidingWindow<
    S,
    K = GlobalKey,
    C = UnitCost,
    St = MemoryStore,
    U = NoUsage,
    P = Unplaced,
> {
    inner: S,
    shared: Arc<Shared<St>>,
    key_fn: K,
    cost_fn: C,
    usage_fn: U,
    place_fn: P,
}

/// The limits and the store, behind one pointer: every clone of the service
/// and every response future holds them with one reference count, which
/// the threads that share a service write at every request. Aligned to 128
/// bytes (see [`CachePadded`](crate::keymap::CachePadded)), so that the
/// `Arc`'s counts, before the value, have cache lines of their own: a count
/// written by one thread does not take from the other the line every
/// request reads the limits and the store from.
#[repr(align(128))]
pub(super) struct Shared<St> {
    limits: Limits,
    // The same, for a usage function that reports refusals.
    refusing: Limits,
    pub(super) store: St,
}

impl<St> Shared<St> {
    /// The limits that a response future reports to the store with: the
    /// ones that tell refusals when its usage function reports them.
    pub(super) fn limits(&self, refusing: bool) -> &Limits {
        if refusing {
            &self.refusing
        } else {
            &self.limits
        }
    }
}

impl<S> SlidingWindow<S> {
    /// Wraps `inner` with one in-process quota of `max_calls` per `window`.
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] as for [`SlidingWindowLayer::new`].
    pub fn new(inner: S, max_calls: u64, window: Duration) -> Result<Self, InvalidQuota> {
        Ok(tower_layer::Layer::layer(
            &SlidingWindowLayer::new(max_calls, window)?,
            inner,
        ))
    }

    /// A layer of one in-process quota; same as [`SlidingWindowLayer::new`].
    ///
    /// # Errors
    ///
    /// [`InvalidQuota`] as for [`SlidingWindowLayer::new`].
    pub fn layer(max_calls: u64, window: Duration) -> Result<SlidingWindowLayer, InvalidQuota> {
        SlidingWindowLayer::new(max_calls, window)
    }
}

impl<S, K, C, St, U, P> SlidingWindow<S, K, C, St, U, P> {
    pub(super) fn from_parts(
        inner: S,
        limits: Limits,
        key_fn: K,
        cost_fn: C,
        store: St,
        usage_fn: U,
        place_fn: P,
    ) -> Self {
        SlidingWindow {
            inner,
            shared: Arc::new(Shared {
                // The response future reports every answer to the store, and
                // with a usage function that tells refusals, what each was.
                refusing: limits.clone().reporting_refusals(),
                limits: limits.reporting_answers(),
                store,
            }),
            key_fn,
            cost_fn,
            usage_fn,
            place_fn,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The limits this service enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The store that holds the admissions.
    pub fn store(&self) -> &St {
        &self.shared.store
    }
}

impl<S, Request, K, C, St, U, P> Service<Request> for SlidingWindow<S, K, C, St, U, P>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    K: KeyFn<Request>,
    C: CostFn<Request>,
    St: Store,
    U: UsageFn<S::Response> + Clone,
    P: PlaceFn<Request>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<St, S, Request, U>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        let key = self.key_fn.key(&request);
        let cost = self.cost_fn.cost(&request);
        let place = self.place_fn.place(&request);
        let (priority, tenant) = (
            place.priority,
            place.tenant.as_ref().map(|t| t.name().clone()),
        );
        // The service that `poll_ready` readied goes with this request; the
        // clone left behind is readied by the next `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(
            (key, cost, place),
            inner,
            request,
            (
                self.shared.clone(),
                <U as UsageFn<S::Response>>::REPORTS_REFUSALS,
            ),
            self.usage_fn.clone(),
            (priority, tenant),
        )
    }
}

impl<S: fmt::Debug, K, C, St: fmt::Debug, U, P> fmt::Debug for SlidingWindow<S, K, C, St, U, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingWindow")
            .field("inner", &self.inner)
            .field("limits", &self.shared.limits)
            .field("key_fn", &std::any::type_name::<K>())
            .field("cost_fn", &std::any::type_name::<C>())
            .field("store", &self.shared.store)
            .field("usage_fn", &std::any::type_name::<U>())
            .field("place_fn", &std::any::type_name::<P>())
            .finish()
    }
}
