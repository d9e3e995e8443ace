use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Admission, Overloaded};
use crate::BoxError;
use crate::telemetry;

pin_project! {
    /// Response future of [`SlidingWindow`](super::SlidingWindow): waits for
    /// admission, then calls the inner service.
    pub struct ResponseFuture<A, S, Request>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<A, S, Request>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<A, S, Request>
    where
        S: Service<Request>,
    {
        Admitting {
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
    pub(crate) fn new(acquire: A, inner: S, request: Request) -> Self {
        ResponseFuture {
            state: State::Admitting {
                acquire,
                call: Some((inner, request)),
            },
        }
    }
}

impl<A, S, Request> Future for ResponseFuture<A, S, Request>
where
    A: Future<Output = Result<Admission, BoxError>>,
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting { acquire, call } => {
                    let admission = match std::task::ready!(acquire.poll(cx)) {
                        Ok(admission) => admission,
                        Err(error) => {
                            if let Some(overloaded) = error.downcast_ref::<Overloaded>() {
                                tracing::warn!(
                                    name: telemetry::RATE_LIMIT_QUEUE_OVERLOADED,
                                    target: telemetry::TARGET,
                                    key = %overloaded.key(),
                                    wait_ms = overloaded.wait().as_millis() as u64,
                                    queued = overloaded.queued() as u64,
                                    reason = ?overloaded.reason(),
                                    "request refused: its quota is overloaded"
                                );
                            }
                            return Poll::Ready(Err(error));
                        }
                    };
                    if !admission.waited().is_zero() || admission.queued() > 0 {
                        tracing::debug!(
                            name: telemetry::RATE_PACING_ACTIVE,
                            target: telemetry::TARGET,
                            key = %admission.key(),
                            wait_ms = admission.waited().as_millis() as u64,
                            queued = admission.queued() as u64,
                            cost = admission.cost(),
                            quota = admission.limited_by().map(tracing::field::display),
                            "request waited for room in its sliding window"
                        );
                    }
                    let Some((mut inner, request)) = call.take() else {
                        // `call` is taken only on this transition, right before
                        // the state changes to `Calling`.
                        unreachable!("sliding window request admitted twice");
                    };
                    let future = inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
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
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
