//! The burst a key's provider tolerates, learned from its refusals.
//!
//! An exact sliding log lets a whole window's quota go at once, and when a
//! window's slots free together, whatever waits leaves as one burst. A
//! provider that enforces the same rate without bursts (a leaky bucket or
//! GCRA, a sliding-window counter) refuses most of such a burst. The pacer
//! adds spacing under the log, in the way of GCRA: at most `burst` requests
//! back to back, then one per emission interval (the shortest quota's
//! window, widened by the key's margins, over its `max_calls`; quotas with
//! longer windows are left to the exact log).
//!
//! It starts inactive (the log alone decides: a sliding-log provider keeps
//! every burst it allows) and halves the burst on every refusal the
//! provider sends, down to one: even spacing. It probes for a larger burst
//! by doubling it after a quiet spell, `8 × window` at first; a probe that
//! meets a refusal within a window doubles the spell before the next one
//! (up to `64 × window`), so a provider that allows no burst at all costs one
//! refused request per spell, and a refusal that was an accident (a clock
//! that drifted) costs a few spells of spacing. When the burst reaches the
//! quota the pacer turns itself off. Under a steady backlog the burst does
//! not matter, GCRA emits one per interval whatever it is; it decides how
//! many go at once after an idle spell or when a window's slots free
//! together. Multiplicative in both directions, with a probe backoff,
//! rather than AIMD or CUBIC: there is one parameter to learn, bounded by
//! the quota, and every refusal costs a whole `Retry-After` pause of the
//! key, so probing must be rare and the decrease immediate.
//!
//! The pacer only ever delays admissions the log allows: the log's bound,
//! never more than a quota in any window, holds whatever it learns.

use std::time::Duration;

use tokio::time::Instant;

use super::quota::Limits;

/// The spacing a key learned; inactive until its provider refuses one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pacer {
    /// Requests allowed back to back; `None`: no spacing (the log alone).
    burst: Option<u64>,
    /// GCRA's theoretical arrival time of the next request.
    tat: Option<Instant>,
    /// The last refusal or increase.
    changed_at: Option<Instant>,
    /// The last increase, while a refusal within a window of it may still
    /// prove it wrong.
    probed_at: Option<Instant>,
    /// The quiet spell before the next increase is `window << spell`.
    spell: u32,
}

/// The first quiet spell, in windows: `1 << FIRST_SPELL`.
const FIRST_SPELL: u32 = 3;
/// The longest quiet spell, in windows: `1 << LAST_SPELL`.
const LAST_SPELL: u32 = 6;

/// A change of a key's burst, for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Adapted {
    /// Requests now allowed back to back; `None`: spacing is off.
    pub(crate) burst: Option<u64>,
    /// The emission interval of one request.
    pub(crate) interval: Duration,
}

impl Pacer {
    /// The earliest instant a request of `cost` may go (`None`: now).
    pub(crate) fn earliest(&self, cost: u64, limits: &Limits, extra: Duration) -> Option<Instant> {
        let (burst, tat) = (self.burst?, self.tat?);
        if step(limits, extra, cost).is_zero() {
            return None;
        }
        let tolerance = step(limits, extra, 1).saturating_mul(saturate(burst - 1));
        tat.checked_sub(tolerance)
    }

    /// Records an admission of `cost` at `now`; returns the new burst when
    /// a window without refusals raised it.
    pub(crate) fn admitted(
        &mut self,
        now: Instant,
        cost: u64,
        limits: &Limits,
        extra: Duration,
    ) -> Option<Adapted> {
        let burst = self.burst?;
        let advance = step(limits, extra, cost);
        if advance.is_zero() {
            return None;
        }
        let from = self.tat.map_or(now, |tat| tat.max(now));
        self.tat = Some(from.checked_add(advance).unwrap_or(from));
        let window = shortest_window(limits);
        if self
            .probed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= window)
        {
            // The last increase met no refusal for a window.
            self.probed_at = None;
        }
        let spell = window.saturating_mul(1 << self.spell.min(LAST_SPELL));
        let quiet = self
            .changed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= spell);
        if !quiet {
            return None;
        }
        self.changed_at = Some(now);
        self.probed_at = Some(now);
        let raised = burst.saturating_mul(2);
        self.burst = (raised < ceiling(limits)).then_some(raised);
        if self.burst.is_none() {
            self.tat = None;
            self.probed_at = None;
            self.spell = FIRST_SPELL;
        }
        Some(Adapted {
            burst: self.burst,
            interval: step(limits, extra, 1),
        })
    }

    /// The provider refused a request at `now`: halves the burst, and
    /// spaces the next request an interval after now.
    pub(crate) fn refused(&mut self, now: Instant, limits: &Limits, extra: Duration) -> Adapted {
        let current = self.burst.unwrap_or_else(|| ceiling(limits));
        let burst = (current / 2).max(1);
        match self.burst {
            None => self.spell = FIRST_SPELL,
            // The last increase was too much: wait longer before the next.
            Some(_) if self.probed_at.take().is_some() => {
                self.spell = (self.spell + 1).min(LAST_SPELL);
            }
            Some(_) => {}
        }
        self.burst = Some(burst);
        self.changed_at = Some(now);
        let interval = step(limits, extra, 1);
        let next = now.checked_add(interval).unwrap_or(now);
        self.tat = Some(self.tat.map_or(next, |tat| tat.max(next)));
        Adapted {
            burst: Some(burst),
            interval,
        }
    }

    /// The burst now (`None`: spacing is off).
    pub(crate) fn burst(&self) -> Option<u64> {
        self.burst
    }
}

/// How far a request of `cost` moves GCRA's clock: its share of the
/// shortest window (widened by the safety margin and `extra`), `window ×
/// units / max_calls`, the longest such share if several quotas have that
/// window. Zero when it spends nothing. Longer windows are left to the
/// exact log: spacing by an hourly quota would hold every request for the
/// hour's share.
fn step(limits: &Limits, extra: Duration, cost: u64) -> Duration {
    let margin = limits.safety_margin().saturating_add(extra);
    let window = shortest_window(limits);
    shortest(limits)
        .map(|quota| {
            let span = window.saturating_add(margin).as_nanos();
            let nanos = span.saturating_mul(u128::from(quota.units(cost)))
                / u128::from(quota.max_calls().max(1));
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        })
        .max()
        .unwrap_or(Duration::ZERO)
}

/// The burst at which spacing turns off: the smallest `max_calls` of the
/// quotas with the shortest window.
fn ceiling(limits: &Limits) -> u64 {
    shortest(limits)
        .map(|quota| quota.max_calls())
        .min()
        .unwrap_or(1)
        .max(1)
}

/// The quotas with the shortest window: the ones spacing follows.
fn shortest(limits: &Limits) -> impl Iterator<Item = &super::Quota> {
    let window = shortest_window(limits);
    limits
        .quotas()
        .iter()
        .filter(move |quota| quota.window() == window)
}

fn shortest_window(limits: &Limits) -> Duration {
    limits
        .quotas()
        .iter()
        .map(|quota| quota.window())
        .min()
        .unwrap_or(Duration::ZERO)
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}
