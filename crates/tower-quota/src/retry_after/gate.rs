//! The shared gate of each key: closed while the server asked for a pause,
//! and counting down the quota the server said was left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use quota_headers::Signal;
use tokio::time::Instant;

use crate::Key;

/// Gates are swept of idle keys after this many operations, or as many
/// operations as there are keys, whichever is more.
const SWEEP_EVERY: usize = 1024;

/// The furthest a gate closes: a server delay beyond it is treated as this.
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
    /// The quota is not known (no response yet, or its reset passed): one
    /// request at a time goes until a response reports it.
    Probing,
}

impl GateReason {
    /// The reason as it appears in telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            GateReason::Throttled => "throttled",
            GateReason::QuotaExhausted => "quota_exhausted",
            GateReason::Probing => "probing",
        }
    }
}

/// The gates of every key, shared by all clones of a layer.
#[derive(Clone, Default)]
pub(crate) struct Gates {
    inner: Arc<Mutex<GateMap>>,
}

#[derive(Default)]
struct GateMap {
    gates: HashMap<Key, Gate>,
    ops_since_sweep: usize,
}

struct Gate {
    closed_until: Option<Instant>,
    reason: Option<GateReason>,
    quota: Knowledge,
    in_flight: u64,
    /// Sequence number of the next request let through.
    next_seq: u64,
    /// Sequence number of the request whose response last reported the quota:
    /// a report from an older request is stale.
    reported_seq: Option<u64>,
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

impl Default for Gate {
    fn default() -> Self {
        Gate {
            closed_until: None,
            reason: None,
            quota: Knowledge::Probing { next_probe: None },
            in_flight: 0,
            next_seq: 0,
            reported_seq: None,
        }
    }
}

impl Gate {
    fn is_idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.closed_until.is_none_or(|until| until <= now)
            && match self.quota {
                Knowledge::Counting { reset_at, .. } => reset_at <= now,
                Knowledge::Probing { next_probe } => next_probe.is_none_or(|at| at <= now),
                Knowledge::Unreported => true,
            }
    }

    fn close(&mut self, until: Instant, reason: GateReason) -> bool {
        if self.closed_until.is_some_and(|current| current >= until) {
            return false;
        }
        self.closed_until = Some(until);
        self.reason = Some(reason);
        true
    }
}

/// A gate closed (or closed further) by a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub(crate) until: Instant,
    pub(crate) reason: GateReason,
}

impl Gates {
    fn lock(&self) -> MutexGuard<'_, GateMap> {
        // Every update leaves the map consistent; a poisoned lock is safe.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets one request of `key` go now, counting it in flight, or says until
    /// when the gate is closed and why. While the quota is unknown (see
    /// [`Knowledge::Probing`]) one request goes per `probe_interval`.
    pub(crate) fn admit(
        &self,
        key: &Key,
        now: Instant,
        probe_interval: Duration,
    ) -> Result<InFlight, (Instant, GateReason)> {
        let mut map = self.lock();
        map.tick(now);
        let gate = map.gates.entry(key.clone()).or_default();
        if let Some(until) = gate.closed_until {
            if until > now {
                return Err((until, gate.reason.unwrap_or(GateReason::Throttled)));
            }
            gate.closed_until = None;
            gate.reason = None;
        }
        if let Knowledge::Counting { reset_at, .. } = gate.quota
            && reset_at <= now
        {
            gate.quota = Knowledge::Probing { next_probe: None };
        }
        match &mut gate.quota {
            Knowledge::Probing { next_probe } => match *next_probe {
                Some(at) if at > now => return Err((at, GateReason::Probing)),
                _ => *next_probe = Some(later(now, probe_interval)),
            },
            Knowledge::Counting {
                allowance: 0,
                reset_at,
            } => {
                return Err((*reset_at, GateReason::QuotaExhausted));
            }
            Knowledge::Counting { allowance, .. } => *allowance -= 1,
            Knowledge::Unreported => {}
        }
        let seq = gate.next_seq;
        gate.next_seq += 1;
        gate.in_flight += 1;
        Ok(InFlight {
            gates: self.clone(),
            key: key.clone(),
            seq,
            armed: true,
        })
    }

    /// Learns from a response to a request that `admit` let go: closes the
    /// gate when the server asked for a pause or said the quota is spent, and
    /// keeps the count of what the server said remains.
    pub(crate) fn observe(
        &self,
        mut in_flight: InFlight,
        signal: &Signal,
        now: Instant,
    ) -> Option<Closed> {
        in_flight.armed = false;
        let mut map = self.lock();
        let gate = map.gates.entry(in_flight.key.clone()).or_default();
        gate.in_flight = gate.in_flight.saturating_sub(1);
        let mut closed = None;
        if signal.throttled
            && let Some(delay) = signal.retry_after
        {
            let until = later(now, delay);
            if gate.close(until, GateReason::Throttled) {
                closed = Some(Closed {
                    until,
                    reason: GateReason::Throttled,
                });
            }
        }
        // The tightest quota the server reported, when it said when it resets.
        let tightest = signal
            .quotas
            .iter()
            .filter_map(|quota| Some((quota.remaining?, quota.reset_after?)))
            .min_by_key(|(remaining, _)| *remaining);
        let fresh = gate.reported_seq.is_none_or(|seq| in_flight.seq > seq);
        match tightest {
            Some((remaining, reset_after)) if fresh => {
                gate.reported_seq = Some(in_flight.seq);
                let reset_at = later(now, reset_after);
                // Requests still in flight may not be counted in `remaining`
                // yet: they spend from it too.
                gate.quota = Knowledge::Counting {
                    allowance: remaining.saturating_sub(gate.in_flight),
                    reset_at,
                };
                if remaining == 0
                    && reset_at > now
                    && gate.close(reset_at, GateReason::QuotaExhausted)
                {
                    closed = closed.or(Some(Closed {
                        until: reset_at,
                        reason: GateReason::QuotaExhausted,
                    }));
                }
            }
            Some(_) => {}
            None => {
                if matches!(gate.quota, Knowledge::Probing { .. }) {
                    gate.quota = Knowledge::Unreported;
                }
            }
        }
        closed
    }
}

fn later(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay.min(FURTHEST))
        .unwrap_or(now + FURTHEST)
}

impl GateMap {
    fn tick(&mut self, now: Instant) {
        self.ops_since_sweep += 1;
        if self.ops_since_sweep >= SWEEP_EVERY.max(self.gates.len()) {
            self.ops_since_sweep = 0;
            self.gates.retain(|_, gate| !gate.is_idle(now));
        }
    }
}

/// A request let through the gate and not yet answered. Dropped without an
/// answer (an error, a cancelled request), it just leaves the count.
pub(crate) struct InFlight {
    gates: Gates,
    key: Key,
    seq: u64,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            let mut map = self.gates.lock();
            if let Some(gate) = map.gates.get_mut(&self.key) {
                gate.in_flight = gate.in_flight.saturating_sub(1);
            }
        }
    }
}

impl std::fmt::Debug for Gates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gates")
            .field("keys", &self.lock().gates.len())
            .finish()
    }
}
