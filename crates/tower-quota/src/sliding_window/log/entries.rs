//! The queue of a log's entries: the first one in place, the others in a
//! ring packed 3 or 4 bytes an entry where they can be, 8 where not.
//!
//! Most keys of a store have one admission in their window at a time (a
//! caller that waits for each answer, or a quota far from full), and a
//! `VecDeque` would allocate for that one entry: another allocation per
//! key, and another cache miss per admission of a key that is out of the
//! caches. [`Entries`] holds one entry in place (24 bytes in all, where a
//! `VecDeque` alone takes 32) and moves to a ring of its own at the second.
//!
//! An entry is an id and an instant, 16 bytes, but the entries of one log
//! are close to each other in both: a key's admissions take consecutive
//! ids (see [`Entries::next_id`]), and the instants lie within about a
//! window of each other. The ring keeps, at the front of its buffer, the
//! stamp its entries' instants count from and the id the key's next
//! admission takes, and packs each entry in one of three formats:
//!
//! - **dense**, 3 or 4 bytes: its flags and its instant's distance from
//!   the stamp (21 or 29 bits), in units of 1, 8 or 64 ns, 1 or 8 µs,
//!   125 µs or 1 ms, rounded up. Its id is not kept: the entries are the
//!   key's last admissions, one id after another, so the `i`-th from the
//!   front has the id `next_id - len + i`. Each unit divides a millisecond
//!   (an instant on a paused clock's millisecond grid comes back exact).
//!   Three bytes (a slot may span two words) where a unit spans 8 times
//!   the entries' instants: 1 ms for a window of a minute, up to windows
//!   of about 4 minutes, since the instants to come, which move on with
//!   the clock, must stay in reach a while; else four, with the least unit
//!   that spans twice the instants: 125 µs for a window of an hour, 1 ms
//!   beyond 9 hours, up to windows of about 3 days.
//! - **packed**, 8 bytes: its flags, its id's distance from a base id
//!   kept in the header (24 bits) and its instant's (37 bits), in units of
//!   `2^shift` nanoseconds, rounded up; for entries whose ids are not
//!   consecutive (an admission that took an id and left no entry here, an
//!   entry removed from the middle), or whose instants are too far apart
//!   for a dense ring. The shift is the least that spans the entries'
//!   instants, at most [`MAX_SHIFT`] (about a millisecond).
//! - **whole**, 16 bytes: ids more than 2^23 apart, or instants more
//!   than about 2 years apart; until the ring is empty again.
//!
//! Rounded up, an instant only holds its slot longer: a log counts no
//! fewer units than it holds, and one grid is used for all the ring's
//! entries, so their order is kept. An entry that does not fit (a longer
//! gap, an instant out of reach of the base, an id that breaks the run)
//! has the ring repacked around the entries it then holds, in the
//! smallest format that takes them (in its own buffer when the format's
//! kind and entry size stay); at every repacking a quarter of the reach
//! is left on either side, so that repacking is rare (instants move on
//! with the clock: at most about once per quarter reach of time, an O(n)
//! copy).
//!
//! The ring counts its entries and its front in `u32`s: a log of 4
//! billion entries would be 16 GiB.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Entry, FLAGS};
use crate::sliding_window::stamp::Stamp;

/// The most entries a ring holds.
const MOST: usize = u32::MAX as usize;

/// Ids are below this: the header word that keeps the next id keeps the
/// ring's format in the byte above it.
pub(in crate::sliding_window) const ID_LIMIT: u64 = 1 << 56;
const NEXT_MASK: u64 = ID_LIMIT - 1;

/// The header's words: the stamp instants count from, then the format's
/// byte above the next id; a packed ring's third is the id its entries'
/// ids count from.
const FORMAT_WORD: usize = 1;

/// Bits of an entry kept in every format.
const FLAG_MASK: u64 = (1 << FLAGS) - 1;
/// A packed entry: its flags, then the distance of its id from the base
/// id, then that of its instant from the base stamp.
const ID_BITS: u32 = 24;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
const PACKED_UNTIL_SHIFT: u32 = FLAGS + ID_BITS;
const PACKED_UNTIL_BITS: u32 = 64 - PACKED_UNTIL_SHIFT;
/// A dense entry: its flags, then its instant's distance from the base,
/// in 32 bits; a tight one in 24.
const DENSE_UNTIL_BITS: u32 = 32 - FLAGS;
const TIGHT_UNTIL_BITS: u32 = 24 - FLAGS;
const TIGHT_MASK: u64 = (1 << 24) - 1;
/// The bit of the format byte that marks a dense ring tight.
const TIGHT: u64 = 0x80;
/// The coarsest grid packed instants are kept to: 2^20 ns, about a
/// millisecond.
const MAX_SHIFT: u32 = 20;
/// The units of a dense ring's instants, in nanoseconds: each divides a
/// millisecond, each at most 16 times the one before.
const DENSE_UNITS: [u64; 7] = [1, 8, 64, 1_000, 8_000, 125_000, 1_000_000];

