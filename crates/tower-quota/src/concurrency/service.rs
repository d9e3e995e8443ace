use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use tower_service::Service;

use super::{LeaseStore, LeasedBody, MemoryLeases, ResponseFuture};
use crate::{BoxError, GlobalKey, KeyFn};

/// Holds each key to at most `max_in_flight` requests in flight; made by
/// [`ConcurrencyLayer`](super::ConcurrencyLayer).
///
/// `poll_ready` is the inner service's own. The wait for a slot happens
/// inside the response future, because the key of a request is known only
/// in `call`: the readied inner service is moved into the future and called
/// once the slot is taken.
#[derive(Clone)]
pub struct Concurrency<S, K = GlobalKey, St = MemoryLeases> {
    inner: S,
    max_in_flight: u32,
    max_wait: Option<Duration>,
    key_fn: K,
    store: St,
}

impl<S, K, St> Concurrency<S, K, St> {
    pub(super) fn from_parts(
        inner: S,
        max_in_flight: u32,
        max_wait: Option<Duration>,
        key_fn: K,
        store: St,
    ) -> Self {
        Concurrency {
            inner,
            max_in_flight,
            max_wait,
            key_fn,
            store,
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

    /// The store the slots are counted in.
    pub fn store(&self) -> &St {
        &self.store
    }
}

impl<S, Request, K, St, B> Service<Request> for Concurrency<S, K, St>
where
    S: Service<Request, Response = http::Response<B>> + Clone,
    S::Error: Into<BoxError>,
    K: KeyFn<Request>,
    St: LeaseStore,
    B: Body,
{
    type Response = http::Response<LeasedBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<St::Acquire, S, Request>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let key = self.key_fn.key(&request);
        let acquire = self.store.acquire(key, self.max_in_flight, self.max_wait);
        // The service that `poll_ready` readied goes with this request; the
        // clone left behind is readied by the next `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(acquire, inner, request, self.max_in_flight)
    }
}

impl<S: fmt::Debug, K, St: fmt::Debug> fmt::Debug for Concurrency<S, K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Concurrency")
            .field("inner", &self.inner)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_wait", &self.max_wait)
            .field("key_fn", &std::any::type_name::<K>())
            .field("store", &self.store)
            .finish()
    }
}
