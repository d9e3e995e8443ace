//! The least a stack of the README's four layers does per request, for
//! reference beside the README stack's rows: what the same four jobs cost
//! on this machine when each layer does only its job's essential work.
//!
//! The layers nest as the README stack's do, each a tower service of its
//! own over the next, with the same shape of state:
//!
//! - [`LeastBackoff`]: keeps a copy of the request (its parts cloned, its
//!   body shared) and a clone of the service below, to send it again;
//!   deposits into a tower `TpsBudget` on success, and re-sends a 5xx or a
//!   429 after a pause while the budget allows.
//! - [`LeastBreaker`]: one breaker per host in one map behind one lock,
//!   looked up when the request goes and again when its answer comes, to
//!   count it; open after five failures in a row, for 30 s.
//! - [`LeastGate`]: one `Retry-After` gate per host in one map behind one
//!   lock, looked up when the request goes; reads the answer's rate-limit
//!   headers with `quota_headers::parse`, and only when they say something
//!   takes the lock again; keeps a copy of the request and a clone of the
//!   service below, to send a throttled request again once the pause is
//!   over.
//! - [`LeastPacing`]: an exact sliding log per host, its slot held a
//!   window past the answer (`least::Log`): the lock and the clock when the
//!   request goes and again when its answer comes. It admits in `call`, so
//!   it calls the service below there and keeps no clone of it.
//!
//! Each finds its key by copying the request's host into a key of its own
//! (no allocation), and hashes it with foldhash. No queue of waiters, no
//! costs, no probes, no ramps, nothing learned from a provider, no
//! eviction, no telemetry, no budget of attempts or waiting shared between
//! layers: not a stack anyone should use, only the floor of the work these
//! four jobs do per request, to set the README stack's rows against.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::retry::budget::{Budget, TpsBudget};
use tower::{BoxError, Service};

use super::least::Log;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A request's host, kept inline: up to 31 bytes of it and its length
/// (the benchmark's host has 15), hashed and compared by those bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostKey {
    len: u8,
    bytes: [u8; 31],
}

impl std::hash::Hash for HostKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.bytes[..usize::from(self.len)]);
    }
}

impl HostKey {
    /// The authority without its user information and port, found by one
    /// scan of its bytes.
    fn of<B>(request: &Request<B>) -> Self {
        let authority = request
            .uri()
            .authority()
            .map_or(&b""[..], |authority| authority.as_str().as_bytes());
        let (mut start, mut end) = (0, authority.len());
        for (i, &byte) in authority.iter().enumerate() {
            match byte {
                b'@' => (start, end) = (i + 1, authority.len()),
                b':' => end = i,
                b']' => end = authority.len(),
                _ => {}
            }
        }
        let host = &authority[start..end.max(start)];
        let len = host.len().min(31);
        let mut bytes = [0; 31];
        bytes[..len].copy_from_slice(&host[..len]);
        HostKey {
            len: len as u8,
            bytes,
        }
    }
}

/// A copy of `request` to send again: its parts cloned, its body shared.
fn copy_of<B: Clone>(request: &Request<B>) -> Request<B> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether an answer is one to send again: an error, a 5xx or a 429.
fn failed<B, E>(result: &Result<Response<B>, E>) -> bool {
    result.as_ref().map_or(true, |response| {
        response.status().is_server_error() || response.status().as_u16() == 429
    })
}

/// A readied clone of `inner` for the future, the clone left behind to be
/// readied by the next `poll_ready` (as tower's `Retry` does).
fn take_readied<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

pin_project! {
    /// Sends a request, and sends it again after a pause.
    #[project = SendingProj]
    enum Sending<F> {
        Calling { #[pin] future: F },
        Pausing { sleep: Pin<Box<Sleep>> },
        Readying,
    }
}

/// Re-sends a failed request after a pause, within a retry budget.
#[derive(Clone)]
pub(crate) struct LeastBackoff<S> {
    inner: S,
    budget: Arc<TpsBudget>,
}

impl<S> LeastBackoff<S> {
    pub(crate) fn new(inner: S) -> Self {
        LeastBackoff {
            inner,
            budget: Arc::new(TpsBudget::default()),
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for LeastBackoff<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BackoffFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let copy = copy_of(&request);
        let mut inner = take_readied(&mut self.inner);
        BackoffFuture {
            state: Sending::Calling {
                future: inner.call(request),
            },
            inner,
            copy,
            attempts: 1,
            budget: self.budget.clone(),
        }
    }
}

pin_project! {
    pub(crate) struct BackoffFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: Sending<S::Future>,
        inner: S,
        copy: Request<B>,
        attempts: u32,
        budget: Arc<TpsBudget>,
    }
}

impl<S, B, ResBody> Future for BackoffFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                SendingProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    if !failed(&result) {
                        this.budget.deposit();
                        return Poll::Ready(result.map_err(Into::into));
                    }
                    if *this.attempts >= 3 || !this.budget.withdraw() {
                        return Poll::Ready(result.map_err(Into::into));
                    }
                    *this.attempts += 1;
                    let pause = Duration::from_millis(100 << *this.attempts);
                    this.state.set(Sending::Pausing {
                        sleep: Box::pin(tokio::time::sleep(pause)),
                    });
                }
                SendingProj::Pausing { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(Sending::Readying);
                }
                SendingProj::Readying => {
                    ready!(this.inner.poll_ready(cx)).map_err(Into::into)?;
                    let request = copy_of(this.copy);
                    this.state.set(Sending::Calling {
                        future: this.inner.call(request),
                    });
                }
            }
        }
    }
}

