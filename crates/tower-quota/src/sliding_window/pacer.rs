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
//! provider sends, down to one: even spacing, at 95 % of the quota's rate
//! (a GCRA with no tolerance refuses every request the network brought
//! closer than its interval). It probes for a larger burst
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
//! Spacing also learns the rate. A refusal of evenly spaced requests (past
//! the first window of spacing, whose refusals may still be of the burst
//! before it, and at most once a window) means the provider's rate is below
//! the key's: the provider holds the key to about what it accepted in the
//! window that ends at the refusal (no more, for a sliding log or a fixed
//! window; about that for GCRA and sliding-window counters), counted in
//! eighths of a window. The rate is cut to 95 % of that, at most by half
//! per cut (a sliding-window counter counts refused requests, so a window
//! that held a refused burst says little) and not below 5 % of the quota.
//! When the key did not send through the whole window (a `Retry-After`
//! pause held it), the count undercounts a provider that counts a rate: it
//! takes a second such refusal within two windows to cut.
//! A refusal near the quota of a key that still sends bursts is a drift (a
//! provider's window that runs late) instead, and widens the key's margin;
//! once spacing is even, the rate answers both.
//!
//! Every refusal costs the key a `Retry-After` pause, so a cut rate then
//! holds for a quiet spell (`4 × window` at first) before a probe raises it
//! by 5 % (at least one request a window). A raise refused within a window
//! goes back to the rate before it (or to 95 % of what the window accepted,
//! if more) and doubles the spell before the next probe, up to `16 ×
//! window`; from 90 % of the quota's rate, where a probe has little left to
//! win, the spell is `32 × window` at least and up to `64 × window`. A
//! provider that stays where it is costs one refusal per spell. A raise
//! that went a window without refusal is confirmed: the rate grows by half
//! every quiet window until a refusal or the full rate. Additive
//! probes off a plateau and multiplicative growth once the provider has
//! shown it moved are CUBIC's shape, in steps of a window (TCP's CUBIC and
//! the AWS SDKs' adaptive mode grow a window or a send rate the same way):
//! cautious near the rate where the provider last refused, fast away from
//! it. The burst is probed again only at the full rate, once a raise to it
//! is confirmed.
//!
//! A fresh key does not know its provider yet, and a burst is what
//! providers of other shapes punish: a GCRA without tolerance refuses all
//! but one of it, a sliding-window counter all of the burst that the slots
//! of a full first window free together. So when the caller reports
//! refusals, a fresh key starts as TCP does ([`Start`]): its requests go
//! at the pace their answers come back, one first, then one more for each
//! accepted answer (the burst doubles every round trip), up to the quota.
//! An answer that says what the provider has left (`X-RateLimit-Remaining`
//! of `-Limit`, the IETF fields) gives the burst it tolerates at once:
//! `remaining + 1` after the first request is a window's quota for a
//! sliding log, a fixed window or a full bucket, and one for a GCRA without
//! tolerance, which is then spaced from its second request on, refused
//! nothing: the second goes an interval after the first answer (the
//! provider may have seen the first request as late as that, when it
//! opened a connection). The first request that needs a slot the log
//! freed (a window after the first admission), when that window held
//! about a quota, goes alone and the key waits for its answer. Accepted, the provider is a
//! sliding log, or a sliding-window counter that the network delayed: by
//! the probe's arrival it weighs the first period a little less (at 100 a
//! second, a hundredth of a window is a request). The two free room
//! differently: the log as the first window's slots went, together, at the
//! pace of the first answers; the counter at the quota's rate. So for a
//! window ([`Ramp`]) the freed slots go one per interval at the quota's
//! rate, and at once as far as the room the provider states on each answer
//! allows (less the requests still unanswered; only the room of a quota no
//! larger than the key's: a daily quota's room says nothing of a second's);
//! then the key bursts as its log allows. Against a log, the slots go as the provider frees them, a
//! round trip late; against a counter, none is refused (across quota-mock's
//! simulated network at 100/s, 60 were, of a burst). Answered later than
//! the patience below, the log has decided already and the key bursts. A
//! counter across a network slower than that refuses most of such a burst
//! (84 of 99 at 100/s with a 100 ms round trip, in `tests/start.rs`'s
//! model); going at the quota's rate without the probe's answer spares it,
//! but holds the slots of a sliding log that is slow to answer until the
//! first answer comes (the network benchmark's slow provider, 0.2–0.8 s
//! answers: utilization 0.951 to 0.918), and the two look alike until then.
//! Refused, the provider counts a rate (a sliding-window counter still
//! weighs the full window before),
//! and the key is spaced at once, one request refused instead of a
//! window's worth, each refusal costing the whole key a `Retry-After`.
//! An answer is awaited a sixteenth of the window at most: a provider slower
//! than that would cost the key more of its window than the wait spares it,
//! and the log alone decides until the answer comes.
//! That refusal may also be a sliding log whose window runs late: the key
//! widens its margin as well. Spaced after it, the key goes two intervals
//! after the refusal (a counter weighs the refused probe too), at
//! `1 - 2/N` of the quota's rate (at least 95 %): a counter holds a key
//! spaced evenly to `N - 1` a window.
//!
//! Spaced one at a time to a provider that may have no tolerance, two
//! requests never go closer than the key's own interval, a little under
//! the quota's: room for the network, which brings requests together on
//! their way (against a GCRA without tolerance at 100/s over loopback, by
//! up to 0.4 ms of the 10 ms interval, and by 2 or 3 ms now and then).
//! Spaced by refusals, the key sends at 95 % of the quota's rate; spaced
//! because the provider said it has no room for a burst, the room is a
//! timer tick, a hundredth of the interval if more, a twentieth at most
//! ([`spaced_rate`]: 95 % at 100/s, 98 % at 20/s, 99 % from 10/s down):
//! such a provider has no tolerance, and a refusal it sends is the
//! network's, not a rate to learn. A network whose jitter is wider than
//! that room (more than one admission in twenty of a window refused, and
//! two at least) widens it instead: the rate is cut by the share refused,
//! by half at most, once a window at most. Across quota-mock's simulated
//! network (5 to 25 ms each way) a third of the requests were refused
//! without it, at 20/s and at 100/s.
//! With a floor at the quota's own
//! interval instead, one arrival in a hundred to a few in a hundred was
//! refused there, each costing its request a whole `Retry-After`. A timer
//! that wakes late costs that request its lateness, and the next one goes
//! a step after it; the waiter that spacing holds wakes a tick early and
//! looks at its exact instant, which wins back a tick only when that wake
//! comes at or after the instant (tokio's timer has millisecond ticks). At
//! 100/s over loopback, with a step of 10.5 ms, the gaps at the provider
//! were 10.50–11.56 ms (1st to 95th percentile, 10.76 ms at the median),
//! 0.92 of the rate, with the client alone on two CPUs; with another
//! client's 64 requests in flight beside it, 10.5–10.7 ms or 11.4–11.6 ms
//! (11.43 ms at the median), 0.89. tokio's time driver parks for whole milliseconds counted
//! from the instant it parks, so the waiter wakes a whole number of
//! milliseconds after the admission before it plus the time the runtime
//! took to park after that admission: the gap is the least such sum at or
//! past the step, and which one it is turns on a few tenths of a
//! millisecond. Less room lets the shorter one go more often, and costs
//! refusals where the client's CPUs are busy: with a room of a
//! fortieth of the interval (10.25 ms at 100/s), 0.90–0.95 of the rate
//! in seven runs alone against 0.91–0.93 with a twentieth; with a floor
//! halfway into the room while a test build shared the two CPUs, 2.3–3.0 %
//! refused and 0.75–0.83 of the rate against 0.5–2.6 % and 0.78–0.90.
//! Spaced one at a time to a provider that took a window's quota at once
//! (a sliding-window counter), the schedule holds through a late timer
//! instead: the next request goes at its instant.
//! A provider that said how much it takes at once, with a quota at least
//! the key's, keeps its rate when it refuses a spaced request: the
//! network brought two together.
//!
//! A spell of jitter passes (a busy host, a stall at the provider), so
//! the first cut of such a key's rate for bunched refusals holds for
//! `8 × window` from its last cut, and then the key probes its way back
//! to the rate it was spaced at (a probe, then growth, as for any rate);
//! a probe the network still bunches goes back and doubles the spell, up
//! to `64 × window`. Jitter that stays costs a few refusals per probe (in
//! a model of the simulated network at 20/s, 17 in five minutes against
//! 22 with every cut held for `64 × window`), where a spell that passed
//! cost the key a twentieth of its rate or more for a minute. Below that
//! rate, one refusal is the network's accident: it neither ends the quiet
//! spell nor takes a raise back; more than a twentieth of a window
//! refused does.
//!
//! The pacer only ever delays admissions the log allows: the log's bound,
//! never more than a quota in any window, holds whatever it learns.

