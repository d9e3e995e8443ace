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
//!   bound. Their bounds are `admitted + sent_within` (plus the span and
//!   the drift margin), or none (held until answered: strict mode, or while
//!   the client lags). `pending` stays in leaving order: a bound is never
//!   earlier than one before it (a cold admission's longer bound, or a
//!   drift margin that shrank, lengthens the bounds after it), and while an
//!   admission waits for its answer without a bound, the ones after it
//!   that will be answered wait for their answers too.
//! - `answered`, in answer order: admissions answered before their bound,
//!   moved out of `pending` (which keeps a tombstone). Answers come in time
//!   order, so their instants increase too. An admission answered when
//!   the live one before it in `pending` leaves no later (the front, or
//!   requests answered in turn) is answered in place instead: `pending`
//!   stays in order.
//!
//! The slot that frees next is at the front of one of the two queues, and
//! the k-th is found by merging them from the front.

use std::collections::VecDeque;
use std::time::Duration;

use foldhash::fast::FixedState;
use hashbrown::HashMap;

use tokio::time::Instant;

use super::Quota;
use super::stamp::Stamp;

mod entries;

pub(super) use entries::ID_LIMIT;
use entries::{Entries, make_room};

/// Tombstones are compacted out of `pending` once they are this many and
/// more than half of it.
const COMPACT_AT: usize = 64;

/// A log keeps no copy of its quota: the key keeps its limits once for
/// all its logs and passes each log what it counts against ([`Counted`]).
pub(super) struct WindowLog {
    pending: Entries,
    /// `answered`, the costs of the entries that do not cost 1 and their
    /// sum, a size below the quota's, and the counts of tombstones and of
    /// entries without a bound: boxed, and only while it holds something.
    /// A key whose requests cost 1, have a bound and are answered in turn,
    /// and whose provider announced no smaller quota, never needs it.
    extra: Option<Box<Extra>>,
    /// The latest bound given so far: no later admission leaves before it
    /// ([`Stamp::EARLIEST`]: none yet).
    last_bound: Stamp,
    // The units the live entries hold are not kept but counted from the
    // queues' lengths and `extra`'s costs (`in_window`): nothing to keep in
    // step, and no room taken in the log of every key.
}

/// What only some logs need.
#[derive(Default)]
struct Extra {
    /// The entries answered out of `pending`'s order, in leaving order.
    answered: VecDeque<Entry>,
    /// The units of each live entry that does not cost 1 (flag [`COSTLY`]),
    /// by id: an entry is 4 or 8 bytes in a packed queue, and most cost 1.
    costs: HashMap<u64, u64, FixedState>,
    /// The size the log holds the key to, once a provider announced less
    /// than the quota's `max_calls`.
    resized: Option<u64>,
    /// The sum of `costs`: a `u128`, so that costs and corrections up to
    /// `u64::MAX` each never saturate it (a saturated sum would under-count
    /// once entries leave).
    costly_units: u128,
    /// Tombstones in `pending`: entries moved to `answered` (answered out
    /// of turn, or held until answered), which this box holds too. The two
    /// counts saturate, and neither can get near it: `pending` holds at
    /// most `u32::MAX` entries (64 GiB of log).
    moved: u32,
    /// Live entries of `pending` without a bound (a strict key's, or
    /// those of a client that lags).
    unbounded: u32,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.answered.is_empty()
            && self.costs.is_empty()
            && self.resized.is_none()
            && self.moved == 0
            && self.unbounded == 0
    }

    /// Admission `id`, live, costs `units`, which are not 1.
    fn set_cost(&mut self, id: u64, units: u64) {
        if let Some(before) = self.costs.insert(id, units) {
            self.costly_units = self.costly_units.saturating_sub(u128::from(before));
        }
        self.costly_units += u128::from(units);
    }

    /// Admission `id` leaves, or costs 1 again: its units, 1 if it had none
    /// here.
    fn forget_cost(&mut self, id: u64) -> u64 {
        match self.costs.remove(&id) {
            Some(units) => {
                self.costly_units = self.costly_units.saturating_sub(u128::from(units));
                units
            }
            None => 1,
        }
    }
}

/// What a log counts against: its quota, and its span, the window plus
/// the safety margin (an entry holds its slot that long past its bound or
/// its answer).
#[derive(Clone, Copy)]
pub(super) struct Counted {
    quota: Quota,
    span: Duration,
}

impl Counted {
    pub(super) fn new(quota: &Quota, margin: Duration) -> Self {
        Counted {
            quota: *quota,
            span: quota.window().saturating_add(margin),
        }
    }

    /// The units a request of `cost` takes of the quota.
    fn units(&self, cost: u64) -> u64 {
        self.quota.units(cost)
    }

    pub(super) fn quota(&self) -> Quota {
        self.quota
    }
}

