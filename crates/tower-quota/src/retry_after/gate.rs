//! The shared gate of each key: closed while the server asked for a pause,
//! and counting down the quota the server said was left.
//!
//! A server's word is evidence, not an order: no pause is longer than the
//! layer's `max_pause`.
//!
//! A gate that reopens after a pause (a throttled answer, or a quota the
//! server said was spent) does not let its waiters go at once, as a herd
//! the provider would refuse again. One request goes first as a probe; the
//! others wait for its answer. A throttled probe closes the gate again. An
//! unthrottled one starts a [`Ramp`] (slow start): at most `limit` requests
//! let through by the ramp are unanswered at once, the probe was the first
//! round of one, and every unthrottled answer to a ramp request adds one,
//! so the ramp doubles each round trip (1, 2, 4, ...). A throttled answer
//! to a ramp request halves the limit (once per round trip) instead of
//! closing the gate for everyone; the refused request itself still waits
//! out its own delay before it is re-sent. A throttle when the limit is
//! already one closes the gate as a throttled probe does.
//!
//! The ramp ends, and the gate lets requests go without a limit again,
//! once its limit reaches [`RAMP_CAP`], or once a stretch as long as the
//! pause before it has passed since it began (or last halved). The cap: a
//! provider that answered 64 requests in flight at once unthrottled has
//! recovered from whatever the herd would have done. The stretch: a key
//! with few callers never fills the ramp, and one quiet pause-length shows
//! the provider keeps up; it also bounds every ramp wait by the pause, so
//! by `max_pause`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quota_headers::Signal;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

use super::layer::Config;
use super::seqs::InFlightSeqs;
use crate::Key;
use crate::key::StoredKey;
use crate::keymap::{
    Boxed, CachePadded, KeyHasher, KeyMap, Named, Visits, lock, padded_shards, try_lock_for_visit,
};
use crate::time::LazyNow;

/// A gate with nothing to remember (open, no quota count, nothing in
/// flight) is kept this long after its last use, so a busy key does not
/// start over between requests; then it is evicted.
pub(super) const IDLE_GRACE: Duration = Duration::from_secs(60);

/// The most due evictions each operation carries out in its key's shard,
/// and, on average, in the shards it visits: bounded work per request, and
/// gates of keys that see no more traffic still go (`SWEEP_BUDGET` per
/// operation on any key, in each of its shard and the others).
pub(super) const SWEEP_BUDGET: usize = 64;

/// Shards, each with its own lock, expiry heap and sweep.
pub(super) const SHARDS: usize = 16;

/// A shard's operations between two visits it makes to the next shard in
/// turn, each carrying out up to `SWEEP_BUDGET * VISIT_EVERY` due
/// evictions there: traffic to one shard visits all of them within
/// `SHARDS * VISIT_EVERY` operations.
pub(super) const VISIT_EVERY: usize = 4;

/// The maps of all shards together are not shrunk below this capacity
/// (each shard's below a sixteenth of it).
pub(super) const MIN_CAPACITY: usize = 64;

/// A shard's map and heap are not shrunk below this capacity.
const SHARD_MIN_CAPACITY: usize = MIN_CAPACITY / SHARDS;

/// The limit at which a [`Ramp`] ends: from then on requests go without
/// a limit.
pub(super) const RAMP_CAP: u32 = 64;

/// The furthest any instant is set, whatever the settings: keeps `Instant`
/// arithmetic in range.
const FURTHEST: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Why a gate is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GateReason {
    /// The server throttled a request (429, 503 with a delay, gRPC
    /// RESOURCE_EXHAUSTED) and said when to come back.
    Throttled,
    /// The server said no quota remains until a reset.
    QuotaExhausted,
    /// The quota is not known (no response yet, or its reset passed), or
    /// the gate reopened after a pause and a probe is out: one request at a
    /// time goes until a response reports it.
    Probing,
    /// The gate reopened after a pause and ramps up: a request waits until
    /// one of those it let through is answered.
    Ramping,
}

impl GateReason {
    /// The reason as it appears in telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            GateReason::Throttled => "throttled",
            GateReason::QuotaExhausted => "quota_exhausted",
            GateReason::Probing => "probing",
            GateReason::Ramping => "ramping",
        }
    }
}

