//! Wake-ups finer than tokio's timer, for the last millisecond of a wait
//! that spacing decides.
//!
//! tokio's timer fires on millisecond ticks, and its time driver parks for
//! whole milliseconds counted from the instant it parks: a sleep ends up
//! to a millisecond late, and which tick it lands on turns on a few tenths
//! of a millisecond. Against a provider that refuses two requests closer
//! than its interval (GCRA without tolerance), a request spaced by a timer
//! that fires a millisecond late is a tenth of the rate lost at 100 per
//! second, and room for the network under that interval is worth less
//! than a tick. So the head of a spaced key, woken a tick before its
//! instant, asks this timer for the rest: one thread, started on first use
//! and parked on a condition variable between deadlines, wakes each waker
//! at its deadline (the operating system's timer slack late, tens of
//! microseconds on Linux), never before it.
//!
//! The waiter keeps its tokio sleep too: whichever fires first wakes it,
//! and it looks at the clock again. Under tokio's paused clock (tests),
//! time moves only through tokio's timers, so the tokio sleep admits the
//! waiter at its instant there, and the real-time wake-up that follows is
//! one more look that finds nothing to do. If the thread cannot be started,
//! waiters keep tokio's timer alone.
//!
//! Entries are taken out when they fire; a waiter dropped before its
//! deadline leaves its waker until then, a millisecond at most, and waking
//! it is harmless. Only waits of less than a tick are registered, so the
//! heap holds at most the spaced heads whose instant is within the next
//! tick, and gives back the room of a burst of them once they have fired.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;
use std::time::Duration;

// The one exception to tokio's clock in the library (clippy's
// `disallowed-types`): this thread sleeps in real time, towards a deadline
// a condition variable can wait for, and only wakes waiters, which decide
// on tokio's clock when they look again.
#[allow(clippy::disallowed_types)]
type RealInstant = std::time::Instant;

/// Room the timer keeps for entries once they have all fired.
const KEPT: usize = 64;

/// Wakes `waker` once `after` has passed (in real time, from now), never
/// earlier; nothing if the timer thread could not be started (the
/// caller's own timer is then all there is).
pub(crate) fn wake_after(after: Duration, waker: &Waker) {
    let Some(timer) = timer() else {
        return;
    };
    // A deadline past what an instant holds is no deadline a spaced wait
    // has (less than a tick): the caller's timer covers it.
    let Some(deadline) = RealInstant::now().checked_add(after) else {
        return;
    };
    timer.register(deadline, waker.clone());
}

/// The one timer of the process, started on first use; `None` if its
/// thread could not be started.
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<Timer>> = OnceLock::new();
    TIMER
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("tower-quota-timer".to_owned())
                .spawn(|| {
                    // The thread waits until the timer is stored: `timer()`
                    // returns it from then on.
                    if let Some(timer) = timer() {
                        timer.run();
                    }
                })
                .ok()
                .map(|_| Timer::default())
        })
        .as_ref()
}

#[derive(Default)]
struct Timer {
    pending: Mutex<Pending>,
    changed: Condvar,
}

#[derive(Default)]
struct Pending {
    entries: BinaryHeap<Entry>,
    /// Registration order: entries with one deadline fire in that order.
    next: u64,
}

/// A waker and its deadline; the heap's greatest entry is the earliest.
struct Entry {
    deadline: RealInstant,
    order: u64,
    waker: Waker,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deadline, other.order).cmp(&(self.deadline, self.order))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl Timer {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding the lock: a poisoned one holds a
        // consistent heap.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, deadline: RealInstant, waker: Waker) {
        let mut pending = self.lock();
        let earliest = pending
            .entries
            .peek()
            .is_none_or(|first| deadline < first.deadline);
        let order = pending.next;
        pending.next = pending.next.wrapping_add(1);
        pending.entries.push(Entry {
            deadline,
            order,
            waker,
        });
        drop(pending);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// The timer thread: wakes every entry whose deadline has passed, then
    /// sleeps until the next deadline or a registration of an earlier one.
    fn run(&self) {
        let mut due = Vec::new();
        let mut pending = self.lock();
        loop {
            let now = RealInstant::now();
            while pending
                .entries
                .peek()
                .is_some_and(|first| first.deadline <= now)
            {
                if let Some(entry) = pending.entries.pop() {
                    due.push(entry.waker);
                }
            }
            if !due.is_empty() {
                // A burst of registrations (many keys spaced at once)
                // leaves no room behind once it has passed.
                if pending.entries.is_empty() {
                    pending.entries.shrink_to(KEPT);
                }
                // Woken without the lock: a waker may run a task inline.
                drop(pending);
                due.drain(..).for_each(Waker::wake);
                due.shrink_to(KEPT);
                pending = self.lock();
                continue;
            }
            pending = match pending.entries.peek() {
                Some(first) => {
                    let wait = first.deadline.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(pending, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::task::Wake;

    use super::*;

    /// Sends its number and the instant it was woken.
    struct Sender {
        number: usize,
        to: Mutex<mpsc::Sender<(usize, RealInstant)>>,
    }

    impl Wake for Sender {
        fn wake(self: Arc<Self>) {
            let to = self.to.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = to.send((self.number, RealInstant::now()));
        }
    }

    // The timer runs on real time: what it promises (never early, earliest
    // first, once) is what is checked, not how late it is.
    #[test]
    fn each_waker_is_woken_once_never_before_its_deadline_earliest_first() {
        let (tx, rx) = mpsc::channel();
        let waker = |number| {
            Waker::from(Arc::new(Sender {
                number,
                to: Mutex::new(tx.clone()),
            }))
        };
        let start = RealInstant::now();
        // Registered out of order: waker `i` is due `afters[i]` from now.
        let afters = [900, 300, 600, 0].map(Duration::from_micros);
        for (number, after) in afters.iter().enumerate() {
            wake_after(*after, &waker(number));
        }
        let mut woken = Vec::new();
        for _ in 0..afters.len() {
            let (number, at) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("every waker is woken");
            assert!(
                at.duration_since(start) >= afters[number],
                "waker {number} woken {:?} after the start, before {:?}",
                at.duration_since(start),
                afters[number]
            );
            woken.push(number);
        }
        assert_eq!(woken, [3, 1, 2, 0], "earliest deadline first");
        // Every deadline has passed: a second wake-up of any would be
        // in the channel before this one.
        wake_after(Duration::ZERO, &waker(4));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10))
                .map(|(number, _)| number),
            Ok(4),
            "each woken once"
        );
    }
}
