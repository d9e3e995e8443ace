use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::events;
use super::service::Shared;
use super::{Admission, Completion, Limits, Place, Priority, Store};
use crate::{BoxError, Key, NoUsage, UsageFn};

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
        // The store and the limits, with the service's one reference count.
        shared: Arc<Shared<St>>,
        // Whether the store is told of refusals (which limits it reports with).
        refusing: bool,
        usage_fn: U,
        // The request's class, for its admission's telemetry.
        priority: Priority,
    }

    impl<St, S, Request, U> PinnedDrop for ResponseFuture<St, S, Request, U>
    where
        St: Store,
        S: Service<Request>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let StateProj::Calling { in_flight, .. } = this.state.project()
                && let Some(in_flight) = in_flight.take()
            {
                let shared = &**this.shared;
                in_flight.end(&shared.store, shared.limits(*this.refusing), Completion::Dropped);
            }
        }
    }
}

/// An admitted request whose answer has not come back.
struct InFlight {
    admission: Admission,
    probe: Probe,
    /// When a request that waited in the queue left it.
    released: Option<Instant>,
}

/// A measurement of how long this task waits to run after a wake-up, when
/// the store asked for one ([`Store::probes_lag`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Off,
    /// To start once the request has been handed on.
    Armed,
    /// The task woke itself at this instant.
    Woken(Instant),
}

impl InFlight {
    /// Called on every poll of the inner future, before its answer is
    /// used: wakes the task once it has handed the request on, and measures
    /// how long the wake-up took to run.
    fn probe<St: Store>(
        &mut self,
        store: &St,
        limits: &Limits,
        pending: bool,
        cx: &mut Context<'_>,
    ) {
        match self.probe {
            Probe::Woken(at) => {
                self.probe = Probe::Off;
                let lag = Instant::now().saturating_duration_since(at);
                store.probed(Some(lag), limits);
            }
            Probe::Armed if pending => {
                self.probe = Probe::Woken(Instant::now());
                cx.waker().wake_by_ref();
            }
            _ => {}
        }
    }

    /// The provider accepted the request: as [`end`](Self::end) with an
    /// answer, the store told of the acceptance first, in one step.
    fn accepted<St: Store>(
        self,
        store: &St,
        limits: &Limits,
        room: &dyn Fn() -> Option<crate::Room>,
    ) -> Admission {
        self.finish(store, limits, |admission| {
            store.accepted_and_answered(admission, room, limits);
        })
    }

    /// The request ended: the store learns how the admission ended.
    fn end<St: Store>(self, store: &St, limits: &Limits, completion: Completion) -> Admission {
        self.finish(store, limits, |admission| {
            store.complete(admission, completion, limits);
        })
    }

    /// Ends the request: a measurement still under way ends without a
    /// result, then `report` tells the store how the admission ended.
    fn finish<St: Store>(
        self,
        store: &St,
        limits: &Limits,
        report: impl FnOnce(&Admission),
    ) -> Admission {
        if self.probe != Probe::Off {
            store.probed(None, limits);
        }
        report(&self.admission);
        self.admission
    }
}

/// The admission of a request: tried on the first poll, then, if the
/// request must wait, the store's future of it, boxed (the future of a
/// request admitted at once stays small, and never builds one).
enum Admit<A> {
    Start(Option<(Key, u64, Place)>),
    Waiting(Pin<Box<A>>),
}

