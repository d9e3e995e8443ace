use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Admission, Overloaded, Store};
use crate::telemetry;
use crate::{BoxError, NoUsage, UsageFn};

pin_project! {
    /// Response future of [`SlidingWindow`](super::SlidingWindow): waits for
    /// admission, then calls the inner service.
    pub struct ResponseFuture<St, S, Request, U = NoUsage>
    where
        St: Store,
        S: Service<Request>,
    {
        #[pin]
        state: State<St::Acquire, S, Request>,
        // The store and usage function, when responses correct the cost.
        correction: Option<(St, U)>,
        admission: Option<Admission>,
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

impl<St, S, Request, U> ResponseFuture<St, S, Request, U>
where
    St: Store,
    S: Service<Request>,
{
    pub(crate) fn new(
        acquire: St::Acquire,
        inner: S,
        request: Request,
        correction: Option<(St, U)>,
    ) -> Self {
        ResponseFuture {
            state: State::Admitting {
                acquire,
                call: Some((inner, request)),
            },
            correction,
            admission: None,
        }
    }
}

impl<St, S, Request, U> Future for ResponseFuture<St, S, Request, U>
where
    St: Store,
    S: Service<Request>,
    S::Error: Into<BoxError>,
    U: UsageFn<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting { acquire, call } => {
                    let admission = match ready!(acquire.poll(cx)) {
                        Ok(admission) => admission,
                        Err(error) => {
                            crate::metrics::admission_refused(&error);
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
                    crate::metrics::pacing_admitted(admission.key(), admission.waited());
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
                    if this.correction.is_some() {
                        *this.admission = Some(admission);
                    }
                    let future = inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if let (Some((store, usage_fn)), Some(admission)) =
                        (this.correction.as_ref(), this.admission.as_ref())
                        && let Some(actual) = usage_fn.usage(&response)
                    {
                        store.correct(admission, actual);
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<St, S, Request, U> fmt::Debug for ResponseFuture<St, S, Request, U>
where
    St: Store,
    S: Service<Request>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
