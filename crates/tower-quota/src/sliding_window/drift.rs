//! The margin a key learns from refusals its log had room for.

use std::time::Duration;

use tokio::time::Instant;

use super::Limits;
use super::stamp::Stamp;

/// The extra margin a key adds after its provider refused requests that the
/// key's log had room for: the provider's window runs later than the
/// client's (a slower clock, a later count, a longer window than documented).
///
/// Each refusal widens it (doubled plus a step of 1% of the window, at least
/// the safety margin, up to a quarter of the shortest window); it halves for
/// every 100 windows without one. The refusals within a window of a widening
/// are one episode (a burst sent before the provider's first refusal came
/// back) and widen it once. Stores keep one per key; the in-process and the
/// Redis store share this logic.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriftMargin {
    /// The margin at `since`, in nanoseconds (saturating: 584 years).
    extra: u64,
    since: Option<Stamp>,
}

impl DriftMargin {
    /// The margin the key adds at `now`, for a shortest window of `window`.
    pub fn extra(&self, now: Instant, window: Duration) -> Duration {
        let Some(since) = self.since else {
            return Duration::ZERO;
        };
        let decay = window.saturating_mul(100).max(Duration::from_millis(1));
        let halvings =
            Stamp::of(now).saturating_duration_since(since).as_nanos() / decay.as_nanos();
        u32::try_from(halvings)
            .ok()
            .and_then(|halvings| self.extra.checked_shr(halvings))
            .map_or(Duration::ZERO, Duration::from_nanos)
    }

    /// A refusal at `now` of a key with `limits`: widens the margin unless
    /// the refusal belongs to the episode of the last widening. Returns the
    /// margin before and after, or `None` when it did not widen.
    pub fn refused(&mut self, now: Instant, limits: &Limits) -> Option<(Duration, Duration)> {
        let window = shortest_window(limits);
        let stamp = Stamp::of(now);
        if self
            .since
            .is_some_and(|since| stamp.saturating_duration_since(since) < window)
        {
            return None;
        }
        let before = self.extra(now, window);
        // A step of 1% of the window (at least the margin): a provider
        // whose clock runs 3% slow is matched after two episodes.
        let step = limits
            .safety_margin()
            .max(window / 100)
            .max(Duration::from_millis(1));
        let cap = (window / 4).max(step);
        let after = before.saturating_mul(2).saturating_add(step).min(cap);
        self.extra = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        self.since = Some(stamp);
        Some((before, after))
    }
}

/// The shortest window of `limits`' quotas.
pub(crate) fn shortest_window(limits: &Limits) -> Duration {
    limits
        .quotas()
        .iter()
        .map(super::Quota::window)
        .min()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SlidingWindowLayer;

    #[tokio::test(start_paused = true)]
    async fn widens_once_per_episode_up_to_a_quarter_window_and_decays() {
        let layer = SlidingWindowLayer::new(10, Duration::from_secs(1)).unwrap();
        let limits = layer.limits();
        let ms = Duration::from_millis;
        let mut drift = DriftMargin::default();
        let start = Instant::now();
        // A step of 1% of the window (10 ms), then doubled plus the step.
        assert_eq!(drift.refused(start, limits), Some((ms(0), ms(10))));
        assert_eq!(drift.refused(start + ms(500), limits), None, "same episode");
        let mut at = start;
        for expected in [30, 70, 150, 250, 250] {
            at += Duration::from_secs(1);
            assert_eq!(
                drift.refused(at, limits).map(|(_, after)| after),
                Some(ms(expected))
            );
        }
        // Halved per 100 windows without a refusal.
        assert_eq!(
            drift.extra(at + Duration::from_secs(100), Duration::from_secs(1)),
            ms(125)
        );
        assert_eq!(
            drift.extra(at + Duration::from_secs(10_000), Duration::from_secs(1)),
            ms(0)
        );
    }
}