impl<A: Future<Output = Result<Admission, BoxError>>> Admit<A> {
    fn poll<St: Store<Acquire = A>>(
        &mut self,
        store: &St,
        limits: &Limits,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Admission, BoxError>> {
        if let Admit::Start(start) = self {
            let Some((key, cost, place)) = start.take() else {
                // Taken only here, right before the state changes.
                unreachable!("sliding window admission started twice");
            };
            if let Some(decided) = store.try_acquire(&key, cost, limits, &place) {
                return Poll::Ready(decided);
            }
            *self = Admit::Waiting(Box::pin(store.acquire_placed(key, cost, limits, place)));
        }
        match self {
            Admit::Waiting(acquire) => acquire.as_mut().poll(cx),
            // Left just above.
            Admit::Start(_) => unreachable!("sliding window admission not started"),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<A, S, Request>
    where
        S: Service<Request>,
    {
        Admitting {
            acquire: Admit<A>,
            call: Option<(S, Request)>,
            // The request's tenant, for its admission's telemetry.
            tenant: Option<Key>,
        },
        Calling {
            #[pin]
            future: S::Future,
            // The admission while its request is in flight: dropping the
            // future with it tells the store the request was dropped.
            in_flight: Option<InFlight>,
        },
    }
}

impl<St, S, Request, U> ResponseFuture<St, S, Request, U>
where
    St: Store,
    S: Service<Request>,
{
    /// Admits `cost` units of `key` at `place` on the first poll.
    #[inline]
    pub(super) fn new(
        (key, cost, place): (Key, u64, Place),
        inner: S,
        request: Request,
        (shared, refusing): (Arc<Shared<St>>, bool),
        usage_fn: U,
        (priority, tenant): (Priority, Option<Key>),
    ) -> Self {
        ResponseFuture {
            state: State::Admitting {
                acquire: Admit::Start(Some((key, cost, place))),
                call: Some((inner, request)),
                tenant,
            },
            shared,
            refusing,
            usage_fn,
            priority,
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
        let shared = &**this.shared;
        let (store, limits) = (&shared.store, shared.limits(*this.refusing));
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting {
                    acquire,
                    call,
                    tenant,
                } => {
                    let mut admission = match ready!(acquire.poll(store, limits, cx)) {
                        Ok(admission) => admission,
                        Err(error) => {
                            events::refused(&error, *this.priority);
                            return Poll::Ready(Err(error));
                        }
                    };
                    admission.priority = *this.priority;
                    admission.set_tenant(tenant.take());
                    events::admitted(&admission);
                    let Some((mut inner, request)) = call.take() else {
                        // `call` is taken only on this transition, right before
                        // the state changes to `Calling`.
                        unreachable!("sliding window request admitted twice");
                    };
                    let released = (!admission.waited().is_zero()).then(Instant::now);
                    let future = inner.call(request);
                    let probe = if store.probes_lag(&admission) {
                        Probe::Armed
                    } else {
                        Probe::Off
                    };
                    let in_flight = Some(InFlight {
                        admission,
                        probe,
                        released,
                    });
                    this.state.set(State::Calling { future, in_flight });
                }
                StateProj::Calling { future, in_flight } => {
                    let polled = future.poll(cx);
                    if let Some(in_flight) = in_flight.as_mut() {
                        in_flight.probe(store, limits, polled.is_pending(), cx);
                    }
                    let result = ready!(polled);
                    let Some(in_flight) = in_flight.take() else {
                        // Set on the transition to `Calling`.
                        unreachable!("sliding window request answered twice");
                    };
                    // What the provider made of the request, before the
                    // answer frees its place: a key that waits for it
                    // learns from it first.
                    let released = in_flight.released;
                    let admission = match &result {
                        Ok(response) if this.usage_fn.refused(response) => {
                            refused(store, &in_flight.admission, limits);
                            in_flight.end(store, limits, Completion::Answered)
                        }
                        Ok(response) if limits.reports_refusals() => {
                            let usage_fn = &*this.usage_fn;
                            in_flight.accepted(store, limits, &|| usage_fn.room(response))
                        }
                        _ => in_flight.end(store, limits, Completion::Answered),
                    };
                    let mut response = result.map_err(Into::into)?;
                    if let Some(at) = released {
                        this.usage_fn.released(&mut response, at);
                    }
                    if this.usage_fn.resent_below(&response) {
                        events::layer_order();
                    }
                    if let Some(actual) = this.usage_fn.usage(&response) {
                        store.correct(&admission, actual);
                    }
                    let announced = this.usage_fn.announced(&response);
                    if !announced.is_empty() {
                        for change in store.announced(&admission, &announced, limits) {
                            events::quota_mismatch(admission.key(), &change);
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// The provider refused a request the log had room for: its window runs
/// later than ours.
fn refused<St: Store>(store: &St, admission: &Admission, limits: &Limits) {
    let Some((before, margin)) = store.refused(admission, limits) else {
        return;
    };
    events::pacing_drift(admission.key(), before, margin);
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