/// A queue of log entries; see the [module docs](self).
pub(super) enum Entries {
    /// At most one entry, without an allocation.
    One(Option<Entry>),
    /// From the second entry on, and after (even when emptied again: a key
    /// that had several keeps its room for them).
    Many(Ring),
}

/// A ring buffer: `len` entries from slot `head` on, wrapping around, in a
/// buffer of the format's header words and then its slots (two to a word
/// when dense, one when packed, two words each when whole). Slots outside
/// the entries hold copies of earlier ones or zeros (never read).
pub(super) struct Ring {
    buf: Box<[u64]>,
    head: u32,
    len: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dense,
    Packed,
    Whole,
}

/// How a ring's entries are packed: its header, read once.
#[derive(Clone, Copy, Debug)]
struct Format {
    kind: Kind,
    /// Dense: the index of its unit in [`DENSE_UNITS`]; packed: the shift
    /// of its grid.
    grid: u32,
    /// Dense: 3 bytes an entry, not 4.
    tight: bool,
    /// The id of the entry at index 0 (dense), or that the entries' ids
    /// count from (packed).
    id_base: u64,
    stamp_base: Stamp,
}

impl Format {
    /// Entries kept whole.
    const WHOLE: Format = Format {
        kind: Kind::Whole,
        grid: 0,
        tight: false,
        id_base: 0,
        stamp_base: Stamp::EARLIEST,
    };

    /// Header words before the slots.
    #[inline]
    fn header(self) -> usize {
        match self.kind {
            Kind::Packed => 3,
            Kind::Dense | Kind::Whole => 2,
        }
    }

    /// How many entries `words` words of slots hold.
    #[inline]
    fn entries_in(self, words: usize) -> usize {
        match self.kind {
            Kind::Dense if self.tight => words * 8 / 3,
            Kind::Dense => words * 2,
            Kind::Packed => words,
            Kind::Whole => words / 2,
        }
    }

    /// The words of slots `entries` entries take.
    fn words_for(self, entries: usize) -> usize {
        match self.kind {
            Kind::Dense if self.tight => entries.saturating_mul(3).div_ceil(8),
            Kind::Dense => entries.div_ceil(2),
            Kind::Packed => entries,
            Kind::Whole => entries.saturating_mul(2),
        }
    }

    /// The format of a ring of `len` entries whose buffer is `buf`, and
    /// its slots' words.
    #[inline]
    fn read(buf: &[u64], len: u32) -> (Format, &[u64]) {
        let [stamp, format, rest @ ..] = buf else {
            // Every ring is made with its header.
            return (Format::WHOLE, &[]);
        };
        let byte = format >> 56;
        let grid = ((byte >> 2) & 0x1f) as u32;
        let stamp_base = Stamp::from_bits(*stamp).unwrap_or(Stamp::EARLIEST);
        match (byte & 3, rest) {
            (0, slots) => (
                Format {
                    kind: Kind::Dense,
                    grid,
                    tight: byte & TIGHT != 0,
                    // A dense ring's entries end just below the next id.
                    id_base: (format & NEXT_MASK).saturating_sub(u64::from(len)),
                    stamp_base,
                },
                slots,
            ),
            (1, [id_base, slots @ ..]) => (
                Format {
                    kind: Kind::Packed,
                    grid,
                    tight: false,
                    id_base: *id_base,
                    stamp_base,
                },
                slots,
            ),
            (_, slots) => (Format::WHOLE, slots),
        }
    }

    /// The header's words, with the next id `next_id`.
    fn words(self, next_id: u64) -> [u64; 3] {
        let kind = match self.kind {
            Kind::Dense => 0,
            Kind::Packed => 1,
            Kind::Whole => 2,
        };
        // The grid is below 32: a unit's index or a shift of at most
        // `MAX_SHIFT`.
        let tight = if self.tight { TIGHT } else { 0 };
        let byte = kind | (u64::from(self.grid) << 2) | tight;
        [
            self.stamp_base.to_bits(),
            (byte << 56) | next_id.min(NEXT_MASK),
            self.id_base,
        ]
    }

    /// Dense: the bits of an entry's instant.
    #[inline]
    fn until_bits(self) -> u32 {
        if self.tight {
            TIGHT_UNTIL_BITS
        } else {
            DENSE_UNTIL_BITS
        }
    }

    /// Dense: the unit of its instants, in nanoseconds.
    #[inline]
    fn unit(self) -> u64 {
        DENSE_UNITS[(self.grid as usize).min(DENSE_UNITS.len() - 1)]
    }

    /// The instant `until` in `bits` bits: its distance from the base in
    /// grid units, rounded up (the entry leaves no earlier); all ones for
    /// an unbounded one. `None` when out of reach.
    #[inline]
    fn pack_until(self, until: Stamp, bits: u32) -> Option<u64> {
        let never = (1 << bits) - 1;
        if until == Stamp::NEVER {
            return Some(never);
        }
        let nanos = until.nanos_since(self.stamp_base)?;
        let units = if self.kind == Kind::Dense {
            // Each unit a constant: a multiplication, not a division.
            match self.grid {
                0 => nanos,
                1 => nanos.div_ceil(DENSE_UNITS[1]),
                2 => nanos.div_ceil(DENSE_UNITS[2]),
                3 => nanos.div_ceil(DENSE_UNITS[3]),
                4 => nanos.div_ceil(DENSE_UNITS[4]),
                5 => nanos.div_ceil(DENSE_UNITS[5]),
                _ => nanos.div_ceil(DENSE_UNITS[6]),
            }
        } else {
            (nanos >> self.grid) + u64::from(nanos & ((1 << self.grid) - 1) != 0)
        };
        (units < never).then_some(units)
    }

