//! The retry budget: retries may add only a fraction to the load.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

use super::InvalidBackoff;

/// Limits retries to a fraction of requests, shared by every clone of a
/// layer; a thin, validated wrapper over tower's
/// [`TpsBudget`](tower::retry::budget::TpsBudget).
///
/// A fixed number of attempts per request does not bound the load a retry
/// layer adds: when a provider falls over, every request makes all its
/// attempts and the load triples just when the provider can least take it.
/// A budget bounds it instead: each logical request deposits into the
/// budget, each retry withdraws, and retries stop when it is empty. Over
/// `ttl`, at most `ratio` × requests retries go out, plus a floor of
/// `min_per_second` retries per second so that a client sending few
/// requests can still retry.
///
/// The default allows 20% of requests plus 10 retries per second, over a
/// 10-second window.
///
/// ```
/// use std::time::Duration;
/// use tower_quota::backoff::RetryBudget;
///
/// // 10% of requests, at least 1 retry a second, over 10 s.
/// let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.1)?;
/// # Ok::<(), tower_quota::backoff::InvalidBackoff>(())
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    tps: Arc<TpsBudget>,
    ttl: Duration,
    min_per_second: u32,
    ratio: f32,
}

impl RetryBudget {
    /// A budget that allows `ratio` retries per request (0.2 is 20%) plus
    /// `min_per_second` retries per second, counted over the last `ttl`.
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff`] when `ttl` is outside 1 to 60 seconds, `ratio` is
    /// outside 0 to 1000 (or not a number), or `min_per_second` is
    /// `i32::MAX` or more (tower's budget refuses those).
    pub fn new(ttl: Duration, min_per_second: u32, ratio: f32) -> Result<Self, InvalidBackoff> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(InvalidBackoff::BudgetTtlOutOfRange(ttl));
        }
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(InvalidBackoff::BudgetRatioOutOfRange);
        }
        // tower's budget needs `min_per_second < i32::MAX` (it asserts so).
        if min_per_second >= i32::MAX.unsigned_abs() {
            return Err(InvalidBackoff::BudgetMinPerSecondTooLarge(min_per_second));
        }
        Ok(RetryBudget {
            tps: Arc::new(TpsBudget::new(ttl, min_per_second, ratio)),
            ttl,
            min_per_second,
            ratio,
        })
    }

    /// How long a deposit counts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The floor of retries allowed per second.
    pub fn min_per_second(&self) -> u32 {
        self.min_per_second
    }

    /// Retries allowed per request deposited.
    pub fn ratio(&self) -> f32 {
        self.ratio
    }
}

impl Default for RetryBudget {
    /// 20% of requests plus 10 retries per second, over 10 seconds.
    fn default() -> Self {
        RetryBudget {
            tps: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            ttl: Duration::from_secs(10),
            min_per_second: 10,
            ratio: 0.2,
        }
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        self.tps.deposit();
    }

    fn withdraw(&self) -> bool {
        self.tps.withdraw()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.ttl)
            .field("min_per_second", &self.min_per_second)
            .field("ratio", &self.ratio)
            .field("tokens", &self.tps)
            .finish()
    }
}
