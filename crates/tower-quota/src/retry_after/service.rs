use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::ResponseFuture;
use super::gate::Gates;
use super::layer::Config;
use crate::classify::is_idempotent;
use crate::replay::{ReplayBody, replayable_or_once};
use crate::{BoxError, HostKey, KeyFn};

/// Obeys `Retry-After` and rate-limit headers; made by
/// [`RetryAfterLayer`](super::RetryAfterLayer).
///
/// The inner service receives requests whose body is a [`ReplayBody`], so
/// that a throttled request can be re-sent with the same bytes.
#[derive(Clone)]
pub struct RetryAfter<S, K = HostKey> {
    inner: S,
    shared: Arc<Shared>,
    key_fn: K,
}

/// The layer's configuration and gates, behind one pointer: every clone of
/// the service and every response future holds them with one reference
/// count, which the threads that share a service write at every request.
/// Aligned to 128 bytes, so that the `Arc`'s counts are on cache lines of
/// their own, apart from what every request reads (as for the pacing's).
#[repr(align(128))]
pub(super) struct Shared {
    pub(super) config: Arc<Config>,
    pub(super) gates: Gates,
}

impl<S, K> RetryAfter<S, K> {
    pub(super) fn from_parts(inner: S, config: Arc<Config>, gates: Gates, key_fn: K) -> Self {
        RetryAfter {
            inner,
            shared: Arc::new(Shared { config, gates }),
            key_fn,
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
}

impl<S> RetryAfter<S> {
    /// Wraps `inner` with the default settings of
    /// [`RetryAfterLayer::new`](super::RetryAfterLayer::new).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&super::RetryAfterLayer::new(), inner)
    }

    /// A layer with the default settings; same as
    /// [`RetryAfterLayer::new`](super::RetryAfterLayer::new).
    pub fn layer() -> super::RetryAfterLayer {
        super::RetryAfterLayer::new()
    }
}

impl<S, K, B, ResBody> Service<Request<B>> for RetryAfter<S, K>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    K: KeyFn<Request<B>>,
    B: Body<Data = Bytes>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = self.key_fn.key(&request);
        let config = &self.shared.config;
        let idempotent = config.resend_all_methods || is_idempotent(&request);
        let budgets = super::future::budgets_of(&request, config);
        // The readied service goes with the first attempt; the clone left
        // behind is readied by the next `poll_ready`.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(
            inner,
            replayable_or_once(request, config.max_replay_bytes),
            key,
            idempotent,
            (self.shared.clone(), budgets),
        )
    }
}

impl<S: fmt::Debug, K> fmt::Debug for RetryAfter<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryAfter")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .field("gates", &self.shared.gates)
            .field("key_fn", &std::any::type_name::<K>())
            .finish()
    }
}
