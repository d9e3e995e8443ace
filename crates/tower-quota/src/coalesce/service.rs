use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tower_service::Service;

use super::flights::{FlightKey, Flights, Joined, Outcome, Snapshot};
use super::{CoalesceError, ResponseFuture, events};
use crate::{BoxError, GlobalKey, KeyFn};

/// Shares one upstream call among identical requests in flight at once;
/// made by [`CoalesceLayer`](super::CoalesceLayer).
///
/// `poll_ready` is the inner service's own. A request that joins a call
/// in flight leaves the inner service's readiness unused, for the next
/// request.
pub struct Coalesce<S, K = GlobalKey> {
    pub(super) inner: S,
    pub(super) key_fn: K,
    pub(super) methods: Vec<http::Method>,
    pub(super) max_body_bytes: usize,
    pub(super) flights: Arc<Flights>,
}

impl<S, K> Coalesce<S, K> {
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

    /// Distinct calls in flight now, shared by every clone.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }
}

impl<S, K, B, RB> Service<http::Request<B>> for Coalesce<S, K>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: http_body::Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
    K: KeyFn<http::Request<B>>,
{
    type Response = http::Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !self.methods.contains(request.method()) {
            return self.alone(request);
        }
        let key = FlightKey {
            method: request.method().clone(),
            uri: request.uri().to_string(),
            key: self.key_fn.key(&request),
        };
        let flights = Arc::clone(&self.flights);
        let mut request = Some(request);
        let max_body_bytes = self.max_body_bytes;
        let joined = flights.join(&key, |id| {
            let request = request
                .take()
                .expect("join starts a call at most once, with the request not yet taken");
            let call = self.inner.call(request);
            let flights = Arc::clone(&self.flights);
            let key = key.clone();
            tokio::spawn(async move {
                let outcome = fetch(call, max_body_bytes).await;
                flights.complete(&key, id, outcome);
            })
            .abort_handle()
        });
        match joined {
            Joined::Follower(answer, id) => {
                if let Some(request) = &request {
                    events::coalesced(request.method(), request.uri().path());
                }
                ResponseFuture::registered(answer, flights, key, id)
            }
            Joined::Leader(answer, id) => ResponseFuture::registered(answer, flights, key, id),
            Joined::Alone => match request.take() {
                Some(request) => self.alone(request),
                // `join` takes the request only for a leader.
                None => ResponseFuture::failed(),
            },
        }
    }
}

impl<S, K> Coalesce<S, K> {
    /// Sends `request` on its own call.
    fn alone<B, RB>(&mut self, request: http::Request<B>) -> ResponseFuture
    where
        S: Service<http::Request<B>, Response = http::Response<RB>>,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        RB: http_body::Body + Send + 'static,
        RB::Data: Send,
        RB::Error: Into<BoxError>,
    {
        let call = self.inner.call(request);
        let (sender, answer) = tokio::sync::oneshot::channel();
        let max_body_bytes = self.max_body_bytes;
        let task = tokio::spawn(async move {
            // A caller that left wants nothing.
            let _ = sender.send(fetch(call, max_body_bytes).await);
        });
        ResponseFuture::alone(answer, task.abort_handle())
    }
}

/// The response of `call`, its body read to the end once.
async fn fetch<F, RB, E>(call: F, max_body_bytes: usize) -> Outcome
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
    E: Into<BoxError>,
    RB: http_body::Body,
    RB::Error: Into<BoxError>,
{
    let response = call
        .await
        .map_err(|error| CoalesceError::Upstream(Arc::from(error.into())))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_body_bytes)
        .collect()
        .await
        .map_err(|error| CoalesceError::Body(Arc::from(error)))?
        .to_bytes();
    Ok(Arc::new(Snapshot {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        extensions: parts.extensions,
        body,
    }))
}

impl<S: Clone, K: Clone> Clone for Coalesce<S, K> {
    fn clone(&self) -> Self {
        Coalesce {
            inner: self.inner.clone(),
            key_fn: self.key_fn.clone(),
            methods: self.methods.clone(),
            max_body_bytes: self.max_body_bytes,
            flights: Arc::clone(&self.flights),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Coalesce<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .field("key_fn", &std::any::type_name::<K>())
            .field("methods", &self.methods)
            .field("flights", &self.flights)
            .finish()
    }
}