use std::num::NonZeroU64;
use std::time::Duration;

use tokio::time::Instant;

use super::stamp::Stamp;

use super::quota::Limits;
use crate::Room;

/// The spacing a key learned; inactive until its provider refuses one.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// Requests allowed back to back, one at least; `None`: no spacing
    /// (the log alone).
    burst: Option<NonZeroU64>,
    /// GCRA's theoretical arrival time of the next request.
    tat: Option<Stamp>,
    /// The last refusal or increase.
    changed_at: Option<Stamp>,
    /// The last increase, while a refusal within a window of it may still
    /// prove it wrong.
    probed_at: Option<Stamp>,
    /// The quiet spell before the next increase is `window << spell`.
    spell: u8,
    /// The rate the key sends at, in thousandths of the quota's.
    rate: u32,
    /// Admissions and refusals in the current and the previous window.
    counts: Counts,
    /// When the burst came down to one: refusals after a window of even
    /// spacing are about the rate, not the burst.
    spaced_since: Option<Stamp>,
    /// The last cut of the rate: at most one a window.
    cut_at: Option<Stamp>,
    /// The quiet spell before the next rate probe is `window << rate_spell`.
    rate_spell: u8,
    /// The last raise of the rate, while a refusal within a window of it
    /// may still prove it wrong.
    raised: Option<Raise>,
    /// The last refusal that did not cut the rate because the key had not
    /// sent through the whole window.
    deferred: Option<Stamp>,
    /// A fresh key's start, boxed: most keys are past it or never had one.
    start: Option<Box<Start>>,
    /// The provider said how much it takes at once, and the quota it
    /// counts: spaced requests it refuses were brought together by the
    /// network, not sent above its rate.
    told: bool,
    /// The provider took a whole quota at once (the key's first window)
    /// before it refused the slots that window freed together.
    tolerant: bool,
    /// The last admission while spaced.
    last: Option<Stamp>,
}

/// A fresh key's first window and first boundary: its admissions go at the
/// pace of their answers (see the module's docs).
#[derive(Debug, Clone, Copy)]
struct Start {
    /// Admissions allowed without an answer.
    allowed: u64,
    /// Admissions made since the start and not answered yet.
    unanswered: u64,
    /// The key's first admission, and its id.
    first: Option<(Stamp, u64)>,
    /// Admissions in the key's first window.
    sent: u64,
    /// The request that went alone past the first window, and when, while
    /// its answer is awaited.
    probe: Option<(u64, Stamp)>,
    /// The window after an accepted probe, while its freed slots go no
    /// faster than the quota's rate or the room the provider states.
    ramp: Option<Ramp>,
}

/// The window after a fresh key's accepted probe: a sliding log frees the
/// first window's slots as they went, together, where a sliding-window
/// counter frees room at the quota's rate, and one probe does not tell
/// them apart. So the freed slots go one per interval at the quota's rate,
/// plus what the provider says it has left.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    /// When the probe was accepted: the ramp lasts a window.
    began: Stamp,
    /// When the next request may go on the quota's rate.
    next: Stamp,
    /// Requests the provider's last stated room still allows at once.
    credit: u64,
}

impl Ramp {
    /// Whether the ramp's window is over at `now`.
    fn over(&self, now: Stamp, window: Duration) -> bool {
        now.saturating_duration_since(self.began) >= window
    }
}

