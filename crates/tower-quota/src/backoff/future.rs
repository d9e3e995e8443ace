use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;

use crate::attempts::Attempt;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::policy::Policy;
use crate::classify::Classify;
use crate::replay::{ReplayBody, clone_request};
use crate::{BoxError, telemetry};

pin_project! {
    /// Response future of [`JitterBackoff`](super::JitterBackoff).
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future>,
        // Readied before each retry; the first attempt went to the service
        // that `poll_ready` readied.
        service: S,
        // Kept for retries; `None` when the request may not be retried.
        request: Option<Request<ReplayBody<B>>>,
        policy: Policy<C>,
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Waiting {
            #[pin]
            sleep: Sleep,
        },
        Readying,
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
{
    #[inline]
    pub(super) fn new(
        future: S::Future,
        service: S,
        request: Option<Request<ReplayBody<B>>>,
        policy: Policy<C>,
        span: tracing::Span,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            service,
            request,
            policy,
            span,
        }
    }
}

impl<S, B, C, ResBody> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    C: Classify<Response<ResBody>>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    // The logical request starts at its first poll, at the
                    // clock a layer below read in it (the pacing's
                    // admission, an answer), or else read here.
                    let since = this.policy.unstarted().then(crate::time::mark);
                    let polled = future.poll(cx);
                    if let Some(since) = since {
                        let at = crate::time::read_since(since).unwrap_or_else(Instant::now);
                        this.policy.start(at);
                    }
                    let result = ready!(polled).map_err(Into::into);
                    match this.policy.decide(this.request.as_mut(), &result) {
                        Some(wait) => this.state.set(State::Waiting {
                            sleep: tokio::time::sleep(wait),
                        }),
                        None => {
                            record_resends(this.span, this.policy.attempts());
                            return Poll::Ready(result);
                        }
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        record_resends(this.span, this.policy.attempts());
                        return Poll::Ready(Err(error.into()));
                    }
                    let Some(request) = this.request.as_ref().map(clone_request) else {
                        // A retry is decided only while the request is kept.
                        unreachable!("jitter_backoff retry without a kept request");
                    };
                    if let Some(attempt) = request.extensions().get::<Attempt>() {
                        crate::attempts::sending(attempt.0);
                    }
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

fn record_resends(span: &tracing::Span, attempts: u32) {
    crate::metrics::resends(attempts.saturating_sub(1));
    span.record(
        telemetry::field::HTTP_REQUEST_RESEND_COUNT,
        attempts.saturating_sub(1),
    );
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.policy.attempts())
            .finish_non_exhaustive()
    }
}
