//! The layer built from a configuration, and the service that routes each
//! request to its provider's stack.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::ServiceBuilder;
use tower::util::{BoxCloneSyncService, Oneshot, ServiceExt};
use tower_layer::Layer;
use tower_service::Service;

use super::UnknownHosts;
use super::build::{BuiltProvider, Routes};
use super::key::request_authority;
use crate::replay::ReplayBody;
use crate::sliding_window::{MemoryStore, Store};
use crate::{BoxError, CostFn, UnitCost};

/// The body the inner service receives: wrapped once by the retry layer and
/// once by the retry-after layer, so that both can re-send it.
pub type RoutedBody<B> = ReplayBody<ReplayBody<B>>;

/// One provider's stack, boxed so that stacks of different types share a
/// table.
type Stack<B, ResBody> = BoxCloneSyncService<Request<B>, Response<ResBody>, BoxError>;

/// Builds a [`ProviderRouter`] around an inner service; made by
/// [`ProvidersConfig::layer`](super::ProvidersConfig::layer).
///
/// Every router this layer makes (and every clone of them) shares the
/// providers' quotas, gates and retry budgets. `B` is the request body type
/// of the callers.
pub struct ProvidersLayer<B, St = MemoryStore, C = UnitCost> {
    providers: Arc<[BuiltProvider<St, C>]>,
    routes: Arc<Routes>,
    unknown_hosts: UnknownHosts,
    _body: PhantomData<fn(B)>,
}

impl<B, St, C> ProvidersLayer<B, St, C> {
    pub(super) fn new(
        providers: Vec<BuiltProvider<St, C>>,
        routes: Routes,
        unknown_hosts: UnknownHosts,
    ) -> Self {
        ProvidersLayer {
            providers: providers.into(),
            routes: Arc::new(routes),
            unknown_hosts,
            _body: PhantomData,
        }
    }

    /// Chooses what each request costs in every provider's quotas (tokens,
    /// bytes, points); 1 by default. Quotas marked `per_request` still
    /// spend 1. The function sees the request as the inner service will,
    /// with its [`RoutedBody`].
    pub fn cost_fn<C2: Clone>(self, cost_fn: C2) -> ProvidersLayer<B, St, C2>
    where
        St: Clone,
        C: Clone,
    {
        let providers = self
            .providers
            .iter()
            .map(|provider| BuiltProvider {
                name: provider.name.clone(),
                backoff: provider.backoff.clone(),
                retry_after: provider.retry_after.clone(),
                pacing: provider.pacing.clone().cost_fn(cost_fn.clone()),
            })
            .collect();
        ProvidersLayer {
            providers,
            routes: self.routes,
            unknown_hosts: self.unknown_hosts,
            _body: PhantomData,
        }
    }

    /// The names of the providers, in the order of the configuration.
    pub fn provider_names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|provider| &*provider.name)
    }
}

impl<B, St, C> Clone for ProvidersLayer<B, St, C> {
    fn clone(&self) -> Self {
        ProvidersLayer {
            providers: self.providers.clone(),
            routes: self.routes.clone(),
            unknown_hosts: self.unknown_hosts,
            _body: PhantomData,
        }
    }
}

impl<B, St, C> fmt::Debug for ProvidersLayer<B, St, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidersLayer")
            .field("providers", &self.provider_names().collect::<Vec<_>>())
            .field("routes", &self.routes)
            .field("unknown_hosts", &self.unknown_hosts)
            .finish()
    }
}

fn boxed<E: Into<BoxError>>(error: E) -> BoxError {
    error.into()
}

/// A request to a host no provider lists goes on unlimited, with the body
/// type the inner service expects.
fn pass_through<B>(request: Request<B>) -> Request<RoutedBody<B>> {
    request.map(|body| ReplayBody::once(ReplayBody::once(body)))
}

impl<S, B, ResBody, St, C> Layer<S> for ProvidersLayer<B, St, C>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
    St: Store,
    C: CostFn<Request<RoutedBody<B>>> + Clone + Send + Sync + 'static,
{
    type Service = ProviderRouter<B, ResBody>;

    fn layer(&self, inner: S) -> Self::Service {
        let stacks = self
            .providers
            .iter()
            .map(|provider| {
                let stack = ServiceBuilder::new()
                    .layer(provider.backoff.clone())
                    .layer(provider.retry_after.clone())
                    .layer(provider.pacing.clone())
                    .service(inner.clone());
                Stack::new(stack)
            })
            .collect();
        let fallback = match self.unknown_hosts {
            UnknownHosts::PassThrough => Some(Stack::new(
                inner
                    .map_request(pass_through::<B> as fn(_) -> _)
                    .map_err(boxed::<S::Error> as fn(_) -> _),
            )),
            UnknownHosts::Reject => None,
        };
        ProviderRouter {
            stacks,
            fallback,
            routes: self.routes.clone(),
        }
    }
}