/// The gates of every key, shared by all clones of a layer.
///
/// Sharded by key: an operation locks its key's shard, sweeps that
/// shard's due evictions, and every [`VISIT_EVERY`] operations of a shard
/// it visits the next shard in turn (skipped when busy) and sweeps its due
/// ones, so idle gates go without traffic to their own shard. Nothing is
/// written that all keys share: two threads sending to keys of different
/// shards do not take each other's cache lines.
#[derive(Clone, Default)]
pub(crate) struct Gates {
    inner: Arc<Shards>,
}

#[repr(align(128))]
struct Shards {
    shards: Box<[CachePadded<Mutex<GateMap>>]>,
    /// Shared by the shards' maps: the hash that chose the shard finds the
    /// key in it.
    hasher: KeyHasher,
}

impl Default for Shards {
    fn default() -> Self {
        let hasher = KeyHasher::default();
        Shards {
            shards: padded_shards(SHARDS, &hasher, |at, hasher| GateMap {
                gates: KeyMap::new(hasher),
                expiry: BinaryHeap::new(),
                visits: Visits::of(at),
            }),
            hasher,
        }
    }
}

struct GateMap {
    /// Each gate boxed with its key: a gate is 184 bytes, and the table
    /// keeps room for up to twice as many entries as it holds.
    gates: KeyMap<Gate, Boxed<Gate>>,
    /// When each gate may next be evicted, earliest first; at most one entry
    /// per gate (see [`Gate::scheduled`]).
    expiry: BinaryHeap<Reverse<Expiry>>,
    /// When it visits the shards in turn.
    visits: Visits,
}

/// A gate to look at when `at` has come: 40 bytes, with the key as the
/// gates' map keeps it.
struct Expiry {
    at: Instant,
    key: StoredKey,
}

impl PartialEq for Expiry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Expiry {}

impl PartialOrd for Expiry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Expiry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

struct Gate {
    /// Wakes the requests waiting at this gate when a response may have
    /// opened it: the quota the server reported grew, or it stopped
    /// reporting one.
    changed: Arc<Notify>,
    closed_until: Option<Instant>,
    reason: Option<GateReason>,
    /// How long the gate was last closed for: a ramp after it ends once as
    /// long has passed without a throttle.
    pause: Duration,
    probe: Probe,
    /// Slow start after the probe of a reopened gate came back unthrottled.
    ramp: Option<Ramp>,
    quota: Knowledge,
    /// Sequence numbers of the requests let through and not yet answered.
    in_flight: InFlightSeqs,
    /// Sequence number of the next request let through.
    next_seq: u64,
    /// The last time a request or a response touched the gate.
    last_used: Instant,
    /// Whether the gate has an entry in the expiry heap. A gate with
    /// requests in flight has none; the last answer schedules it.
    scheduled: bool,
    /// How many times the provider's acceptance reopened the gate before
    /// its time: the requests a refusal holds wake for these only.
    reopenings: u32,
    /// Whether a request registered for `changed` since its last
    /// notification: a notification with none registered would wake
    /// nobody, and is skipped.
    listened: bool,
}

/// The probe that checks whether the server recovered after a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Nothing to check: the gate trusts the server's last word.
    Trusted,
    /// The gate closed (or its probe was lost): the first request let
    /// through once the gate opens is a probe.
    Due,
    /// The probe `seq` is in flight: the others wait for its answer, until
    /// `deadline` at most.
    Out { seq: u64, deadline: Instant },
}

/// Slow start after a pause: see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ramp {
    /// The most requests let through by the ramp that may be unanswered at
    /// once.
    limit: u32,
    /// The sequence number of the first request the ramp let through:
    /// answers to older requests do not grow it.
    from_seq: u64,
    /// Only refusals of requests numbered from here on halve the limit:
    /// the requests already in flight when it last halved were sent before
    /// that, and their refusals say nothing new (TCP halves once per
    /// window, not per loss).
    cut_seq: u64,
    /// When the ramp ends unless a throttle halves it first.
    ends_at: Instant,
}

/// What the gate knows of the key's quota.
enum Knowledge {
    /// Nothing yet, or a reported reset has passed: one request at a time
    /// goes (at most one per probe interval) until a response reports the
    /// quota. A sliding-window server frees its quota gradually, so a reset
    /// may mean one more request, not a full quota.
    Probing { next_probe: Option<Instant> },
    /// The server reported `remaining` until `reset_at`: at most `allowance`
    /// more requests go before it.
    Counting { allowance: u64, reset_at: Instant },
    /// The server does not report its quota: requests go as they come.
    Unreported,
}

