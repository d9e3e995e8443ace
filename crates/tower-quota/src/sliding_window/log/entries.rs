//! The queue of a log's entries: the first one in place, the others in a
//! ring packed 8 bytes an entry where they fit.
//!
//! Most keys of a store have one admission in their window at a time (a
//! caller that waits for each answer, or a quota far from full), and a
//! `VecDeque` would allocate for that one entry: another allocation per
//! key, and another cache miss per admission of a key that is out of the
//! caches. [`Entries`] holds one entry in place (24 bytes in all, where a
//! `VecDeque` alone takes 32) and moves to a ring of its own at the second.
//!
//! An entry is an id and an instant, 16 bytes, but the entries of one log
//! are close to each other in both: ids are taken in admission order from
//! the key's shard, and the instants lie within about a window of each
//! other. So the ring keeps, at the front of its buffer, an id and a stamp
//! its entries count from, and each entry in one word: its flags, its id's
//! distance from the first (24 bits) and its instant's (37 bits), the
//! latter in units of `2^shift` nanoseconds, rounded up. The shift is the
//! least that spans the entries' instants: 0 (nanoseconds) while they lie
//! within about a minute of each other, 6 (64 ns, which divides a
//! millisecond) for windows of an hour or so, at most
//! [`MAX_SHIFT`] (about a millisecond), beyond which the ring keeps its
//! entries whole (16 bytes). Rounded up, an instant only holds its slot
//! longer: a log counts no fewer units than it holds, and one grid is
//! used for all the ring's entries, so their order is kept. An entry that
//! does not fit (a longer gap, an instant out of reach of the base) has
//! the ring repacked around the entries it then holds; at every repacking
//! a quarter of the reach is left on either side, so that repacking is
//! rare (instants move on with the clock: about once per quarter reach of
//! time, an O(n) copy). A ring that cannot be
//! packed (ids more than 2^23 apart, from a shard that admitted that many
//! between the log's oldest entry and its newest, or instants more than
//! about 2 years apart) keeps its entries whole until it is empty again.
//!
//! The ring counts its entries and its front in `u32`s: a log of 4
//! billion entries would be 32 GiB.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Entry, FLAGS};
use crate::sliding_window::stamp::Stamp;

/// The most entries a ring holds.
const MOST: usize = u32::MAX as usize;

/// Words at the front of a ring's buffer: its format ([`WIDE`], and the
/// shift from bit 8 on), then the id and the stamp packed entries count
/// from.
const HEADER: usize = 3;
/// Format flag: entries are whole, two words each (tag, then stamp).
const WIDE: u64 = 1;

/// Bits of a packed entry: its flags, then the distance of its id from the
/// base id, then that of its instant from the base stamp.
const FLAG_MASK: u64 = (1 << FLAGS) - 1;
const ID_BITS: u32 = 24;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
const UNTIL_SHIFT: u32 = FLAGS + ID_BITS;
const UNTIL_BITS: u32 = 64 - UNTIL_SHIFT;
/// The packed instant of an unbounded entry ([`Stamp::NEVER`]).
const UNTIL_NEVER: u64 = (1 << UNTIL_BITS) - 1;
/// The coarsest grid instants are packed to: 2^20 ns, about a millisecond.
const MAX_SHIFT: u32 = 20;

/// A queue of log entries; see the [module docs](self).
pub(super) enum Entries {
    /// At most one entry, without an allocation.
    One(Option<Entry>),
    /// From the second entry on, and after (even when emptied again: a key
    /// that had several keeps its room for them).
    Many(Ring),
}

/// A ring buffer: `len` entries from slot `head` on, wrapping around, in a
/// buffer of [`HEADER`] words and then one word a slot (two when
/// [`WIDE`]). Slots outside the entries hold copies of earlier ones or
/// zeros (never read).
pub(super) struct Ring {
    buf: Box<[u64]>,
    head: u32,
    len: u32,
}

/// How a ring's entries are packed: its header, read once.
#[derive(Clone, Copy)]
struct Format {
    wide: bool,
    shift: u32,
    id_base: u64,
    stamp_base: Stamp,
}