/// Sends each request through the stack of the provider that lists its
/// host: [`JitterBackoff`](crate::JitterBackoff) →
/// [`RetryAfter`](crate::RetryAfter) → [`SlidingWindow`](crate::SlidingWindow)
/// → the inner service. Made by [`ProvidersLayer`].
///
/// The host is the request URI's, or else its `Host` header's (a request
/// with a relative URI, as a proxy receives it). An entry with a port
/// (`127.0.0.1:8080`) matches requests naming that port; an entry without
/// one matches every port.
///
/// # Readiness and boxing
///
/// `poll_ready` is always ready: which stack a request needs is known only
/// in `call`, so the chosen stack is cloned and driven to readiness inside
/// the response future (as axum's router does), which keeps the inner
/// service's backpressure. Stacks of different providers have different
/// types, so each is a [`BoxCloneSyncService`]: a request costs the clone of
/// its boxed stack and its boxed future, two small allocations made only
/// when the router is used. The layers inside keep their unboxed futures.
pub struct ProviderRouter<B, ResBody> {
    stacks: Arc<[Stack<B, ResBody>]>,
    fallback: Option<Stack<B, ResBody>>,
    routes: Arc<Routes>,
}

impl<B, ResBody> ProviderRouter<B, ResBody> {
    /// The stack for `request`, or `Err` with the host no provider lists.
    fn route(&self, request: &Request<B>) -> Result<&Stack<B, ResBody>, UnknownHost> {
        let Some((host, port)) = request_authority(request) else {
            return self.fallback.as_ref().ok_or(UnknownHost { host: None });
        };
        let host = if host.bytes().any(|byte| byte.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            host
        };
        let with_port = match port {
            Some(port) if self.routes.has_ports => {
                self.routes.by_host.get(&format!("{host}:{port}"))
            }
            _ => None,
        };
        match with_port.or_else(|| self.routes.by_host.get(host.as_ref())) {
            Some(&index) => Ok(&self.stacks[index]),
            None => self.fallback.as_ref().ok_or_else(|| UnknownHost {
                host: Some(host.into_owned()),
            }),
        }
    }
}

impl<B, ResBody> Clone for ProviderRouter<B, ResBody> {
    fn clone(&self) -> Self {
        ProviderRouter {
            stacks: self.stacks.clone(),
            fallback: self.fallback.clone(),
            routes: self.routes.clone(),
        }
    }
}

impl<B, ResBody> fmt::Debug for ProviderRouter<B, ResBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderRouter")
            .field("routes", &self.routes)
            .field("pass_through", &self.fallback.is_some())
            .finish()
    }
}

impl<B, ResBody> Service<Request<B>> for ProviderRouter<B, ResBody> {
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = RouterFuture<B, ResBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.route(&request) {
            Ok(stack) => RouterFuture {
                state: State::Routed {
                    future: stack.clone().oneshot(request),
                },
            },
            Err(unknown) => RouterFuture {
                state: State::Rejected {
                    error: Some(unknown),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`ProviderRouter`].
    pub struct RouterFuture<B, ResBody> {
        #[pin]
        state: State<B, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, ResBody> {
        Routed {
            #[pin]
            future: Oneshot<Stack<B, ResBody>, Request<B>>,
        },
        Rejected {
            error: Option<UnknownHost>,
        },
    }
}

impl<B, ResBody> Future for RouterFuture<B, ResBody> {
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Routed { future } => future.poll(cx),
            StateProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(error) => error.into(),
                None => "config::RouterFuture polled after completion".into(),
            })),
        }
    }
}

impl<B, ResBody> fmt::Debug for RouterFuture<B, ResBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterFuture").finish_non_exhaustive()
    }
}

/// A request was refused, unsent: no provider lists its host and the
/// configuration says `unknown_hosts = "reject"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownHost {
    host: Option<String>,
}

impl UnknownHost {
    /// The host of the request, lower-cased; `None` when it named none.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
}

impl fmt::Display for UnknownHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(host) => write!(f, "no provider is configured for host `{host}`"),
            None => f.write_str("the request names no host, so no provider can be chosen"),
        }
    }
}

impl std::error::Error for UnknownHost {}