/// The most entries a log of `max_calls` holds, tombstones aside: how far
/// its queues grow by doubling (see [`make_room`]).
fn most_entries(max_calls: u64) -> usize {
    usize::try_from(max_calls).unwrap_or(usize::MAX)
}

/// The size of a log with `extra`: see [`WindowLog::size`].
fn size_in(extra: Option<&Extra>, counted: &Counted) -> u64 {
    extra
        .and_then(|extra| extra.resized)
        .unwrap_or(counted.quota.max_calls())
}

/// One admission in a log: 16 bytes, 4 or 8 once packed in `pending`'s
/// ring ([`entries`]). Its units are 1, or in [`Extra::costs`] when it is
/// [`COSTLY`].
#[derive(Clone, Copy)]
struct Entry {
    /// The admission's id (increasing with admission order) shifted left
    /// by [`FLAGS`], and the flags [`MOVED`], [`AWAITS_ANSWER`] and
    /// [`COSTLY`].
    tag: u64,
    /// When the entry leaves the window; [`Stamp::NEVER`] until answered
    /// (strict).
    until: Stamp,
}

/// Bits of [`Entry::tag`] taken by flags; ids are below
/// [`ID_LIMIT`](entries::ID_LIMIT), 2^56.
const FLAGS: u32 = 3;
/// A tombstone: the entry moved to `answered`.
const MOVED: u64 = 1;
/// Its caller will report its answer (or its drop), which has not come.
const AWAITS_ANSWER: u64 = 2;
/// Its units are not 1: [`Extra::costs`] has them.
const COSTLY: u64 = 4;

impl Entry {
    fn new(id: u64, until: Stamp, awaits_answer: bool) -> Self {
        let flags = if awaits_answer { AWAITS_ANSWER } else { 0 };
        Entry {
            tag: (id.min(entries::ID_LIMIT - 1) << FLAGS) | flags,
            until,
        }
    }

    fn is_costly(&self) -> bool {
        self.tag & COSTLY != 0
    }

    fn id(&self) -> u64 {
        self.tag >> FLAGS
    }

    fn is_moved(&self) -> bool {
        self.tag & MOVED != 0
    }

    fn awaits_answer(&self) -> bool {
        self.tag & AWAITS_ANSWER != 0
    }

    fn clear(&mut self, flag: u64) {
        self.tag &= !flag;
    }

    /// Whether it leaves only once answered.
    fn is_unbounded(&self) -> bool {
        self.until == Stamp::NEVER
    }

    /// Earlier `until` first; unbounded last.
    fn leaves_before(&self, other: &Entry) -> bool {
        !self.is_unbounded() && self.until <= other.until
    }
}

impl WindowLog {
    pub(super) fn new() -> Self {
        WindowLog {
            pending: Entries::default(),
            extra: None,
            last_bound: Stamp::EARLIEST,
        }
    }

    /// Tombstones in `pending` (see [`Extra::moved`]).
    fn moved(&self) -> u32 {
        self.extra.as_ref().map_or(0, |extra| extra.moved)
    }

    /// Live entries of `pending` without a bound.
    fn unbounded(&self) -> u32 {
        self.extra.as_ref().map_or(0, |extra| extra.unbounded)
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The id the key's next admission takes, when this log knows it
    /// (see [`Entries::next_id`]).
    pub(super) fn next_id(&self) -> Option<u64> {
        self.pending.next_id()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.extra
            .as_ref()
            .is_none_or(|extra| extra.answered.is_empty())
            && self.pending.len() == self.moved() as usize
    }

    /// The entries answered out of `pending`'s order.
    fn answered(&self) -> impl Iterator<Item = Entry> + '_ {
        self.extra
            .iter()
            .flat_map(|extra| extra.answered.iter().copied())
    }

    /// The units of `entry`, a live one.
    fn cost_of(&self, entry: &Entry) -> u64 {
        if !entry.is_costly() {
            return 1;
        }
        self.extra
            .as_ref()
            .and_then(|extra| extra.costs.get(&entry.id()).copied())
            .unwrap_or(1)
    }

    /// The units of the live entries: one each, but for those of `costs`,
    /// which count their own.
    fn in_window(&self) -> u128 {
        let pending = self.pending.len().saturating_sub(self.moved() as usize);
        match self.extra.as_deref() {
            None => pending as u128,
            // Each entry of `costs` is a live entry.
            Some(extra) => {
                let live = pending + extra.answered.len();
                live.saturating_sub(extra.costs.len()) as u128 + extra.costly_units
            }
        }
    }