/// A raise of the rate that a window without refusal has not confirmed yet.
#[derive(Debug, Clone, Copy)]
struct Raise {
    at: Stamp,
    /// The rate before it.
    from: u32,
    /// A probe off a plateau (not a step of growth after a confirmed one).
    probe: bool,
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
            rate_spell: FIRST_RATE_SPELL,
            raised: None,
            deferred: None,
            start: None,
            told: false,
            tolerant: false,
            last: None,
        }
    }
}

/// The quota's rate, in thousandths.
const FULL_RATE: u32 = 1000;
/// The share of the rate the provider accepted that a cut keeps, in
/// thousandths.
const KEPT: u32 = 950;
/// The share of a window's admissions, in thousandths, that a provider
/// without tolerance may refuse before a key it told so widens its room
/// for the network: above it, the network's jitter is wider than the room.
/// Over loopback, a tick of room leaves a few in a thousand refused.
const BUNCHED: u32 = 50;
/// The lowest rate the pacer cuts to, in thousandths of the quota's.
const MIN_RATE: u32 = 50;
/// The first quiet spell before a rate probe, in windows: `1 << FIRST_RATE_SPELL`.
const FIRST_RATE_SPELL: u8 = 2;
/// The longest quiet spell before a rate probe: `1 << LAST_RATE_SPELL`
/// windows, while the rate is under [`NEAR_FULL`]; `1 << LAST_SPELL` from
/// there, where a probe has little left to win.
const LAST_RATE_SPELL: u8 = 4;
/// Nine tenths of the quota's rate, in thousandths.
const NEAR_FULL: u32 = 900;
/// The quiet spell, `1 << BUNCHED_RATE_SPELL` windows from its last cut,
/// before a key told it has no tolerance probes back the rate it gave up
/// to a network that brought its requests together; each probe refused
/// doubles it, up to `1 << LAST_SPELL`.
const BUNCHED_RATE_SPELL: u8 = 3;

/// How late a timer may wake an admission without moving the schedule
/// after it: tokio's timer resolution.
pub(super) const TIMER_TICK: Duration = Duration::from_millis(1);

/// Slices of a window the counts keep.
const SLICES: usize = 8;

/// Admissions and refusals of a key over the last window, in slices of an
/// eighth of the shortest quota's window (the current slice and the eight
/// before it): 48 bytes, and a count of the last window within an eighth of
/// a window's traffic.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// When the current slice began.
    start: Option<Stamp>,
    /// The current slice's index, below [`RING`].
    current: u8,
    sent: [u16; RING],
    refused: [u16; RING],
}

/// The slices kept: the current one and a window's worth before it.
const RING: usize = SLICES + 1;

impl Counts {
    /// Moves the slices on to `now`.
    fn roll(&mut self, now: Stamp, window: Duration) {
        let slice = window / SLICES as u32;
        let start = *self.start.get_or_insert(now);
        if slice.is_zero() {
            return;
        }
        let elapsed = now.saturating_duration_since(start);
        if elapsed < slice {
            // Within the slice, as most admissions are: no division.
            return;
        }
        let steps = elapsed.as_nanos() / slice.as_nanos();
        if steps >= RING as u128 {
            *self = Counts {
                start: Some(now),
                ..Counts::default()
            };
            return;
        }
        for _ in 0..steps {
            // Below RING, nine: the conversion is exact.
            self.current = ((self.at() + 1) % RING) as u8;
            self.sent[self.at()] = 0;
            self.refused[self.at()] = 0;
        }
        let advanced = slice.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX));
        self.start = Some(start.saturating_add(advanced));
    }

    /// The current slice's index in the arrays.
    fn at(&self) -> usize {
        usize::from(self.current)
    }

    fn sent(&mut self) {
        let at = self.at();
        self.sent[at] = self.sent[at].saturating_add(1);
    }

    fn refused(&mut self) {
        let at = self.at();
        self.refused[at] = self.refused[at].saturating_add(1);
    }

    /// The share of the last window's admissions that the provider
    /// refused, in thousandths (after [`roll`](Self::roll)); `None` below
    /// two refusals, which may be one accident of the network.
    fn refused_share(&self) -> Option<u32> {
        let refused: u64 = self.refused.iter().map(|&count| u64::from(count)).sum();
        let sent: u64 = self.sent.iter().map(|&count| u64::from(count)).sum();
        if refused < 2 {
            return None;
        }
        let share = refused.saturating_mul(u64::from(FULL_RATE)) / sent.max(refused);
        Some(u32::try_from(share).unwrap_or(FULL_RATE))
    }

    /// Whether more than [`BUNCHED`] of the last window's admissions were
    /// refused (after [`roll`](Self::roll)).
    fn bunched(&self) -> bool {
        self.refused_share().is_some_and(|share| share > BUNCHED)
    }

    /// Whether the key sent in the first eighth of the window that ends
    /// now (after [`roll`](Self::roll)): it sent through the whole window.
    fn sent_from_start(&self) -> bool {
        let oldest = (self.at() + 1) % RING;
        let first = (self.at() + 2) % RING;
        self.sent[oldest] > 0 || self.sent[first] > 0
    }

    /// The admissions the provider accepted in the window that ends at
    /// `now` (after [`roll`](Self::roll)): every slice's, the oldest in
    /// proportion to its overlap with the window.
    fn accepted(&self, now: Stamp, window: Duration) -> u64 {
        let slice = window / SLICES as u32;
        let into = self
            .start
            .map_or(Duration::ZERO, |start| now.saturating_duration_since(start));
        let overlap = 1.0 - (into.as_secs_f64() / slice.as_secs_f64().max(1e-9)).min(1.0);
        let oldest = (self.at() + 1) % RING;
        (0..RING)
            .map(|i| {
                let accepted = f64::from(self.sent[i].saturating_sub(self.refused[i]));
                if i == oldest {
                    accepted * overlap
                } else {
                    accepted
                }
            })
            .sum::<f64>()
            .round() as u64
    }
}

/// The first quiet spell, in windows: `1 << FIRST_SPELL`.
const FIRST_SPELL: u8 = 3;
/// The longest quiet spell, in windows: `1 << LAST_SPELL`.
const LAST_SPELL: u8 = 6;

