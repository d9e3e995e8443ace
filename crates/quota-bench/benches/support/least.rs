//! The least an exact sliding log does per admission, for reference beside
//! the limiters measured: one lock, tokio's clock, a queue of instants.
//!
//! "At most N in any window" holds when an admission finds fewer than N
//! entries newer than `now - window`: keep the entries in a queue, drop
//! the ones that left from its front, count the rest. That is all
//! [`LeastLog::admit`] does (a `VecDeque` of instants behind a `Mutex`,
//! one clock reading). An exact log that holds each slot until a window
//! after the request's *answer* (the provider counts the request when it
//! arrives, somewhere before the answer) also takes the lock and reads the
//! clock a second time when the answer comes: [`LeastLog::answer`].
//!
//! No key, no queue of waiters, no costs, nothing learned from a provider,
//! no eviction, no telemetry: not a limiter anyone should use, only the
//! floor of the work an exact admission does on this machine, to set the
//! other rows against.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A queue of the instants until which each admission holds its slot.
pub(crate) struct LeastLog {
    max_calls: usize,
    window: Duration,
    log: Mutex<Log>,
}

struct Log {
    entries: VecDeque<Entry>,
    next_id: u64,
}

struct Entry {
    id: u64,
    until: Instant,
}

/// Held until a window after the answer, or after this long past the
/// admission when no answer comes (as the crate's `sent_within`).
const UNANSWERED: Duration = Duration::from_millis(100);

impl LeastLog {
    pub(crate) fn new(max_calls: usize, window: Duration) -> Self {
        LeastLog {
            max_calls,
            window,
            log: Mutex::new(Log {
                entries: VecDeque::new(),
                next_id: 0,
            }),
        }
    }

    /// Admits one request if the window has room: its id, or `None`.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut log = self.log.lock().expect("no panic holds the lock");
        while log.entries.front().is_some_and(|entry| entry.until <= now) {
            log.entries.pop_front();
        }
        if log.entries.len() >= self.max_calls {
            return None;
        }
        let id = log.next_id;
        log.next_id += 1;
        log.entries.push_back(Entry {
            id,
            until: now + UNANSWERED + self.window,
        });
        Some(id)
    }

    /// The answer to admission `id` came: it holds its slot a window past
    /// now. Answers come for recent admissions (the newest, for one task
    /// that waits for each answer), so the search starts from the back.
    /// An entry answered out of turn leaves no earlier than the ones before
    /// it, when they leave: later than it could, never earlier.
    pub(crate) fn answer(&self, id: u64) {
        let now = Instant::now();
        let mut log = self.log.lock().expect("no panic holds the lock");
        if let Some(entry) = log.entries.iter_mut().rev().find(|entry| entry.id == id) {
            entry.until = entry.until.min(now + self.window);
        }
    }
}