impl Format {
    /// Entries kept whole.
    const WHOLE: Format = Format {
        wide: true,
        shift: 0,
        id_base: 0,
        stamp_base: Stamp::EARLIEST,
    };

    /// The words an entry takes: 1 packed, 2 whole.
    #[inline]
    fn width(self) -> usize {
        1 << u32::from(self.wide)
    }

    /// How many entries `words` words hold.
    #[inline]
    fn entries_in(self, words: usize) -> usize {
        words >> u32::from(self.wide)
    }

    /// The format a header's words give.
    #[inline]
    fn read(format: u64, id_base: u64, stamp_base: u64) -> Format {
        Format {
            wide: format & WIDE != 0,
            // Below 64: written from a shift of at most `MAX_SHIFT`.
            shift: (format >> 8) as u32 & 63,
            id_base,
            stamp_base: Stamp::from_bits(stamp_base).unwrap_or(Stamp::EARLIEST),
        }
    }

    fn words(self) -> [u64; HEADER] {
        [
            u64::from(self.wide) | (u64::from(self.shift) << 8),
            self.id_base,
            self.stamp_base.to_bits(),
        ]
    }

    /// The word of `entry` packed, if it fits.
    #[inline]
    fn pack(self, entry: Entry) -> Option<u64> {
        let id = entry.id().checked_sub(self.id_base)?;
        if id > ID_MASK {
            return None;
        }
        let until = if entry.until == Stamp::NEVER {
            UNTIL_NEVER
        } else {
            // Rounded up to the grid: the entry leaves no earlier.
            let nanos = entry.until.nanos_since(self.stamp_base)?;
            let units = (nanos >> self.shift) + u64::from(nanos & ((1 << self.shift) - 1) != 0);
            if units >= UNTIL_NEVER {
                return None;
            }
            units
        };
        Some((until << UNTIL_SHIFT) | (id << FLAGS) | (entry.tag & FLAG_MASK))
    }

    #[inline]
    fn unpack(self, word: u64) -> Entry {
        let id = self.id_base + ((word >> FLAGS) & ID_MASK);
        let units = word >> UNTIL_SHIFT;
        let until = if units == UNTIL_NEVER {
            Stamp::NEVER
        } else {
            self.stamp_base.plus_nanos(units << self.shift)
        };
        Entry {
            tag: (id << FLAGS) | (word & FLAG_MASK),
            until,
        }
    }

    /// The format that packs every entry of `entries` with room to spare,
    /// or a wide one.
    fn for_entries(entries: &[Entry]) -> Format {
        let Some(first_id) = entries.iter().map(Entry::id).min() else {
            return Format::WHOLE;
        };
        let last_id = entries.iter().map(Entry::id).max().unwrap_or(first_id);
        if last_id - first_id > ID_MASK / 2 {
            return Format::WHOLE;
        }
        let mut bounded = entries.iter().filter(|e| !e.is_unbounded());
        let Some(first) = bounded.next() else {
            // Only unbounded entries: any base serves until the first
            // instant comes, which repacks around it.
            return Format {
                wide: false,
                shift: 0,
                id_base: first_id,
                stamp_base: Stamp::EARLIEST,
            };
        };
        let (earliest, latest) = bounded.fold((first.until, first.until), |(lo, hi), e| {
            (lo.min(e.until), hi.max(e.until))
        });
        let spread = latest.nanos_since(earliest).unwrap_or(0);
        // The least shift whose reach is twice the spread, the base a
        // quarter of the reach below the earliest instant. Reaches are
        // powers of two, so that the base stays on the grid of the
        // earliest instant.
        let reach = |shift: u32| 1u64 << (UNTIL_BITS + shift);
        (0..=MAX_SHIFT)
            .find(|&shift| spread <= reach(shift) / 2)
            .map_or(Format::WHOLE, |shift| Format {
                wide: false,
                shift,
                id_base: first_id,
                stamp_base: earliest.saturating_sub(Duration::from_nanos(reach(shift) / 4)),
            })
    }
}