impl Gate {
    /// A gate that knows nothing of the quota yet; one that does not pace by
    /// the server's quota headers starts (and stays) unreported.
    fn new(pace_by_quota: bool, now: Instant) -> Self {
        Gate {
            last_used: now,
            scheduled: false,
            changed: Arc::new(Notify::new()),
            closed_until: None,
            reason: None,
            pause: Duration::ZERO,
            probe: Probe::Trusted,
            ramp: None,
            quota: if pace_by_quota {
                Knowledge::Probing { next_probe: None }
            } else {
                Knowledge::Unreported
            },
            in_flight: InFlightSeqs::default(),
            next_seq: 0,
            reopenings: 0,
            listened: false,
        }
    }
}

impl Gate {
    /// When the gate will have nothing left to remember, if no request
    /// comes: `None` while requests are in flight.
    fn evictable_at(&self) -> Option<Instant> {
        if !self.in_flight.is_empty() {
            return None;
        }
        self.holds()
            .into_iter()
            .flatten()
            .fold(later(self.last_used, IDLE_GRACE), Instant::max)
            .into()
    }

    /// The instants until which the gate may hold a request: its opening,
    /// its quota's reset or next probe, its probe's deadline, its ramp's end.
    fn holds(&self) -> [Option<Instant>; 4] {
        let quota = match self.quota {
            Knowledge::Counting { reset_at, .. } => Some(reset_at),
            Knowledge::Probing { next_probe } => next_probe,
            Knowledge::Unreported => None,
        };
        let probe = match self.probe {
            Probe::Out { deadline, .. } => Some(deadline),
            Probe::Trusted | Probe::Due => None,
        };
        let ramp = self.ramp.map(|ramp| ramp.ends_at);
        [self.closed_until, quota, probe, ramp]
    }

    /// Closes the gate until `until`, unless it is closed as long already;
    /// whenever it reopens, a probe goes first and a new ramp follows.
    fn close(&mut self, now: Instant, until: Instant, reason: GateReason) -> bool {
        if self.closed_until.is_some_and(|current| current >= until) {
            return false;
        }
        self.closed_until = Some(until);
        self.reason = Some(reason);
        self.pause = until.saturating_duration_since(now);
        self.probe = Probe::Due;
        self.ramp = None;
        true
    }

    /// Requests let through by the ramp starting at `from_seq` and not yet
    /// answered: at most the ramp's limit, so at most [`RAMP_CAP`].
    fn ramp_in_flight(&self, from_seq: u64) -> u32 {
        u32::try_from(self.in_flight.count_from(from_seq)).unwrap_or(u32::MAX)
    }

    /// Starts the ramp after a probe's unthrottled answer: the probe was
    /// its first round, of one, and its answer adds one.
    fn start_ramp(&mut self, now: Instant) {
        self.ramp = Some(Ramp {
            limit: 2,
            from_seq: self.next_seq,
            cut_seq: self.next_seq,
            ends_at: later(now, self.pause),
        });
    }

    /// A notification of the gate's next change, registered now (under the
    /// lock: no change after this can be missed).
    fn listen(&mut self) -> Pin<Box<OwnedNotified>> {
        self.listened = true;
        let mut changed = Box::pin(self.changed.clone().notified_owned());
        changed.as_mut().enable();
        changed
    }

    /// Wakes the requests registered for the gate's change, if any: each
    /// registration since the last notification set `listened`, and the
    /// ones before it were woken by it.
    fn notify(&mut self) {
        if std::mem::take(&mut self.listened) {
            self.changed.notify_waiters();
        }
    }

    /// Drops the ramp once its end has come.
    fn end_ramp_if_due(&mut self, now: Instant) {
        if self.ramp.is_some_and(|ramp| ramp.ends_at <= now) {
            self.ramp = None;
        }
    }
}

/// Why a request must wait at its gate, until when, and the notification
/// that the gate may have opened earlier.
pub(crate) struct Wait {
    pub(crate) until: Instant,
    pub(crate) reason: GateReason,
    pub(crate) changed: Pin<Box<OwnedNotified>>,
    /// The gate's count of early reopenings: a throttled wait ends early
    /// only once it grows (see [`Gates::reopened_since`]).
    pub(crate) reopenings: u32,
}

