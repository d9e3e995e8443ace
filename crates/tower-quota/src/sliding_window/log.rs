//! The sliding log of one quota of one key: which admissions still hold a
//! slot, and until when.
//!
//! The provider counts a request when it *arrives*, somewhere between its
//! admission and its answer. An admission therefore holds its slot until a
//! window (plus the margin) after the latest instant it can have arrived:
//! its answer, or its `sent_within` bound when that comes first (never in
//! strict mode). Two queues keep those instants in order without sorting:
//!
//! - `pending`, in admission order: admissions not answered before their
//!   bound. Their bounds are `admitted + sent_within`, increasing with the
//!   admission order, or none (held until answered: strict mode, or while
//!   the client lags); an entry without a bound holds back the ones behind
//!   it, which only ever holds a slot longer.
//! - `answered`, in answer order: admissions answered before their bound,
//!   moved out of `pending` (which keeps a tombstone). Answers come in time
//!   order, so their instants increase too.
//!
//! The slot that frees next is at the front of one of the two queues, and
//! the k-th is found by merging them from the front.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::Quota;

/// Tombstones are compacted out of `pending` once they are this many and
/// more than half of it.
const COMPACT_AT: usize = 64;

pub(super) struct WindowLog {
    quota: Quota,
    max_calls: u64,
    per_request: bool,
    /// The window plus the configured safety margin.
    span: Duration,
    pending: VecDeque<Entry>,
    answered: VecDeque<Entry>,
    /// Tombstones in `pending`: entries that moved to `answered`.
    moved: usize,
    /// Sum of the costs of the live entries: a `u128`, so that costs and
    /// corrections up to `u64::MAX` each never saturate the sum (a saturated
    /// sum would under-count once entries leave).
    in_window: u128,
}

/// Makes room for one more entry in `entries`, doubling from one entry up
/// to `max_calls` (the most entries a log holds, tombstones aside), then
/// as a `VecDeque` grows: a key with one admission holds room for one
/// entry, not four.
fn make_room(entries: &mut VecDeque<Entry>, max_calls: u64) {
    let len = entries.len();
    if len < entries.capacity() {
        return;
    }
    let limit = usize::try_from(max_calls).unwrap_or(usize::MAX);
    let grow = if len < limit {
        len.clamp(1, limit - len)
    } else {
        len.max(1)
    };
    entries.reserve_exact(grow);
}

#[derive(Clone, Copy)]
struct Entry {
    /// The admission's id, increasing with admission order.
    id: u64,
    cost: u64,
    /// When the entry leaves the window; `None` until answered (strict).
    until: Option<Instant>,
    /// A tombstone: the entry moved to `answered`.
    moved: bool,
    /// Its caller will report its answer (or its drop), which has not come.
    awaits_answer: bool,
}