    #[inline]
    fn unpack_until(self, units: u64, bits: u32) -> Stamp {
        if units == (1 << bits) - 1 {
            Stamp::NEVER
        } else if self.kind == Kind::Dense {
            // Below 2^29 units of at most a millisecond: no overflow.
            self.stamp_base.plus_nanos(units * self.unit())
        } else {
            self.stamp_base.plus_nanos(units << self.grid)
        }
    }

    /// The slot word of `entry` at `index`, if it fits (not whole).
    #[inline]
    fn pack(self, entry: Entry, index: usize) -> Option<u64> {
        match self.kind {
            Kind::Dense => {
                // The run of ids: the entry at `index` has the `index`-th
                // id from the front's.
                if entry.id().checked_sub(self.id_base) != Some(index as u64) {
                    return None;
                }
                let until = self.pack_until(entry.until, self.until_bits())?;
                Some((until << FLAGS) | (entry.tag & FLAG_MASK))
            }
            Kind::Packed => {
                let id = entry.id().checked_sub(self.id_base)?;
                if id > ID_MASK {
                    return None;
                }
                let until = self.pack_until(entry.until, PACKED_UNTIL_BITS)?;
                Some((until << PACKED_UNTIL_SHIFT) | (id << FLAGS) | (entry.tag & FLAG_MASK))
            }
            Kind::Whole => None,
        }
    }

    /// The entry at `index` from its slot word (not whole).
    #[inline]
    fn unpack(self, word: u64, index: usize) -> Entry {
        let (id, until) = if self.kind == Kind::Dense {
            (
                self.id_base + index as u64,
                self.unpack_until(word >> FLAGS, self.until_bits()),
            )
        } else {
            (
                self.id_base + ((word >> FLAGS) & ID_MASK),
                self.unpack_until(word >> PACKED_UNTIL_SHIFT, PACKED_UNTIL_BITS),
            )
        };
        Entry {
            tag: (id << FLAGS) | (word & FLAG_MASK),
            until,
        }
    }

    /// The smallest format that packs every entry of `entries` with room
    /// to spare, in a ring whose next id is `next_id`.
    fn for_entries(entries: &[Entry], next_id: u64) -> Format {
        let len = entries.len() as u64;
        // The key's last admissions, one id after another, up to the next.
        let run = next_id.checked_sub(len).filter(|&first| {
            next_id <= NEXT_MASK
                && entries
                    .iter()
                    .zip(first..)
                    .all(|(entry, id)| entry.id() == id)
        });
        let mut bounded = entries.iter().filter(|e| !e.is_unbounded());
        let Some(first) = bounded.next() else {
            // Only unbounded entries (or none): any base serves until the
            // first instant comes, which repacks around it.
            return match run {
                Some(first) => Format {
                    kind: Kind::Dense,
                    grid: 0,
                    tight: true,
                    id_base: first,
                    stamp_base: Stamp::EARLIEST,
                },
                None => Format::packed_ids(entries).map_or(Format::WHOLE, |id_base| Format {
                    kind: Kind::Packed,
                    grid: 0,
                    tight: false,
                    id_base,
                    stamp_base: Stamp::EARLIEST,
                }),
            };
        };
        let (earliest, latest) = bounded.fold((first.until, first.until), |(lo, hi), e| {
            (lo.min(e.until), hi.max(e.until))
        });
        let spread = latest.nanos_since(earliest).unwrap_or(0);
        // Tight (3 bytes an entry) with the least unit whose reach is 8
        // times the spread, if one of at most a millisecond is (windows up
        // to about 4 minutes): a margin wide enough that the instants to
        // come, which move on with the clock, are seldom out of reach (a
        // rebase copies the ring). Else 4 bytes, with the least unit whose
        // reach is twice the spread. The base is a quarter of the reach
        // below the earliest instant: a whole number of units, so that it
        // stays on the grid of the earliest instant.
        let dense = run.and_then(|first| {
            let (bits, unit) = [(TIGHT_UNTIL_BITS, 8), (DENSE_UNTIL_BITS, 2)]
                .into_iter()
                .find_map(|(bits, times)| {
                    let unit = DENSE_UNITS
                        .iter()
                        .position(|&unit| spread <= (unit << bits) / times)?;
                    Some((bits, unit))
                })?;
            let quarter = DENSE_UNITS[unit] << (bits - 2);
            Some(Format {
                kind: Kind::Dense,
                // Below 7.
                grid: unit as u32,
                tight: bits == TIGHT_UNTIL_BITS,
                id_base: first,
                stamp_base: earliest.saturating_sub(Duration::from_nanos(quarter)),
            })
        });
        dense
            .or_else(|| {
                let id_base = Format::packed_ids(entries)?;
                let reach = |shift: u32| 1u64 << (PACKED_UNTIL_BITS + shift);
                let shift = (0..=MAX_SHIFT).find(|&shift| spread <= reach(shift) / 2)?;
                Some(Format {
                    kind: Kind::Packed,
                    grid: shift,
                    tight: false,
                    id_base,
                    stamp_base: earliest.saturating_sub(Duration::from_nanos(reach(shift) / 4)),
                })
            })
            .unwrap_or(Format::WHOLE)
    }