    pub(super) fn prune(&mut self, now: Stamp) {
        while let Some(entry) = self
            .pending
            .pop_front_if(|entry| entry.is_moved() || entry.until <= now)
        {
            if entry.is_moved() {
                if let Some(extra) = self.extra.as_deref_mut() {
                    extra.moved = extra.moved.saturating_sub(1);
                }
            } else if entry.is_costly()
                && let Some(extra) = self.extra.as_deref_mut()
            {
                extra.forget_cost(entry.id());
            }
        }
        if let Some(extra) = self.extra.as_deref_mut() {
            while let Some(&entry) = extra.answered.front() {
                if entry.until <= now {
                    if entry.is_costly() {
                        extra.forget_cost(entry.id());
                    }
                    extra.answered.pop_front();
                } else {
                    break;
                }
            }
            if extra.is_empty() {
                self.extra = None;
            }
        }
    }

    /// Whether a request of `cost` fits and leaves `keep` units free.
    pub(super) fn has_room(&self, counted: &Counted, cost: u64, keep: u64) -> bool {
        let units = counted.units(cost);
        self.in_window() + u128::from(units) + u128::from(keep) <= self.capacity(counted, units)
    }

    /// The units a request of `cost` leaves free for the classes above
    /// `class`.
    pub(super) fn keep(
        &self,
        counted: &Counted,
        limits: &super::Limits,
        class: super::Priority,
        cost: u64,
    ) -> u64 {
        let reserved = limits.reserved_units(class, self.size(counted));
        if reserved == 0 {
            return 0;
        }
        let units = counted.units(cost);
        let room = u64::try_from(self.capacity(counted, units)).unwrap_or(u64::MAX) - units;
        reserved.min(room)
    }

    /// How many units the log holds for a request of `units`: its size, or
    /// the request's units when a provider's announcement lowered the size
    /// below them (such a request goes alone, once the log is empty).
    fn capacity(&self, counted: &Counted, units: u64) -> u128 {
        u128::from(self.size(counted).max(units))
    }

    /// The units the log holds.
    pub(super) fn held(&self) -> u128 {
        self.in_window()
    }

    /// The size the log holds the key to: the quota's `max_calls` unless a
    /// provider's announcement lowered it.
    pub(super) fn size(&self, counted: &Counted) -> u64 {
        size_in(self.extra.as_deref(), counted)
    }

    /// Holds the key to `size` units per window (at least 1, at most the
    /// quota's `max_calls`); returns the size now.
    pub(super) fn resize(&mut self, counted: &Counted, size: u64) -> u64 {
        let configured = counted.quota.max_calls();
        let size = size.clamp(1, configured);
        if size < configured {
            self.extra.get_or_insert_with(Box::default).resized = Some(size);
        } else if let Some(extra) = self.extra.as_deref_mut() {
            extra.resized = None;
            if extra.is_empty() {
                self.extra = None;
            }
        }
        size
    }

    /// Records an admission at `now`, held until `sent_by` (its bound, `None`
    /// in strict mode) plus the span and `extra`. `awaits_answer`: its
    /// caller reports its answer.
    pub(super) fn record(
        &mut self,
        counted: &Counted,
        cost: u64,
        id: u64,
        sent_by: Option<Stamp>,
        extra: Duration,
        awaits_answer: bool,
    ) {
        let cost = counted.units(cost);
        if cost == 0 {
            // No entry: the key's next id is past it all the same.
            self.pending.skip(id);
            return;
        }
        let until = match sent_by {
            // Behind an admission held until answered, one that will be
            // answered is too.
            Some(_) if self.unbounded() > 0 && awaits_answer => Stamp::NEVER,
            Some(at) => {
                let until = at
                    .saturating_add(counted.span)
                    .saturating_add(extra)
                    .max(self.last_bound);
                self.last_bound = until;
                until
            }
            None => Stamp::NEVER,
        };
        let mut entry = Entry::new(id, until, awaits_answer);
        if cost != 1 {
            entry.tag |= COSTLY;
        }
        if !entry.is_unbounded() && self.unbounded() > 0 {
            // One that will not be answered leaves at its bound, which
            // `pending` cannot hold in order behind one without a bound.
            self.insert_answered(entry, most_entries(self.size(counted)));
            self.pending.skip(id);
        } else {
            let extra = self.extra.as_deref();
            if !self
                .pending
                .push_back(entry, || most_entries(size_in(extra, counted)))
            {
                // Only a log of `u32::MAX` entries (16 to 64 GiB, under a
                // quota of 4 billion or more) refuses one: it goes
                // uncounted, and its id is taken all the same.
                self.pending.skip(id);
                return;
            }
            if entry.is_unbounded() {
                let extra = self.extra_mut();
                extra.unbounded = extra.unbounded.saturating_add(1);
            }
        }
        if cost != 1 {
            self.extra
                .get_or_insert_with(Box::default)
                .set_cost(entry.id(), cost);
        }
    }

