use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tower_layer::Layer;

use super::state::Breakers;
use super::{CircuitBreaker, InvalidCircuitBreaker};
use crate::GlobalKey;
use crate::classify::HttpClassifier;

/// Fails fast while a provider is failing; see the [module docs](super).
///
/// Every service this layer makes shares the layer's breakers, one per key.
#[derive(Clone)]
pub struct CircuitBreakerLayer<K = GlobalKey, Cl = HttpClassifier> {
    pub(super) config: Arc<Config>,
    pub(super) breakers: Breakers,
    pub(super) key_fn: K,
    pub(super) classifier: Cl,
}

/// Which calls the failure rate is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// The last `n` calls.
    Count(usize),
    /// The calls of the last `duration`.
    Time(Duration),
}

/// The longest open period and time window the builder accepts: a year.
pub(super) const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Config {
    pub(super) failure_rate: f64,
    pub(super) window: Window,
    pub(super) minimum_calls: usize,
    pub(super) consecutive_failures: Option<u32>,
    pub(super) open_duration: Duration,
    pub(super) open_jitter: f64,
    pub(super) half_open_probes: u32,
    pub(super) count_throttled: bool,
}

impl Config {
    /// The open period of one opening: `open_duration`, give or take
    /// `open_jitter` of it, so that breakers that opened together do not
    /// probe together.
    pub(super) fn open_duration_with_jitter(&self) -> Duration {
        if self.open_jitter <= 0.0 {
            return self.open_duration;
        }
        let factor = rand::rng().random_range(1.0 - self.open_jitter..=1.0 + self.open_jitter);
        // Saturates: never the panic of `Duration::mul_f64` on overflow.
        Duration::try_from_secs_f64(self.open_duration.as_secs_f64() * factor)
            .unwrap_or(self.open_duration)
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerLayer {
    /// A breaker with the defaults: opens when half of the last 20 calls
    /// failed (once at least 10 were made) or after 5 failures in a row,
    /// stays open 30 s (±10%), closes after 3 successful probes, ignores
    /// throttled responses, one breaker for all requests, HTTP classification.
    pub fn new() -> Self {
        CircuitBreakerLayer {
            config: Arc::new(Config {
                failure_rate: 0.5,
                window: Window::Count(20),
                minimum_calls: 10,
                consecutive_failures: Some(5),
                open_duration: Duration::from_secs(30),
                open_jitter: 0.1,
                half_open_probes: 3,
                count_throttled: false,
            }),
            breakers: Breakers::default(),
            key_fn: GlobalKey,
            classifier: HttpClassifier,
        }
    }
}

impl<K, Cl> CircuitBreakerLayer<K, Cl> {
    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Opens when at least this share of the calls in the window failed.
    ///
    /// # Errors
    ///
    /// [`InvalidCircuitBreaker::FailureRate`] outside `(0, 1]`.
    pub fn failure_rate(self, failure_rate: f64) -> Result<Self, InvalidCircuitBreaker> {
        if !(failure_rate > 0.0 && failure_rate <= 1.0) {
            return Err(InvalidCircuitBreaker::FailureRate(failure_rate));
        }
        Ok(self.edit(|config| config.failure_rate = failure_rate))
    }

    /// The calls the failure rate is computed over, and how many there must
    /// be before it is judged at all.
    ///
    /// # Errors
    ///
    /// [`InvalidCircuitBreaker::EmptyWindow`] for a window of 0 calls or of
    /// zero length, or a `minimum_calls` of 0;
    /// [`InvalidCircuitBreaker::WindowTooLong`] for a time window longer
    /// than a year.
    pub fn window(
        self,
        window: Window,
        minimum_calls: usize,
    ) -> Result<Self, InvalidCircuitBreaker> {
        let empty = match window {
            Window::Count(size) => size == 0,
            Window::Time(span) => span.is_zero(),
        };
        if empty || minimum_calls == 0 {
            return Err(InvalidCircuitBreaker::EmptyWindow);
        }
        if let Window::Time(span) = window
            && span > MAX_PERIOD
        {
            return Err(InvalidCircuitBreaker::WindowTooLong(span));
        }
        Ok(self.edit(|config| {
            config.window = window;
            config.minimum_calls = minimum_calls;
        }))
    }

    /// Also opens after this many failures in a row (`None`: only the rate).
    pub fn consecutive_failures(self, limit: Option<u32>) -> Self {
        self.edit(|config| config.consecutive_failures = limit.filter(|limit| *limit > 0))
    }

    /// How long the breaker stays open, and the share of it (0 to 1) that is
    /// randomly added or taken away each time.
    ///
    /// # Errors
    ///
    /// [`InvalidCircuitBreaker::OpenDuration`] for a duration longer than a
    /// year; [`InvalidCircuitBreaker::OpenJitter`] for a jitter outside
    /// `[0, 1)`.
    pub fn open_duration(
        self,
        duration: Duration,
        jitter: f64,
    ) -> Result<Self, InvalidCircuitBreaker> {
        if duration > MAX_PERIOD {
            return Err(InvalidCircuitBreaker::OpenDuration(duration));
        }
        if !(0.0..1.0).contains(&jitter) {
            return Err(InvalidCircuitBreaker::OpenJitter(jitter));
        }
        Ok(self.edit(|config| {
            config.open_duration = duration;
            config.open_jitter = jitter;
        }))
    }

    /// How many probe calls the half-open breaker lets through; it closes
    /// when all of them succeed and opens again when one fails.
    ///
    /// # Errors
    ///
    /// [`InvalidCircuitBreaker::ZeroProbes`] for 0.
    pub fn half_open_probes(self, probes: u32) -> Result<Self, InvalidCircuitBreaker> {
        if probes == 0 {
            return Err(InvalidCircuitBreaker::ZeroProbes);
        }
        Ok(self.edit(|config| config.half_open_probes = probes))
    }

    /// Whether throttled responses (429, gRPC `RESOURCE_EXHAUSTED`) count as
    /// failures. By default they do not: the provider is healthy and says
    /// when to come back, which `RetryAfterLayer` handles.
    pub fn count_throttled(self, count: bool) -> Self {
        self.edit(|config| config.count_throttled = count)
    }

    /// Chooses the key of each request: each key has a breaker of its own.
    pub fn key_fn<K2>(self, key_fn: K2) -> CircuitBreakerLayer<K2, Cl> {
        CircuitBreakerLayer {
            config: self.config,
            breakers: self.breakers,
            key_fn,
            classifier: self.classifier,
        }
    }

    /// Chooses how results are classified: the same
    /// [`Classify`](crate::classify::Classify) as the backoff layer's, for
    /// example [`GrpcClassifier`](crate::classify::GrpcClassifier) or a closure.
    pub fn classifier<Cl2>(self, classifier: Cl2) -> CircuitBreakerLayer<K, Cl2> {
        CircuitBreakerLayer {
            config: self.config,
            breakers: self.breakers,
            key_fn: self.key_fn,
            classifier,
        }
    }
}

impl<S, K: Clone, Cl: Clone> Layer<S> for CircuitBreakerLayer<K, Cl> {
    type Service = CircuitBreaker<S, K, Cl>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(
            inner,
            self.config.clone(),
            self.breakers.clone(),
            self.key_fn.clone(),
            self.classifier.clone(),
        )
    }
}

impl<K, Cl> fmt::Debug for CircuitBreakerLayer<K, Cl> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.config)
            .field("breakers", &self.breakers)
            .field("key_fn", &std::any::type_name::<K>())
            .field("classifier", &std::any::type_name::<Cl>())
            .finish()
    }
}