/// The job of a keyed layer that lets a request go or not, and counts its
/// answer: the breaker's and the pacing's.
pub(crate) trait Admits {
    /// Why a request was refused.
    const REFUSED: &'static str;

    /// Whether a request to `key` may go: its admission's id if so.
    fn admit(&self, key: HostKey) -> Option<u64>;

    /// The answer to admission `id` of `key` came, failed or not.
    fn answered(&self, key: &HostKey, id: u64, failed: bool);
}

/// A keyed layer that calls the service below once its job admits the
/// request (in `call`, so it keeps no clone of the service), and tells its
/// job of the answer.
pub(crate) struct Keyed<S, J> {
    inner: S,
    job: Arc<J>,
}

impl<S: Clone, J> Clone for Keyed<S, J> {
    fn clone(&self) -> Self {
        Keyed {
            inner: self.inner.clone(),
            job: self.job.clone(),
        }
    }
}

impl<S, B, ResBody, J> Service<Request<B>> for Keyed<S, J>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    J: Admits,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = KeyedFuture<S::Future, J>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = HostKey::of(&request);
        let id = self.job.admit(key);
        KeyedFuture {
            future: id.map(|_| self.inner.call(request)),
            job: self.job.clone(),
            key,
            id: id.unwrap_or_default(),
        }
    }
}

pin_project! {
    pub(crate) struct KeyedFuture<F, J> {
        #[pin]
        future: Option<F>,
        job: Arc<J>,
        key: HostKey,
        id: u64,
    }
}

impl<F, E, ResBody, J> Future for KeyedFuture<F, J>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    J: Admits,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(Err(J::REFUSED.into()));
        };
        let result = ready!(future.poll(cx));
        let failed = result
            .as_ref()
            .map_or(true, |response| response.status().is_server_error());
        this.job.answered(this.key, *this.id, failed);
        Poll::Ready(result.map_err(Into::into))
    }
}

/// A host's breaker: failures in a row, and until when it is open.
#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// Refuses requests to a host whose last five answers failed, for 30 s.
#[derive(Default)]
pub(crate) struct Breakers {
    breakers: Mutex<Map<HostKey, Breaker>>,
}

pub(crate) type LeastBreaker<S> = Keyed<S, Breakers>;

impl Admits for Breakers {
    const REFUSED: &'static str = "circuit open";

    fn admit(&self, key: HostKey) -> Option<u64> {
        let mut breakers = lock(&self.breakers);
        let breaker = breakers.entry(key).or_default();
        let open = breaker
            .open_until
            .is_some_and(|until| Instant::now() < until);
        (!open).then_some(0)
    }

    fn answered(&self, key: &HostKey, _: u64, failed: bool) {
        let mut breakers = lock(&self.breakers);
        if let Some(breaker) = breakers.get_mut(key) {
            if failed {
                breaker.failures = breaker.failures.saturating_add(1);
                if breaker.failures >= 5 {
                    breaker.open_until = Some(Instant::now() + Duration::from_secs(30));
                }
            } else {
                breaker.failures = 0;
                breaker.open_until = None;
            }
        }
    }
}

/// A host's gate: closed until the end of the pause its server asked for.
#[derive(Default)]
struct Gate {
    closed_until: Option<Instant>,
}

/// Holds requests to a host while its server's `Retry-After` pause lasts,
/// and, when it `resends`, sends a throttled request again once it is
/// over. One that does not keeps no copy of the request and no clone of
/// the service below (but for a request that waits at a closed gate): it
/// hands a throttled answer up, to the layer above that re-sends.
#[derive(Clone)]
pub(crate) struct LeastGate<S> {
    inner: S,
    gates: Arc<Mutex<Map<HostKey, Gate>>>,
    resends: bool,
}