    /// The admission `id` was answered at `at`: it leaves a span after that,
    /// if that is earlier than its bound. Returns whether anything changed.
    ///
    /// A dropped request may still be on its way: with `dropped = Some(grace)`
    /// an entry keeps its bound, and one with no bound (a strict one) is
    /// held as if answered `grace` after the drop.
    pub(super) fn answer(
        &mut self,
        counted: &Counted,
        id: u64,
        at: Stamp,
        extra: Duration,
        dropped: Option<Duration>,
    ) -> bool {
        let Some((index, mut entry)) = self.find(id) else {
            return false;
        };
        let span = counted.span;
        let awaited = entry.awaits_answer();
        entry.clear(AWAITS_ANSWER);
        let until = at
            .saturating_add(dropped.unwrap_or(Duration::ZERO))
            .saturating_add(span)
            .saturating_add(extra);
        // `until` is never unbounded: an entry that leaves no later keeps
        // its bound.
        let keeps_bound = entry.is_moved()
            || entry.until <= until
            || (dropped.is_some() && !entry.is_unbounded());
        if !keeps_bound && !entry.is_unbounded() && self.in_order_at(index, until) {
            // Answered before its bound, and the answer's instant keeps
            // `pending` in order there: answered in place (no tombstone, and
            // a key whose requests are answered in turn never allocates
            // `answered`).
            self.pending.set(index, Entry { until, ..entry });
            return true;
        }
        if awaited {
            self.pending.set(index, entry);
        }
        if keeps_bound {
            return false;
        }
        self.move_to_answered(index, until, most_entries(self.size(counted)));
        self.compact();
        true
    }

