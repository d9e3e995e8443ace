use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::gate::Gates;
use super::{InvalidRetryAfter, RetryAfter};
use crate::HostKey;
use crate::replay::DEFAULT_MAX_REPLAY_BYTES;

/// Obeys what servers say about their quota; see the [module docs](super).
///
/// Every service this layer makes shares the layer's gates: one throttled
/// response pauses every caller of that key.
#[derive(Clone)]
pub struct RetryAfterLayer<K = HostKey> {
    pub(super) config: Arc<Config>,
    pub(super) gates: Gates,
    pub(super) key_fn: K,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Config {
    pub(super) max_attempts: u32,
    pub(super) max_wait: Duration,
    pub(super) max_pause: Duration,
    pub(super) spread: Duration,
    pub(super) max_replay_bytes: usize,
    pub(super) pace_by_quota: bool,
    pub(super) resend_all_methods: bool,
}

impl Config {
    /// While the quota is unknown, one request goes per this interval: the
    /// spread, never longer than a pause may be.
    pub(super) fn probe_interval(&self) -> Duration {
        self.spread.min(self.max_pause)
    }
}

/// The longest [`RetryAfterLayer::spread`]; longer ones are clamped to it.
const MAX_SPREAD: Duration = Duration::from_secs(60);

/// The default [`RetryAfterLayer::max_pause`].
const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(5 * 60);

impl Default for RetryAfterLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryAfterLayer {
    /// A layer with the defaults: 3 attempts, `max_wait` of 60 s, no pause
    /// longer than 5 minutes (`max_pause`), waiters spread over 100 ms when
    /// a gate opens, bodies up to 64 KiB replayed, one gate for all
    /// requests.
    pub fn new() -> Self {
        RetryAfterLayer {
            config: Arc::new(Config {
                max_attempts: 3,
                max_wait: Duration::from_secs(60),
                max_pause: DEFAULT_MAX_PAUSE,
                spread: Duration::from_millis(100),
                max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
                pace_by_quota: true,
                resend_all_methods: false,
            }),
            gates: Gates::default(),
            key_fn: HostKey,
        }
    }
}

impl<K> RetryAfterLayer<K> {
    /// The most attempts of one request, the first included: a throttled
    /// request is re-sent at most `max_attempts - 1` times.
    ///
    /// # Errors
    ///
    /// [`InvalidRetryAfter::ZeroMaxAttempts`] for 0.
    pub fn max_attempts(mut self, max_attempts: u32) -> Result<Self, InvalidRetryAfter> {
        if max_attempts == 0 {
            return Err(InvalidRetryAfter::ZeroMaxAttempts);
        }
        Arc::make_mut(&mut self.config).max_attempts = max_attempts;
        Ok(self)
    }

    /// The longest one request waits, over all its attempts (60 s by
    /// default). A server delay above what is left is not slept through:
    /// the throttled response goes back to the caller at once, and a request
    /// that finds its gate closed for longer fails with
    /// [`GateClosed`](super::GateClosed).
    ///
    /// The limit holds for the whole stack: it is the most the
    /// [`WaitBudget`](crate::attempts::WaitBudget) shared with a retry
    /// layer above allows, so a
    /// [`JitterBackoffLayer`](crate::JitterBackoffLayer) above does not
    /// sleep through a longer server delay either.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        Arc::make_mut(&mut self.config).max_wait = max_wait;
        self
    }