impl Start {
    /// Whether an admission at `now` is past the key's first window.
    fn past_first_window(&self, now: Stamp, limits: &Limits) -> bool {
        let window = shortest_window(limits);
        self.first
            .is_some_and(|(first, _)| now.saturating_duration_since(first) >= window)
    }
}

/// A change of a key's burst, for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Adapted {
    /// Requests now allowed back to back; `None`: spacing is off.
    pub(crate) burst: Option<u64>,
    /// The emission interval of one request.
    pub(crate) interval: Duration,
}

impl Pacer {
    /// A fresh key's pacer: with `starting`, its first burst goes at the
    /// pace of its answers.
    pub(crate) fn new(starting: bool) -> Self {
        Pacer {
            start: starting.then(|| {
                Box::new(Start {
                    allowed: 1,
                    unanswered: 0,
                    first: None,
                    sent: 0,
                    probe: None,
                    ramp: None,
                })
            }),
            ..Pacer::default()
        }
    }

    /// Until when the next admission waits for an answer, while the key is
    /// in its start (the log may have room for it); `None`: it need not.
    /// An answer is awaited a sixteenth of the shortest window at most: a
    /// provider slower than that to answer would cost the key more of its
    /// window than the refusals the wait may spare it.
    pub(crate) fn awaits_answer(&self, now: Instant, limits: &Limits) -> Option<Instant> {
        // Past its start (most keys, most of the time), a key awaits no
        // answer: no stamp is taken.
        self.start.as_ref()?;
        self.awaits_answer_at(Stamp::of(now), limits)
            .map(Stamp::instant)
    }

    /// [`awaits_answer`](Self::awaits_answer), at the stamp of `now`.
    pub(crate) fn awaits_answer_at(&self, now: Stamp, limits: &Limits) -> Option<Stamp> {
        let start = self.start.as_deref()?;
        if let Some(ramp) = start.ramp {
            // Past the ramp's window the log alone decides; within it, at
            // the quota's rate or on the provider's stated room.
            let over = ramp.over(now, shortest_window(limits));
            return (!over && ramp.credit == 0 && now < ramp.next).then_some(ramp.next);
        }
        let patience = shortest_window(limits) / 16;
        let until = |at: Stamp| {
            let until = at.saturating_add(patience);
            (now < until).then_some(until)
        };
        if let Some((_, at)) = start.probe {
            return until(at);
        }
        if start.past_first_window(now, limits) {
            // The probe goes alone.
            return None;
        }
        if start.unanswered < start.allowed {
            return None;
        }
        until(start.first?.0)
    }

    /// Whether the key is still in its start.
    pub(crate) fn starting(&self) -> bool {
        self.start.is_some()
    }

    /// The provider answered admission `id`, or it was dropped. Returns
    /// whether a waiting request may now go.
    pub(crate) fn answered(&mut self, id: u64) -> bool {
        let Some(start) = self.start.as_deref_mut() else {
            return false;
        };
        start.unanswered = start.unanswered.saturating_sub(1);
        if start.probe.is_some_and(|(probe, _)| probe == id) {
            // Neither accepted nor refused (an error, a drop): says nothing
            // of the provider; another request probes.
            start.probe = None;
            return true;
        }
        start.unanswered < start.allowed
    }

    /// The provider accepted admission `id`; `room` reads what it says it
    /// has left, asked of the key's first answer only. Returns the burst
    /// learned when the start ends with spacing, and whether a waiting
    /// request may now go.
    pub(crate) fn accepted(
        &mut self,
        now: Instant,
        id: u64,
        room: &dyn Fn() -> Option<Room>,
        limits: &Limits,
    ) -> (Option<Adapted>, bool) {
        let now = Stamp::of(now);
        let Some(start) = self.start.as_deref_mut() else {
            return (None, false);
        };
        let ceiling = ceiling(limits);
        if let Some((probe, at)) = start.probe
            && probe == id
        {
            let patience = shortest_window(limits) / 16;
            if now.saturating_duration_since(at) > patience {
                // Answered after the log alone decided: the freed slots
                // went already, and the provider took them.
                self.start = None;
                return (None, true);
            }
            // The provider took the probe: a sliding log, or a counter
            // that weighs the first window a little less already. The
            // freed slots go at the quota's rate and on the room it
            // states, for a window.
            start.probe = None;
            start.ramp = Some(Ramp {
                began: now,
                next: now,
                credit: room().map_or(0, |room| stated_room(room, ceiling, start.unanswered)),
            });
            return (None, true);
        }
        if let Some(ramp) = start.ramp.as_mut() {
            // Nothing stated: the quota's rate alone (one more at once for
            // each acceptance, as in the first window, would double the
            // rate every round trip, past a counter's).
            if let Some(room) = room() {
                ramp.credit = stated_room(room, ceiling, start.unanswered);
            }
            return (None, true);
        }
        start.allowed = start.allowed.saturating_add(1).min(ceiling);
        if start.first.is_some_and(|(_, first)| first == id)
            && let Some(room) = room()
        {
            // The key's first request, answered alone: what the provider
            // has left after it, plus it, is what it takes at once, in the
            // key's quota.
            // A provider that counts a smaller quota than the key's takes
            // no more than it has left.
            let left = room.remaining.saturating_add(1);
            let scaled = u128::from(left).saturating_mul(u128::from(ceiling))
                / u128::from(room.limit.max(1));
            let tolerated = u64::try_from(scaled).unwrap_or(u64::MAX).min(left).max(1);
            if tolerated < ceiling {
                // Its rate is the key's only if its quota is at least the
                // key's: otherwise refusals still teach the rate.
                let same_rate = room.limit >= ceiling;
                self.start = None;
                return (Some(self.told(now, tolerated, same_rate, limits)), true);
            }
            start.allowed = ceiling;
        }
        (None, true)
    }