impl Ring {
    /// A ring of `entries`, packed if they can be, with room for
    /// `capacity` entries (at least as many as given).
    fn packed(entries: &[Entry], capacity: usize) -> Ring {
        let format = Format::for_entries(entries);
        let capacity = capacity.max(entries.len());
        let mut buf = vec![0; HEADER + capacity * format.width()];
        buf[..HEADER].copy_from_slice(&format.words());
        let mut ring = Ring {
            buf: buf.into_boxed_slice(),
            head: 0,
            // Within the capacity, itself at most `MOST`: fits a `u32`.
            len: entries.len() as u32,
        };
        for (index, &entry) in entries.iter().enumerate() {
            let written = ring.write(index, entry);
            debug_assert!(written, "a format chosen for the entries packs each");
        }
        ring
    }

    /// The ring's format and its slots' words.
    #[inline]
    fn parts(&self) -> (Format, &[u64]) {
        match &*self.buf {
            [format, id_base, stamp_base, slots @ ..] => {
                (Format::read(*format, *id_base, *stamp_base), slots)
            }
            // Every ring is made with its header.
            _ => (Format::WHOLE, &[]),
        }
    }

    fn format(&self) -> Format {
        self.parts().0
    }

    /// Its room, in entries.
    #[inline]
    fn capacity(&self) -> usize {
        let (format, slots) = self.parts();
        format.entries_in(slots.len())
    }

    /// The slot of the entry at `index` (below `len`), in a ring of
    /// `capacity` slots.
    #[inline]
    fn slot(&self, index: usize, capacity: usize) -> usize {
        let at = self.head as usize + index;
        if at >= capacity { at - capacity } else { at }
    }

    /// The entry at `index`, below `len`.
    #[inline]
    fn read(&self, index: usize) -> Entry {
        let (format, slots) = self.parts();
        if format.wide {
            return self.read_whole(index);
        }
        let slot = self.slot(index, slots.len());
        format.unpack(slots[slot])
    }

    #[cold]
    fn read_whole(&self, index: usize) -> Entry {
        let slots = &self.buf[HEADER..];
        let at = 2 * self.slot(index, slots.len() / 2);
        Entry {
            tag: slots[at],
            until: Stamp::from_bits(slots[at + 1]).unwrap_or(Stamp::NEVER),
        }
    }

    /// Writes `entry` at `index` (below the capacity); `false`, writing
    /// nothing, when it does not fit the format.
    #[inline]
    fn write(&mut self, index: usize, entry: Entry) -> bool {
        let (format, slots) = self.parts();
        let capacity = format.entries_in(slots.len());
        let slot = self.slot(index, capacity);
        if format.wide {
            let at = HEADER + 2 * slot;
            self.buf[at] = entry.tag;
            self.buf[at + 1] = entry.until.to_bits();
            return true;
        }
        match format.pack(entry) {
            Some(word) => {
                self.buf[HEADER + slot] = word;
                true
            }
            None => false,
        }
    }

    fn entries(&self) -> Vec<Entry> {
        (0..self.len as usize)
            .map(|index| self.read(index))
            .collect()
    }

    /// Repacks the ring around `entries` (what it is to hold), keeping its
    /// capacity.
    #[cold]
    fn repack(&mut self, entries: &[Entry]) {
        *self = Ring::packed(entries, self.capacity());
    }

    /// Moves the entries to a buffer of `capacity` slots (more than `len`),
    /// the front first, in the same format.
    #[cold]
    fn grow(&mut self, capacity: usize) {
        let width = self.format().width();
        let old = self.capacity();
        let mut buf = Vec::with_capacity(HEADER + capacity * width);
        buf.extend_from_slice(&self.buf[..HEADER]);
        for index in 0..self.len as usize {
            let at = HEADER + self.slot(index, old) * width;
            buf.extend_from_slice(&self.buf[at..at + width]);
        }
        buf.resize(HEADER + capacity * width, 0);
        self.buf = buf.into_boxed_slice();
        self.head = 0;
    }

