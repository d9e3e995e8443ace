use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::layer::Config;
use super::policy::{Policy, is_idempotent};
use super::{ResponseFuture, RetryBudget};
use crate::attempts::{AttemptBudget, Budgets, HandedOn, Offer};
use crate::classify::{Classify, HttpClassifier};
use crate::replay::{ReplayBody, replayable_or_once};
use crate::{BoxError, telemetry};

/// Retries transient failures with jittered exponential backoff; made by
/// [`JitterBackoffLayer`](super::JitterBackoffLayer).
///
/// The inner service receives requests whose body is a [`ReplayBody`], so
/// that a retry sends the same bytes.
#[derive(Clone)]
pub struct JitterBackoff<S, C = HttpClassifier> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
    streams: Arc<AtomicU64>,
    handed_on: HandedOn,
}

/// The settings and the retry budget, behind one pointer: every request's
/// policy holds them with one reference count, which the threads that share
/// a service write at every request. Aligned to 128 bytes, so that the
/// `Arc`'s counts are on cache lines of their own, apart from the settings
/// every request reads (as for the pacing's).
#[repr(align(128))]
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) budget: Option<RetryBudget>,
}

impl<S, C> JitterBackoff<S, C> {
    pub(super) fn from_parts(
        inner: S,
        config: Config,
        classifier: C,
        budget: Option<RetryBudget>,
        streams: Arc<AtomicU64>,
    ) -> Self {
        JitterBackoff {
            inner,
            shared: Arc::new(Shared { config, budget }),
            classifier,
            streams,
            handed_on: HandedOn::default(),
        }
    }

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

impl<S> JitterBackoff<S> {
    /// Wraps `inner` with the default settings of
    /// [`JitterBackoffLayer::new`](super::JitterBackoffLayer::new).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&super::JitterBackoffLayer::new(), inner)
    }

    /// A layer with the default settings; same as
    /// [`JitterBackoffLayer::new`](super::JitterBackoffLayer::new).
    pub fn layer() -> super::JitterBackoffLayer {
        super::JitterBackoffLayer::new()
    }
}

impl<S, C, B, ResBody> Service<Request<B>> for JitterBackoff<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<Response<ResBody>> + Clone,
    B: Body<Data = Bytes>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let config = &self.shared.config;
        let retryable = config.retry_all_methods || is_idempotent(&request);
        // Only a request that may be retried pays for buffering its body.
        let mut request = if retryable {
            replayable_or_once(request, config.max_replay_bytes)
        } else {
            request.map(ReplayBody::once)
        };

        // The copy kept for retries is taken before the budget goes in the
        // extensions: with nothing in them it is copied without an
        // allocation, and a retry puts the budget back.
        let kept = retryable.then(|| request.clone());
        let attempts = AttemptBudget::numbered(config.max_attempts, config.attempt_header.clone());
        attempts.try_begin(&mut request);
        // One budget of waiting for the stack, carried by the attempt
        // budget: a RetryAfterLayer below lowers it to its `max_wait`, and
        // no backoff ends after the request's deadline.
        if let Some(deadline) = crate::sliding_window::Deadline::of(&request) {
            attempts.waits().limit_until(deadline);
        }
        // The layers below take the budget from the thread during the call;
        // until one has been seen to, it goes in the extensions too (a
        // layer in between may call later, on another task).
        let handed_on = self.handed_on.seen();
        if !handed_on {
            request.extensions_mut().insert(attempts.clone());
        }
        if let Some(budget) = &self.shared.budget {
            tower::retry::budget::Budget::deposit(budget);
        }

        let span = tracing::debug_span!(
            target: telemetry::TARGET,
            telemetry::JITTER_BACKOFF_SPAN,
            request_id = next_request_id(),
            attempt = 1u32,
            http.request.method = %request.method(),
            url.template = %telemetry::path_template(request.uri().path()),
            http.request.resend_count = tracing::field::Empty,
        );
        let seed = config
            .seed
            .map(|seed| seed.wrapping_add(self.streams.fetch_add(1, Ordering::Relaxed)));
        let offered = Budgets::Attempts(attempts.clone());
        let policy = Policy::new(self.shared.clone(), self.classifier.clone(), attempts, seed);
        // The first attempt goes to the service `poll_ready` readied; the
        // clone that goes with the future is readied before each retry.
        let _offer = Offer::new(offered, (!handed_on).then_some(&self.handed_on));
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        // The offer ends once this future is made and returned, not before:
        // the inner future then goes into this one as it was made, and this
        // one where the caller keeps it. With the offer's end in between,
        // the compiler copies one of them whole (984 or 1,440 bytes in the
        // README stack).
        ResponseFuture::new(future, self.inner.clone(), kept, policy, span)
    }
}

impl<S: fmt::Debug, C> fmt::Debug for JitterBackoff<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterBackoff")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .field("budget", &self.shared.budget)
            .field("classifier", &std::any::type_name::<C>())
            .finish()
    }
}

/// A number for each logical request, unique in the process: every event of
/// the request is inside its span, which carries it.
fn next_request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
