use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::breakers::Breakers;
use super::config::{Config, MAX_PERIOD, MAX_WINDOW_CALLS};
use super::{CircuitBreaker, InvalidCircuitBreaker, Window};
use crate::HostKey;
use crate::classify::HttpClassifier;

/// Fails fast while a provider is failing; see the [module docs](super).
///
/// Every service this layer makes shares the layer's breakers, one per key.
#[derive(Clone)]
pub struct CircuitBreakerLayer<K = HostKey, Cl = HttpClassifier> {
    pub(super) config: Arc<Config>,
    pub(super) breakers: Breakers,
    pub(super) key_fn: K,
    pub(super) classifier: Cl,
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
    /// throttled responses, one breaker for all requests, HTTP classification;
    /// a key is forgotten 5 minutes after its last failure or open period,
    /// and at most 100,000 keys are kept.
    pub fn new() -> Self {
        CircuitBreakerLayer {
            config: Arc::new(Config::default()),
            breakers: Breakers::default(),
            key_fn: HostKey,
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
    /// than a year; [`InvalidCircuitBreaker::WindowTooLarge`] for a count
    /// window of more than 100,000 calls.
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
        match window {
            Window::Time(span) if span > MAX_PERIOD => {
                return Err(InvalidCircuitBreaker::WindowTooLong(span));
            }
            Window::Count(size) if size > MAX_WINDOW_CALLS => {
                return Err(InvalidCircuitBreaker::WindowTooLarge(size));
            }
            _ => {}
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

    /// How long a key's breaker is remembered without news, so that keys
    /// that are not called again give their memory back: a call older than
    /// this leaves a count window (a time window forgets by its own
    /// length), and a breaker whose open or half-open period ended this
    /// long ago is forgotten, as if closed. Default 5 minutes.
    ///
    /// # Errors
    ///
    /// [`InvalidCircuitBreaker::ForgetAfter`] for zero or more than a year.
    pub fn forget_after(self, after: Duration) -> Result<Self, InvalidCircuitBreaker> {
        if after.is_zero() || after > MAX_PERIOD {
            return Err(InvalidCircuitBreaker::ForgetAfter(after));
        }
        Ok(self.edit(|config| config.forget_after = after))
    }

    /// The most keys whose breakers are kept at once. While that many keys
    /// have failures in their windows (or are open or half-open), the calls
    /// of other keys pass unjudged, as through a closed breaker with no
    /// history, until idle keys are forgotten. Default 100,000.
    ///
    /// # Errors
    ///
    /// [`InvalidCircuitBreaker::ZeroKeys`] for 0.
    pub fn max_keys(self, max_keys: usize) -> Result<Self, InvalidCircuitBreaker> {
        if max_keys == 0 {
            return Err(InvalidCircuitBreaker::ZeroKeys);
        }
        Ok(self.edit(|config| config.max_keys = max_keys))
    }

    /// The number of keys whose breakers are kept in memory now.
    pub fn key_count(&self) -> usize {
        self.breakers.len()
    }

    /// Chooses the key of each request: each key has a breaker of its own.
    /// The default, [`HostKey`], keeps one breaker per host, so one failing
    /// host never fails calls to the others.
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
