use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use pin_project_lite::pin_project;
use rand::Rng;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::events::{self, ThrottleOutcome};
use super::gate::{InFlight, Wait};
use super::layer::Config;
use super::service::Shared;
use super::{GateClosed, GateReason, ServerSignal};
use crate::attempts::{Attempt, AttemptBudget, Budgets, WaitBudget};
use crate::replay::{ReplayBody, clone_request};
use crate::time::LazyNow;
use crate::{BoxError, Key, classify};

pin_project! {
    /// Response future of [`RetryAfter`](super::RetryAfter).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // Whether `service` has been readied for the next call: true for the
        // first attempt, whose service `poll_ready` readied.
        readied: bool,
        request: Option<Request<ReplayBody<B>>>,
        // Whether `request` is a copy kept without the extensions the stack
        // put on the request (see `StackExtensions`), to put back on a re-send.
        bare: Option<StackExtensions>,
        // The attempts the logical request may make, shared by a retry layer
        // above through the request.
        shared_attempts: Option<AttemptBudget>,
        key: Key,
        // Whether the request may be re-sent after a throttle the server may
        // have processed it in (a 503): idempotent, or opted in.
        idempotent: bool,
        shared: Arc<Shared>,
        attempts: u32,
        // The stack-wide number of the attempt in flight: the `Attempt`
        // extension when a retry layer above numbers attempts, else ours.
        attempt_number: u32,
        waited: Duration,
        // The waiting this logical request may still do, shared with the
        // layers above.
        waits: WaitBudget,
        in_flight: Option<InFlight>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Gate {
            #[pin]
            sleep: Option<Sleep>,
            // Fires when a response may have opened the gate early.
            changed: Option<Pin<Box<OwnedNotified>>>,
            // For a wait a refusal holds: the gate's count of early
            // reopenings, which must grow for `changed` to end it.
            reopenings: Option<u32>,
            // When the request began to wait at the gate: the first poll
            // that found it closed, or the refusal it waits out.
            since: Option<Instant>,
        },
        Readying,
        Calling {
            #[pin]
            future: F,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    /// The future of `request`, with the budgets [`budgets_of`] found for it.
    #[inline]
    pub(super) fn new(
        service: S,
        request: Request<ReplayBody<B>>,
        key: Key,
        idempotent: bool,
        (shared, (shared_attempts, waits)): (Arc<Shared>, (Option<AttemptBudget>, WaitBudget)),
    ) -> Self {
        ResponseFuture {
            state: State::Gate {
                sleep: None,
                changed: None,
                reopenings: None,
                since: None,
            },
            service,
            readied: true,
            request: Some(request),
            bare: None,
            shared_attempts,
            key,
            idempotent,
            shared,
            attempts: 0,
            attempt_number: 0,
            waited: Duration::ZERO,
            waits,
            in_flight: None,
        }
    }
}

/// The budgets of a request: the attempts and the waiting a retry layer
/// above shares (on this thread, or in the request), or a budget of
/// waiting of its own; bounded by the layer's `max_wait` and the request's
/// deadline (a gate that reopens after it is not waited for). Found before
/// the request goes into its future, which then takes it as it is made.
pub(super) fn budgets_of<B>(
    request: &Request<B>,
    config: &Config,
) -> (Option<AttemptBudget>, WaitBudget) {
    let above = crate::attempts::take_offered().or_else(|| Budgets::in_extensions(request));
    let (shared_attempts, waits) = match above {
        Some(Budgets::Attempts(attempts)) => {
            let waits = attempts.waits();
            (Some(attempts), waits)
        }
        Some(Budgets::Waits(waits)) => (None, waits),
        None => (None, WaitBudget::unlimited()),
    };
    waits.limit_to(config.max_wait);
    if let Some(deadline) = crate::sliding_window::Deadline::of(request) {
        waits.limit_until(deadline);
    }
    (shared_attempts, waits)
}

/// What the layer did with a throttled response, as telemetry reports it.
/// `safe` says whether the request may be sent again (see
/// [`classify`](crate::classify)); `may_wait` is what it may still wait.
fn throttled_outcome(
    signal: &quota_headers::Signal,
    config: &Config,
    attempts: u32,
    replayable: bool,
    safe: bool,
    may_wait: Duration,
) -> ThrottleOutcome {
    match signal.retry_after {
        _ if signal.do_not_retry => ThrottleOutcome::ServerSaidDoNotRetry,
        None => ThrottleOutcome::NoDelay,
        Some(_) if !safe => ThrottleOutcome::NotIdempotent,
        // The gate closes for `max_pause` at most; then a probe goes.
        Some(delay) if delay.min(config.max_pause) > may_wait => ThrottleOutcome::DelayOverMaxWait,
        Some(_) if attempts >= config.max_attempts => ThrottleOutcome::MaxAttempts,
        Some(_) if !replayable => ThrottleOutcome::BodyNotReplayable,
        Some(_) => ThrottleOutcome::Resend,
    }
}

/// Takes an attempt from the [`AttemptBudget`] a retry layer above shares,
/// numbering the re-sent request; `true` without one.
fn begin_shared_attempt<B>(
    shared: Option<&AttemptBudget>,
    request: &mut Option<Request<B>>,
) -> bool {
    match (shared, request) {
        (Some(budget), Some(request)) => budget.try_begin(request).is_some(),
        _ => true,
    }
}

/// The extensions the stack's own layers put on a request: the shared
/// budgets and the attempt's number. A request that carries nothing else is
/// kept for re-sending without them (a copy of empty extensions allocates
/// nothing) and they are put back on a re-send.
#[derive(Clone, Copy)]
enum StackExtensions {
    /// An [`AttemptBudget`] (with its [`Attempt`], when present), numbered
    /// again by the budget on a re-send.
    Attempts,
    /// A [`WaitBudget`] of its own.
    Waits,
    /// None at all.
    None,
}

impl StackExtensions {
    /// What `request` carries, when it carries nothing else.
    fn of<B>(request: &Request<B>) -> Option<Self> {
        let extensions = request.extensions();
        let (kind, count) = if extensions.get::<AttemptBudget>().is_some() {
            let numbered = extensions.get::<Attempt>().is_some();
            (StackExtensions::Attempts, 1 + usize::from(numbered))
        } else if extensions.get::<WaitBudget>().is_some() {
            (StackExtensions::Waits, 1)
        } else {
            (StackExtensions::None, 0)
        };
        (extensions.len() == count).then_some(kind)
    }

    /// Puts them back on `request`, a copy kept without them whose attempt
    /// [`begin_shared_attempt`] has numbered.
    fn restore<B>(
        self,
        request: &mut Request<B>,
        attempts: Option<&AttemptBudget>,
        waits: &WaitBudget,
    ) {
        match (self, attempts) {
            (StackExtensions::Attempts, Some(attempts)) => {
                request.extensions_mut().insert(attempts.clone());
            }
            (StackExtensions::Waits, _) => {
                request.extensions_mut().insert(waits.clone());
            }
            _ => {}
        }
    }
}

/// A copy of `request` for a later attempt, without its extensions.
fn bare_copy<B: Clone>(request: &Request<B>) -> Request<B> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

fn random_up_to(spread: Duration) -> Duration {
    let nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Shared { config, gates } = &**this.shared;
        loop {
            match this.state.as_mut().project() {
                StateProj::Gate {
                    mut sleep,
                    changed,
                    reopenings,
                    since,
                } => {
                    let mut opened_early = changed
                        .as_mut()
                        .is_some_and(|changed| changed.as_mut().poll(cx).is_ready());
                    if opened_early && let Some(count) = *reopenings {
                        // A wait a refusal holds ends early only when the
                        // provider accepted a request sent after it.
                        if let Err(notified) = gates.reopened_since(this.key, count) {
                            *changed = Some(notified);
                            // Registers the waker; a change since, look again.
                            if changed
                                .as_mut()
                                .is_some_and(|changed| changed.as_mut().poll(cx).is_ready())
                            {
                                continue;
                            }
                            opened_early = false;
                        }
                    }
                    if !opened_early && let Some(timer) = sleep.as_mut().as_pin_mut() {
                        ready!(timer.poll(cx));
                    }
                    *changed = None;
                    *reopenings = None;
                    // Read only if the gate's state or a wait needs it: an
                    // open gate that knows nothing of the quota lets the
                    // request go without reading the clock.
                    let lazy = LazyNow::default();
                    let waited = since.map_or(Duration::ZERO, |since| {
                        lazy.get().saturating_duration_since(since)
                    });
                    match gates.admit(this.key, &lazy, config) {
                        Ok(in_flight) => {
                            events::gate_passed(this.key, waited);
                            *this.waited = this.waited.saturating_add(waited);
                            this.waits.spend(waited);
                            *this.in_flight = Some(in_flight);
                            this.state.set(State::Readying);
                        }
                        Err(Wait {
                            until,
                            reason,
                            changed: notified,
                            reopenings: count,
                        }) => {
                            // It waits from its first poll that found the
                            // gate closed.
                            let now = lazy.get();
                            since.get_or_insert(now);
                            let wait = until.saturating_duration_since(now);
                            // What this request may still wait, this wait
                            // included (read only when it must wait: the
                            // budget's deadline is behind a lock).
                            let left = this.waits.remaining().saturating_sub(waited);
                            // A probe's answer, or room in a ramp, may come
                            // any moment: wait for it as long as the budget
                            // allows. A pause the server asked for is known
                            // to be too long.
                            let answer_awaited =
                                matches!(reason, GateReason::Probing | GateReason::Ramping);
                            let give_up = wait > left && (!answer_awaited || left.is_zero());
                            if give_up {
                                *this.waited = this.waited.saturating_add(waited);
                                this.waits.spend(waited);
                                events::gate_refused(this.key);
                                return Poll::Ready(Err(GateClosed {
                                    key: this.key.clone(),
                                    wait,
                                    reason,
                                }
                                .into()));
                            }
                            // Waiters leave spread out, not in one instant,
                            // and never past what they may wait.
                            let latest = now.checked_add(left).unwrap_or(until);
                            let at = until
                                .checked_add(random_up_to(config.spread))
                                .unwrap_or(until)
                                .min(latest);
                            sleep.set(Some(tokio::time::sleep_until(at)));
                            // A server-given pause is waited out, spread,
                            // unless the provider accepts a request sent
                            // after its refusal; a spent or unknown quota
                            // opens as soon as a response reports room.
                            *changed = Some(notified);
                            *reopenings = (reason == GateReason::Throttled).then_some(count);
                        }
                    }
                }
                StateProj::Readying => {
                    if !*this.readied
                        && let Err(error) = ready!(this.service.poll_ready(cx))
                    {
                        *this.in_flight = None;
                        return Poll::Ready(Err(error.into()));
                    }
                    *this.readied = false;
                    let may_resend = *this.attempts + 1 < config.max_attempts
                        && this
                            .request
                            .as_ref()
                            .is_some_and(|r| r.body().is_replayable());
                    // The request is kept in place, and only what is sent
                    // moves out of the future.
                    let request = match this.request.as_ref() {
                        Some(request) if may_resend && *this.attempts == 0 => {
                            // The first attempt goes as it came: a copy is
                            // kept, bare when the stack's extensions are all
                            // it carries. With no extensions at all, or some
                            // a copy takes whole, the copy (a plain clone,
                            // which copies no empty extensions) and the
                            // request are alike: the copy goes, and the
                            // request stays where it is.
                            *this.bare = StackExtensions::of(request);
                            match this.bare {
                                Some(StackExtensions::None) | None => clone_request(request),
                                Some(_) => {
                                    let kept = bare_copy(request);
                                    this.request.replace(kept).unwrap_or_else(|| {
                                        unreachable!("retry_after request kept, then gone")
                                    })
                                }
                            }
                        }
                        Some(request) if may_resend => clone_request(request),
                        _ => this.request.take().unwrap_or_else(|| {
                            // A new attempt is started only while the request is kept.
                            unreachable!("retry_after attempt started without a request")
                        }),
                    };
                    *this.attempts += 1;
                    *this.attempt_number = request
                        .extensions()
                        .get::<Attempt>()
                        .map_or(*this.attempts, |attempt| attempt.0);
                    crate::attempts::sending(*this.attempt_number);
                    // A RetryAfterLayer below takes the same budgets.
                    let budgets = match this.shared_attempts {
                        Some(attempts) => Budgets::Attempts(attempts.clone()),
                        None => Budgets::Waits(this.waits.clone()),
                    };
                    let offer = crate::attempts::Offer::new(budgets, None);
                    this.state.set(State::Calling {
                        future: this.service.call(request),
                    });
                    drop(offer);
                }
                StateProj::Calling { future } => {
                    let since = crate::time::mark();
                    let result = ready!(future.poll(cx));
                    let in_flight = this.in_flight.take();
                    let mut response = result.map_err(Into::into)?;
                    let now = crate::time::answer_since(since);
                    let signal = quota_headers::parse_with_clock(
                        response.status(),
                        response.headers(),
                        SystemTime::now,
                    );
                    let released = response
                        .extensions()
                        .get::<crate::Released>()
                        .map(crate::Released::at);
                    let observed = in_flight
                        .map(|in_flight| gates.observe(in_flight, &signal, released, now, config));
                    if let Some(observed) = observed {
                        if let Some(closed) = observed.closed {
                            events::gate_closed(this.key, &closed, now);
                        }
                        if observed.reopened {
                            events::gate_reopened(this.key);
                        }
                    }
                    if signal.throttled {
                        let replayable = this
                            .request
                            .as_ref()
                            .is_some_and(|r| r.body().is_replayable());
                        let safe = *this.idempotent
                            || classify::refused_unprocessed(response.status(), &signal);
                        let mut outcome = throttled_outcome(
                            &signal,
                            config,
                            *this.attempts,
                            replayable,
                            safe,
                            this.waits.remaining(),
                        );
                        // A retry layer above shares its attempt limit
                        // through the request: the re-send must fit in it.
                        if outcome == ThrottleOutcome::Resend
                            && !begin_shared_attempt(this.shared_attempts.as_ref(), this.request)
                        {
                            outcome = ThrottleOutcome::MaxAttempts;
                        }
                        events::rate_limit_hit(
                            this.key,
                            response.status(),
                            &signal,
                            *this.attempt_number,
                            outcome,
                        );
                        if outcome == ThrottleOutcome::Resend {
                            if let (Some(bare), Some(request)) =
                                (this.bare.take(), this.request.as_mut())
                            {
                                bare.restore(request, this.shared_attempts.as_ref(), this.waits);
                            }
                            // The refused request waits out its own delay
                            // (spread, within what it may still wait), then
                            // goes back to the gate: a ramp that took the
                            // refusal keeps the gate open for the others,
                            // not for it.
                            let delay = signal
                                .retry_after
                                .unwrap_or_default()
                                .min(config.max_pause)
                                .saturating_add(random_up_to(config.spread))
                                .min(this.waits.remaining());
                            let at = now.checked_add(delay).unwrap_or(now);
                            // Or until the provider accepts a request sent
                            // after the refusal: then it has room, and this
                            // request goes back to the gate at once.
                            let watched = observed.map(|observed| {
                                let count = observed.reopenings;
                                (count, gates.reopened_since(this.key, count))
                            });
                            let (sleep, changed, reopenings) = match watched {
                                // Reopened between the answer and now.
                                Some((_, Ok(()))) => (None, None, None),
                                Some((count, Err(notified))) => (
                                    Some(tokio::time::sleep_until(at)),
                                    Some(notified),
                                    Some(count),
                                ),
                                None => (Some(tokio::time::sleep_until(at)), None, None),
                            };
                            this.state.set(State::Gate {
                                sleep,
                                changed,
                                reopenings,
                                since: Some(now),
                            });
                            continue;
                        }
                    }
                    // Nothing to say, nothing allocated: a response without a
                    // signal, sent once, that never waited.
                    if !signal.is_empty() || *this.attempts > 1 || !this.waited.is_zero() {
                        response.extensions_mut().insert(ServerSignal {
                            signal,
                            attempts: *this.attempts,
                            waited: *this.waited,
                        });
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("key", &self.key)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