    /// The longest a key's gate stays closed on a server's word (5 minutes
    /// by default). A longer pause a server claims (`Retry-After:
    /// 99999999999`, a date in 2099, a reset decades away) closes the gate
    /// for `max_pause` only; then one request goes through as a probe, and
    /// the others wait for its answer: a new pause if the server still
    /// refuses, traffic as usual if it has recovered.
    ///
    /// Five minutes obeys every honest per-second and per-minute quota and
    /// the usual `Retry-After` values in full, while a broken or hostile
    /// header costs at most one probe per key every five minutes (an hourly
    /// quota that really is spent costs 12 refused probes an hour, a daily
    /// one 288 a day).
    ///
    /// # Errors
    ///
    /// [`InvalidRetryAfter::ZeroMaxPause`] for zero: a gate that never
    /// closes would ignore every server.
    pub fn max_pause(mut self, max_pause: Duration) -> Result<Self, InvalidRetryAfter> {
        if max_pause.is_zero() {
            return Err(InvalidRetryAfter::ZeroMaxPause);
        }
        Arc::make_mut(&mut self.config).max_pause = max_pause;
        Ok(self)
    }

    /// When a gate opens, the requests that waited go out at random instants
    /// over `spread` (100 ms by default) rather than all at once. Also the
    /// interval at which one request probes a quota whose reported reset has
    /// passed.
    ///
    /// At most a minute: a longer `spread` (`Duration::MAX` included) is
    /// clamped to 60 s, and no request waits past its `max_wait` for its
    /// share of the spread either.
    pub fn spread(mut self, spread: Duration) -> Self {
        Arc::make_mut(&mut self.config).spread = spread.min(MAX_SPREAD);
        self
    }

    /// The most bytes of a request body kept for re-sending; a larger body is
    /// sent once and never re-sent.
    pub fn max_replay_bytes(mut self, max_replay_bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_replay_bytes = max_replay_bytes;
        self
    }

    /// Whether the gate also paces by the quota the server reports
    /// (`remaining` until a reset, in any dialect) — on by default, so that a
    /// provider that only announces its quota is never driven to a 429.
    ///
    /// Turn it off when a [`SlidingWindowLayer`](crate::SlidingWindowLayer)
    /// below already paces to the provider's exact quota: reset times often
    /// come in whole seconds, so pacing by them would hold requests up to a
    /// second longer than the exact limiter needs. `Retry-After` and throttled
    /// responses are obeyed either way.
    pub fn pace_by_quota_headers(mut self, pace: bool) -> Self {
        Arc::make_mut(&mut self.config).pace_by_quota = pace;
        self
    }

    /// Re-sends throttled requests of every method. By default a request is
    /// re-sent after a `429` (or gRPC `RESOURCE_EXHAUSTED`) whatever its
    /// method, since the server refused it without processing it; after a
    /// `503` or gRPC `UNAVAILABLE`, which a proxy may send after the server
    /// processed the request, only idempotent methods (GET, HEAD, OPTIONS,
    /// PUT, DELETE, TRACE) and requests with an `Idempotency-Key` header
    /// are. Opt in only when the provider's 503s never follow processing.
    pub fn resend_all_methods(mut self) -> Self {
        Arc::make_mut(&mut self.config).resend_all_methods = true;
        self
    }

    /// Chooses the key of each request: requests with equal keys share a
    /// gate. The default, [`HostKey`], keeps one gate per host, so one
    /// host's 429 never pauses another; [`GlobalKey`](crate::GlobalKey)
    /// shares one gate among all requests (one provider account behind
    /// several hosts).
    pub fn key_fn<K2>(self, key_fn: K2) -> RetryAfterLayer<K2> {
        RetryAfterLayer {
            config: self.config,
            gates: self.gates,
            key_fn,
        }
    }
}

impl<S, K: Clone> Layer<S> for RetryAfterLayer<K> {
    type Service = RetryAfter<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryAfter::from_parts(
            inner,
            self.config.clone(),
            self.gates.clone(),
            self.key_fn.clone(),
        )
    }
}

impl<K> fmt::Debug for RetryAfterLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryAfterLayer")
            .field("max_attempts", &self.config.max_attempts)
            .field("max_wait", &self.config.max_wait)
            .field("max_pause", &self.config.max_pause)
            .field("spread", &self.config.spread)
            .field("max_replay_bytes", &self.config.max_replay_bytes)
            .field("gates", &self.gates)
            .field("key_fn", &std::any::type_name::<K>())
            .finish()
    }
}