    /// The provider said it tolerates `burst` at once: spaces the key with
    /// it, a little under the quota's rate, and probes for more only after
    /// the longest spell (the provider will say when it has more). The
    /// provider's clock for the key started when the first request
    /// arrived, which the client cannot see but is no later than its
    /// answer, `now`: the next request goes an interval after it. An
    /// interval after the first admission instead, a first request that
    /// opened its connection (a few milliseconds over loopback, a round
    /// trip across a network) reached the provider closer to the second
    /// than it allows. With `same_rate` it counts at least the key's quota,
    /// and a refusal of spaced requests does not cut the rate.
    fn told(&mut self, now: Stamp, burst: u64, same_rate: bool, limits: &Limits) -> Adapted {
        self.set_burst(Some(burst));
        self.told = same_rate;
        self.spell = LAST_SPELL;
        self.rate_spell = LAST_SPELL;
        self.rate = spaced_rate(limits);
        self.changed_at = Some(now);
        self.spaced_since = (burst == 1).then_some(now);
        self.counts = Counts {
            start: Some(now),
            ..Counts::default()
        };
        let interval = self.step(limits, 1);
        self.tat = Some(now.saturating_add(interval));
        Adapted {
            burst: self.burst(),
            interval,
        }
    }

    /// The earliest instant a request of `cost` may go (`None`: now).
    pub(crate) fn earliest(&self, cost: u64, limits: &Limits) -> Option<Instant> {
        let (burst, tat) = (self.burst()?, self.tat?);
        let step = self.step(limits, cost);
        if step.is_zero() {
            return None;
        }
        let tolerance = self.step(limits, 1).saturating_mul(saturate(burst - 1));
        let scheduled = tat.saturating_sub(tolerance);
        let at = match self.last {
            // One at a time to a provider that may have no tolerance: never
            // closer than the key's own interval (room for the network to
            // bring two together), whatever the schedule catches up.
            Some(last) if burst == 1 && !self.tolerant => scheduled.max(last.saturating_add(step)),
            _ => scheduled,
        };
        Some(at.instant())
    }

    /// [`admitted_at`](Self::admitted_at), at the stamp of `now`.
    #[cfg(test)]
    pub(crate) fn admitted(
        &mut self,
        now: Instant,
        id: u64,
        cost: u64,
        limits: &Limits,
    ) -> Option<Adapted> {
        self.admitted_at(Stamp::of(now), id, cost, limits)
    }

