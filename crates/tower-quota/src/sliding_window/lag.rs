//! How late the client's tasks run, as its own requests measure it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::stamp::Stamp;
use super::{Admission, Limits, events};

/// One admission in this many measures how long its task waits to run
/// ([`Store::probes_lag`](super::Store::probes_lag)), one at a time.
const PROBE_EVERY: u64 = 16;

/// How late the client's tasks run, as its own requests measure it; one per
/// store, shared by every key. The in-process and the Redis store share
/// this logic.
///
/// An admission assumes its request reaches the provider within
/// [`sent_within`](Limits::sent_within) unless answered sooner. That holds
/// while the client's tasks run when woken: the task that writes a request
/// to its connection waits as long as any other, and a request leaves after
/// one or two such waits and the network. A client whose tasks wait half
/// the bound or more (a process with more work than cores, a debug build
/// keeping a thousand requests in flight) may send a request later than
/// the bound says: it [lags](LagProbe::is_lagging) until a window has
/// passed without such a wait, and its store holds admissions longer.
///
/// ```
/// use std::time::Duration;
/// use tower_quota::SlidingWindowLayer;
/// use tower_quota::sliding_window::LagProbe;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limits = SlidingWindowLayer::new(10, Duration::from_secs(1))
///     .unwrap()
///     .limits()
///     .clone()
///     .reporting_answers();
/// let probe = LagProbe::new();
/// // A task that waited 80 ms to run: more than half of 100 ms.
/// assert!(probe.probed(Some(Duration::from_millis(80)), &limits));
/// assert!(probe.is_lagging(tokio::time::Instant::now()));
/// tokio::time::sleep(Duration::from_secs(1)).await;
/// assert!(!probe.is_lagging(tokio::time::Instant::now()));
/// # }
/// ```
#[derive(Debug)]
pub struct LagProbe {
    probing: AtomicBool,
    /// The stamp until which the client lags, as its bits (which order as
    /// the stamps do); 0, below every stamp, when it keeps up.
    until: AtomicU64,
}

impl Default for LagProbe {
    fn default() -> Self {
        LagProbe::new()
    }
}

impl LagProbe {
    /// A probe of a client that keeps up.
    pub fn new() -> Self {
        LagProbe {
            probing: AtomicBool::new(false),
            until: AtomicU64::new(0),
        }
    }

    /// Whether the client lags at `now`: a task of it waited half of
    /// `sent_within` or more to run less than a window ago.
    pub fn is_lagging(&self, now: Instant) -> bool {
        self.is_lagging_at(Stamp::of(now))
    }

    /// [`is_lagging`](Self::is_lagging) at the instant of `now`.
    pub(crate) fn is_lagging_at(&self, now: Stamp) -> bool {
        now.to_bits() < self.until.load(Ordering::Relaxed)
    }

    /// Whether `admission` should measure its task's wait
    /// ([`Store::probes_lag`](super::Store::probes_lag)): one in sixteen,
    /// by its id, and one at a time. A `true` must be followed by
    /// [`probed`](LagProbe::probed).
    pub fn probes(&self, admission: &Admission) -> bool {
        admission.id().is_multiple_of(PROBE_EVERY) && !self.probing.swap(true, Ordering::Acquire)
    }

    /// Ends a measurement: `lag` is how long the task waited to run, `None`
    /// when the request ended first. A wait of half of `limits`'
    /// `sent_within` or more makes the client lag for the shortest window
    /// of `limits` (strict limits, and limits whose caller does not report
    /// answers, assume nothing and never lag). Returns whether the client
    /// starts lagging now, after it had kept up: it then says so in a
    /// `pacing_lagging` event.
    pub fn probed(&self, lag: Option<Duration>, limits: &Limits) -> bool {
        self.probing.store(false, Ordering::Release);
        let Some(lag) = lag else {
            return false;
        };
        if lag < limits.sent_within() / 2 || limits.is_strict() || !limits.reports_answers() {
            return false;
        }
        let now = Instant::now();
        let window = super::drift::shortest_window(limits);
        let now = Stamp::of(now);
        let until = now.saturating_add(window).to_bits();
        let before = self.until.fetch_max(until, Ordering::Relaxed);
        let starts = now.to_bits() >= before;
        if starts {
            events::pacing_lagging(lag, limits.sent_within());
        }
        starts
    }
}
