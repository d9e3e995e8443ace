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
//! By key ([`LeastKeyedLog`]), the same log per key in one map behind one
//! lock, found by one hash of the integer key: what an exact admission by
//! key costs when the keys' logs are larger than the caches.
//!
//! No queue of waiters, no costs, nothing learned from a provider, no
//! eviction, no telemetry: not a limiter anyone should use, only the floor
//! of the work an exact admission does on this machine, to set the other
//! rows against.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A queue of the instants until which each admission holds its slot.
pub(crate) struct LeastLog {
    max_calls: usize,
    window: Duration,
    log: Mutex<Log>,
}

/// One log per key, in one map behind one lock.
pub(crate) struct LeastKeyedLog {
    max_calls: usize,
    window: Duration,
    logs: Mutex<HashMap<u64, Log, foldhash::fast::RandomState>>,
}

#[derive(Default)]
pub(crate) struct Log {
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

impl Log {
    /// Admits one request at `now` if the window has room: its id, or
    /// `None`.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        max_calls: usize,
        window: Duration,
    ) -> Option<u64> {
        while self.entries.front().is_some_and(|entry| entry.until <= now) {
            self.entries.pop_front();
        }
        if self.entries.len() >= max_calls {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back(Entry {
            id,
            until: now + UNANSWERED + window,
        });
        Some(id)
    }

    /// The answer to admission `id` came at `now`: it holds its slot a
    /// window past then. Answers come for recent admissions (the newest,
    /// for one task that waits for each answer), so the search starts from
    /// the back. An entry answered out of turn leaves no earlier than the
    /// ones before it, when they leave: later than it could, never earlier.
    pub(crate) fn answer(&mut self, id: u64, now: Instant, window: Duration) {
        if let Some(entry) = self.entries.iter_mut().rev().find(|entry| entry.id == id) {
            entry.until = entry.until.min(now + window);
        }
    }
}

impl LeastLog {
    pub(crate) fn new(max_calls: usize, window: Duration) -> Self {
        LeastLog {
            max_calls,
            window,
            log: Mutex::new(Log::default()),
        }
    }

    /// Admits one request if the window has room: its id, or `None`.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut log = self.log.lock().expect("no panic holds the lock");
        log.admit(now, self.max_calls, self.window)
    }

    /// The answer to admission `id` came: it holds its slot a window past
    /// now.
    pub(crate) fn answer(&self, id: u64) {
        let now = Instant::now();
        let mut log = self.log.lock().expect("no panic holds the lock");
        log.answer(id, now, self.window);
    }
}

impl LeastKeyedLog {
    pub(crate) fn new(max_calls: usize, window: Duration) -> Self {
        LeastKeyedLog {
            max_calls,
            window,
            logs: Mutex::new(HashMap::default()),
        }
    }

    /// Admits one request of `key` if its window has room: its id, or
    /// `None`.
    pub(crate) fn admit(&self, key: u64) -> Option<u64> {
        let now = Instant::now();
        let mut logs = self.logs.lock().expect("no panic holds the lock");
        logs.entry(key)
            .or_default()
            .admit(now, self.max_calls, self.window)
    }

    /// The answer to admission `id` of `key` came: it holds its slot a
    /// window past now.
    pub(crate) fn answer(&self, key: u64, id: u64) {
        let now = Instant::now();
        let mut logs = self.logs.lock().expect("no panic holds the lock");
        if let Some(log) = logs.get_mut(&key) {
            log.answer(id, now, self.window);
        }
    }
}