    /// Records an admission of `cost` at the stamp `now`; returns the new
    /// burst when a window without refusals raised it.
    pub(crate) fn admitted_at(
        &mut self,
        now: Stamp,
        id: u64,
        cost: u64,
        limits: &Limits,
    ) -> Option<Adapted> {
        let window = shortest_window(limits);
        self.counts.roll(now, window);
        let probes = self
            .start
            .as_deref()
            .is_some_and(|start| start.past_first_window(now, limits));
        if let Some(start) = self.start.as_deref_mut()
            && let Some(ramp) = start.ramp.as_mut()
        {
            start.unanswered = start.unanswered.saturating_add(1);
            if ramp.over(now, window) {
                // A window at the quota's rate: its slots free evenly, and
                // the log alone decides from now on.
                self.start = None;
            } else if ramp.credit > 0 {
                ramp.credit -= 1;
            } else {
                ramp.next = ramp.next.max(now).saturating_add(step(limits, cost));
            }
        } else if let Some(start) = self.start.as_deref_mut() {
            start.unanswered = start.unanswered.saturating_add(1);
            if start.first.is_none() {
                start.first = Some((now, id));
            }
            // The first window held about a quota (nine tenths at least):
            // its slots free together. Counted exactly, not from the
            // counts' eighths of a window: those lose a burst that went a
            // slow round trip after the first admission, once the first
            // slot frees a window after that admission's answer.
            let full = probes && start.sent.saturating_mul(10) >= ceiling(limits).saturating_mul(9);
            if !probes {
                start.sent = start.sent.saturating_add(1);
            }
            if full {
                // One probe: once its answer is awaited no longer, the log
                // alone decides until it comes (others going one at a time,
                // each awaited in turn, would hold the key to one request
                // per patience).
                start.probe.get_or_insert((id, now));
            } else if probes {
                // A window that did not fill frees no burst: nothing to
                // probe.
                self.start = None;
            }
        }
        self.counts.sent();
        let burst = self.burst()?;
        let advance = self.step(limits, cost);
        if advance.is_zero() {
            return None;
        }
        // An admission the timer woke after its instant (tokio's timer
        // has millisecond ticks, and at 100/s a tick late on every request
        // would send 9 % under the rate) keeps the schedule, when spaced
        // one at a time: the next goes at its instant, unless the provider
        // may have no tolerance (see `earliest`: then no closer to this one
        // than the key's interval). Later than an interval,
        // the key was idle and the schedule starts again.
        let keep = if burst == 1 { advance } else { TIMER_TICK };
        let from = match self.tat {
            Some(tat) if now.saturating_duration_since(tat) <= keep => tat,
            _ => now,
        };
        self.last = Some(now);
        self.tat = Some(from.saturating_add(advance));
        if self
            .probed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= window)
        {
            // The last increase met no refusal for a window.
            self.probed_at = None;
        }
        if self.rate < FULL_RATE {
            // The burst waits for the rate.
            return self.raise_rate(now, window, limits);
        }
        if let Some(raise) = self.raised {
            // Back at the full rate: confirmed after a window without
            // refusal; until then the burst waits.
            if now.saturating_duration_since(raise.at) < window {
                return None;
            }
            self.raised = None;
        }
        let spell = window.saturating_mul(1u32 << self.spell.min(LAST_SPELL));
        let quiet = self
            .changed_at
            .is_none_or(|at| now.saturating_duration_since(at) >= spell);
        if !quiet {
            return None;
        }
        self.changed_at = Some(now);
        self.probed_at = Some(now);
        let raised = burst.saturating_mul(2);
        self.set_burst((raised < ceiling(limits)).then_some(raised));
        if self.burst.is_none() {
            self.tat = None;
            self.probed_at = None;
            self.spaced_since = None;
            self.spell = FIRST_SPELL;
        }
        Some(Adapted {
            burst: self.burst(),
            interval: self.step(limits, 1),
        })
    }

    /// The next rate probe waits twice as long, up to `1 << LAST_RATE_SPELL`
    /// windows (`1 << LAST_SPELL` for a key told it has no tolerance,
    /// whose probes below its plateau each cost the refusals of a network
    /// that still bunches); from the key's [`plateau`](Self::plateau) on,
    /// at least twice `1 << LAST_RATE_SPELL` and up to `1 << LAST_SPELL`.
    fn lengthen_rate_spell(&mut self, from: u32, limits: &Limits) {
        self.rate_spell = if from >= self.plateau(limits) {
            (self.rate_spell + 1).clamp(LAST_RATE_SPELL + 1, LAST_SPELL)
        } else if self.told {
            // A network that still brings the key's requests together:
            // its jitter is no spell, and each probe costs refusals.
            (self.rate_spell + 1).min(LAST_SPELL)
        } else {
            (self.rate_spell + 1).min(LAST_RATE_SPELL)
        };
    }

    /// The rate from which probes are rare, a probe having little left to
    /// win: nine tenths of the quota's, or, for a key its provider told it
    /// has no tolerance, the rate it was spaced at then (below it, the key
    /// was cut for a network that brought its requests together, and wins
    /// the rate back as soon as that stops).
    fn plateau(&self, limits: &Limits) -> u32 {
        if self.told {
            spaced_rate(limits)
        } else {
            NEAR_FULL
        }
    }

    /// A little under the rate the provider accepted in the window that
    /// ends at `now`, in thousandths of the quota's; at least [`MIN_RATE`].
    fn accepted_rate(&self, now: Stamp, window: Duration, limits: &Limits) -> u32 {
        let accepted = self.counts.accepted(now, window);
        let rate = accepted.saturating_mul(u64::from(KEPT)) / ceiling(limits);
        u32::try_from(rate).unwrap_or(FULL_RATE).max(MIN_RATE)
    }

    /// Raises a rate below the quota's when a raise is due: a probe after a
    /// quiet spell, growth after a confirmed raise.
    fn raise_rate(&mut self, now: Stamp, window: Duration, limits: &Limits) -> Option<Adapted> {
        let since =
            |at: Option<Stamp>| at.map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        // One request a window, in thousandths of the quota.
        let one = FULL_RATE / saturate(ceiling(limits)).clamp(1, FULL_RATE);
        // Below its plateau, a key told it has no tolerance counts its
        // quiet spell from its last cut: a refusal of the network's now and
        // then (one in a few hundred over loopback) is not a cut, and the
        // key probes unless its last window was bunched.
        let plateau = self.plateau(limits);
        let quiet_since = if self.told && self.rate < plateau {
            if self.counts.bunched() {
                return None;
            }
            // Never cut (a burst halved to one, spaced a little under its
            // rate): from its last change, as any key.
            self.cut_at.or(self.changed_at)
        } else {
            self.changed_at
        };
        let (rate, probe) = match self.raised {
            Some(raise)
                if since(Some(raise.at)) >= window
                    && self.told
                    && raise.from < plateau
                    && self.rate >= plateau =>
            {
                // Confirmed back where the provider's answer put the key:
                // it stays there.
                self.raised = None;
                return None;
            }
            Some(raise) if since(Some(raise.at)) >= window => {
                // Confirmed: grow. A confirmed step of growth (not only a
                // probe) shows the provider's rate rose: probe soon again.
                if !raise.probe && raise.from < plateau {
                    self.rate_spell = FIRST_RATE_SPELL;
                }
                (self.rate.saturating_add((self.rate / 2).max(one)), false)
            }
            Some(_) => return None,
            None if since(quiet_since) >= window.saturating_mul(1u32 << self.rate_spell) => {
                (self.rate.saturating_add((self.rate / 20).max(one)), true)
            }
            None => return None,
        };
        let from = self.rate;
        // A key told it has no tolerance grows back to the rate it was
        // spaced at, and probes above it only from there.
        let cap = if self.told && from < plateau {
            plateau
        } else {
            FULL_RATE
        };
        self.rate = rate.min(cap);
        if self.told && from < plateau && self.rate == plateau {
            // Back where the provider's answer put it: probe above only
            // after the longest spell, as then.
            self.rate_spell = LAST_SPELL;
        }
        self.changed_at = Some(now);
        self.raised = Some(Raise {
            at: now,
            from,
            probe,
        });
        Some(Adapted {
            burst: self.burst(),
            interval: self.step(limits, 1),
        })
    }

    /// The provider refused a request at `now`: halves the burst, and
    /// spaces the next request an interval after now.
    pub(crate) fn refused(&mut self, now: Instant, limits: &Limits) -> Adapted {
        let now = Stamp::of(now);
        let window = shortest_window(limits);
        let after_a_window =
            |at: Option<Stamp>| at.is_some_and(|at| now.saturating_duration_since(at) >= window);
        self.counts.roll(now, window);
        self.counts.refused();
        // A key told its provider has no tolerance takes one refusal for
        // the network's accident, a raise or not: more than a twentieth of
        // a window refused says the raise was too much.
        let bunched = self.counts.bunched();
        if self.burst() == Some(1)
            && (!self.told || bunched)
            && let Some(raise) = self.raised.take()
        {
            // A raise refused within a window: too much. Back to the rate
            // before it, which went a window without refusal, or to a
            // little under what the provider accepted in the window, if
            // more; the next probe waits longer.
            self.lengthen_rate_spell(raise.from, limits);
            self.rate = raise
                .from
                .max(self.accepted_rate(now, window, limits).min(self.rate));
            self.changed_at = Some(now);
            self.cut_at = Some(now);
            let interval = self.step(limits, 1);
            let next = now.saturating_add(interval);
            self.tat = Some(self.tat.map_or(next, |tat| tat.max(next)));
            return Adapted {
                burst: self.burst(),
                interval,
            };
        }
        // Refusals in the first window of even spacing may still be of the
        // burst before it, and those within a window of a cut of requests
        // sent before it: they say nothing of the rate.
        let spaced = self.burst() == Some(1)
            && after_a_window(self.spaced_since)
            && self.cut_at.is_none_or(|_| after_a_window(self.cut_at));
        // A window the key did not send through from its start (a
        // `Retry-After` pause held it) undercounts a provider that counts a
        // rate rather than a window: one such refusal alone may be a request
        // the network bunched; a second within two windows cuts.
        let counted = spaced
            && (self.counts.sent_from_start()
                || self.deferred.replace(now).is_some_and(|at| {
                    now.saturating_duration_since(at) < window.saturating_mul(2)
                }));
        if counted
            && self.told
            && bunched
            && let Some(share) = self.counts.refused_share()
        {
            // The provider has no tolerance, and the network brings more
            // than a few of the key's requests closer than the room left
            // for it (jitter wider than a timer tick): widen the room.
            // Spaced at `rate × (1 - share)` the requests that were
            // refused go unsent, and the next window shows what is left;
            // a cut takes half at most.
            let kept = FULL_RATE.saturating_sub(share).max(FULL_RATE / 2);
            if self.rate >= self.plateau(limits) {
                // The first cut from where the provider's answer put the
                // key: a spell of jitter may pass, probe back soon. Later
                // cuts keep the spell that failed probes lengthened.
                self.rate_spell = BUNCHED_RATE_SPELL;
            }
            let target =
                u64::from(self.rate).saturating_mul(u64::from(kept)) / u64::from(FULL_RATE);
            self.rate = u32::try_from(target).unwrap_or(MIN_RATE).max(MIN_RATE);
            self.cut_at = Some(now);
        }
        if counted && !self.told {
            // Evenly spaced and refused: the provider holds the key to about
            // what it accepted in the window that ends now (no more, for a
            // sliding log or fixed window; about that for GCRA and
            // sliding-window counters). Send a little under it, at most
            // half as fast per cut: a provider that counts refused requests
            // (a sliding-window counter) may have accepted almost nothing
            // of a window that held a refused burst.
            let estimate = self.accepted_rate(now, window, limits);
            let target = estimate.max(self.rate / 2).max(MIN_RATE);
            if target < self.rate {
                if target == estimate {
                    // The provider's rate, found: probe it less often.
                    self.lengthen_rate_spell(target, limits);
                }
                self.rate = target;
                self.cut_at = Some(now);
            }
        }
        let mut hold = 1;
        let current = match self.start.take() {
            // Refused in the start: the provider took less than went out
            // unanswered; past the first window, the slots the log freed
            // together (or the probe, alone) were too many at once.
            Some(start)
                if start
                    .first
                    .is_some_and(|(first, _)| !after_a_window(Some(first))) =>
            {
                start.allowed.saturating_add(1).min(ceiling(limits))
            }
            Some(_) => {
                // A provider that counts a rate near the quota: probe it
                // rarely. It still weighs the full window before the probe
                // and counts the refused probe too (a sliding-window
                // counter): room for the next request comes two intervals
                // into the window, not one.
                self.rate_spell = LAST_RATE_SPELL + 1;
                self.tolerant = true;
                hold = 2;
                1
            }
            None => self.burst().unwrap_or_else(|| ceiling(limits)),
        };
        let burst = (current / 2).max(1);
        if burst == 1 && self.spaced_since.is_none() {
            // Only what is sent evenly spaced tells of the rate. A provider
            // that refused the bursts may count a rate with no tolerance
            // (GCRA without burst), where requests spaced at exactly its
            // rate are refused whenever the network brings two closer:
            // space a little under it.
            self.spaced_since = Some(now);
            self.rate = self.rate.min(KEPT);
            if self.tolerant {
                // A provider that took a whole quota at once has tolerance
                // (a sliding-window counter): what limits the key is the
                // counter's own bound, `N - 1` a window when spaced, not
                // the network's bunching. Leave it one request more.
                let ceiling = saturate(ceiling(limits)).max(1);
                let counted = FULL_RATE.saturating_sub(2 * FULL_RATE / ceiling);
                self.rate = self.rate.max(counted).min(FULL_RATE);
            }
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
        self.set_burst(Some(burst));
        self.changed_at = Some(now);
        let interval = self.step(limits, 1);
        let next = now.saturating_add(interval.saturating_mul(hold));
        self.tat = Some(self.tat.map_or(next, |tat| tat.max(next)));
        Adapted {
            burst: Some(burst),
            interval,
        }
    }

    /// Whether the provider accepted about a whole quota (nine tenths of
    /// the shortest quota's `max_calls` or more) in the window that ends at
    /// `now`. A refusal then says the provider's window runs later than the
    /// key's (a drift); below that, it says the provider's rate is lower.
    pub(crate) fn near_quota(&mut self, now: Instant, limits: &Limits) -> bool {
        let now = Stamp::of(now);
        let window = shortest_window(limits);
        self.counts.roll(now, window);
        self.counts.accepted(now, window).saturating_mul(10) >= ceiling(limits).saturating_mul(9)
    }

    /// The emission interval of one request now.
    pub(crate) fn interval(&self, limits: &Limits) -> Duration {
        self.step(limits, 1)
    }

    /// The burst now (`None`: spacing is off).
    pub(crate) fn burst(&self) -> Option<u64> {
        self.burst.map(NonZeroU64::get)
    }

    /// Spaces at `burst` back to back (one at least), or not at all.
    fn set_burst(&mut self, burst: Option<u64>) {
        self.burst = burst.map(|burst| NonZeroU64::new(burst).unwrap_or(NonZeroU64::MIN));
    }

    /// [`step`] at the key's rate.
    fn step(&self, limits: &Limits, cost: u64) -> Duration {
        let full = step(limits, cost);
        full.saturating_mul(FULL_RATE) / self.rate.max(MIN_RATE)
    }
}