/// What a response did to its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    /// It closed the gate, or closed it further.
    pub(crate) closed: Option<Closed>,
    /// It reopened a gate a refusal had closed: the provider accepted a
    /// request sent after the refusal.
    pub(crate) reopened: bool,
    /// The gate's count of early reopenings after it.
    pub(crate) reopenings: u32,
}

/// A gate closed (or closed further) by a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub(crate) until: Instant,
    pub(crate) reason: GateReason,
}

impl Gates {
    /// The hash of `key`: the one hash of an operation.
    fn hash(&self, key: &Key) -> u64 {
        self.inner.hasher.hash(key)
    }

    /// The shard of the key whose hash is `hash`, locked.
    fn lock(&self, hash: u64) -> MutexGuard<'_, GateMap> {
        let at = KeyHasher::shard_of(hash, self.inner.shards.len());
        lock(&self.inner.shards[at])
    }

    /// Sweeps shard `at`'s due evictions, for the `VISIT_EVERY` operations
    /// since the visiting shard's last visit; a shard another operation
    /// holds is skipped, never waited for.
    fn visit(&self, at: Option<usize>, now: &LazyNow) {
        let Some(mut map) = at.and_then(|at| try_lock_for_visit(&self.inner.shards[at])) else {
            return;
        };
        map.sweep(now, SWEEP_BUDGET * VISIT_EVERY);
    }

    /// Lets one request of `key` go now, counting it in flight, or says until
    /// when the gate is closed and why. While the quota is unknown (see
    /// [`Knowledge::Probing`]) one request goes per probe interval (the
    /// spread); after a pause, one probe goes and the others wait for its
    /// answer, then for room in the ramp.
    ///
    /// The clock is read only when the gate holds something that depends
    /// on it (a pause, a probe out, a ramp, a count of the quota or a probe
    /// interval) or an eviction may be due: an open gate that knows nothing
    /// of the quota (a provider that sends no quota headers) lets the
    /// request go without reading it.
    pub(crate) fn admit(
        &self,
        key: &Key,
        now: &LazyNow,
        config: &Config,
    ) -> Result<InFlight, Wait> {
        let hash = self.hash(key);
        let mut map = self.lock(hash);
        map.sweep(now, SWEEP_BUDGET);
        let result = map.admit(self, hash, key, now, config);
        // A request let through is in flight: its answer schedules the gate.
        if result.is_err() {
            map.schedule(hash, key);
        }
        let visit = map.visits.step(VISIT_EVERY, SHARDS);
        drop(map);
        self.visit(visit, now);
        result
    }
}

impl GateMap {
    fn admit(
        &mut self,
        gates: &Gates,
        hash: u64,
        key: &Key,
        now: &LazyNow,
        config: &Config,
    ) -> Result<InFlight, Wait> {
        // When the gate was last used only decides when it may be evicted
        // once idle, and the request is in flight until its answer, which
        // reads the clock: a recent instant serves.
        let recent = now.recent();
        let gate = self
            .gates
            .get_or_insert_with(hash, key, || Gate::new(config.pace_by_quota, recent));
        gate.last_used = gate.last_used.max(recent);
        let wait = |until, reason, gate: &mut Gate| {
            // Registered under the lock: no change between this answer and
            // the wait can be missed.
            Err(Wait {
                until,
                reason,
                changed: gate.listen(),
                reopenings: gate.reopenings,
            })
        };
        if let Some(until) = gate.closed_until {
            if until > now.get() {
                return wait(until, gate.reason.unwrap_or(GateReason::Throttled), gate);
            }
            gate.closed_until = None;
            gate.reason = None;
        }
        if let Knowledge::Counting { reset_at, .. } = gate.quota
            && reset_at <= now.get()
        {
            gate.quota = Knowledge::Probing { next_probe: None };
        }
        let probe = match gate.probe {
            Probe::Trusted => false,
            Probe::Out { seq, deadline }
                if gate.in_flight.contains(seq) && deadline > now.get() =>
            {
                return wait(deadline, GateReason::Probing, gate);
            }
            // Due, or the probe was lost or outlived its deadline: this
            // request probes, whatever the quota count says.
            Probe::Due | Probe::Out { .. } => true,
        };
        if gate.ramp.is_some() {
            gate.end_ramp_if_due(now.get());
        }
        if !probe
            && let Some(ramp) = gate.ramp
            && gate.ramp_in_flight(ramp.from_seq) >= ramp.limit
        {
            return wait(ramp.ends_at, GateReason::Ramping, gate);
        }
        match &mut gate.quota {
            _ if probe => {}
            Knowledge::Probing { next_probe } => match *next_probe {
                Some(at) if at > now.get() => return wait(at, GateReason::Probing, gate),
                _ => *next_probe = Some(later(now.get(), config.probe_interval())),
            },
            Knowledge::Counting {
                allowance: 0,
                reset_at,
            } => {
                let reset_at = *reset_at;
                return wait(reset_at, GateReason::QuotaExhausted, gate);
            }
            Knowledge::Counting { allowance, .. } => *allowance -= 1,
            Knowledge::Unreported => {}
        }
        let seq = gate.next_seq;
        let in_flight_before = gate.in_flight.len() as u64;
        gate.next_seq += 1;
        let pushed = gate.in_flight.push(seq);
        debug_assert!(pushed, "a gate's sequence numbers increase");
        if probe {
            gate.probe = Probe::Out {
                seq,
                deadline: later(now.get(), config.max_pause),
            };
        }
        Ok(InFlight {
            gates: gates.clone(),
            hash,
            key: key.clone(),
            seq,
            in_flight_before,
            armed: true,
        })
    }

