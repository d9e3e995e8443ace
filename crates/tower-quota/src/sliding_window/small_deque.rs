//! A double-ended queue that keeps its first element in place.
//!
//! Most keys of a store have one admission in their window at a time (a
//! caller that waits for each answer, or a quota far from full), and a
//! `VecDeque` would allocate for that one entry: another allocation per
//! key, and another cache miss per admission of a key that is out of the
//! caches. [`SmallDeque`] holds one element in place and moves to a ring of
//! its own at the second: 24 bytes in all for log entries (a size test pins
//! it), where a `VecDeque` alone takes 32. The ring counts its elements
//! and its front in `u32`s: a log of 4 billion entries would be 64 GiB.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};

/// The most elements a [`SmallDeque`] holds.
const MOST: usize = u32::MAX as usize;

/// A double-ended queue with room for one element in place; see the
/// [module docs](self).
pub(super) enum SmallDeque<T> {
    /// At most one element, without an allocation.
    One(Option<T>),
    /// From the second element on, and after (even when emptied again: a
    /// key that had several keeps its room for them).
    Many(Ring<T>),
}

/// A ring buffer: `len` elements from `buf[head]` on, wrapping around.
/// Slots outside them hold copies of elements pushed earlier (never read).
pub(super) struct Ring<T> {
    buf: Box<[T]>,
    head: u32,
    len: u32,
}

impl<T: Copy> Ring<T> {
    /// The slot of the element at `index` (below `len`).
    #[inline]
    fn slot(&self, index: usize) -> usize {
        let at = self.head as usize + index;
        if at >= self.buf.len() {
            at - self.buf.len()
        } else {
            at
        }
    }

    #[inline]
    fn as_slices(&self) -> (&[T], &[T]) {
        let head = self.head as usize;
        let end = head + self.len as usize;
        if end <= self.buf.len() {
            (&self.buf[head..end], &[])
        } else {
            let (wrapped, front) = self.buf.split_at(head);
            (front, &wrapped[..end - self.buf.len()])
        }
    }

    #[inline]
    fn as_mut_slices(&mut self) -> (&mut [T], &mut [T]) {
        let head = self.head as usize;
        let end = head + self.len as usize;
        let capacity = self.buf.len();
        if end <= capacity {
            (&mut self.buf[head..end], &mut [])
        } else {
            let (wrapped, front) = self.buf.split_at_mut(head);
            (front, &mut wrapped[..end - capacity])
        }
    }

    /// Moves the elements to a buffer of `capacity` slots (more than
    /// `len`), the front first; the new slots hold `fill`.
    #[cold]
    fn grow(&mut self, capacity: usize, fill: T) {
        let mut buf = Vec::with_capacity(capacity);
        let (front, back) = self.as_slices();
        buf.extend_from_slice(front);
        buf.extend_from_slice(back);
        buf.resize(capacity, fill);
        self.buf = buf.into_boxed_slice();
        self.head = 0;
    }

    /// Appends `value`; returns `false`, and keeps nothing, when the ring
    /// already holds [`MOST`] elements.
    #[inline]
    fn push_back(&mut self, value: T, most: impl FnOnce() -> usize) -> bool {
        let len = self.len as usize;
        if len == self.buf.len() {
            if len >= MOST {
                return false;
            }
            self.grow(grown(len, most()).min(MOST), value);
        }
        let slot = self.slot(len);
        self.buf[slot] = value;
        self.len += 1;
        true
    }

    #[inline]
    fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = self.buf[self.head as usize];
        // Below the capacity, itself at most `MOST`: fits a `u32`.
        self.head = self.slot(1) as u32;
        self.len -= 1;
        Some(value)
    }

    /// Keeps the elements `keep` is true of, in order, moving each kept
    /// one forward over those dropped.
    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut kept = 0;
        for index in 0..self.len as usize {
            let value = self.buf[self.slot(index)];
            if keep(&value) {
                let slot = self.slot(kept);
                self.buf[slot] = value;
                kept += 1;
            }
        }
        // At most `len`: fits a `u32`.
        self.len = kept as u32;
    }
}

impl<T> Default for SmallDeque<T> {
    fn default() -> Self {
        SmallDeque::One(None)
    }
}

impl<T: Copy> SmallDeque<T> {
    #[inline]
    pub(super) fn len(&self) -> usize {
        match self {
            SmallDeque::One(one) => usize::from(one.is_some()),
            SmallDeque::Many(many) => many.len as usize,
        }
    }

    /// The elements in order, as two slices (the second one empty when they
    /// do not wrap around).
    #[inline]
    fn as_slices(&self) -> (&[T], &[T]) {
        match self {
            SmallDeque::One(one) => (one.as_slice(), &[]),
            SmallDeque::Many(many) => many.as_slices(),
        }
    }

    #[inline]
    fn as_mut_slices(&mut self) -> (&mut [T], &mut [T]) {
        match self {
            SmallDeque::One(one) => (one.as_mut_slice(), &mut []),
            SmallDeque::Many(many) => many.as_mut_slices(),
        }
    }

    #[inline]
    pub(super) fn front(&self) -> Option<&T> {
        self.as_slices().0.first()
    }

    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<T> {
        match self {
            SmallDeque::One(one) => one.take(),
            SmallDeque::Many(many) => many.pop_front(),
        }
    }

    /// Appends `value`. Full, the deque grows as a log does: doubling from
    /// one element up to `most()` (the most it is expected to hold, asked
    /// only then), then doubling again. Returns `false`, and keeps
    /// nothing, when it holds `u32::MAX` elements already (64 GiB of log
    /// entries).
    #[inline]
    pub(super) fn push_back(&mut self, value: T, most: impl FnOnce() -> usize) -> bool {
        match self {
            SmallDeque::One(slot @ None) => {
                *slot = Some(value);
                true
            }
            SmallDeque::One(Some(first)) => {
                let first = *first;
                *self = SmallDeque::Many(Ring {
                    buf: Box::new([first, value]),
                    head: 0,
                    len: 2,
                });
                true
            }
            SmallDeque::Many(many) => many.push_back(value, most),
        }
    }

