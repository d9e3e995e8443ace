use std::fmt;
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
    limits: Limits,
    // The same, for a usage function that reports refusals.
    refusing: Limits,
    key_fn: K,
    cost_fn: C,
    store: St,
    usage_fn: U,
    place_fn: P,
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
            // The response future reports every answer to the store, and
            // with a usage function that tells refusals, what each was.
            refusing: limits.clone().reporting_refusals(),
            limits: limits.reporting_answers(),
            key_fn,
            cost_fn,
            store,
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
        &self.limits
    }

    /// The store that holds the admissions.
    pub fn store(&self) -> &St {
        &self.store
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

    fn call(&mut self, request: Request) -> Self::Future {
        let key = self.key_fn.key(&request);
        let cost = self.cost_fn.cost(&request);
        let place = self.place_fn.place(&request);
        let (priority, tenant) = (
            place.priority,
            place.tenant.as_ref().map(|t| t.name().clone()),
        );
        let limits = if <U as UsageFn<S::Response>>::REPORTS_REFUSALS {
            &self.refusing
        } else {
            &self.limits
        };
        // The service that `poll_ready` readied goes with this request; the
        // clone left behind is readied by the next `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(
            (key, cost, place),
            inner,
            request,
            self.store.clone(),
            limits.clone(),
            self.usage_fn.clone(),
            (priority, tenant),
        )
    }
}

impl<S: fmt::Debug, K, C, St: fmt::Debug, U, P> fmt::Debug for SlidingWindow<S, K, C, St, U, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingWindow")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .field("key_fn", &std::any::type_name::<K>())
            .field("cost_fn", &std::any::type_name::<C>())
            .field("store", &self.store)
            .field("usage_fn", &std::any::type_name::<U>())
            .field("place_fn", &std::any::type_name::<P>())
            .finish()
    }
}
