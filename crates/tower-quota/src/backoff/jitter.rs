//! Exponential backoff and the jitter strategies.

use std::time::Duration;

use rand::Rng;

use super::InvalidBackoff;

/// How a backoff delay is randomized, after the AWS Architecture Blog's
/// "Exponential Backoff and Jitter". With `t = min(max, base × 2^(n-1))` for
/// the `n`-th retry:
///
/// | strategy | delay before the `n`-th retry |
/// |---|---|
/// | [`Full`](Jitter::Full) | uniform in `[0, t]` |
/// | [`Equal`](Jitter::Equal) | `t/2` + uniform in `[0, t/2]` |
/// | [`Decorrelated`](Jitter::Decorrelated) | `min(max, uniform in [base, 3 × previous])`, `previous` starting at `base` |
/// | [`None`](Jitter::None) | `t` |
///
/// Full jitter spreads retries the most and is the default. `None` is for
/// comparison only: requests that fail together retry together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// Uniform in `[0, t]`.
    #[default]
    Full,
    /// Half of `t`, plus uniform in `[0, t/2]`: never shorter than `t/2`.
    Equal,
    /// Grows from the previous delay rather than the attempt number:
    /// uniform in `[base, 3 × previous]`, capped.
    Decorrelated,
    /// No randomness: exactly `t`.
    None,
}

/// Exponential backoff from `base` to `max` with a [`Jitter`] strategy.
///
/// ```
/// use std::time::Duration;
/// use tower_quota::backoff::{Backoff, Jitter};
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), Jitter::Full)?;
/// let mut rng = rand::rng();
/// let delay = backoff.delay(3, Duration::ZERO, &mut rng);
/// assert!(delay <= Duration::from_millis(400));
/// assert_eq!(backoff.ceiling(10), Duration::from_secs(1));
/// # Ok::<(), tower_quota::backoff::InvalidBackoff>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub(super) base: Duration,
    pub(super) max: Duration,
    pub(super) jitter: Jitter,
}

impl Backoff {
    /// Backoff from `base` up to `max`.
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff::ZeroBase`] for a zero `base`,
    /// [`InvalidBackoff::MaxBelowBase`] when `max < base`.
    pub fn new(base: Duration, max: Duration, jitter: Jitter) -> Result<Self, InvalidBackoff> {
        if base.is_zero() {
            return Err(InvalidBackoff::ZeroBase);
        }
        if max < base {
            return Err(InvalidBackoff::MaxBelowBase { base, max });
        }
        Ok(Backoff { base, max, jitter })
    }

    /// The delay before the first retry, before jitter.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap: no delay is longer.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The jitter strategy.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The same backoff with another strategy.
    pub fn with_jitter(self, jitter: Jitter) -> Self {
        Backoff { jitter, ..self }
    }

    /// `t` for the `retry`-th retry (1 for the first): `min(max, base × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let nanos = nanos(self.base).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }

    /// Draws the delay before the `retry`-th retry (1 for the first).
    /// `previous` is the delay drawn before the previous retry, used by
    /// [`Jitter::Decorrelated`] (pass anything for the first retry: it
    /// starts from `base`).
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, previous: Duration, rng: &mut R) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(retry),
            Jitter::Full => uniform(rng, 0, nanos(self.ceiling(retry))),
            Jitter::Equal => {
                let ceiling = nanos(self.ceiling(retry));
                let half = ceiling / 2;
                Duration::from_nanos(half) + uniform(rng, 0, ceiling - half)
            }
            Jitter::Decorrelated => {
                let previous = if retry <= 1 {
                    self.base
                } else {
                    previous.max(self.base)
                };
                let upper = nanos(previous).saturating_mul(3);
                uniform(rng, nanos(self.base), upper).min(self.max)
            }
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Uniform in `[low, high]` nanoseconds.
fn uniform<R: Rng + ?Sized>(rng: &mut R, low: u64, high: u64) -> Duration {
    if high <= low {
        return Duration::from_nanos(low);
    }
    Duration::from_nanos(rng.random_range(low..=high))
}
