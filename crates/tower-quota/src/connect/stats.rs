//! What the tracked connector counts, and what responses carry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The counts of a [`TrackConnections`](super::TrackConnections) and its
/// clones. Cheap to clone: every clone reads the same counts.
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    opened: AtomicU64,
    open: AtomicU64,
    failed: AtomicU64,
    setup_nanos: AtomicU64,
}

impl ConnectionStats {
    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.counts.opened.load(Ordering::Relaxed)
    }

    /// Connections open now: opened, and not yet dropped by the client.
    pub fn open(&self) -> u64 {
        self.counts.open.load(Ordering::Relaxed)
    }

    /// Connection attempts that failed.
    pub fn failed(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }

    /// The set-up time of every connection opened, added up (saturating):
    /// divided by [`opened`](Self::opened), the mean set-up time.
    pub fn total_setup(&self) -> Duration {
        Duration::from_nanos(self.counts.setup_nanos.load(Ordering::Relaxed))
    }

    /// A connection was opened after `setup`; returns the connections open.
    pub(super) fn opened_one(&self, setup: Duration) -> u64 {
        self.counts.opened.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(setup.as_nanos()).unwrap_or(u64::MAX);
        // Saturating: fetch_update never fails with a closure that always
        // returns Some.
        let _ =
            self.counts
                .setup_nanos
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                    Some(total.saturating_add(nanos))
                });
        self.counts.open.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A connection was dropped; returns the connections open.
    pub(super) fn closed_one(&self) -> u64 {
        // Each close follows its own open, so this never goes below 0;
        // saturate all the same.
        let previous = self
            .counts
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                Some(open.saturating_sub(1))
            })
            .unwrap_or(0);
        previous.saturating_sub(1)
    }

    pub(super) fn failed_one(&self) {
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a tracked connection tells each of its responses (a response
/// extension, copied by hyper-util to every response of the connection).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    id: u64,
    setup: Duration,
    /// Set until the first response of the connection is marked.
    first: Arc<AtomicBool>,
}

impl ConnectionInfo {
    pub(super) fn new(id: u64, setup: Duration) -> Self {
        ConnectionInfo {
            id,
            setup,
            first: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The connection's number, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How long the connection took to open.
    pub fn setup(&self) -> Duration {
        self.setup
    }

    /// Whether this is the first response of its connection, taken once:
    /// only the first call for a connection returns `true`.
    pub(super) fn take_first(&self) -> bool {
        self.first.swap(false, Ordering::AcqRel)
    }
}

/// Marks a response whose request opened a new connection (a cold
/// request: it paid the connection's set-up); put there by
/// [`MarkNewConnectionLayer`](super::MarkNewConnectionLayer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewConnection {
    /// How long the connection took to open.
    pub setup: Duration,
}