    /// The elements in order.
    #[inline]
    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        let (front, back) = self.as_slices();
        front.iter().chain(back)
    }

    /// The elements in order, each to change.
    #[inline]
    pub(super) fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut T> {
        let (front, back) = self.as_mut_slices();
        front.iter_mut().chain(back)
    }

    /// Keeps only the elements `keep` is true of, in order.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            SmallDeque::One(one) => {
                if one.as_ref().is_some_and(|value| !keep(value)) {
                    *one = None;
                }
            }
            SmallDeque::Many(many) => many.retain(keep),
        }
    }
}

/// The capacity a full queue of `len` elements grows to: doubling from one
/// element up to `most` (the most it is expected to hold), then doubling.
fn grown(len: usize, most: usize) -> usize {
    let grow = if len < most {
        len.clamp(1, most - len)
    } else {
        len.max(1)
    };
    len.saturating_add(grow)
}

/// Makes room for one more element in `deque`, as [`SmallDeque`] grows: a
/// key with one admission holds room for one entry, not four.
pub(super) fn make_room<T>(deque: &mut VecDeque<T>, most: usize) {
    let len = deque.len();
    if len < deque.capacity() {
        return;
    }
    deque.reserve_exact(grown(len, most) - len);
}

impl<T: Copy> Index<usize> for SmallDeque<T> {
    type Output = T;

    /// Panics when `index` is out of bounds, as a `VecDeque` does.
    #[inline]
    fn index(&self, index: usize) -> &T {
        match self {
            SmallDeque::One(one) => &one.as_slice()[index],
            SmallDeque::Many(many) => {
                assert!(index < many.len as usize, "index out of bounds");
                &many.buf[many.slot(index)]
            }
        }
    }
}

impl<T: Copy> IndexMut<usize> for SmallDeque<T> {
    #[inline]
    fn index_mut(&mut self, index: usize) -> &mut T {
        match self {
            SmallDeque::One(one) => &mut one.as_mut_slice()[index],
            SmallDeque::Many(many) => {
                assert!(index < many.len as usize, "index out of bounds");
                let slot = many.slot(index);
                &mut many.buf[slot]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::SmallDeque;

    /// A key's log keeps one entry in place, in less room than a
    /// `VecDeque` takes.
    #[test]
    fn a_small_deque_of_log_entries_is_24_bytes() {
        assert_eq!(
            std::mem::size_of::<SmallDeque<(u64, std::num::NonZeroU64)>>(),
            24
        );
        assert!(
            std::mem::size_of::<SmallDeque<(u64, std::num::NonZeroU64)>>()
                < std::mem::size_of::<VecDeque<u64>>()
        );
    }

    /// A log's queue grows by doubling up to its quota, then doubles on.
    #[test]
    fn a_full_queue_doubles_up_to_the_most_it_expects_then_on() {
        let mut capacities = vec![2];
        while capacities.len() < 6 {
            let last = capacities[capacities.len() - 1];
            capacities.push(super::grown(last, 10));
        }
        assert_eq!(capacities, [2, 4, 8, 10, 20, 40]);
        assert_eq!(super::grown(0, 10), 1);
        assert_eq!(super::grown(usize::MAX, 10), usize::MAX);
        let mut deque = SmallDeque::default();
        for value in 0..9u64 {
            assert!(deque.push_back(value, || 10));
        }
        let SmallDeque::Many(ring) = &deque else {
            panic!("nine elements spilled");
        };
        assert_eq!(ring.buf.len(), 10);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Pop,
        Retain(u32),
        Set(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u32>().prop_map(Op::Push),
            3 => Just(Op::Pop),
            1 => (1u32..5).prop_map(Op::Retain),
            1 => (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Op::Set(i, v)),
        ]
    }

    proptest! {
        /// Every operation leaves the same elements, in the same order, as
        /// on a `VecDeque`, and every view of them agrees.
        #[test]
        fn a_small_deque_behaves_as_a_vec_deque(
            ops in proptest::collection::vec(op(), 0..200),
            most in 1usize..20,
        ) {
            let mut ours = SmallDeque::default();
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(value) => {
                        ours.push_back(value, || most);
                        model.push_back(value);
                    }
                    Op::Pop => prop_assert_eq!(ours.pop_front(), model.pop_front()),
                    Op::Retain(modulus) => {
                        ours.retain(|value| value % modulus != 0);
                        model.retain(|value| value % modulus != 0);
                    }
                    Op::Set(index, value) if !model.is_empty() => {
                        let index = index % model.len();
                        ours[index] = value;
                        model[index] = value;
                    }
                    Op::Set(..) => {}
                }
                let expected: Vec<u32> = model.iter().copied().collect();
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(ours.front(), model.front());
                prop_assert_eq!(ours.iter().copied().collect::<Vec<_>>(), expected.clone());
                prop_assert_eq!(
                    ours.iter().rev().copied().collect::<Vec<_>>(),
                    expected.iter().rev().copied().collect::<Vec<_>>()
                );
                let (front, back) = ours.as_slices();
                prop_assert_eq!([front, back].concat(), expected.clone());
                for index in 0..model.len() {
                    prop_assert_eq!(ours[index], model[index]);
                }
                for value in ours.iter_mut() {
                    *value = value.wrapping_add(1);
                }
                for value in model.iter_mut() {
                    *value = value.wrapping_add(1);
                }
            }
        }
    }
}
