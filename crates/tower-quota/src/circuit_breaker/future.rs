use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::CircuitOpen;
use super::events;
use super::service::Shared;
use crate::classify::{self, Classify};
use crate::{BoxError, Key};

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, Cl> {
        #[pin]
        state: State<F, Cl>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Cl> {
        Rejected {
            error: Option<CircuitOpen>,
        },
        Called {
            #[pin]
            future: F,
            outcome: Option<Outcome>,
            classifier: Cl,
        },
    }
}

impl<F, Cl> ResponseFuture<F, Cl> {
    #[inline]
    pub(super) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
        }
    }

    #[inline]
    pub(super) fn called(future: F, outcome: Outcome, classifier: Cl) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                outcome: Some(outcome),
                classifier,
            },
        }
    }
}

impl<F, Cl, Response, Error> Future for ResponseFuture<F, Cl>
where
    F: Future<Output = Result<Response, Error>>,
    Error: Into<BoxError>,
    Cl: Classify<Response>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { error } => Poll::Ready(Err(match error.take() {
                Some(error) => {
                    events::refused(error.key());
                    error.into()
                }
                None => "circuit_breaker::ResponseFuture polled after completion".into(),
            })),
            StateProj::Called {
                future,
                outcome,
                classifier,
            } => {
                let since = crate::time::mark();
                let result = ready!(future.poll(cx)).map_err(Into::into);
                if let Some(outcome) = outcome.take() {
                    let failed = match classifier.classify(result.as_ref()) {
                        // A permanent failure (a 404, a bad request) says the
                        // provider answered: it is not a sign of degradation.
                        classify::Outcome::Success | classify::Outcome::Permanent => Some(false),
                        classify::Outcome::Transient => Some(true),
                        classify::Outcome::Throttled(_) => {
                            outcome.shared.config.count_throttled.then_some(true)
                        }
                    };
                    outcome.finish(failed, crate::time::answer_since(since));
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<F, Cl> fmt::Debug for ResponseFuture<F, Cl> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A call the breaker let through, whose outcome it waits for; dropped
/// unfinished (a cancelled call), it counts for nothing and gives back its
/// probe if its half-open period is still the breaker's.
pub(super) struct Outcome {
    shared: Arc<Shared>,
    key: Key,
    /// The breaker's period the call was admitted in.
    generation: u64,
    done: bool,
}

impl Outcome {
    pub(super) fn new(shared: Arc<Shared>, key: Key, generation: u64) -> Self {
        Outcome {
            shared,
            key,
            generation,
            done: false,
        }
    }

    /// Records the call's outcome, answered at `now`.
    fn finish(mut self, failed: Option<bool>, now: Instant) {
        self.done = true;
        let transition = self.shared.breakers.record(
            &self.key,
            &self.shared.config,
            self.generation,
            failed,
            now,
        );
        if let Some(transition) = transition {
            events::transition(&self.key, transition);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.done {
            self.shared.breakers.record(
                &self.key,
                &self.shared.config,
                self.generation,
                None,
                Instant::now(),
            );
        }
    }
}
