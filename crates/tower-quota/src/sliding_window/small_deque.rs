//! A double-ended queue that keeps its first element in place.
//!
//! Most keys of a store have one admission in their window at a time (a
//! caller that waits for each answer, or a quota far from full), and a
//! `VecDeque` would allocate for that one entry: another allocation per
//! key, and another cache miss per admission of a key that is out of the
//! caches. [`SmallDeque`] holds one element in place, in the same 32 bytes
//! as a `VecDeque` (a size test pins it), and moves to a `VecDeque` at the
//! second.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};

/// A `VecDeque` with room for one element in place; see the
/// [module docs](self).
pub(super) enum SmallDeque<T> {
    /// At most one element, without an allocation.
    One(Option<T>),
    /// From the second element on, and after (even when emptied again: a
    /// key that had several keeps its room for them).
    Many(VecDeque<T>),
}

impl<T> Default for SmallDeque<T> {
    fn default() -> Self {
        SmallDeque::One(None)
    }
}

impl<T> SmallDeque<T> {
    #[inline]
    pub(super) fn len(&self) -> usize {
        match self {
            SmallDeque::One(one) => usize::from(one.is_some()),
            SmallDeque::Many(many) => many.len(),
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
        match self {
            SmallDeque::One(one) => one.as_ref(),
            SmallDeque::Many(many) => many.front(),
        }
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
    /// only then), then as a `VecDeque` grows.
    #[inline]
    pub(super) fn push_back(&mut self, value: T, most: impl FnOnce() -> usize) {
        match self {
            SmallDeque::One(slot @ None) => *slot = Some(value),
            SmallDeque::One(Some(_)) => self.spill(value),
            SmallDeque::Many(many) => {
                if many.len() == many.capacity() {
                    make_room(many, most());
                }
                many.push_back(value);
            }
        }
    }

    /// The second element: the first moves to a `VecDeque` of two.
    #[inline(never)]
    fn spill(&mut self, value: T) {
        let mut many = VecDeque::with_capacity(2);
        if let SmallDeque::One(Some(first)) = std::mem::take(self) {
            many.push_back(first);
        }
        many.push_back(value);
        *self = SmallDeque::Many(many);
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

/// Makes room for one more element in `deque`, doubling from one element
/// up to `most` (the most it is expected to hold), then as a `VecDeque`
/// grows: a key with one admission holds room for one entry, not four.
pub(super) fn make_room<T>(deque: &mut VecDeque<T>, most: usize) {
    let len = deque.len();
    if len < deque.capacity() {
        return;
    }
    let grow = if len < most {
        len.clamp(1, most - len)
    } else {
        len.max(1)
    };
    deque.reserve_exact(grow);
}

impl<T> Index<usize> for SmallDeque<T> {
    type Output = T;

    /// Panics when `index` is out of bounds, as a `VecDeque` does.
    #[inline]
    fn index(&self, index: usize) -> &T {
        match self {
            SmallDeque::One(one) => &one.as_slice()[index],
            SmallDeque::Many(many) => &many[index],
        }
    }
}

impl<T> IndexMut<usize> for SmallDeque<T> {
    #[inline]
    fn index_mut(&mut self, index: usize) -> &mut T {
        match self {
            SmallDeque::One(one) => &mut one.as_mut_slice()[index],
            SmallDeque::Many(many) => &mut many[index],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::SmallDeque;

    /// A key's log keeps one entry in place, in the room of a `VecDeque`.
    #[test]
    fn a_small_deque_of_log_entries_is_32_bytes() {
        assert_eq!(std::mem::size_of::<SmallDeque<[u64; 2]>>(), 32);
        assert_eq!(
            std::mem::size_of::<SmallDeque<(u64, std::num::NonZeroU64)>>(),
            32
        );
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