impl Entry {
    /// Earlier `until` first; `None` (until answered) last.
    fn leaves_before(&self, other: &Entry) -> bool {
        match (self.until, other.until) {
            (Some(a), Some(b)) => a <= b,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl WindowLog {
    pub(super) fn new(quota: &Quota, margin: Duration) -> Self {
        WindowLog {
            quota: *quota,
            max_calls: quota.max_calls(),
            per_request: quota.is_per_request(),
            span: quota.window() + margin,
            pending: VecDeque::new(),
            answered: VecDeque::new(),
            moved: 0,
            in_window: 0,
        }
    }

    pub(super) fn quota(&self) -> Quota {
        self.quota
    }

    pub(super) fn is_per_request(&self) -> bool {
        self.per_request
    }

    pub(super) fn matches(&self, quota: &Quota, margin: Duration) -> bool {
        self.quota == *quota && self.span == quota.window() + margin
    }

    fn units(&self, cost: u64) -> u64 {
        self.quota.units(cost)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.answered.is_empty() && self.pending.len() == self.moved
    }

    pub(super) fn prune(&mut self, now: Instant) {
        while let Some(entry) = self.pending.front() {
            if entry.moved {
                self.moved -= 1;
            } else if entry.until.is_some_and(|until| until <= now) {
                self.in_window = self.in_window.saturating_sub(u128::from(entry.cost));
            } else {
                break;
            }
            self.pending.pop_front();
        }
        while let Some(entry) = self.answered.front() {
            if entry.until.is_some_and(|until| until <= now) {
                self.in_window = self.in_window.saturating_sub(u128::from(entry.cost));
                self.answered.pop_front();
            } else {
                break;
            }
        }
    }

    /// Whether a request of `cost` fits and leaves `keep` units free.
    pub(super) fn has_room(&self, cost: u64, keep: u64) -> bool {
        let units = self.units(cost);
        self.in_window + u128::from(units) + u128::from(keep) <= self.capacity(units)
    }

    /// The units a request of `cost` leaves free for the classes above
    /// `class`.
    pub(super) fn keep(&self, limits: &super::Limits, class: super::Priority, cost: u64) -> u64 {
        let units = self.units(cost);
        let room = u64::try_from(self.capacity(units)).unwrap_or(u64::MAX) - units;
        limits.reserved_units(class, self.max_calls).min(room)
    }

    /// How many units the log holds for a request of `units`: its size, or
    /// the request's units when a provider's announcement lowered the size
    /// below them (such a request goes alone, once the log is empty).
    fn capacity(&self, units: u64) -> u128 {
        u128::from(self.max_calls.max(units))
    }

    /// The size the log holds the key to: the quota's `max_calls` unless a
    /// provider's announcement lowered it.
    pub(super) fn size(&self) -> u64 {
        self.max_calls
    }

    /// Holds the key to `size` units per window (at least 1, at most the
    /// quota's `max_calls`); returns the size now.
    pub(super) fn resize(&mut self, size: u64) -> u64 {
        self.max_calls = size.clamp(1, self.quota.max_calls());
        self.max_calls
    }

    /// Records an admission at `now`, held until `sent_by` (its bound, `None`
    /// in strict mode) plus the span and `extra`. `awaits_answer`: its
    /// caller reports its answer.
    pub(super) fn record(
        &mut self,
        cost: u64,
        id: u64,
        sent_by: Option<Instant>,
        extra: Duration,
        awaits_answer: bool,
    ) {
        let cost = self.units(cost);
        if cost == 0 {
            return;
        }
        self.in_window += u128::from(cost);
        make_room(&mut self.pending, self.max_calls);
        self.pending.push_back(Entry {
            id,
            cost,
            until: sent_by.map(|at| at + self.span + extra),
            moved: false,
            awaits_answer,
        });
    }

    /// The admission `id` was answered at `at`: it leaves a span after that,
    /// if that is earlier than its bound. Returns whether anything changed.
    ///
    /// A dropped request may still be on its way: with `dropped = Some(grace)`
    /// an entry keeps its bound, and one with no bound (a strict one) is
    /// held as if answered `grace` after the drop.
    pub(super) fn answer(
        &mut self,
        id: u64,
        at: Instant,
        extra: Duration,
        dropped: Option<Duration>,
    ) -> bool {
        let Ok(index) = self.pending.binary_search_by_key(&id, |e| e.id) else {
            return false;
        };
        let entry = &mut self.pending[index];
        entry.awaits_answer = false;
        let until = at + dropped.unwrap_or(Duration::ZERO) + self.span + extra;
        if entry.moved
            || entry.until.is_some_and(|bound| bound <= until)
            || (dropped.is_some() && entry.until.is_some())
        {
            return false;
        }
        entry.moved = true;
        let moved = Entry {
            until: Some(until),
            moved: false,
            ..*entry
        };
        self.moved += 1;
        // Answers come in time order, but a margin that shrank may put this
        // one before the last: keep the queue sorted (a short walk back).
        let position = self
            .answered
            .iter()
            .rposition(|e| e.leaves_before(&moved))
            .map_or(0, |i| i + 1);
        make_room(&mut self.answered, self.max_calls);
        self.answered.insert(position, moved);
        if self.moved >= COMPACT_AT && self.moved * 2 > self.pending.len() {
            self.pending.retain(|e| !e.moved);
            self.moved = 0;
        }
        true
    }

    /// Holds every admission still in flight until its answer, whatever its
    /// bound: while the client lags, a request may leave later than its
    /// bound assumed. Answered admissions keep what their answer set.
    pub(super) fn hold_until_answered(&mut self) {
        for entry in self.pending.iter_mut().filter(|e| e.awaits_answer) {
            entry.until = None;
        }
    }

    /// Holds every entry `delta` longer (the order is unchanged).
    pub(super) fn extend(&mut self, delta: Duration) {
        for entry in self.pending.iter_mut().chain(self.answered.iter_mut()) {
            entry.until = entry.until.map(|until| until + delta);
        }
    }

    /// The live entries in the order they leave the window.
    fn leaving(&self) -> impl Iterator<Item = &Entry> {
        let mut pending = self.pending.iter().filter(|e| !e.moved).peekable();
        let mut answered = self.answered.iter().peekable();
        std::iter::from_fn(move || match (pending.peek(), answered.peek()) {
            (Some(p), Some(a)) => {
                if a.leaves_before(p) {
                    answered.next()
                } else {
                    pending.next()
                }
            }
            (Some(_), None) => pending.next(),
            (None, Some(_)) => answered.next(),
            (None, None) => None,
        })
    }

    /// When the `unit`-th unit (0-based, in leaving order) of the log leaves
    /// the window; `None` when it leaves only once answered.
    fn unit_leaves(&self, unit: u128, now: Instant) -> Option<Instant> {
        let mut seen = 0u128;
        for entry in self.leaving() {
            seen += u128::from(entry.cost);
            if seen > unit {
                return entry.until;
            }
        }
        // Unreachable while unit < in_window; now is the safe answer then.
        Some(now)
    }

    /// The earliest instant `cost` more units fit, given the log as it is;
    /// `None` when it depends on an answer still to come (strict mode). The
    /// log must be pruned at `now`.
    pub(super) fn earliest(&self, now: Instant, cost: u64, keep: u64) -> Option<Instant> {
        if self.has_room(cost, keep) {
            return Some(now);
        }
        // Units that must leave the window first: the entry holding the last
        // of them decides.
        let units = self.units(cost);
        let must_leave = (self.in_window + u128::from(units) + u128::from(keep))
            .saturating_sub(self.capacity(units));
        self.unit_leaves(must_leave.saturating_sub(1), now)
    }

    /// A lower bound on how long `units` more units (queued ones included)
    /// take to be admitted: exact when every unit costs one, every answer
    /// comes back at once and no waiter ahead is cancelled. The log must be
    /// pruned at `now`.
    pub(super) fn projected_wait(
        &self,
        now: Instant,
        cost: u64,
        requests: u64,
        keep: u64,
    ) -> Duration {
        let units = if self.per_request { requests } else { cost }.saturating_add(keep);
        let free = u128::from(self.max_calls).saturating_sub(self.in_window);
        let units = u128::from(units);
        if units <= free {
            return Duration::ZERO;
        }
        // Unit `beyond` of the future takes the slot freed when unit
        // `beyond % max_calls` of the log-then-future sequence leaves the
        // window, `beyond / max_calls` spans after that.
        let beyond = units - free - 1;
        let cycles = beyond / u128::from(self.max_calls);
        let unit = beyond % u128::from(self.max_calls);
        let first = if unit < self.in_window {
            self.unit_leaves(unit, now)
                .map_or(self.span, |at| at.saturating_duration_since(now))
        } else {
            self.span
        };
        u32::try_from(cycles)
            .ok()
            .and_then(|cycles| self.span.checked_mul(cycles))
            .and_then(|later| later.checked_add(first))
            .unwrap_or(Duration::MAX)
    }

    /// Changes the cost of admission `id` to `actual`, if it is still in the
    /// window; returns whether anything changed.
    pub(super) fn correct(&mut self, id: u64, actual: u64) -> bool {
        let entry = match self.pending.binary_search_by_key(&id, |e| e.id) {
            Ok(index) if !self.pending[index].moved => &mut self.pending[index],
            // Moved (its tombstone may be gone already) or left the window.
            _ => match self.answered.iter_mut().find(|e| e.id == id) {
                Some(entry) => entry,
                None => return false,
            },
        };
        let recorded = entry.cost;
        if actual == recorded {
            return false;
        }
        entry.cost = actual;
        self.in_window = self.in_window.saturating_sub(u128::from(recorded)) + u128::from(actual);
        true
    }
}