    #[inline]
    fn push_back(&mut self, entry: Entry, most: impl FnOnce() -> usize) -> bool {
        let len = self.len as usize;
        if len == self.capacity() {
            if len >= MOST {
                return false;
            }
            self.grow(grown(len, most()).min(MOST));
        }
        if len == 0 && self.format().wide {
            // Emptied: packed again from this entry on.
            self.repack(&[entry]);
            return true;
        }
        if !self.write(len, entry) {
            let mut entries = self.entries();
            entries.push(entry);
            self.repack(&entries);
            return true;
        }
        self.len += 1;
        true
    }

    /// Takes the front entry if `take` is true of it.
    #[inline]
    fn pop_front_if(&mut self, take: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        if self.len == 0 {
            return None;
        }
        let entry = self.read(0);
        if !take(&entry) {
            return None;
        }
        // Below the capacity, itself at most `MOST`: fits a `u32`.
        self.head = self.slot(1, self.capacity()) as u32;
        self.len -= 1;
        Some(entry)
    }

    #[inline]
    fn get(&self, index: usize) -> Entry {
        assert!(index < self.len as usize, "index out of bounds");
        self.read(index)
    }

    #[inline]
    fn set(&mut self, index: usize, entry: Entry) {
        assert!(index < self.len as usize, "index out of bounds");
        if !self.write(index, entry) {
            let mut entries = self.entries();
            entries[index] = entry;
            self.repack(&entries);
        }
    }

    /// Keeps the entries `keep` is true of, in order, moving each kept one
    /// forward over those dropped (its words as they are: the format is
    /// unchanged).
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let width = self.format().width();
        let capacity = self.capacity();
        let mut kept = 0;
        for index in 0..self.len as usize {
            if keep(&self.read(index)) {
                let from = HEADER + self.slot(index, capacity) * width;
                let to = HEADER + self.slot(kept, capacity) * width;
                self.buf.copy_within(from..from + width, to);
                kept += 1;
            }
        }
        // At most `len`: fits a `u32`.
        self.len = kept as u32;
    }
}

impl Default for Entries {
    fn default() -> Self {
        Entries::One(None)
    }
}

impl Entries {
    #[inline]
    pub(super) fn len(&self) -> usize {
        match self {
            Entries::One(one) => usize::from(one.is_some()),
            Entries::Many(many) => many.len as usize,
        }
    }

    /// The entry at `index`. Panics when it is out of bounds, as a
    /// `VecDeque` does.
    #[inline]
    pub(super) fn get(&self, index: usize) -> Entry {
        match self {
            Entries::One(one) => one.as_slice()[index],
            Entries::Many(many) => many.get(index),
        }
    }

    /// Replaces the entry at `index`. Panics when it is out of bounds.
    #[inline]
    pub(super) fn set(&mut self, index: usize, entry: Entry) {
        match self {
            Entries::One(one) => one.as_mut_slice()[index] = entry,
            Entries::Many(many) => many.set(index, entry),
        }
    }

    #[cfg(test)]
    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        self.pop_front_if(|_| true)
    }

    /// Takes the front entry if `take` is true of it.
    #[inline]
    pub(super) fn pop_front_if(&mut self, take: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        match self {
            Entries::One(one) => one.take_if(|entry| take(entry)),
            Entries::Many(many) => many.pop_front_if(take),
        }
    }

    /// Appends `entry`. Full, the queue grows as a log does: doubling from
    /// one entry up to `most()` (the most it is expected to hold, asked
    /// only then), then doubling again. Returns `false`, and keeps
    /// nothing, when it holds `u32::MAX` entries already.
    #[inline]
    pub(super) fn push_back(&mut self, entry: Entry, most: impl FnOnce() -> usize) -> bool {
        match self {
            Entries::One(slot @ None) => {
                *slot = Some(entry);
                true
            }
            Entries::One(Some(first)) => {
                let first = *first;
                *self = Entries::Many(Ring::packed(&[first, entry], 2));
                true
            }
            Entries::Many(many) => many.push_back(entry, most),
        }
    }

    /// The entries in order.
    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = Entry> + '_ {
        (0..self.len()).map(|index| self.get(index))
    }

    /// Changes every entry with `change`, in order: in place, unless a
    /// changed entry does not fit the ring's packing, which is then redone
    /// around the changed entries.
    pub(super) fn change_each(&mut self, mut change: impl FnMut(&mut Entry)) {
        match self {
            Entries::One(one) => one.iter_mut().for_each(change),
            Entries::Many(many) => {
                for index in 0..many.len as usize {
                    let mut entry = many.read(index);
                    change(&mut entry);
                    if !many.write(index, entry) {
                        // Those before `index` are changed already.
                        let mut entries = many.entries();
                        entries[index] = entry;
                        entries[index + 1..].iter_mut().for_each(&mut change);
                        many.repack(&entries);
                        return;
                    }
                }
            }
        }
    }

    /// Keeps only the entries `keep` is true of, in order.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        match self {
            Entries::One(one) => {
                if one.as_ref().is_some_and(|entry| !keep(entry)) {
                    *one = None;
                }
            }
            Entries::Many(many) => many.retain(keep),
        }
    }

    /// Whether the entries are packed (8 bytes each); for tests.
    #[cfg(test)]
    pub(super) fn is_packed(&self) -> bool {
        match self {
            Entries::One(_) => false,
            Entries::Many(many) => !many.format().wide,
        }
    }
}

