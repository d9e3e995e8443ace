use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::breakers::Breakers;
use super::config::Config;
use super::future::Outcome;
use super::state::Admit;
use super::{CircuitOpen, ResponseFuture};
use crate::classify::{Classify, HttpClassifier};
use crate::time::LazyNow;
use crate::{BoxError, HostKey, KeyFn};

/// Fails fast while a provider is failing; made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
#[derive(Clone)]
pub struct CircuitBreaker<S, K = HostKey, Cl = HttpClassifier> {
    inner: S,
    shared: Arc<Shared>,
    key_fn: K,
    classifier: Cl,
}

/// The layer's configuration and breakers, behind one pointer: every clone
/// of the service and every call in flight holds them with one reference
/// count, which the threads that share a service write at every request.
/// Aligned to 128 bytes, so that the `Arc`'s counts are on cache lines of
/// their own, apart from what every request reads (as for the pacing's).
#[repr(align(128))]
pub(super) struct Shared {
    pub(super) config: Arc<Config>,
    pub(super) breakers: Breakers,
}

impl<S, K, Cl> CircuitBreaker<S, K, Cl> {
    pub(super) fn from_parts(
        inner: S,
        config: Arc<Config>,
        breakers: Breakers,
        key_fn: K,
        classifier: Cl,
    ) -> Self {
        CircuitBreaker {
            inner,
            shared: Arc::new(Shared { config, breakers }),
            key_fn,
            classifier,
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

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` with the defaults of
    /// [`CircuitBreakerLayer::new`](super::CircuitBreakerLayer::new).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&super::CircuitBreakerLayer::new(), inner)
    }

    /// A layer with the defaults; same as
    /// [`CircuitBreakerLayer::new`](super::CircuitBreakerLayer::new).
    pub fn layer() -> super::CircuitBreakerLayer {
        super::CircuitBreakerLayer::new()
    }
}

impl<S, Request, K, Cl> Service<Request> for CircuitBreaker<S, K, Cl>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    K: KeyFn<Request>,
    Cl: Classify<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, Cl>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        let key = self.key_fn.key(&request);
        let Shared { config, breakers } = &*self.shared;
        match breakers.admit(&key, config, &LazyNow::default()) {
            // The readied inner service stays readied for the next call.
            Admit::Reject { retry_in, state } => ResponseFuture::rejected(CircuitOpen {
                key,
                retry_in,
                state,
            }),
            Admit::Go {
                generation,
                transition,
            } => {
                if let Some(transition) = transition {
                    super::events::transition(&key, transition);
                }
                let future = self.inner.call(request);
                ResponseFuture::called(
                    future,
                    Outcome::new(self.shared.clone(), key, generation),
                    self.classifier.clone(),
                )
            }
        }
    }
}

impl<S: fmt::Debug, K, Cl> fmt::Debug for CircuitBreaker<S, K, Cl> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .field("breakers", &self.shared.breakers)
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<Cl>())
            .finish()
    }
}