/// The rate a key spaced one at a time sends at, in thousandths of the
/// quota's: a little under it, so that the network has room to bring two
/// requests together before a provider without tolerance refuses the
/// second. The room is a timer tick (tokio's millisecond), a hundredth of
/// the interval if more, and never more than a twentieth of it: 95 % of
/// the rate at 100 per second and above, 98 % at 20 per second, 99 % from
/// 10 per second down.
fn spaced_rate(limits: &Limits) -> u32 {
    let interval = step(limits, 1);
    let room = TIMER_TICK.max(interval / 100).min(interval / 20);
    let total = interval.saturating_add(room).as_nanos().max(1);
    let rate = interval.as_nanos().saturating_mul(u128::from(FULL_RATE)) / total;
    // At most 99 %: a hundredth of the interval is the least room.
    u32::try_from(rate)
        .unwrap_or(FULL_RATE)
        .clamp(MIN_RATE, FULL_RATE - 10)
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

/// The requests a provider's stated room lets go at once, beyond the
/// `unanswered` ones besides the answer that stated it (they may not have
/// reached it yet).
///
/// Only the room of a quota no larger than the key's (`ceiling`) counts:
/// the room of a larger one, a daily quota stated beside an unannounced
/// per-second counter, says nothing of what the key's window has left.
fn stated_room(room: Room, ceiling: u64, unanswered: u64) -> u64 {
    if room.limit > ceiling {
        return 0;
    }
    room.remaining
        .saturating_sub(unanswered.saturating_sub(1))
        .min(ceiling)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sliding_window::Quota;

    fn limits(max_calls: u64, window: Duration) -> Limits {
        Limits::new(vec![Quota::per_request(max_calls, window).unwrap()]).unwrap()
    }

    /// A key at 20/s whose provider said, on its first answer, that it
    /// has no room for a burst: a GCRA without tolerance (one arrival per
    /// 50 ms). For `seconds`, requests go at their earliest instants and
    /// reach the provider after a one-way delay of `delay(n)` for the
    /// `n`-th, their answers coming back as late. Returns the key's
    /// interval at the end and the refusals of the last two seconds.
    fn across(seconds: u64, delay: impl Fn(u64) -> Duration) -> (Duration, u32) {
        let limits = limits(20, Duration::from_secs(1));
        let interval = Duration::from_millis(50);
        let start = Instant::now();
        let mut pacer = Pacer::new(true);
        pacer.admitted(start, 0, 1, &limits);
        let room = || {
            Some(Room {
                remaining: 0,
                limit: 20,
            })
        };
        let first = start + delay(0);
        let (adapted, _) = pacer.accepted(first + delay(0), 0, &room, &limits);
        assert_eq!(adapted.map(|adapted| adapted.burst), Some(Some(1)));
        let (mut now, mut next_accepted) = (first + delay(0), first + interval);
        let mut late_refusals = 0;
        for n in 1.. {
            now = pacer.earliest(1, &limits).map_or(now, |at| at.max(now));
            if now >= start + Duration::from_secs(seconds) {
                break;
            }
            pacer.admitted(now, n, 1, &limits);
            let arrival = now + delay(n);
            if arrival >= next_accepted {
                next_accepted = arrival + interval;
            } else {
                pacer.refused(arrival + delay(n), &limits);
                if now + Duration::from_secs(2) >= start + Duration::from_secs(seconds) {
                    late_refusals += 1;
                }
            }
        }
        (pacer.interval(&limits), late_refusals)
    }

    /// A spread of `range` ms from 5 ms up, drawn for each `n`.
    fn jitter(n: u64, range: u64) -> Duration {
        let drawn = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % (range * 1_000 + 1);
        Duration::from_millis(5) + Duration::from_micros(drawn)
    }

    #[test]
    fn a_told_key_keeps_its_room_for_rare_refusals_and_widens_it_for_jitter() {
        let (spaced, _) = across(8, |_| Duration::from_millis(5));
        assert!(spaced > Duration::from_millis(50), "{spaced:?}");
        // Loopback: a steady path, 3 ms shorter for one request in forty.
        // The few refused are the network's accident: the room stays.
        let (kept, _) = across(8, |n| {
            Duration::from_millis(if n % 40 == 0 { 2 } else { 5 })
        });
        assert_eq!(kept, spaced);
        // 5 to 25 ms each way: a third were refused at a tick of room. The
        // rate is cut by the share refused until few are: the interval
        // ends past 50 ms plus most of the jitter's 20, and short of twice
        // that.
        let (widened, refused) = across(8, |n| jitter(n, 20));
        assert!(
            widened >= Duration::from_millis(62) && widened <= Duration::from_millis(140),
            "{widened:?}"
        );
        assert!(refused <= 2, "{refused} refused in the last two seconds");
    }

    #[test]
    fn a_told_key_wins_its_rate_back_after_a_spell_of_jitter() {
        let (spaced, _) = across(20, |_| Duration::from_millis(5));
        // Two seconds in which the network spreads requests over 10 ms,
        // then a steady path again: the room widened for the spell goes
        // once the refusals stop, some eight windows after the last cut.
        let spell = |n: u64| {
            if (40..80).contains(&n) {
                jitter(n, 10)
            } else {
                Duration::from_millis(5)
            }
        };
        let (after, refused) = across(20, spell);
        assert_eq!(after, spaced, "the interval after the spell");
        assert_eq!(refused, 0, "refused in the last two seconds");
    }

    #[test]
    fn a_key_told_it_has_no_room_spaces_its_second_request_from_the_first_answer() {
        let limits = limits(100, Duration::from_secs(1));
        let start = Instant::now();
        let mut pacer = Pacer::new(true);
        pacer.admitted(start, 0, 1, &limits);
        // The first request opened its connection: answered 4 ms after its
        // admission, and the provider may have seen it as late as that.
        let answered = start + Duration::from_millis(4);
        let room = || {
            Some(Room {
                remaining: 0,
                limit: 100,
            })
        };
        let (adapted, _) = pacer.accepted(answered, 0, &room, &limits);
        assert_eq!(adapted.map(|adapted| adapted.burst), Some(Some(1)));
        let second = pacer.earliest(1, &limits).expect("the key is spaced");
        assert!(
            second >= answered + Duration::from_millis(10),
            "the second request may go {:?} after the first answer",
            second.saturating_duration_since(answered)
        );
        assert!(
            second <= answered + Duration::from_millis(11),
            "{:?}",
            second.saturating_duration_since(answered)
        );
    }

    #[test]
    fn spaced_keys_leave_a_timer_tick_of_room_at_most_a_twentieth() {
        let second = Duration::from_secs(1);
        assert_eq!(spaced_rate(&limits(100, second)), 952);
        assert_eq!(spaced_rate(&limits(1_000, second)), 952);
        assert_eq!(spaced_rate(&limits(20, second)), 980);
        assert_eq!(spaced_rate(&limits(10, second)), 990);
        assert_eq!(spaced_rate(&limits(1, second)), 990);
        assert_eq!(spaced_rate(&limits(3_600, Duration::from_secs(3_600))), 990);
    }
}
