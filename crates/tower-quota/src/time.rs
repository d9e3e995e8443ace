//! Instant arithmetic on durations from users and servers.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

/// The clock, read once at most, and only when a path needs it: a call
/// that finds nothing time-dependent to decide reads none.
#[derive(Default)]
pub(crate) struct LazyNow(Cell<Option<Instant>>);

impl LazyNow {
    /// The instant of the first call, read then.
    pub(crate) fn get(&self) -> Instant {
        match self.0.get() {
            Some(now) => now,
            None => {
                let now = Instant::now();
                self.0.set(Some(now));
                now
            }
        }
    }
}

/// As far ahead as a wait goes: 30 years, tokio's own "far future".
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `at + duration`, or 30 years on when the sum is past what an instant
/// holds: never the panic of `Instant + Duration` on overflow. A duration
/// comes from a user (`Duration::MAX` for "no limit") or a server, and no
/// wait reaches 30 years.
pub(crate) fn saturating_add(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_lazy_clock_is_read_once_at_its_first_use() {
        let lazy = LazyNow::default();
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = lazy.get();
        assert_eq!(first, Instant::now(), "read at the first use, not before");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(lazy.get(), first, "and kept");
    }

    #[test]
    fn a_sum_past_the_clock_is_thirty_years_on() {
        let now = Instant::now();
        assert_eq!(
            saturating_add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(saturating_add(now, Duration::MAX), now + FAR_FUTURE);
    }
}