    /// Puts the gate of `key` in the expiry heap when it has no entry and
    /// nothing in flight.
    fn schedule<N: Named + ?Sized>(&mut self, hash: u64, key: &N) {
        if let Some((stored, gate)) = self.gates.get_key_value_mut(hash, key) {
            schedule_gate(&mut self.expiry, stored, gate);
        }
    }

    /// Evicts gates that have nothing left to remember, looking at no more
    /// than `budget` due entries, and shrinks the maps once they are mostly
    /// empty.
    ///
    /// The clock is read only when the next eviction is due by a
    /// [recent](LazyNow::recent) instant: one due since then waits for a
    /// later operation (an answer reads the clock), and none comes early.
    fn sweep(&mut self, now: &LazyNow, budget: usize) {
        let may_be_due = self
            .expiry
            .peek()
            .is_some_and(|Reverse(entry)| entry.at <= now.recent());
        if !may_be_due {
            return;
        }
        let now = now.get();
        let mut evicted = false;
        for _ in 0..budget {
            let due = self
                .expiry
                .peek()
                .is_some_and(|Reverse(entry)| entry.at <= now);
            if !due {
                break;
            }
            let Some(Reverse(entry)) = self.expiry.pop() else {
                break;
            };
            let hash = self.gates.hash(&entry.key);
            let Some(gate) = self.gates.get_mut(hash, &entry.key) else {
                continue;
            };
            gate.scheduled = false;
            match gate.evictable_at() {
                Some(at) if at <= now => {
                    self.gates.remove(hash, &entry.key);
                    evicted = true;
                }
                // Used since, or closed further: look again then.
                Some(_) => self.schedule(hash, &entry.key),
                // In flight: the last answer schedules it.
                None => {}
            }
        }
        if evicted {
            self.gates.shrink_if_sparse(SHARD_MIN_CAPACITY);
            if self.expiry.capacity() > SHARD_MIN_CAPACITY
                && self.expiry.len() * 4 < self.expiry.capacity()
            {
                self.expiry.shrink_to(self.expiry.len() * 2);
            }
        }
    }
}

impl Gates {
    /// Learns from a response to a request that `admit` let go: closes the
    /// gate when the server asked for a pause or said the quota is spent
    /// (for `max_pause` at most), keeps the count of what the server said
    /// remains, and grows or halves the ramp of a reopened gate. A refusal
    /// the ramp takes does not close the gate: `None` then too.
    ///
    /// `released` is when the pacing layer below let the request go, if it
    /// waited there ([`Released`](crate::Released)): accepted, a request
    /// that left after a refusal closed the gate reopens it.
    pub(crate) fn observe(
        &self,
        mut in_flight: InFlight,
        signal: &Signal,
        released: Option<Instant>,
        now: Instant,
        config: &Config,
    ) -> Observed {
        in_flight.armed = false;
        let read = LazyNow::at(now);
        let mut map = self.lock(in_flight.hash);
        map.sweep(&read, SWEEP_BUDGET);
        let observed = map.observe(&in_flight, signal, released, now, config);
        let visit = map.visits.step(VISIT_EVERY, SHARDS);
        drop(map);
        self.visit(visit, &read);
        observed
    }