/// The capacity a full queue of `len` entries grows to: doubling from one
/// entry up to `most` (the most it is expected to hold), then doubling.
fn grown(len: usize, most: usize) -> usize {
    let grow = if len < most {
        len.clamp(1, most - len)
    } else {
        len.max(1)
    };
    len.saturating_add(grow)
}

/// Makes room for one more element in `deque`, as [`Entries`] grows: a
/// key with one admission holds room for one entry, not four.
pub(super) fn make_room<T>(deque: &mut VecDeque<T>, most: usize) {
    let len = deque.len();
    if len < deque.capacity() {
        return;
    }
    deque.reserve_exact(grown(len, most) - len);
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::time::Instant;

    use super::*;
    use crate::sliding_window::log::{AWAITS_ANSWER, COSTLY, MOVED};

    fn entry(id: u64, until: Stamp, flags: u64) -> Entry {
        let mut entry = Entry::new(id, until, false);
        entry.tag |= flags & FLAG_MASK;
        entry
    }

    fn words(entries: &Entries) -> usize {
        match entries {
            Entries::One(_) => 0,
            Entries::Many(many) => many.buf.len(),
        }
    }

    /// A key's log keeps one entry in place, in less room than a
    /// `VecDeque` takes.
    #[test]
    fn a_queue_of_log_entries_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Entries>(), 24);
        assert!(std::mem::size_of::<Entries>() < std::mem::size_of::<VecDeque<u64>>());
    }

    /// A log's queue grows by doubling up to its quota, then doubles on,
    /// one word an entry past the header.
    #[test]
    fn a_full_queue_doubles_up_to_the_most_it_expects_then_on() {
        let mut capacities = vec![2];
        while capacities.len() < 6 {
            let last = capacities[capacities.len() - 1];
            capacities.push(grown(last, 10));
        }
        assert_eq!(capacities, [2, 4, 8, 10, 20, 40]);
        assert_eq!(grown(0, 10), 1);
        assert_eq!(grown(usize::MAX, 10), usize::MAX);
        let now = Stamp::of(Instant::now());
        let mut entries = Entries::default();
        for id in 0..9u64 {
            let until = now.saturating_add(Duration::from_secs(60 + id));
            assert!(entries.push_back(entry(id * 1000, until, 0), || 10));
        }
        assert!(entries.is_packed());
        assert_eq!(words(&entries), HEADER + 10);
    }

    /// The instants of a log whose window is an hour, taken on a
    /// millisecond grid (as a paused clock gives them), come back exact:
    /// the grid of their packing divides a millisecond.
    #[test]
    fn instants_an_hour_apart_on_a_millisecond_grid_come_back_exact() {
        let now = Stamp::of(Instant::now());
        let mut entries = Entries::default();
        let mut expected = Vec::new();
        for i in 0..200u64 {
            let until = now.saturating_add(Duration::from_millis(i * 20_011));
            let until = if i % 7 == 3 { Stamp::NEVER } else { until };
            let added = entry((1 << 40) + i * 5_000, until, i % 8);
            assert!(entries.push_back(added, || 1000));
            expected.push(added);
        }
        assert!(entries.is_packed(), "3,982 s apart: packed to 64 ns");
        let got: Vec<Entry> = entries.iter().collect();
        assert_eq!(got.len(), expected.len());
        for (got, expected) in got.iter().zip(&expected) {
            assert_eq!((got.tag, got.until), (expected.tag, expected.until));
        }
    }

    /// Ids further apart than the packing reaches keep the entries whole
    /// until the queue is empty again; then they are packed again.
    #[test]
    fn ids_far_apart_keep_entries_whole_until_emptied() {
        let now = Stamp::of(Instant::now());
        let mut entries = Entries::default();
        for id in [0, 1, 2, 1 << 30] {
            assert!(entries.push_back(entry(id, now, 0), || 10));
        }
        assert!(!entries.is_packed());
        assert_eq!(
            entries.iter().map(|e| e.id()).collect::<Vec<_>>(),
            [0, 1, 2, 1 << 30]
        );
        while entries.pop_front().is_some() {}
        assert!(entries.push_back(entry(5 << 30, now, 0), || 10));
        assert!(entries.push_back(entry((5 << 30) + 1, now, 0), || 10));
        assert!(entries.is_packed());
    }

    /// Pushes `added` to `entries` and checks that every entry comes back
    /// exact.
    fn push_exact(entries: &mut Entries, expected: &mut Vec<Entry>, added: Entry) {
        assert!(entries.push_back(added, || 16));
        expected.push(added);
        let got: Vec<(u64, Stamp)> = entries.iter().map(|e| (e.tag, e.until)).collect();
        let want: Vec<(u64, Stamp)> = expected.iter().map(|e| (e.tag, e.until)).collect();
        assert_eq!(got, want);
    }

    /// At the edges of the packing's reach: the last id and instant that
    /// fit come back exact, and the first that does not repacks the ring
    /// (never read back as another id, or as unbounded).
    #[test]
    fn the_edges_of_the_reach_come_back_exact() {
        let now = Stamp::of(Instant::now());
        let base_id = 1u64 << 45;
        let start = |expected: &mut Vec<Entry>| {
            let mut entries = Entries::default();
            push_exact(&mut entries, expected, entry(base_id, now, 0));
            push_exact(&mut entries, expected, entry(base_id + 1, now, MOVED));
            assert!(entries.is_packed());
            entries
        };
        // Packed around `now` at shift 0: the base a quarter reach before.
        let base = now.saturating_sub(Duration::from_nanos(1 << (UNTIL_BITS - 2)));
        let last_fitting = base.plus_nanos(UNTIL_NEVER - 1);
        let mut expected = Vec::new();
        let mut entries = start(&mut expected);
        push_exact(
            &mut entries,
            &mut expected,
            entry(base_id + ID_MASK, last_fitting, COSTLY),
        );
        assert!(entries.is_packed(), "the last id and instant that fit");
        push_exact(
            &mut entries,
            &mut expected,
            entry(base_id + ID_MASK + 1, last_fitting, 0),
        );
        assert!(!entries.is_packed(), "ids 2^24 apart: whole");

        let mut expected = Vec::new();
        let mut entries = start(&mut expected);
        // The first instant past the reach, read back as that instant
        // (repacked at shift 1: rounded up to its grid), not as unbounded.
        let past_reach = base.plus_nanos(UNTIL_NEVER);
        assert!(entries.push_back(entry(base_id + 2, past_reach, 0), || 16));
        assert!(entries.is_packed(), "repacked around the later instant");
        assert_eq!(entries.get(2).until.nanos_since(past_reach), Some(1));
        assert_eq!(entries.get(0).until, now);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// An entry whose id is `gap` past the last, leaving `offset` ns
        /// after the start (or never), with flags.
        Push {
            gap: u64,
            offset: Option<u64>,
            flags: u64,
        },
        Pop,
        Retain(u64),
        Set {
            index: usize,
            offset: Option<u64>,
            flags: u64,
        },
        Extend(u64),
    }

    /// Offsets from nanoseconds to years apart, and ids from adjacent to
    /// far past the packing's reach.
    fn op() -> impl Strategy<Value = Op> {
        let offset = prop_oneof![
            3 => (0u64..1_000_000).prop_map(Some),
            3 => (0u64..120_000_000_000).prop_map(Some),
            1 => (0u64..1 << 62).prop_map(Some),
            1 => Just(None),
        ];
        let gap = prop_oneof![4 => 1u64..1_000, 1 => 1u64..1 << 26];
        prop_oneof![
            4 => (gap, offset.clone(), 0u64..8).prop_map(|(gap, offset, flags)| Op::Push { gap, offset, flags }),
            3 => Just(Op::Pop),
            1 => (1u64..5).prop_map(Op::Retain),
            2 => (any::<usize>(), offset, 0u64..8).prop_map(|(index, offset, flags)| Op::Set { index, offset, flags }),
            1 => (0u64..10_000_000_000).prop_map(Op::Extend),
        ]
    }

    proptest! {
        /// Every operation leaves the same entries, in the same order, as
        /// on a `VecDeque`: ids and flags exactly, instants never earlier
        /// and at most a few grid steps later (the coarsest grid being
        /// 2^20 ns), unbounded ones unbounded.
        #[test]
        fn the_queue_behaves_as_a_vec_deque_of_entries(
            ops in proptest::collection::vec(op(), 0..200),
            most in 1usize..20,
        ) {
            let start = Stamp::of(Instant::now());
            let at = |offset: Option<u64>| offset.map_or(Stamp::NEVER, |o| start.plus_nanos(o));
            let mut ours = Entries::default();
            let mut model: VecDeque<Entry> = VecDeque::new();
            let mut next_id = 1u64 << 50;
            let tolerance = (ops.len() as u64 + 1) << MAX_SHIFT;
            for op in ops {
                match op {
                    Op::Push { gap, offset, flags } => {
                        next_id += gap;
                        let added = entry(next_id, at(offset), flags);
                        prop_assert!(ours.push_back(added, || most));
                        model.push_back(added);
                    }
                    Op::Pop => {
                        let popped = ours.pop_front();
                        let expected = model.pop_front();
                        prop_assert_eq!(popped.map(|e| e.tag), expected.map(|e| e.tag));
                    }
                    Op::Retain(modulus) => {
                        ours.retain(|e| e.id() % modulus != 0);
                        model.retain(|e| e.id() % modulus != 0);
                    }
                    Op::Set { index, offset, flags } if !model.is_empty() => {
                        let index = index % model.len();
                        let changed = entry(model[index].id(), at(offset), flags);
                        ours.set(index, changed);
                        model[index] = changed;
                    }
                    Op::Set { .. } => {}
                    Op::Extend(nanos) => {
                        let delta = Duration::from_nanos(nanos);
                        ours.change_each(|e| e.until = e.until.saturating_add(delta));
                        for e in model.iter_mut() {
                            e.until = e.until.saturating_add(delta);
                        }
                    }
                }
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(
                    (ours.len() > 0).then(|| ours.get(0).tag),
                    model.front().map(|e| e.tag)
                );
                let got: Vec<Entry> = ours.iter().collect();
                let back: Vec<Entry> = ours.iter().rev().collect();
                prop_assert_eq!(got.len(), back.len());
                for (index, (got, expected)) in got.iter().zip(&model).enumerate() {
                    prop_assert_eq!(got.tag, expected.tag);
                    prop_assert_eq!(back[back.len() - 1 - index].tag, expected.tag);
                    prop_assert_eq!(ours.get(index).tag, expected.tag);
                    if expected.until == Stamp::NEVER {
                        prop_assert!(got.until == Stamp::NEVER);
                    } else {
                        let late = got.until.nanos_since(expected.until);
                        prop_assert!(late.is_some(), "an instant came back earlier");
                        prop_assert!(late.unwrap_or(u64::MAX) <= tolerance, "late by {late:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn flags_are_the_logs() {
        assert_eq!(MOVED | AWAITS_ANSWER | COSTLY, FLAG_MASK);
    }
}
