use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{ConnectionInfo, NewConnection};

/// Marks the first response of each tracked connection with
/// [`NewConnection`]; see the [module docs](super).
#[derive(Debug, Clone, Copy, Default)]
pub struct MarkNewConnectionLayer;

impl MarkNewConnectionLayer {
    /// The layer.
    pub fn new() -> Self {
        MarkNewConnectionLayer
    }
}

impl<S> Layer<S> for MarkNewConnectionLayer {
    type Service = MarkNewConnection<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MarkNewConnection { inner }
    }
}

/// Marks the first response of each tracked connection with
/// [`NewConnection`]; made by [`MarkNewConnectionLayer`].
#[derive(Debug, Clone)]
pub struct MarkNewConnection<S> {
    inner: S,
}

impl<S> MarkNewConnection<S> {
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

impl<S, Request, B> Service<Request> for MarkNewConnection<S>
where
    S: Service<Request, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = MarkNewConnectionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        MarkNewConnectionFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`MarkNewConnection`].
    #[derive(Debug)]
    pub struct MarkNewConnectionFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for MarkNewConnectionFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = std::task::ready!(self.project().inner.poll(cx))?;
        let new = response
            .extensions()
            .get::<ConnectionInfo>()
            .filter(|info| info.take_first())
            .map(|info| NewConnection {
                setup: info.setup(),
            });
        if let Some(new) = new {
            response.extensions_mut().insert(new);
        }
        Poll::Ready(Ok(response))
    }
}