    /// Whether the provider's acceptance reopened the gate of `key` since
    /// its count of early reopenings was `reopenings`; if not, a fresh
    /// notification of its changes (registered under the lock, so none is
    /// missed).
    pub(crate) fn reopened_since(
        &self,
        key: &Key,
        reopenings: u32,
    ) -> Result<(), Pin<Box<OwnedNotified>>> {
        let hash = self.hash(key);
        let mut map = self.lock(hash);
        let Some(gate) = map.gates.get_mut(hash, key) else {
            // Evicted: nothing holds the key any more.
            return Ok(());
        };
        if gate.reopenings != reopenings {
            return Ok(());
        }
        Err(gate.listen())
    }

    /// The number of gates kept.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|map| lock(map).gates.len())
            .sum()
    }

    /// The capacity of the gate maps.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|map| lock(map).gates.capacity())
            .sum()
    }

    /// The longest any gate will hold a request from `now` on: until it
    /// opens, until its probe's deadline, until its quota resets or until
    /// its next probe, until its ramp ends.
    #[cfg(test)]
    pub(crate) fn longest_hold(&self, now: Instant) -> Duration {
        let mut longest = Duration::ZERO;
        for map in self.inner.shards.iter() {
            let map = lock(map);
            let held = map
                .gates
                .values()
                .flat_map(Gate::holds)
                .flatten()
                .map(|at| at.saturating_duration_since(now));
            longest = held.fold(longest, Duration::max);
        }
        longest
    }
}