    /// The index of admission `id` in `pending`, and its entry, if it is
    /// there. Answers come for recent admissions (the last one, for a
    /// caller that waits for each answer; within the last few, for a
    /// handful in flight), so the search starts from the back and doubles
    /// its step before it halves: `O(log d)` for the `d`-th entry from the
    /// back, where a plain binary search of a busy key's log pays
    /// `O(log n)` in cache misses.
    fn find(&self, id: u64) -> Option<(usize, Entry)> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        if let Some(index) = self.pending.index_of(id) {
            // A run of ids: no search.
            return index.map(|index| (index, self.pending.get(index)));
        }
        // `pending` is in increasing id order. Every entry from `hi` on has
        // a greater id; found, every entry before `lo` has a smaller one.
        let mut hi = self.pending.len();
        let mut step = 1usize;
        let mut lo = loop {
            if hi == 0 {
                return None;
            }
            let probe = hi.saturating_sub(step);
            let entry = self.pending.get(probe);
            match entry.id().cmp(&id) {
                Equal => return Some((probe, entry)),
                Less => break probe + 1,
                Greater => {
                    hi = probe;
                    step = step.saturating_mul(2);
                }
            }
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entry = self.pending.get(mid);
            match entry.id().cmp(&id) {
                Equal => return Some((mid, entry)),
                Less => lo = mid + 1,
                Greater => hi = mid,
            }
        }
        None
    }

    /// Moves the live entry at `index` of `pending` to `answered`, to leave
    /// at `until`; `most`: how far `answered` grows by doubling.
    fn move_to_answered(&mut self, index: usize, until: Stamp, most: usize) {
        let mut entry = self.pending.get(index);
        let extra = self.extra_mut();
        if entry.is_unbounded() {
            extra.unbounded = extra.unbounded.saturating_sub(1);
        }
        extra.moved = extra.moved.saturating_add(1);
        let moved = Entry { until, ..entry };
        entry.tag |= MOVED;
        self.pending.set(index, entry);
        self.insert_answered(moved, most);
    }

    /// Drops the tombstones from `pending` once they are many and most of it.
    fn compact(&mut self) {
        let moved = self.moved() as usize;
        if moved >= COMPACT_AT && moved * 2 > self.pending.len() {
            self.pending.retain(|e| !e.is_moved());
            if let Some(extra) = self.extra.as_deref_mut() {
                extra.moved = 0;
            }
        }
    }

    /// Puts `entry`, which has a bound, in `answered`, in leaving order.
    /// `most`: how far `answered` grows by doubling ([`make_room`]).
    fn insert_answered(&mut self, entry: Entry, most: usize) {
        // Answers come in time order, but a margin that shrank may put this
        // one before the last: keep the queue sorted (a short walk back).
        let answered = &mut self.extra.get_or_insert_with(Box::default).answered;
        let position = answered
            .iter()
            .rposition(|e| e.leaves_before(&entry))
            .map_or(0, |i| i + 1);
        make_room(answered, most);
        answered.insert(position, entry);
    }

    /// Whether the live entry at `index` of `pending`, which has a bound,
    /// may leave at `until` (earlier than its bound, so no later than the
    /// live entries after it) and keep `pending` in order: the live entry
    /// before it, if any, leaves no later. Looks back over a few
    /// tombstones at most (beyond them, the answer moves).
    fn in_order_at(&self, index: usize, until: Stamp) -> bool {
        const LOOK_BACK: usize = 8;
        let live_before = (index.saturating_sub(LOOK_BACK + 1)..index)
            .rev()
            .map(|before| self.pending.get(before))
            .find(|e| !e.is_moved());
        match live_before {
            // An unbounded one leaves later than any bound. The entries'
            // instants are on `pending`'s grid, rounded up: `until` is
            // compared as it would be kept too (an earlier answer less than
            // a unit before would seem to leave after it).
            Some(entry) => entry.until <= until || entry.until <= self.pending.on_grid(until),
            // The front, or only tombstones before it, all looked at.
            None => index <= LOOK_BACK,
        }
    }

    /// Holds every admission still in flight until its answer, whatever its
    /// bound: while the client lags, a request may leave later than its
    /// bound assumed. Answered admissions keep what their answer set.
    pub(super) fn hold_until_answered(&mut self) {
        let mut held = 0u32;
        self.pending.change_each(|entry| {
            if entry.awaits_answer() && !entry.is_moved() && !entry.is_unbounded() {
                entry.until = Stamp::NEVER;
                held = held.saturating_add(1);
            }
        });
        if held > 0 {
            let extra = self.extra_mut();
            extra.unbounded = extra.unbounded.saturating_add(held);
        }
        // The answered ones still in `pending` behind the first entry held
        // until answered leave at their instants: out of `pending`, which
        // stays in order.
        let Some(first) = self
            .pending
            .iter()
            .position(|e| !e.is_moved() && e.is_unbounded())
        else {
            return;
        };
        for index in first + 1..self.pending.len() {
            let entry = self.pending.get(index);
            if !entry.is_moved() && !entry.is_unbounded() {
                // Rare (a lagging client): `answered` grows by doubling.
                self.move_to_answered(index, entry.until, usize::MAX);
            }
        }
        self.compact();
    }

    /// Holds every entry `delta` longer (the order is unchanged).
    pub(super) fn extend(&mut self, delta: Duration) {
        let answered = self
            .extra
            .iter_mut()
            .flat_map(|extra| extra.answered.iter_mut());
        // Unbounded stays unbounded.
        for entry in answered {
            entry.until = entry.until.saturating_add(delta);
        }
        self.pending
            .change_each(|entry| entry.until = entry.until.saturating_add(delta));
        if self.last_bound != Stamp::EARLIEST {
            self.last_bound = self.last_bound.saturating_add(delta);
        }
    }

    /// The live entries in the order they leave the window.
    fn leaving(&self) -> impl Iterator<Item = Entry> + '_ {
        let mut pending = self.pending.iter().filter(|e| !e.is_moved()).peekable();
        let mut answered = self.answered().peekable();
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
            seen += u128::from(self.cost_of(&entry));
            if seen > unit {
                return (!entry.is_unbounded()).then(|| entry.until.instant());
            }
        }
        // Unreachable while unit < in_window; now is the safe answer then.
        Some(now)
    }

    /// The earliest instant `cost` more units fit, given the log as it is;
    /// `None` when it depends on an answer still to come (strict mode). The
    /// log must be pruned at `now`.
    pub(super) fn earliest(
        &self,
        counted: &Counted,
        now: Instant,
        cost: u64,
        keep: u64,
    ) -> Option<Instant> {
        if self.has_room(counted, cost, keep) {
            return Some(now);
        }
        // Units that must leave the window first: the entry holding the last
        // of them decides.
        let units = counted.units(cost);
        let must_leave = (self.in_window() + u128::from(units) + u128::from(keep))
            .saturating_sub(self.capacity(counted, units));
        self.unit_leaves(must_leave.saturating_sub(1), now)
    }

    /// A lower bound on how long `units` more units (queued ones included)
    /// take to be admitted: exact when every unit costs one, every answer
    /// comes back at once and no waiter ahead is cancelled. The log must be
    /// pruned at `now`.
    pub(super) fn projected_wait(
        &self,
        counted: &Counted,
        now: Instant,
        cost: u64,
        requests: u64,
        keep: u64,
    ) -> Duration {
        let span = counted.span;
        let units = if counted.quota.is_per_request() {
            requests
        } else {
            cost
        }
        .saturating_add(keep);
        let in_window = self.in_window();
        let size = self.size(counted);
        let free = u128::from(size).saturating_sub(in_window);
        let units = u128::from(units);
        if units <= free {
            return Duration::ZERO;
        }
        // Unit `beyond` of the future takes the slot freed when unit
        // `beyond % max_calls` of the log-then-future sequence leaves the
        // window, `beyond / max_calls` spans after that.
        let beyond = units - free - 1;
        let cycles = beyond / u128::from(size);
        let unit = beyond % u128::from(size);
        let first = if unit < in_window {
            self.unit_leaves(unit, now)
                .map_or(span, |at| at.saturating_duration_since(now))
        } else {
            span
        };
        u32::try_from(cycles)
            .ok()
            .and_then(|cycles| span.checked_mul(cycles))
            .and_then(|later| later.checked_add(first))
            .unwrap_or(Duration::MAX)
    }

    /// Changes the cost of admission `id` to `actual`, if it is still in the
    /// window; returns whether anything changed.
    pub(super) fn correct(&mut self, id: u64, actual: u64) -> bool {
        /// Where an entry is.
        enum Place {
            Pending(usize),
            Answered(usize),
        }
        let (place, mut entry) = match self.find(id) {
            Some((index, entry)) if !entry.is_moved() => (Place::Pending(index), entry),
            // Moved (its tombstone may be gone already) or left the window.
            _ => match self.extra.as_deref().and_then(|extra| {
                let index = extra.answered.iter().position(|e| e.id() == id)?;
                Some((index, extra.answered[index]))
            }) {
                Some((index, entry)) => (Place::Answered(index), entry),
                None => return false,
            },
        };
        let was_costly = entry.is_costly();
        if !was_costly && actual == 1 {
            return false;
        }
        if actual == 1 {
            entry.clear(COSTLY);
        } else {
            entry.tag |= COSTLY;
        }
        let extra = self.extra.get_or_insert_with(Box::default);
        match place {
            Place::Pending(index) => self.pending.set(index, entry),
            Place::Answered(index) => extra.answered[index] = entry,
        }
        let recorded = if was_costly { extra.forget_cost(id) } else { 1 };
        if actual != 1 {
            extra.set_cost(id, actual);
        }
        if extra.is_empty() {
            self.extra = None;
        }
        actual != recorded
    }
}

