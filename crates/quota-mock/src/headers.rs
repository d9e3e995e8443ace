//! Which quota headers responses carry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::quota::RuleView;

/// The quota header dialect the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HeaderDialect {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// (epoch seconds, rounded up) for the most restrictive rule: the one
    /// with the least remaining quota, and among those the one that takes
    /// longest to free a unit. `Reset` is when that rule next frees a unit
    /// (for a fixed window, the boundary), so a client that waits until
    /// `Reset` after `Remaining: 0` is never early.
    #[default]
    XRateLimit,
    /// No quota headers; only `Retry-After` on 429s.
    None,
}

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

impl HeaderDialect {
    pub(crate) fn write(self, view: &RuleView, headers: &mut HeaderMap) {
        match self {
            HeaderDialect::XRateLimit => {
                headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(view.limit));
                headers.insert(
                    X_RATELIMIT_REMAINING.clone(),
                    HeaderValue::from(view.remaining),
                );
                headers.insert(
                    X_RATELIMIT_RESET.clone(),
                    HeaderValue::from(epoch_seconds_after(view.reset_after)),
                );
            }
            HeaderDialect::None => {}
        }
    }
}

/// Delay-seconds rounded up, so a client that obeys it is never early.
pub(crate) fn delay_seconds(delay: Duration) -> u64 {
    let seconds = delay.as_secs();
    if delay.subsec_nanos() > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    }
}

/// The wall-clock epoch second (rounded up) `delay` from now. Wall time is
/// used for the epoch value only; every decision follows tokio's clock.
fn epoch_seconds_after(delay: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    delay_seconds(now.saturating_add(delay))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_seconds_round_up() {
        assert_eq!(delay_seconds(Duration::ZERO), 0);
        assert_eq!(delay_seconds(Duration::from_millis(1)), 1);
        assert_eq!(delay_seconds(Duration::from_secs(2)), 2);
        assert_eq!(delay_seconds(Duration::from_millis(2001)), 3);
    }
}