impl<S> LeastGate<S> {
    pub(crate) fn new(inner: S, resends: bool) -> Self {
        LeastGate {
            inner,
            gates: Arc::default(),
            resends,
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for LeastGate<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = GateFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = HostKey::of(&request);
        let closed_until = {
            let mut gates = lock(&self.gates);
            gates.entry(key).or_default().closed_until
        };
        let (state, inner, held) = match closed_until {
            Some(until) if Instant::now() < until => (
                Sending::Pausing {
                    sleep: Box::pin(tokio::time::sleep_until(until)),
                },
                Some(take_readied(&mut self.inner)),
                Some(request),
            ),
            _ if self.resends => {
                let copy = copy_of(&request);
                let mut inner = take_readied(&mut self.inner);
                let future = inner.call(request);
                (Sending::Calling { future }, Some(inner), Some(copy))
            }
            _ => (
                Sending::Calling {
                    future: self.inner.call(request),
                },
                None,
                None,
            ),
        };
        GateFuture {
            state,
            inner,
            held,
            resends: self.resends,
            gates: self.gates.clone(),
            key,
            attempts: 1,
        }
    }
}

pin_project! {
    pub(crate) struct GateFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: Sending<S::Future>,
        // The service below and the request, while it waits at a closed
        // gate or is kept to be sent again.
        inner: Option<S>,
        held: Option<Request<B>>,
        resends: bool,
        gates: Arc<Mutex<Map<HostKey, Gate>>>,
        key: HostKey,
        attempts: u32,
    }
}

impl<S, B, ResBody> Future for GateFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: Clone,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                SendingProj::Calling { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let signal = quota_headers::parse_with_clock(
                        response.status(),
                        response.headers(),
                        std::time::SystemTime::now,
                    );
                    if signal.is_empty() {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(pause) = signal.retry_after.filter(|_| signal.throttled) else {
                        return Poll::Ready(Ok(response));
                    };
                    let until = Instant::now() + pause.min(Duration::from_secs(60));
                    if let Some(gate) = lock(this.gates).get_mut(this.key) {
                        gate.closed_until = Some(until);
                    }
                    if !*this.resends || this.held.is_none() || *this.attempts >= 3 {
                        return Poll::Ready(Ok(response));
                    }
                    *this.attempts += 1;
                    this.state.set(Sending::Pausing {
                        sleep: Box::pin(tokio::time::sleep_until(until)),
                    });
                }
                SendingProj::Pausing { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(Sending::Readying);
                }
                SendingProj::Readying => {
                    let Some(inner) = this.inner.as_mut() else {
                        return Poll::Ready(
                            Err("gate future polled after its request went".into()),
                        );
                    };
                    ready!(inner.poll_ready(cx)).map_err(Into::into)?;
                    let request = if *this.resends {
                        this.held.as_ref().map(copy_of)
                    } else {
                        this.held.take()
                    };
                    let Some(request) = request else {
                        return Poll::Ready(
                            Err("gate future polled after its request went".into()),
                        );
                    };
                    let future = inner.call(request);
                    this.state.set(Sending::Calling { future });
                }
            }
        }
    }
}

/// An exact sliding log per host, each slot held a window past the answer.
pub(crate) struct Logs {
    max_calls: usize,
    window: Duration,
    logs: Mutex<Map<HostKey, Log>>,
}

pub(crate) type LeastPacing<S> = Keyed<S, Logs>;

impl Admits for Logs {
    // A queue of waiters is not the floor's business.
    const REFUSED: &'static str = "no room in the window";

    fn admit(&self, key: HostKey) -> Option<u64> {
        let now = Instant::now();
        lock(&self.logs)
            .entry(key)
            .or_default()
            .admit(now, self.max_calls, self.window)
    }

    fn answered(&self, key: &HostKey, id: u64, _: bool) {
        let now = Instant::now();
        if let Some(log) = lock(&self.logs).get_mut(key) {
            log.answer(id, now, self.window);
        }
    }
}

/// The four nested as the README stack's layers are; `resends`: whether
/// the gate sends a throttled request again itself, keeping a copy of
/// every request for it (as the README stack's `RetryAfterLayer` does), or
/// hands the answer up to the backoff, whose copy is then the stack's only
/// one.
pub(crate) fn least_stack<S>(
    service: S,
    max_calls: usize,
    window: Duration,
    resends: bool,
) -> LeastBackoff<LeastBreaker<LeastGate<LeastPacing<S>>>> {
    let pacing = Keyed {
        inner: service,
        job: Arc::new(Logs {
            max_calls,
            window,
            logs: Mutex::default(),
        }),
    };
    let breaker = Keyed {
        inner: LeastGate::new(pacing, resends),
        job: Arc::default(),
    };
    LeastBackoff::new(breaker)
}