#[cfg(test)]
mod tests {
    //! The log against a reference model: a plain list of admissions, each
    //! leaving at the earlier of its bound and its answer's instant (plus
    //! the span), sorted in full at every step.

    use super::*;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_millis(100);

    /// Each key holds one log per quota: 40 bytes, its first entry in place
    /// and the others aside.
    #[test]
    fn a_log_is_40_bytes_and_an_entry_16() {
        assert_eq!(std::mem::size_of::<WindowLog>(), 40);
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    /// The units held are counted in 128 bits: three entries of `u64::MAX`
    /// units each, corrected and left, are counted exactly, and what was
    /// kept for them goes once they leave.
    #[test]
    fn the_units_held_keep_all_128_bits() {
        let quota = Quota::new(u64::MAX, WINDOW).unwrap();
        let counted = Counted::new(&quota, Duration::ZERO);
        let mut log = WindowLog::new();
        let start = Instant::now();
        let sent_by = Some(Stamp::of(start));
        for id in 0..3 {
            log.record(&counted, u64::MAX, id, sent_by, Duration::ZERO, false);
        }
        assert_eq!(log.in_window(), 3 * u128::from(u64::MAX));
        assert!(log.correct(1, 1));
        assert_eq!(log.in_window(), 2 * u128::from(u64::MAX) + 1);
        assert!(log.correct(2, 0));
        assert_eq!(log.in_window(), u128::from(u64::MAX) + 1);
        assert!(!log.correct(0, u64::MAX), "unchanged");
        log.prune(Stamp::of(start + WINDOW));
        assert_eq!(log.in_window(), 0);
        assert!(log.is_empty());
        assert!(log.extra.is_none());
    }

    /// A size a provider announced below the quota's is kept in the boxed
    /// extra, which goes when the size is the quota's again.
    #[test]
    fn a_resized_log_keeps_its_size_until_resized_back() {
        let quota = Quota::new(10, WINDOW).unwrap();
        let counted = Counted::new(&quota, Duration::ZERO);
        let mut log = WindowLog::new();
        assert_eq!(log.size(&counted), 10);
        assert_eq!(log.resize(&counted, 4), 4);
        assert_eq!(log.size(&counted), 4);
        assert_eq!(log.resize(&counted, 0), 1, "at least 1");
        assert_eq!(log.resize(&counted, 50), 10, "at most the quota's");
        assert_eq!(log.size(&counted), 10);
        assert!(log.extra.is_none());
    }

    /// Answered out of order, entries go to `answered`; once they and
    /// their tombstones in `pending` leave, its allocation goes too.
    #[test]
    fn answered_entries_leave_with_their_queue() {
        let quota = Quota::new(10, WINDOW).unwrap();
        let counted = Counted::new(&quota, Duration::ZERO);
        let mut log = WindowLog::new();
        let start = Instant::now();
        for id in 0..3 {
            log.record(
                &counted,
                1,
                id,
                Some(Stamp::of(start + WINDOW)),
                Duration::ZERO,
                true,
            );
        }
        // The last answered first: out of order, moved to `answered`.
        assert!(log.answer(&counted, 2, Stamp::of(start), Duration::ZERO, None));
        assert!(log.extra.is_some());
        log.prune(Stamp::of(start + WINDOW));
        assert!(log.answered().next().is_none(), "left");
        assert_eq!(log.moved(), 1, "its tombstone, behind the two others");
        assert!(!log.is_empty(), "the two unanswered ones are still held");
        log.prune(Stamp::of(start + WINDOW * 2));
        assert!(log.is_empty());
        assert!(log.extra.is_none());
    }

    /// Answers that come in turn, closer together than the unit of the
    /// ring's grid (a minute's window: a millisecond), are answered in
    /// place: an instant is compared with the entries' on their grid, where
    /// an earlier entry's, rounded up, would seem to leave after it.
    #[test]
    fn answers_in_turn_within_a_grid_unit_stay_in_place() {
        let quota = Quota::new(10, Duration::from_secs(60)).unwrap();
        let counted = Counted::new(&quota, Duration::ZERO);
        let mut log = WindowLog::new();
        let start = Instant::now();
        for id in 0..10u64 {
            let at = start + Duration::from_micros(3 * id);
            // Bounds a fifth of the window away: the ring's grid spans it.
            let sent_by = Some(Stamp::of(at + Duration::from_secs(12)));
            log.record(&counted, 1, id, sent_by, Duration::ZERO, true);
            let answered = at + Duration::from_micros(1);
            assert!(log.answer(&counted, id, Stamp::of(answered), Duration::ZERO, None));
        }
        assert!(log.pending.is_tight(), "a run of close instants");
        assert!(log.extra.is_none(), "nothing moved to `answered`");
        assert_eq!(log.moved(), 0);
        assert_eq!(log.in_window(), 10);
    }

    const MARGIN: Duration = Duration::from_millis(1);
    const GRACE: Duration = Duration::from_millis(7);

    #[derive(Debug, Clone)]
    enum Op {
        /// Admits a request of `cost`, its bound `bound` ms away (`None`:
        /// held until answered), whose caller reports its answer or not.
        Record {
            cost: u64,
            bound: Option<u64>,
            awaits: bool,
        },
        /// Answers (or drops) the `pick`-th admission awaiting its answer.
        Answer { pick: usize, dropped: bool },
        /// The client lags: every admission awaiting its answer is held
        /// until answered.
        Hold,
        /// Time passes.
        Wait { ms: u64 },
        /// Corrects the `pick`-th admission still held to `actual` units
        /// (weighted quotas).
        Correct { pick: usize, actual: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        // Bounds of 100 ms (warm) and 300 ms (cold) as the stores give,
        // and any other.
        let bound = prop_oneof![
            Just(Some(100)),
            Just(Some(300)),
            (0u64..400).prop_map(Some),
            Just(None),
        ];
        prop_oneof![
            5 => (1u64..4, bound, prop::bool::weighted(0.9)).prop_map(|(cost, bound, awaits)| {
                Op::Record { cost, bound, awaits: awaits || bound.is_none() }
            }),
            5 => (any::<usize>(), prop::bool::weighted(0.1))
                .prop_map(|(pick, dropped)| Op::Answer { pick, dropped }),
            1 => Just(Op::Hold),
            3 => (0u64..80).prop_map(|ms| Op::Wait { ms }),
            2 => (any::<usize>(), 0u64..4).prop_map(|(pick, actual)| Op::Correct { pick, actual }),
        ]
    }

    /// One admission of the model.
    struct Modelled {
        cost: u64,
        /// When it leaves; `None`: once answered.
        leaves: Option<Instant>,
        awaits: bool,
        id: u64,
    }

    proptest! {
        /// The search from the back finds what a binary search finds, in a
        /// `pending` that wrapped around its buffer.
        #[test]
        fn find_agrees_with_a_binary_search(
            gaps in prop::collection::vec(1u64..4, 0..200),
            popped in 0usize..50,
            wanted in 0u64..800,
        ) {
            let quota = Quota::per_request(1_000, WINDOW).unwrap();
            let counted = Counted::new(&quota, MARGIN);
            let mut log = WindowLog::new();
            let now = Instant::now();
            let mut id = 0;
            for gap in &gaps {
                id += gap;
                log.record(&counted, 1, id, Some(Stamp::of(now)), Duration::ZERO, true);
            }
            for _ in 0..popped.min(log.pending.len()) {
                log.pending.pop_front();
                log.record(&counted, 1, id + 1, Some(Stamp::of(now)), Duration::ZERO, true);
                id += 1;
            }
            let expected = log.pending.iter().position(|entry| entry.id() == wanted);
            prop_assert_eq!(log.find(wanted).map(|(index, _)| index), expected);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Whatever the bounds and whatever order answers come in, the log
        /// holds what the model holds, and frees each next unit when the
        /// model does: to the nanosecond also where the log packs its
        /// instants to a coarser grid (windows of 100 s and an hour, on a
        /// millisecond grid as a paused clock gives them), and where ids far
        /// apart keep its entries whole.
        #[test]
        fn the_log_frees_what_the_model_frees(
            max_calls in 1u64..12,
            per_request in any::<bool>(),
            ops in prop::collection::vec(op(), 1..160),
            window in prop_oneof![
                4 => Just(WINDOW),
                1 => Just(Duration::from_secs(100)),
                1 => Just(Duration::from_secs(3600)),
            ],
            id_gap in prop_oneof![3 => Just(1u64), 1 => Just(1u64 << 22)],
        ) {
            let quota = if per_request {
                Quota::per_request(max_calls, window)
            } else {
                Quota::new(max_calls, window)
            }
            .unwrap();
            // Waits in proportion to the window, so that entries leave.
            let scale = u64::try_from(window.as_millis() / WINDOW.as_millis()).unwrap_or(1);
            let span = window + MARGIN;
            let counted = Counted::new(&quota, MARGIN);
            let mut log = WindowLog::new();
            let mut model: Vec<Modelled> = Vec::new();
            let mut last_bound: Option<Instant> = None;
            let mut now = Instant::now();
            let mut next_id = 0;
            for op in ops {
                match op {
                    Op::Record { cost, bound, awaits } => {
                        if !log.has_room(&counted, cost, 0) {
                            continue;
                        }
                        let sent_by = bound.map(|ms| now + Duration::from_millis(ms));
                        log.record(&counted, cost, next_id, sent_by.map(Stamp::of), Duration::ZERO, awaits);
                        let held = model.iter().any(|e| e.leaves.is_none());
                        let leaves = match sent_by {
                            Some(_) if held && awaits => None,
                            Some(at) => {
                                let until = (at + span).max(last_bound.unwrap_or(at));
                                last_bound = Some(until);
                                Some(until)
                            }
                            None => None,
                        };
                        let cost = quota.units(cost);
                        if cost > 0 {
                            model.push(Modelled { cost, leaves, awaits, id: next_id });
                        }
                        next_id += id_gap;
                    }
                    Op::Answer { pick, dropped } => {
                        let awaiting: Vec<usize> = (0..model.len())
                            .filter(|&i| model[i].awaits)
                            .collect();
                        if awaiting.is_empty() {
                            continue;
                        }
                        let entry = &mut model[awaiting[pick % awaiting.len()]];
                        log.answer(
                            &counted,
                            entry.id,
                            Stamp::of(now),
                            Duration::ZERO,
                            dropped.then_some(GRACE),
                        );
                        entry.awaits = false;
                        entry.leaves = match (entry.leaves, dropped) {
                            // A dropped request keeps its bound, if it has one.
                            (Some(bound), true) => Some(bound),
                            (None, true) => Some(now + GRACE + span),
                            (Some(bound), false) => Some(bound.min(now + span)),
                            (None, false) => Some(now + span),
                        };
                    }
                    Op::Hold => {
                        log.hold_until_answered();
                        for entry in model.iter_mut().filter(|e| e.awaits) {
                            entry.leaves = None;
                        }
                    }
                    Op::Wait { ms } => now += Duration::from_millis(ms * scale),
                    Op::Correct { pick, actual } => {
                        if per_request || model.is_empty() {
                            continue;
                        }
                        let index = pick % model.len();
                        let entry = &mut model[index];
                        let changed = log.correct(entry.id, actual);
                        prop_assert_eq!(changed, entry.cost != actual);
                        entry.cost = actual;
                    }
                }
                log.prune(Stamp::of(now));
                model.retain(|e| e.leaves.is_none_or(|at| at > now));
                if model.is_empty() {
                    // Nothing held: nothing kept beside the log.
                    prop_assert!(log.extra.is_none());
                }
                let held: u64 = model.iter().map(|e| e.cost).sum();
                prop_assert_eq!(log.in_window(), u128::from(held));
                // The instants the units free, in order (`None` last).
                let mut leaving: Vec<(Option<Instant>, u64)> =
                    model.iter().map(|e| (e.leaves, e.cost)).collect();
                leaving.sort_by_key(|&(at, _)| (at.is_none(), at));
                let wants = if per_request { 1 } else { max_calls };
                for want in 1..=wants {
                    let expected = if held + want <= max_calls {
                        Some(now)
                    } else {
                        let must_leave = held + want - max_calls;
                        let mut seen = 0;
                        leaving
                            .iter()
                            .find(|(_, cost)| {
                                seen += cost;
                                seen >= must_leave
                            })
                            .and_then(|(at, _)| *at)
                    };
                    prop_assert_eq!(log.earliest(&counted, now, want, 0), expected, "{} more units", want);
                }
            }
        }
    }
}
