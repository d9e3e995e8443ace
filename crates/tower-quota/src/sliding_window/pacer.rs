//! The burst a key's provider tolerates, learned from its refusals.
//!
//! An exact sliding log lets a whole window's quota go at once, and when a
//! window's slots free together, whatever waits leaves as one burst. A
//! provider that enforces the same rate without bursts (a leaky bucket or
//! GCRA, a sliding-window counter) refuses most of such a burst. The pacer
//! adds spacing under the log, in the way of GCRA: at most `burst` requests
//! back to back, then one per emission interval (the shortest quota's
//! window, widened by the safety margin, over its `max_calls`; quotas with
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
//! Spacing also learns the rate. Evenly spaced requests that are refused
//! more than once over two windows (past the first window of spacing, whose
//! refusals may still be of the burst before it) mean the provider's rate is
//! below the quota's: the rate is cut to what the provider accepted over
//! those windows, less 5 %, at most by half per window and not below 5 % of
//! the quota. Every two quiet windows raise it by a tenth of the quota's;
//! the burst is probed again only at the full rate.
//!
//! The pacer only ever delays admissions the log allows: the log's bound,
//! never more than a quota in any window, holds whatever it learns.

use std::time::Duration;

use tokio::time::Instant;

use super::quota::Limits;

/// The spacing a key learned; inactive until its provider refuses one.
#[derive(Debug, Clone)]
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
    /// The rate the key sends at, in thousandths of the quota's.
    rate: u32,
    /// Admissions and refusals in the current and the previous window.
    counts: Counts,
    /// When the burst came down to one: refusals after a window of even
    /// spacing are about the rate, not the burst.
    spaced_since: Option<Instant>,
    /// The last cut of the rate: at most one a window.
    cut_at: Option<Instant>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            burst: None,
            tat: None,
            changed_at: None,
            probed_at: None,
            spell: 0,
            rate: FULL_RATE,
            counts: Counts::default(),
            spaced_since: None,
            cut_at: None,
        }
    }
}

/// The quota's rate, in thousandths.
const FULL_RATE: u32 = 1000;
/// The lowest rate the pacer cuts to, in thousandths of the quota's.
const MIN_RATE: u32 = 50;
/// How much a quiet spell raises the rate, in thousandths of the quota's.
const RATE_STEP: u32 = 100;

/// Admissions and refusals of a key in fixed windows of the shortest
/// quota's length: the current and the previous one.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    start: Option<Instant>,
    sent: [u32; 2],
    refused: [u32; 2],
}

impl Counts {
    /// Moves the windows on to `now`.
    fn roll(&mut self, now: Instant, window: Duration) {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < window || window.is_zero() {
            return;
        }
        if elapsed < window.saturating_mul(2) {
            self.sent = [0, self.sent[0]];
            self.refused = [0, self.refused[0]];
            self.start = start.checked_add(window);
        } else {
            *self = Counts {
                start: Some(now),
                ..Counts::default()
            };
        }
    }

    /// Admissions and refusals over the current and the previous window.
    fn totals(&self) -> (u32, u32) {
        (
            self.sent[0].saturating_add(self.sent[1]),
            self.refused[0].saturating_add(self.refused[1]),
        )
    }
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
    pub(crate) fn earliest(&self, cost: u64, limits: &Limits) -> Option<Instant> {
        let (burst, tat) = (self.burst?, self.tat?);
        if self.step(limits, cost).is_zero() {
            return None;
        }
        let tolerance = self.step(limits, 1).saturating_mul(saturate(burst - 1));
        tat.checked_sub(tolerance)
    }