impl GateMap {
    fn observe(
        &mut self,
        in_flight: &InFlight,
        signal: &Signal,
        released: Option<Instant>,
        now: Instant,
        config: &Config,
    ) -> Observed {
        let pace_by_quota = config.pace_by_quota;
        let (stored, gate) =
            self.gates
                .get_key_value_or_insert_with(in_flight.hash, &in_flight.key, || {
                    Gate::new(pace_by_quota, now)
                });
        gate.last_used = gate.last_used.max(now);
        gate.in_flight.remove(in_flight.seq);
        // The probe's answer, whatever it says, is what the waiters wait for.
        let answered_probe = matches!(gate.probe, Probe::Out { seq, .. } if seq == in_flight.seq);
        if answered_probe {
            gate.probe = Probe::Trusted;
        }
        gate.end_ramp_if_due(now);
        let mut closed = None;
        let mut reopened = false;
        if !signal.throttled
            && gate.reason == Some(GateReason::Throttled)
            && let Some(until) = gate.closed_until.filter(|until| *until > now)
            && released.is_some_and(|at| {
                until
                    .checked_sub(gate.pause)
                    .is_some_and(|closed_at| at > closed_at)
            })
        {
            // The provider accepted a request that left the pacing layer's
            // queue after the refusal that closed the gate came back: by its
            // own count it has room again. This answer is the probe's: the
            // gate opens, with a ramp.
            gate.closed_until = None;
            gate.reason = None;
            gate.reopenings = gate.reopenings.wrapping_add(1);
            gate.probe = Probe::Trusted;
            gate.start_ramp(now);
            reopened = true;
        }
        if signal.throttled {
            // A ramp takes a refusal of a request it let through by
            // halving, and the gate stays open for the others; the refused
            // request waits out its own delay before it is re-sent.
            let taken_by_ramp = match &mut gate.ramp {
                Some(ramp) if in_flight.seq < ramp.cut_seq => true,
                Some(ramp) if ramp.limit > 1 => {
                    ramp.limit = (ramp.limit / 2).max(1);
                    ramp.cut_seq = gate.next_seq;
                    ramp.ends_at = later(now, gate.pause);
                    true
                }
                _ => false,
            };
            if !taken_by_ramp && let Some(delay) = signal.retry_after {
                let until = bounded(now, delay, config.max_pause);
                if gate.close(now, until, GateReason::Throttled) {
                    closed = Some(Closed {
                        until,
                        reason: GateReason::Throttled,
                    });
                }
            }
            // A probe refused without a delay to wait: the next request
            // probes again.
            if answered_probe && closed.is_none() && gate.probe == Probe::Trusted {
                gate.probe = Probe::Due;
            }
        } else if let Some(ramp) = &mut gate.ramp
            && in_flight.seq >= ramp.from_seq
        {
            ramp.limit = ramp.limit.saturating_add(1);
            if ramp.limit >= RAMP_CAP {
                gate.ramp = None;
            }
        }
        // The tightest quota the server reported, when it said when it
        // resets. A quota of requests in flight (IETF `concurrent-requests`)
        // frees as requests end, not at a reset, and a reset of zero (what a
        // server sends for such a quota in a dialect without units) says
        // nothing of what comes next: neither paces the gate.
        let tightest = signal
            .quotas
            .iter()
            .filter(|_| pace_by_quota)
            .filter(|quota| quota.unit.as_deref() != Some("concurrent-requests"))
            .filter_map(|quota| Some((quota.remaining?, quota.reset_after?)))
            .filter(|(_, reset_after)| !reset_after.is_zero())
            .min_by_key(|(remaining, _)| *remaining);
        match tightest {
            Some((remaining, reset_after)) => {
                let reset_at = bounded(now, reset_after, config.max_pause);
                // `remaining` was counted when the server handled this
                // request. Servers handle concurrent requests in any order:
                // the requests already in flight when this one was sent, and
                // every request sent after it, may have been handled after
                // it, so they spend from `remaining` too. What is left is
                // safe to send now.
                let newer = gate
                    .next_seq
                    .saturating_sub(in_flight.seq)
                    .saturating_sub(1);
                let uncounted = newer.saturating_add(in_flight.in_flight_before);
                gate.quota = Knowledge::Counting {
                    allowance: remaining.saturating_sub(uncounted),
                    reset_at,
                };
                if remaining == 0
                    && reset_at > now
                    && gate.close(now, reset_at, GateReason::QuotaExhausted)
                {
                    closed = closed.or(Some(Closed {
                        until: reset_at,
                        reason: GateReason::QuotaExhausted,
                    }));
                }
            }
            None => {
                if matches!(gate.quota, Knowledge::Probing { .. }) {
                    gate.quota = Knowledge::Unreported;
                }
            }
        }
        let open = gate.closed_until.is_none_or(|until| until <= now);
        if answered_probe && open && !signal.throttled {
            gate.start_ramp(now);
            gate.end_ramp_if_due(now);
        }
        let may_go = match gate.quota {
            Knowledge::Counting { allowance, .. } => allowance > 0,
            Knowledge::Unreported => true,
            Knowledge::Probing { .. } => false,
        };
        if (open && may_go) || answered_probe || reopened {
            gate.notify();
        }
        // Scheduled with the key this lookup found: no second lookup.
        schedule_gate(&mut self.expiry, stored, gate);
        Observed {
            closed,
            reopened,
            reopenings: gate.reopenings,
        }
    }
}

/// Puts `gate` (kept under `stored`) in the expiry heap when it has no
/// entry there and nothing in flight.
fn schedule_gate(expiry: &mut BinaryHeap<Reverse<Expiry>>, stored: &StoredKey, gate: &mut Gate) {
    if gate.scheduled {
        return;
    }
    if let Some(at) = gate.evictable_at() {
        gate.scheduled = true;
        expiry.push(Reverse(Expiry {
            at,
            key: stored.clone(),
        }));
    }
}

/// `now + delay`, a year on at the most.
fn later(now: Instant, delay: Duration) -> Instant {
    crate::time::saturating_add(now, delay.min(FURTHEST))
}

/// The end of a pause of `delay` the server claimed, at most `max_pause`
/// away.
fn bounded(now: Instant, delay: Duration, max_pause: Duration) -> Instant {
    later(now, delay.min(max_pause))
}

/// A request let through the gate and not yet answered. Dropped without an
/// answer (an error, a cancelled request), it just leaves the count.
pub(crate) struct InFlight {
    gates: Gates,
    /// The key's hash in the gate map.
    hash: u64,
    key: Key,
    seq: u64,
    /// Requests in flight when this one was let through.
    in_flight_before: u64,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            let mut map = self.gates.lock(self.hash);
            if let Some(gate) = map.gates.get_mut(self.hash, &self.key) {
                gate.in_flight.remove(self.seq);
                // A probe lost without an answer: the next request probes.
                if matches!(gate.probe, Probe::Out { seq, .. } if seq == self.seq) {
                    gate.probe = Probe::Due;
                    gate.notify();
                } else if gate.ramp.is_some() {
                    // A ramp request that left makes room for another.
                    gate.notify();
                }
            }
            map.schedule(self.hash, &self.key);
        }
    }
}

