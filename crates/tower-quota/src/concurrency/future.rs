use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::events;
use super::{Lease, LeasedBody};
use crate::BoxError;

pin_project! {
    /// Response future of [`Concurrency`](super::Concurrency): waits for a
    /// slot, then calls the inner service; the response body holds the
    /// slot.
    pub struct ResponseFuture<A, S, Request>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<A, S, Request>,
        max_in_flight: u32,
        // Held while the request is in flight; dropped with the future.
        lease: Option<Lease>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<A, S, Request>
    where
        S: Service<Request>,
    {
        Acquiring {
            #[pin]
            acquire: A,
            call: Option<(S, Request)>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<A, S, Request> ResponseFuture<A, S, Request>
where
    S: Service<Request>,
{
    pub(super) fn new(acquire: A, inner: S, request: Request, max_in_flight: u32) -> Self {
        ResponseFuture {
            state: State::Acquiring {
                acquire,
                call: Some((inner, request)),
            },
            max_in_flight,
            lease: None,
        }
    }
}

impl<A, S, Request, B> Future for ResponseFuture<A, S, Request>
where
    A: Future<Output = Result<Lease, BoxError>>,
    S: Service<Request, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Output = Result<http::Response<LeasedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Acquiring { acquire, call } => {
                    let lease = match ready!(acquire.poll(cx)) {
                        Ok(lease) => lease,
                        Err(error) => {
                            events::refused(&error);
                            return Poll::Ready(Err(error));
                        }
                    };
                    events::acquired(&lease, *this.max_in_flight);
                    let Some((mut inner, request)) = call.take() else {
                        // `call` is taken only on this transition, right before
                        // the state changes to `Calling`.
                        unreachable!("concurrency request admitted twice");
                    };
                    let future = inner.call(request);
                    *this.lease = Some(lease);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    let lease = this.lease.take();
                    let response = result.map_err(Into::into)?;
                    let Some(lease) = lease else {
                        // Set on the transition to `Calling`.
                        unreachable!("concurrency request answered twice");
                    };
                    return Poll::Ready(Ok(response.map(|body| LeasedBody::new(body, lease))));
                }
            }
        }
    }
}

impl<A, S, Request> fmt::Debug for ResponseFuture<A, S, Request>
where
    S: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("max_in_flight", &self.max_in_flight)
            .field("holds_slot", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}
