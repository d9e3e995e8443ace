use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;

use super::{Backoff, InvalidBackoff, Jitter, JitterBackoff, RetryBudget};
use crate::classify::HttpClassifier;
use crate::replay::DEFAULT_MAX_REPLAY_BYTES;

/// Retries transient failures with jittered exponential backoff; see the
/// [module docs](super) for what it does and where it goes in a stack.
///
/// Every service this layer makes shares the layer's retry budget.
#[derive(Clone)]
pub struct JitterBackoffLayer<C = HttpClassifier> {
    pub(super) config: Arc<Config>,
    pub(super) classifier: C,
    pub(super) budget: Option<RetryBudget>,
    /// Numbers requests, so each seeded request draws its own stream.
    pub(super) streams: Arc<AtomicU64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Config {
    pub(super) backoff: Backoff,
    pub(super) max_attempts: u32,
    pub(super) max_elapsed: Duration,
    pub(super) retry_all_methods: bool,
    pub(super) attempt_header: Option<HeaderName>,
    pub(super) max_replay_bytes: usize,
    pub(super) seed: Option<u64>,
}

impl Default for JitterBackoffLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl JitterBackoffLayer {
    /// A layer with the defaults: full jitter from 100 ms up to 10 s, 3
    /// attempts, at most 60 s from the first attempt to the last retry, the
    /// default [`RetryBudget`] (20% of requests plus 10 retries a second),
    /// idempotent requests only, bodies up to 64 KiB replayed, and the
    /// [`HttpClassifier`].
    pub fn new() -> Self {
        JitterBackoffLayer {
            config: Arc::new(Config {
                backoff: Backoff {
                    base: Duration::from_millis(100),
                    max: Duration::from_secs(10),
                    jitter: Jitter::Full,
                },
                max_attempts: 3,
                max_elapsed: Duration::from_secs(60),
                retry_all_methods: false,
                attempt_header: None,
                max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
                seed: None,
            }),
            classifier: HttpClassifier,
            budget: Some(RetryBudget::default()),
            streams: Arc::default(),
        }
    }
}

impl<C> JitterBackoffLayer<C> {
    /// The delay before the first retry (`base`, before jitter) and the cap
    /// on every delay (`max`); each retry doubles the delay up to the cap.
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff::ZeroBase`] for a zero `base`,
    /// [`InvalidBackoff::MaxBelowBase`] when `max < base`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        let jitter = self.config.backoff.jitter();
        Arc::make_mut(&mut self.config).backoff = Backoff::new(base, max, jitter)?;
        Ok(self)
    }

    /// The jitter strategy; [`Jitter::Full`] by default.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.backoff = config.backoff.with_jitter(jitter);
        self
    }

    /// The most attempts of one logical request, the first included, counted
    /// across every layer of the stack that re-sends it (a
    /// [`RetryAfterLayer`](crate::RetryAfterLayer) below included).
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff::ZeroMaxAttempts`] for 0.
    pub fn max_attempts(mut self, max_attempts: u32) -> Result<Self, InvalidBackoff> {
        if max_attempts == 0 {
            return Err(InvalidBackoff::ZeroMaxAttempts);
        }
        Arc::make_mut(&mut self.config).max_attempts = max_attempts;
        Ok(self)
    }

    /// No retry is sent later than `max_elapsed` after the first attempt
    /// (counted from the first poll of the response future): a failure
    /// whose wait would end past it goes back to the caller at once (a
    /// server delay above it is never slept through).
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff::ZeroMaxElapsed`] for zero.
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Result<Self, InvalidBackoff> {
        if max_elapsed.is_zero() {
            return Err(InvalidBackoff::ZeroMaxElapsed);
        }
        Arc::make_mut(&mut self.config).max_elapsed = max_elapsed;
        Ok(self)
    }

    /// The retry budget, shared by every service of this layer and of its
    /// clones; [`RetryBudget::default`] unless set.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only `max_attempts` and `max_elapsed` limit retries.
    /// Retries can then multiply the load on a failing provider.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Retries requests of every method. By default only idempotent methods
    /// (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and requests with an
    /// `Idempotency-Key` header are retried.
    pub fn retry_all_methods(mut self) -> Self {
        Arc::make_mut(&mut self.config).retry_all_methods = true;
        self
    }

    /// Writes each attempt's number (1 for the first) into the request
    /// header `name`, for example `x-retry-attempt`.
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff::InvalidHeaderName`] when `name` is not a valid
    /// header name.
    pub fn attempt_header(mut self, name: &str) -> Result<Self, InvalidBackoff> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| InvalidBackoff::InvalidHeaderName(name.to_owned()))?;
        Arc::make_mut(&mut self.config).attempt_header = Some(name);
        Ok(self)
    }

    /// The most bytes of a request body kept for re-sending; a larger body
    /// is sent once and never retried.
    pub fn max_replay_bytes(mut self, max_replay_bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_replay_bytes = max_replay_bytes;
        self
    }

    /// Draws jitter from a seeded generator, for repeatable tests. Each
    /// request still draws its own stream (seeded with `seed` plus the
    /// request's number), so requests that fail together do not retry
    /// together.
    pub fn seed(mut self, seed: u64) -> Self {
        Arc::make_mut(&mut self.config).seed = Some(seed);
        self
    }

    /// Classifies each attempt's result; [`HttpClassifier`] by default,
    /// [`GrpcClassifier`](crate::classify::GrpcClassifier) for gRPC, or a
    /// closure.
    pub fn classifier<C2>(self, classifier: C2) -> JitterBackoffLayer<C2> {
        JitterBackoffLayer {
            config: self.config,
            classifier,
            budget: self.budget,
            streams: self.streams,
        }
    }

    /// The backoff settings.
    pub fn get_backoff(&self) -> Backoff {
        self.config.backoff
    }
}

impl<S, C: Clone> Layer<S> for JitterBackoffLayer<C> {
    type Service = JitterBackoff<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        JitterBackoff::from_parts(
            inner,
            Config::clone(&self.config),
            self.classifier.clone(),
            self.budget.clone(),
            self.streams.clone(),
        )
    }
}

impl<C> fmt::Debug for JitterBackoffLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitterBackoffLayer")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .field("classifier", &std::any::type_name::<C>())
            .finish()
    }
}