impl std::fmt::Debug for Gates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gates").field("keys", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry_after::RetryAfterLayer;

    fn config(pace_by_quota: bool) -> Config {
        (*RetryAfterLayer::new()
            .pace_by_quota_headers(pace_by_quota)
            .config)
            .clone()
    }

    fn answer(gates: &Gates, in_flight: InFlight, signal: &Signal, config: &Config) {
        gates.observe(in_flight, signal, None, crate::time::read(), config);
    }

    fn admitted(gates: &Gates, key: &Key, now: &LazyNow, config: &Config) -> InFlight {
        match gates.admit(key, now, config) {
            Ok(in_flight) => in_flight,
            Err(wait) => panic!("closed until {:?}: {:?}", wait.until, wait.reason),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_that_counts_no_quota_lets_requests_go_without_reading_the_clock() {
        let (gates, config, key) = (
            Gates::default(),
            config(false),
            Key::from("api.example.com"),
        );
        // A layer below read the clock for an earlier request on this thread.
        crate::time::read();
        tokio::time::advance(Duration::from_secs(1)).await;

        let first = LazyNow::default();
        let in_flight = admitted(&gates, &key, &first, &config);
        assert!(
            !first.is_read(),
            "a new gate that counts no quota needs no clock"
        );
        answer(&gates, in_flight, &Signal::default(), &config);

        // Answered, the gate waits in the expiry heap for its idle grace:
        // nothing due, nothing read.
        let second = LazyNow::default();
        let in_flight = admitted(&gates, &key, &second, &config);
        assert!(
            !second.is_read(),
            "no eviction due by the last reading kept"
        );

        // A throttle with a delay closes it: the next request reads the clock
        // to know whether the pause is over, and waits until its end.
        let mut throttle = Signal::default();
        throttle.retry_after = Some(Duration::from_secs(10));
        throttle.throttled = true;
        let closed_at = Instant::now();
        answer(&gates, in_flight, &throttle, &config);
        let third = LazyNow::default();
        let Err(wait) = gates.admit(&key, &third, &config) else {
            panic!("a throttle with a delay closes the gate");
        };
        assert!(third.is_read(), "a pause is timed by the clock");
        assert_eq!(wait.until, closed_at + Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_that_probes_for_the_quota_reads_the_clock() {
        let (gates, config, key) = (Gates::default(), config(true), Key::from("api.example.com"));
        crate::time::read();
        let first = LazyNow::default();
        let _in_flight = admitted(&gates, &key, &first, &config);
        assert!(
            first.is_read(),
            "one request per probe interval: timed by the clock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_gate_is_swept_once_a_reading_past_its_grace_is_kept_never_before() {
        let (gates, config) = (Gates::default(), config(false));
        let idle = Key::from("idle.example.com");
        // Another key in the idle one's shard: its admissions sweep there.
        let shard = KeyHasher::shard_of(gates.hash(&idle), SHARDS);
        let busy = (0..1_000)
            .map(|n| Key::from(format!("busy-{n}.example.com")))
            .find(|key| KeyHasher::shard_of(gates.hash(key), SHARDS) == shard)
            .expect("one of 1,000 keys falls in each of 16 shards");
        crate::time::read();
        let in_flight = admitted(&gates, &idle, &LazyNow::default(), &config);
        answer(&gates, in_flight, &Signal::default(), &config);
        tokio::time::advance(IDLE_GRACE + Duration::from_secs(1)).await;

        // Past its grace by the clock, but not by the last reading kept:
        // left for a later operation, and the clock left unread.
        let before = LazyNow::default();
        drop(admitted(&gates, &busy, &before, &config));
        assert!(!before.is_read());
        assert_eq!(
            gates.len(),
            2,
            "not swept by a reading from before its grace ran out"
        );

        // A reading past the grace kept (an answer's): the next admission
        // reads the clock for the sweep, and the idle gate goes.
        crate::time::read();
        let after = LazyNow::default();
        drop(admitted(&gates, &busy, &after, &config));
        assert!(
            after.is_read(),
            "the sweep's eviction is timed by the clock"
        );
        assert_eq!(gates.len(), 1, "swept");
    }
}