    /// Records an admission of `cost` at `now`; returns the new burst when
    /// a window without refusals raised it.
    pub(crate) fn admitted(&mut self, now: Instant, cost: u64, limits: &Limits) -> Option<Adapted> {
        let window = shortest_window(limits);
        self.counts.roll(now, window);
        self.counts.sent[0] = self.counts.sent[0].saturating_add(1);
        let burst = self.burst?;
        let advance = self.step(limits, cost);
        if advance.is_zero() {
            return None;
        }
        let from = self.tat.map_or(now, |tat| tat.max(now));
        self.tat = Some(from.checked_add(advance).unwrap_or(from));
        if self
            .probed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= window)
        {
            // The last increase met no refusal for a window.
            self.probed_at = None;
        }
        if self.rate < FULL_RATE {
            // The rate recovers a step every two quiet windows; the burst
            // waits for the rate.
            let quiet = self
                .changed_at
                .is_none_or(|at| now.saturating_duration_since(at) >= window.saturating_mul(2));
            if !quiet {
                return None;
            }
            self.changed_at = Some(now);
            self.rate = self.rate.saturating_add(RATE_STEP).min(FULL_RATE);
            return Some(Adapted {
                burst: self.burst,
                interval: self.step(limits, 1),
            });
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
            self.spaced_since = None;
            self.spell = FIRST_SPELL;
        }
        Some(Adapted {
            burst: self.burst,
            interval: self.step(limits, 1),
        })
    }

    /// The provider refused a request at `now`: halves the burst, and
    /// spaces the next request an interval after now.
    pub(crate) fn refused(&mut self, now: Instant, limits: &Limits) -> Adapted {
        let window = shortest_window(limits);
        let after_a_window =
            |at: Option<Instant>| at.is_some_and(|at| now.saturating_duration_since(at) >= window);
        self.counts.roll(now, window);
        // Refusals in the first window of even spacing may still be of the
        // burst before it: they say nothing of the rate.
        if after_a_window(self.spaced_since) {
            self.counts.refused[0] = self.counts.refused[0].saturating_add(1);
        }
        if self.burst == Some(1)
            && after_a_window(self.spaced_since)
            && self.cut_at.is_none_or(|_| after_a_window(self.cut_at))
            && self.counts.totals().1 >= 2
        {
            // Evenly spaced, and refused in this window and the one before:
            // the provider's rate is below ours, not a passing burst or
            // arrivals the network bunched. Send at the rate it accepted,
            // a little under; at most half as fast per cut.
            let (sent, refused) = self.counts.totals();
            let accepted = u64::from(sent.saturating_sub(refused));
            let kept = (accepted * 950 / u64::from(sent.max(1))).max(500);
            let cut = u64::from(self.rate) * kept / 1000;
            self.rate = u32::try_from(cut)
                .unwrap_or(FULL_RATE)
                .clamp(MIN_RATE, self.rate);
            self.cut_at = Some(now);
            self.counts = Counts {
                start: Some(now),
                ..Counts::default()
            };
        }
        let current = self.burst.unwrap_or_else(|| ceiling(limits));
        let burst = (current / 2).max(1);
        if burst == 1 && self.spaced_since.is_none() {
            // Only what is sent evenly spaced tells of the rate.
            self.spaced_since = Some(now);
            self.counts = Counts {
                start: Some(now),
                ..Counts::default()
            };
        }
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
        let interval = self.step(limits, 1);
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

    /// [`step`] at the key's rate.
    fn step(&self, limits: &Limits, cost: u64) -> Duration {
        let full = step(limits, cost);
        full.saturating_mul(FULL_RATE) / self.rate.max(MIN_RATE)
    }
}

/// How far a request of `cost` moves GCRA's clock: its share of the
/// shortest window (widened by the safety margin), `window ×
/// units / max_calls`, the longest such share if several quotas have that
/// window. Zero when it spends nothing. Longer windows are left to the
/// exact log: spacing by an hourly quota would hold every request for the
/// hour's share.
fn step(limits: &Limits, cost: u64) -> Duration {
    // Not the key's drift margin: a provider whose window runs late needs
    // slots held longer, not requests spaced wider.
    let margin = limits.safety_margin();
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
