//! The settings of a breaker, as the layer's builder checked them.

use std::time::Duration;

use rand::Rng;

/// Which calls the failure rate is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// The last `n` calls (at most 100,000), none older than
    /// [`forget_after`](super::CircuitBreakerLayer::forget_after).
    Count(usize),
    /// The calls of the last `duration` (at most a year).
    Time(Duration),
}

/// The longest open period, time window and `forget_after` the builder
/// accepts: a year.
pub(super) const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The most calls a count window may hold, per key.
pub(super) const MAX_WINDOW_CALLS: usize = 100_000;

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
    pub(super) forget_after: Duration,
    pub(super) max_keys: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            failure_rate: 0.5,
            window: Window::Count(20),
            minimum_calls: 10,
            consecutive_failures: Some(5),
            open_duration: Duration::from_secs(30),
            open_jitter: 0.1,
            half_open_probes: 3,
            count_throttled: false,
            forget_after: Duration::from_secs(5 * 60),
            max_keys: 100_000,
        }
    }
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

    /// How old a call may be and still count: a time window's length, or
    /// `forget_after` for a count window.
    pub(super) fn horizon(&self) -> Duration {
        match self.window {
            Window::Count(_) => self.forget_after,
            Window::Time(span) => span,
        }
    }
}
