//! The sequence numbers of a gate's requests in flight.
//!
//! A gate numbers the requests it lets through in order and forgets each
//! when its answer comes, mostly in the order they went. A queue sorted by
//! construction serves that with no tree: a new number is the largest, so
//! it goes at the back, and an answer is usually at the front (one out of
//! turn moves the shorter side of the queue). Lookups search it in halves.

use std::collections::VecDeque;

/// The room an emptied queue keeps: a gate that had more in flight gives
/// the rest back once they are all answered.
const KEPT_CAPACITY: usize = 8;

/// The numbers of the requests in flight, in increasing order.
#[derive(Debug, Default)]
pub(super) struct InFlightSeqs {
    seqs: VecDeque<u64>,
}

impl InFlightSeqs {
    /// Adds `seq`, larger than every number the set holds: returns `false`
    /// (and keeps the set as it was) when it is not.
    pub(super) fn push(&mut self, seq: u64) -> bool {
        if self.seqs.back().is_some_and(|&last| last >= seq) {
            return false;
        }
        self.seqs.push_back(seq);
        true
    }

    /// Removes `seq`; returns whether it was there.
    pub(super) fn remove(&mut self, seq: u64) -> bool {
        // Answers come mostly in order: the front is checked first.
        let index = if self.seqs.front() == Some(&seq) {
            0
        } else {
            match self.seqs.binary_search(&seq) {
                Ok(index) => index,
                Err(_) => return false,
            }
        };
        self.seqs.remove(index);
        if self.seqs.is_empty() && self.seqs.capacity() > KEPT_CAPACITY {
            self.seqs = VecDeque::new();
        }
        true
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        self.seqs.binary_search(&seq).is_ok()
    }

    /// How many numbers are `from` or larger.
    pub(super) fn count_from(&self, from: u64) -> usize {
        self.seqs.len() - self.seqs.partition_point(|&seq| seq < from)
    }

    pub(super) fn len(&self) -> usize {
        self.seqs.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Lets the next request through.
        Push,
        /// Answers the request this far from the oldest in flight (modulo
        /// their count), or a number never given.
        Remove(usize),
        RemoveUnknown(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Push),
            3 => (0usize..4).prop_map(Op::Remove),
            2 => (0usize..64).prop_map(Op::Remove),
            1 => any::<u64>().prop_map(Op::RemoveUnknown),
        ]
    }

    proptest! {
        #[test]
        fn the_set_answers_as_an_ordered_set_does(
            ops in proptest::collection::vec(op(), 0..400),
            probes in proptest::collection::vec(0u64..450, 8),
        ) {
            let (mut seqs, mut model) = (InFlightSeqs::default(), BTreeSet::new());
            let mut next = 0;
            for op in ops {
                match op {
                    Op::Push => {
                        prop_assert!(seqs.push(next));
                        model.insert(next);
                        next += 1;
                    }
                    Op::Remove(nth) => {
                        let Some(&seq) = model.iter().nth(nth % model.len().max(1)) else {
                            prop_assert!(!seqs.remove(next));
                            continue;
                        };
                        prop_assert!(seqs.remove(seq));
                        model.remove(&seq);
                    }
                    Op::RemoveUnknown(seq) => {
                        prop_assert_eq!(seqs.remove(seq), model.remove(&seq));
                    }
                }
                prop_assert_eq!(seqs.len(), model.len());
                prop_assert_eq!(seqs.is_empty(), model.is_empty());
                for &probe in &probes {
                    prop_assert_eq!(seqs.contains(probe), model.contains(&probe));
                    prop_assert_eq!(seqs.count_from(probe), model.range(probe..).count());
                }
            }
        }
    }

    #[test]
    fn a_number_not_above_the_last_is_refused() {
        let mut seqs = InFlightSeqs::default();
        assert!(seqs.push(5));
        assert!(!seqs.push(5));
        assert!(!seqs.push(3));
        assert!(seqs.push(u64::MAX));
        assert_eq!(seqs.len(), 2);
    }

    #[test]
    fn an_emptied_set_gives_its_room_back() {
        let mut seqs = InFlightSeqs::default();
        for seq in 0..1_000 {
            assert!(seqs.push(seq));
        }
        for seq in (0..1_000).rev() {
            assert!(seqs.remove(seq));
        }
        assert!(seqs.is_empty());
        assert_eq!(seqs.seqs.capacity(), 0, "the room of 1,000 is given back");

        // A few in flight at a time keep their room.
        for seq in 1_000..1_004 {
            assert!(seqs.push(seq));
        }
        let capacity = seqs.seqs.capacity();
        for seq in 1_000..1_004 {
            assert!(seqs.remove(seq));
        }
        assert_eq!(seqs.seqs.capacity(), capacity);
    }
}