    /// The base id of a packed ring of `entries`, if their ids are close
    /// enough to be packed with room to spare.
    fn packed_ids(entries: &[Entry]) -> Option<u64> {
        let first = entries.iter().map(Entry::id).min().unwrap_or(0);
        let last = entries.iter().map(Entry::id).max().unwrap_or(first);
        (last - first <= ID_MASK / 2).then_some(first)
    }
}

impl Ring {
    /// A ring of `entries`, packed if they can be, with room for
    /// `capacity` entries (at least as many as given), whose next id is
    /// `next_id`.
    fn packed(entries: &[Entry], capacity: usize, next_id: u64) -> Ring {
        let format = Format::for_entries(entries, next_id);
        let capacity = capacity.max(entries.len());
        let header = format.header();
        let mut buf = vec![0; header + format.words_for(capacity)];
        buf[..header].copy_from_slice(&format.words(next_id)[..header]);
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
        Format::read(&self.buf, self.len)
    }

    fn format(&self) -> Format {
        self.parts().0
    }

    /// The id the key's next admission takes.
    #[inline]
    fn next_id(&self) -> u64 {
        self.buf.get(FORMAT_WORD).map_or(0, |word| word & NEXT_MASK)
    }

    /// Sets [`next_id`](Self::next_id), the entries' ids staying what they
    /// are (a dense ring's are counted back from it: only with none).
    #[inline]
    fn set_next_id(&mut self, next_id: u64) {
        if let Some(word) = self.buf.get_mut(FORMAT_WORD) {
            *word = (*word & !NEXT_MASK) | next_id.min(NEXT_MASK);
        }
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
    #[inline(always)]
    fn read(&self, index: usize) -> Entry {
        let (format, slots) = self.parts();
        self.read_in(format, slots, index)
    }

    /// [`read`](Self::read) in the ring's `format`, its slots' words being
    /// `slots`.
    #[inline(always)]
    fn read_in(&self, format: Format, slots: &[u64], index: usize) -> Entry {
        let slot = self.slot(index, format.entries_in(slots.len()));
        match format.kind {
            Kind::Dense if format.tight => format.unpack(tight_slot(slots, slot), index),
            Kind::Dense => {
                let word = (slots[slot / 2] >> ((slot % 2) * 32)) & u64::from(u32::MAX);
                format.unpack(word, index)
            }
            Kind::Packed => format.unpack(slots[slot], index),
            Kind::Whole => Entry {
                tag: slots[2 * slot],
                until: Stamp::from_bits(slots[2 * slot + 1]).unwrap_or(Stamp::NEVER),
            },
        }
    }

    /// Writes `entry` at `index` (below the capacity); `false`, writing
    /// nothing, when it does not fit the format.
    #[inline]
    fn write(&mut self, index: usize, entry: Entry) -> bool {
        let (format, slots) = self.parts();
        let capacity = format.entries_in(slots.len());
        self.write_in(format, capacity, index, entry)
    }

    /// [`write`](Self::write) in the ring's `format`, of `capacity`
    /// entries.
    #[inline]
    fn write_in(&mut self, format: Format, capacity: usize, index: usize, entry: Entry) -> bool {
        let slot = self.slot(index, capacity);
        let at = format.header();
        if format.kind == Kind::Whole {
            self.buf[at + 2 * slot] = entry.tag;
            self.buf[at + 2 * slot + 1] = entry.until.to_bits();
            return true;
        }
        let Some(packed) = format.pack(entry, index) else {
            return false;
        };
        match format.kind {
            Kind::Dense if format.tight => set_tight_slot(&mut self.buf[at..], slot, packed),
            Kind::Dense => {
                let shift = (slot % 2) * 32;
                let word = &mut self.buf[at + slot / 2];
                *word = (*word & !(u64::from(u32::MAX) << shift)) | (packed << shift);
            }
            Kind::Packed | Kind::Whole => self.buf[at + slot] = packed,
        }
        true
    }

    fn entries(&self) -> Vec<Entry> {
        (0..self.len as usize)
            .map(|index| self.read(index))
            .collect()
    }

    /// Repacks the ring around `entries` (what it is to hold), keeping its
    /// capacity and its next id: in its own buffer when the format's kind
    /// and entry size stay (a new base for instants that moved on with the
    /// clock, the common case), else in a new one.
    #[cold]
    fn repack(&mut self, entries: &[Entry]) {
        let (capacity, next_id) = (self.capacity(), self.next_id());
        let format = Format::for_entries(entries, next_id);
        let current = self.format();
        if (format.kind, format.tight) != (current.kind, current.tight) || entries.len() > capacity
        {
            *self = Ring::packed(entries, capacity, next_id);
            return;
        }
        // The same header and slot sizes: the same capacity.
        let header = format.header();
        self.buf[..header].copy_from_slice(&format.words(next_id)[..header]);
        self.head = 0;
        // At most the capacity: fits a `u32`.
        self.len = entries.len() as u32;
        for (index, &entry) in entries.iter().enumerate() {
            let written = self.write(index, entry);
            debug_assert!(written, "a format chosen for the entries packs each");
        }
    }

    /// Moves the entries to a buffer of `capacity` slots (more than `len`),
    /// the front first, packed anew.
    #[cold]
    fn grow(&mut self, capacity: usize) {
        *self = Ring::packed(&self.entries(), capacity, self.next_id());
    }

    #[inline]
    fn push_back(&mut self, entry: Entry, most: impl FnOnce() -> usize) -> bool {
        let len = self.len as usize;
        let (format, slots) = self.parts();
        let capacity = format.entries_in(slots.len());
        // The common case: room, entries before it, and (dense) the next id
        // of the run.
        if len > 0 && len < capacity {
            let next_id = self.next_id();
            if (format.kind != Kind::Dense || entry.id() == next_id)
                && self.write_in(format, capacity, len, entry)
            {
                self.len += 1;
                if entry.id() >= next_id {
                    self.set_next_id(entry.id().saturating_add(1));
                }
                return true;
            }
        }
        self.push_back_slow(entry, most)
    }

    #[cold]
    fn push_back_slow(&mut self, entry: Entry, most: impl FnOnce() -> usize) -> bool {
        let len = self.len as usize;
        if len == self.capacity() {
            if len >= MOST {
                return false;
            }
            self.grow(grown(len, most()).min(MOST));
        }
        let next_id = self.next_id().max(entry.id().saturating_add(1));
        let kind = self.format().kind;
        if len == 0 {
            match kind {
                // Emptied: packed again from this entry on.
                Kind::Whole => {
                    self.set_next_id(next_id);
                    self.repack(&[entry]);
                    return true;
                }
                // Emptied: a run again from this entry on.
                Kind::Dense if entry.id() >= self.next_id() => self.set_next_id(entry.id()),
                Kind::Dense | Kind::Packed => {}
            }
        }
        // A dense ring takes the next id of its run only.
        if (kind == Kind::Dense && entry.id() != self.next_id()) || !self.write(len, entry) {
            // Read before the next id moves: a dense ring's ids count back
            // from it.
            if len == 0 {
                self.set_next_id(next_id);
                self.repack(&[entry]);
            } else {
                let mut entries = self.entries();
                entries.push(entry);
                self.set_next_id(next_id);
                self.repack(&entries);
            }
            return true;
        }
        self.len += 1;
        self.set_next_id(next_id);
        true
    }

    /// The key's admission `id` left no entry here: the next id is past it
    /// (a dense ring's run is broken, and it is packed).
    #[cold]
    fn skip(&mut self, id: u64) {
        if id < self.next_id() {
            return;
        }
        if self.len == 0 || self.format().kind != Kind::Dense {
            self.set_next_id(id.saturating_add(1));
            return;
        }
        // Read before the next id moves: a dense ring's ids count back
        // from it.
        let entries = self.entries();
        self.set_next_id(id.saturating_add(1));
        self.repack(&entries);
    }

    /// Takes the front entry if `take` is true of it.
    #[inline]
    fn pop_front_if(&mut self, take: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        if self.len == 0 {
            return None;
        }
        let (format, slots) = self.parts();
        let entry = self.read_in(format, slots, 0);
        if !take(&entry) {
            return None;
        }
        // Below the capacity, itself at most `MOST`: fits a `u32`.
        self.head = self.slot(1, format.entries_in(slots.len())) as u32;
        self.len -= 1;
        Some(entry)
    }

    #[inline(always)]
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

    /// Keeps the entries `keep` is true of, in order, repacked (a dense
    /// ring whose run is broken is packed).
    #[cold]
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let mut entries = self.entries();
        entries.retain(|entry| keep(entry));
        self.repack(&entries);
    }

    /// `until` as the ring would keep it (see [`Entries::on_grid`]).
    #[inline]
    fn on_grid(&self, until: Stamp) -> Stamp {
        let format = self.format();
        let bits = match format.kind {
            Kind::Dense => format.until_bits(),
            Kind::Packed => PACKED_UNTIL_BITS,
            Kind::Whole => return until,
        };
        format
            .pack_until(until, bits)
            .map_or(until, |units| format.unpack_until(units, bits))
    }

    /// The index of the entry of admission `id`, if a dense ring: its run
    /// of ids gives it without a search (`Some(None)`: not here).
    #[inline]
    fn index_of(&self, id: u64) -> Option<Option<usize>> {
        let format = self.format();
        (format.kind == Kind::Dense).then(|| {
            id.checked_sub(format.id_base)
                .and_then(|index| usize::try_from(index).ok())
                .filter(|&index| index < self.len as usize)
        })
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

    /// Appends `entry`, the key's latest admission. Full, the queue grows
    /// as a log does: doubling from one entry up to `most()` (the most it
    /// is expected to hold, asked only then), then doubling again. Returns
    /// `false`, and keeps nothing, when it holds `u32::MAX` entries
    /// already.
    #[inline]
    pub(super) fn push_back(&mut self, entry: Entry, most: impl FnOnce() -> usize) -> bool {
        match self {
            Entries::One(slot @ None) => {
                *slot = Some(entry);
                true
            }
            Entries::One(Some(first)) => {
                let first = *first;
                let next_id = first.id().max(entry.id()).saturating_add(1);
                *self = Entries::Many(Ring::packed(&[first, entry], 2, next_id));
                true
            }
            Entries::Many(many) => many.push_back(entry, most),
        }
    }

    /// The id the key's next admission takes, when this queue knows it:
    /// one past the id of every admission the key made while the queue
    /// held an entry. `None` while it holds none and never held two: the
    /// key's next id is then one no admission of its store took before.
    ///
    /// It knows because every admission of the key is either pushed here
    /// ([`push_back`](Self::push_back), with the latest id) or
    /// [`skip`](Self::skip)ped; so the ids of a ring's entries, when no
    /// admission left one elsewhere, run one after another.
    #[inline]
    pub(super) fn next_id(&self) -> Option<u64> {
        match self {
            Entries::One(one) => one.map(|entry| entry.id().saturating_add(1)),
            Entries::Many(many) => Some(many.next_id()),
        }
    }

    /// The key's admission `id` left no entry here (it cost no units of
    /// this quota, or went to another queue): the next id is past it.
    pub(super) fn skip(&mut self, id: u64) {
        match self {
            Entries::One(None) => {}
            Entries::One(Some(first)) => {
                let first = *first;
                let next_id = first.id().max(id).saturating_add(1);
                *self = Entries::Many(Ring::packed(&[first], 1, next_id));
            }
            Entries::Many(many) => many.skip(id),
        }
    }

    /// Where the entry of admission `id` is, when the queue knows without
    /// a search (a dense ring): `Some(None)` when it is not here.
    #[inline]
    pub(super) fn index_of(&self, id: u64) -> Option<Option<usize>> {
        match self {
            Entries::One(_) => None,
            Entries::Many(many) => many.index_of(id),
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

    /// `until` as an entry here would keep it: rounded up to the ring's
    /// grid, if it is in reach (else a ring packed anew picks a grid for
    /// it and the others, which keeps their order). An instant compared
    /// with the entries' is taken so, or one a grid unit later than an
    /// earlier entry would seem to come before it.
    #[inline]
    pub(super) fn on_grid(&self, until: Stamp) -> Stamp {
        match self {
            Entries::One(_) => until,
            Entries::Many(many) => many.on_grid(until),
        }
    }

    /// Whether the entries are packed (3, 4 or 8 bytes each); for tests.
    #[cfg(test)]
    pub(super) fn is_packed(&self) -> bool {
        match self {
            Entries::One(_) => false,
            Entries::Many(many) => many.format().kind != Kind::Whole,
        }
    }

    /// Whether the entries are dense (4 bytes each, or 3 when tight);
    /// for tests.
    #[cfg(test)]
    pub(super) fn is_dense(&self) -> bool {
        match self {
            Entries::One(_) => false,
            Entries::Many(many) => many.format().kind == Kind::Dense,
        }
    }

    /// Whether the entries are dense in 3 bytes each; for tests.
    #[cfg(test)]
    pub(super) fn is_tight(&self) -> bool {
        match self {
            Entries::One(_) => false,
            Entries::Many(many) => many.format().tight,
        }
    }
}

/// The 24 bits of slot `slot` of `slots`, packed three bytes a slot (a
/// slot may span two words).
#[inline(always)]
fn tight_slot(slots: &[u64], slot: usize) -> u64 {
    let (word, shift) = tight_bit(slot);
    let low = slots[word] >> shift;
    let value = if shift > 40 {
        low | (slots[word + 1] << (64 - shift))
    } else {
        low
    };
    value & TIGHT_MASK
}

/// Writes `value` (24 bits) in slot `slot` of `slots`.
#[inline]
fn set_tight_slot(slots: &mut [u64], slot: usize, value: u64) {
    let (word, shift) = tight_bit(slot);
    slots[word] = (slots[word] & !(TIGHT_MASK << shift)) | (value << shift);
    if shift > 40 {
        // The bits past the first word's end.
        let written = 64 - shift;
        slots[word + 1] = (slots[word + 1] & !(TIGHT_MASK >> written)) | (value >> written);
    }
}

/// The word and the bit in it where 24-bit slot `slot` starts.
#[inline(always)]
fn tight_bit(slot: usize) -> (usize, u32) {
    // A ring holds at most `MOST` slots: 24 times that fits a `u64`, and a
    // word index within the buffer fits a `usize`.
    let bit = slot as u64 * 24;
    ((bit / 64) as usize, (bit % 64) as u32)
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
        assert!(entries.is_packed() && !entries.is_dense());
        assert_eq!(words(&entries), 3 + 10, "ids apart: 8 bytes an entry");

        // A key's admissions one after another: 3 bytes an entry.
        let mut entries = Entries::default();
        for id in 0..9u64 {
            let until = now.saturating_add(Duration::from_secs(60 + id));
            assert!(entries.push_back(entry(500 + id, until, 0), || 10));
        }
        assert!(entries.is_tight());
        assert_eq!(words(&entries), 2 + 4, "a run of ids: 3 bytes an entry");
        assert_eq!(entries.next_id(), Some(509));

        // Instants further apart than a quarter of an hour: 4 bytes.
        let mut entries = Entries::default();
        for id in 0..9u64 {
            let until = now.saturating_add(Duration::from_secs(60 + id * 300));
            assert!(entries.push_back(entry(500 + id, until, 0), || 10));
        }
        assert!(entries.is_dense() && !entries.is_tight());
        assert_eq!(words(&entries), 2 + 5, "a run of ids: 4 bytes an entry");
    }

    /// A ring whose instants moved on out of its reach (a key idle, then
    /// busy again, or a long-lived busy one) is rebased in its own buffer:
    /// no allocation, the entries and the next id kept.
    #[test]
    fn a_ring_rebased_keeps_its_buffer() {
        let buffer = |entries: &Entries| match entries {
            Entries::One(_) => std::ptr::null(),
            Entries::Many(many) => many.buf.as_ptr(),
        };
        let now = Stamp::of(Instant::now());
        let mut entries = Entries::default();
        for id in 0..6u64 {
            assert!(entries.push_back(entry(id, now, 0), || 8));
        }
        let before = buffer(&entries);
        // Busy: the next instant is minutes past the others'.
        let later = now.saturating_add(Duration::from_secs(3 << 6));
        assert!(entries.push_back(entry(6, later, 0), || 8));
        assert!(entries.is_tight());
        assert_eq!(buffer(&entries), before, "rebased in place");
        assert_eq!(
            entries.iter().map(|e| e.id()).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(entries.get(6).until, later);
        // Idle: emptied, then an instant far later still.
        while entries.pop_front().is_some() {}
        let much_later = later.saturating_add(Duration::from_secs(3 << 20));
        assert!(entries.push_back(entry(9, much_later, 0), || 8));
        assert_eq!(buffer(&entries), before, "rebased in place");
        assert_eq!(entries.get(0).until, much_later);
        assert_eq!(entries.next_id(), Some(10));
    }

    /// The instants of a dense ring (consecutive ids) whose window is an
    /// hour or a day, on a paused clock's millisecond grid, come back
    /// exact: every unit divides a millisecond.
    #[test]
    fn dense_instants_on_a_millisecond_grid_come_back_exact() {
        let now = Stamp::of(Instant::now());
        for step in [7u64, 20_011, 431_999] {
            let mut entries = Entries::default();
            let mut expected = Vec::new();
            for i in 0..200u64 {
                let until = now.saturating_add(Duration::from_millis(i * step));
                let until = if i % 7 == 3 { Stamp::NEVER } else { until };
                let added = entry((1 << 40) + i, until, i % 8);
                assert!(entries.push_back(added, || 1000));
                expected.push(added);
            }
            assert!(entries.is_dense(), "{step} ms apart");
            let got: Vec<(u64, Stamp)> = entries.iter().map(|e| (e.tag, e.until)).collect();
            let want: Vec<(u64, Stamp)> = expected.iter().map(|e| (e.tag, e.until)).collect();
            assert_eq!(got, want, "{step} ms apart");
        }
    }

    /// An admission that takes an id and leaves no entry breaks the run:
    /// the ring is packed, and its entries and next id stay right. The
    /// next id survives the ring's emptying, and a run starts again.
    #[test]
    fn a_skipped_id_breaks_the_run_and_the_next_id_is_kept() {
        let now = Stamp::of(Instant::now());
        let mut entries = Entries::default();
        assert_eq!(entries.next_id(), None, "never held an entry");
        entries.skip(3);
        assert_eq!(entries.next_id(), None);
        assert!(entries.push_back(entry(10, now, 0), || 8));
        assert_eq!(entries.next_id(), Some(11));
        entries.skip(11);
        assert_eq!(entries.next_id(), Some(12), "kept by a ring");
        assert!(entries.push_back(entry(12, now, 0), || 8));
        assert!(entries.is_packed() && !entries.is_dense());
        assert_eq!(entries.iter().map(|e| e.id()).collect::<Vec<_>>(), [10, 12]);
        assert_eq!(entries.index_of(12), None, "packed: searched");
        while entries.pop_front().is_some() {}
        assert_eq!(entries.next_id(), Some(13));
        entries.skip(13);
        assert_eq!(entries.next_id(), Some(14));
        for id in 14..20 {
            assert!(entries.push_back(entry(id, now, 0), || 8));
        }
        assert_eq!(entries.next_id(), Some(20));
        // Packed when it emptied: a run again once it is repacked.
        entries.change_each(|e| e.until = e.until.saturating_add(Duration::from_secs(3 << 20)));
        assert!(entries.is_dense());
        assert_eq!(entries.index_of(16), Some(Some(2)));
        assert_eq!(entries.index_of(20), Some(None));
        assert_eq!(entries.index_of(13), Some(None));
        entries.retain(|e| e.id() != 17);
        assert!(!entries.is_dense(), "a hole in the run");
        assert_eq!(
            entries.iter().map(|e| e.id()).collect::<Vec<_>>(),
            [14, 15, 16, 18, 19]
        );
        assert_eq!(entries.next_id(), Some(20));
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
        let never = (1 << PACKED_UNTIL_BITS) - 1;
        // Ids one apart would be dense: two apart are packed.
        let start = |expected: &mut Vec<Entry>| {
            let mut entries = Entries::default();
            push_exact(&mut entries, expected, entry(base_id, now, 0));
            push_exact(&mut entries, expected, entry(base_id + 2, now, MOVED));
            assert!(entries.is_packed() && !entries.is_dense());
            entries
        };
        // Packed around `now` at shift 0: the base a quarter reach before.
        let base = now.saturating_sub(Duration::from_nanos(1 << (PACKED_UNTIL_BITS - 2)));
        let last_fitting = base.plus_nanos(never - 1);
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
        let past_reach = base.plus_nanos(never);
        assert!(entries.push_back(entry(base_id + 3, past_reach, 0), || 16));
        assert!(entries.is_packed(), "repacked around the later instant");
        assert_eq!(entries.get(2).until.nanos_since(past_reach), Some(1));
        assert_eq!(entries.get(0).until, now);
    }

    /// The same edges for a dense ring, tight (3 bytes an entry, as for
    /// instants close together): the last instant in reach comes back
    /// exact; the first past it repacks the ring to the next unit, never
    /// read back as unbounded; an id out of the run packs it.
    #[test]
    fn the_edges_of_a_dense_reach_come_back_exact() {
        let now = Stamp::of(Instant::now());
        let never = (1 << TIGHT_UNTIL_BITS) - 1;
        let start = |expected: &mut Vec<Entry>| {
            let mut entries = Entries::default();
            push_exact(&mut entries, expected, entry(7, now, 0));
            push_exact(&mut entries, expected, entry(8, now, MOVED));
            assert!(entries.is_tight());
            entries
        };
        // Dense around `now` in nanoseconds: the base a quarter reach before.
        let base = now.saturating_sub(Duration::from_nanos(1 << (TIGHT_UNTIL_BITS - 2)));
        let mut expected = Vec::new();
        let mut entries = start(&mut expected);
        push_exact(
            &mut entries,
            &mut expected,
            entry(9, base.plus_nanos(never - 1), COSTLY),
        );
        assert!(entries.is_dense(), "the last instant that fits");
        let past_reach = base.plus_nanos(never);
        assert!(entries.push_back(entry(10, past_reach, 0), || 16));
        assert!(entries.is_tight(), "repacked in 8 ns units");
        let late = entries.get(3).until.nanos_since(past_reach);
        assert!(late.is_some_and(|late| late < 8), "late by {late:?}");
        assert_eq!(entries.get(0).until, now);

        let mut expected = Vec::new();
        let mut entries = start(&mut expected);
        push_exact(&mut entries, &mut expected, entry(10, now, 0));
        assert!(!entries.is_dense(), "id 9 left no entry");
        assert_eq!(entries.next_id(), Some(11));
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
        /// An admission `gap` ids past the last that leaves no entry.
        Skip(u64),
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
        let gap = prop_oneof![6 => Just(1u64), 3 => 1u64..1_000, 1 => 1u64..1 << 26];
        prop_oneof![
            6 => (gap.clone(), offset.clone(), 0u64..8).prop_map(|(gap, offset, flags)| Op::Push { gap, offset, flags }),
            1 => gap.prop_map(Op::Skip),
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
            // The last id pushed or skipped.
            let mut latest: Option<u64> = None;
            let tolerance = (ops.len() as u64 + 1) << MAX_SHIFT;
            for op in ops {
                match op {
                    Op::Push { gap, offset, flags } => {
                        next_id += gap;
                        let added = entry(next_id, at(offset), flags);
                        prop_assert!(ours.push_back(added, || most));
                        model.push_back(added);
                        latest = Some(next_id);
                    }
                    Op::Skip(gap) => {
                        next_id += gap;
                        ours.skip(next_id);
                        latest = Some(next_id);
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
                // Known, the next id is past every id given; known while
                // the queue holds an entry.
                let next = ours.next_id();
                prop_assert!(next.is_none_or(|next| Some(next - 1) == latest), "{next:?}");
                prop_assert!(model.is_empty() || next.is_some());
                for (index, e) in model.iter().enumerate() {
                    let found = ours.index_of(e.id());
                    prop_assert!(found.is_none_or(|found| found == Some(index)));
                }
                prop_assert!(ours.index_of(next_id + 1).is_none_or(|found| found.is_none()));
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
