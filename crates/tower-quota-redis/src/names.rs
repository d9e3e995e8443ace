//! A key's Redis key names and quota signature, built once per key and
//! list of limits, then reused by every call for it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tower_quota::Key;
use tower_quota::sliding_window::{InFlightPeak, Limits, Quota};

/// The Redis keys a quota key's scripts touch, under one list of limits.
pub(crate) struct Names {
    pub(crate) limits: Limits,
    /// Exact mode: the log, costs, queue and floors of each quota; approximate
    /// mode: the counts of each quota. Then, last, the signature's key.
    pub(crate) keys: Vec<String>,
    /// The signature of the limits' quotas and safety margin.
    pub(crate) signature: String,
    /// Exact mode, when some class leaves a share free: the log of each
    /// quota's admissions of the classes the share is left for.
    pub(crate) jumpers: Vec<String>,
    /// The bytes of the keys and the signature: what a call's command
    /// buffer starts with.
    pub(crate) bytes: usize,
    /// The end of the key's first window in this process: until then its
    /// admissions get the cold bound ([`Limits::cold_sent_within`]).
    pub(crate) warm_at: Instant,
    /// This process's requests of the key under way and in flight.
    pub(crate) flight: Flight,
}

/// This process's requests of one key: those under way (waiting for their
/// call or their slot), and those in flight with the most it had in flight
/// at once lately ([`InFlightPeak`]).
#[derive(Debug)]
pub(crate) struct Flight {
    state: Mutex<(u32, InFlightPeak)>,
}

impl Flight {
    fn new(now: Instant) -> Self {
        Flight {
            state: Mutex::new((0, InFlightPeak::new(now))),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (u32, InFlightPeak)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request is under way until the guard drops (admitted, failed or
    /// dropped).
    pub(crate) fn under_way(&self) -> UnderWay<'_> {
        let mut state = self.state();
        state.0 = state.0.saturating_add(1);
        UnderWay(self)
    }

    /// A request was admitted and is sent.
    pub(crate) fn sent(&self, now: Instant) {
        self.state().1.sent(now);
    }

    /// A request sent earlier ended (answered, failed or dropped).
    pub(crate) fn ended(&self) {
        self.state().1.ended();
    }

    /// Whether no request of the key is under way or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        let state = self.state();
        state.0 == 0 && state.1.in_flight() == 0
    }

    /// Whether the requests under way and in flight are more than the most
    /// in flight at once lately: the ones beyond may open connections.
    pub(crate) fn is_cold(&self, now: Instant) -> bool {
        let mut state = self.state();
        let under_way = state.0;
        state.1.exceeds(now, under_way)
    }
}

/// The shortest window of `limits`' quotas (zero without any).
pub(crate) fn shortest_window(limits: &Limits) -> Duration {
    limits
        .quotas()
        .iter()
        .map(Quota::window)
        .min()
        .unwrap_or(Duration::ZERO)
}

/// See [`Flight::under_way`].
pub(crate) struct UnderWay<'a>(&'a Flight);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.0 = state.0.saturating_sub(1);
    }
}

impl Names {
    pub(crate) fn new(prefix: &str, key: &Key, limits: &Limits, approximate: bool) -> Names {
        let quotas = limits.quotas();
        let mut keys = Vec::with_capacity(quotas.len() * 4 + 1);
        let mut jumpers = Vec::new();
        for quota in quotas {
            let base = quota_key(prefix, key, quota);
            if approximate {
                keys.push(format!("{base}:counts"));
            } else {
                keys.push(format!("{base}:log"));
                keys.push(format!("{base}:costs"));
                keys.push(format!("{base}:queue"));
                keys.push(format!("{base}:floors"));
                if limits.reserves() && !limits.is_strict() {
                    jumpers.push(format!("{base}:jumpers"));
                }
            }
        }
        keys.push(format!("{prefix}:{{{key}}}:quotas"));
        let signature = signature(limits);
        let bytes = keys.iter().chain(&jumpers).map(String::len).sum::<usize>() + signature.len();
        let shortest = shortest_window(limits);
        let now = Instant::now();
        Names {
            warm_at: now.checked_add(shortest).unwrap_or(now),
            flight: Flight::new(now),
            limits: limits.clone(),
            keys,
            signature,
            jumpers,
            bytes,
        }
    }

    /// The keys of the quotas, without the signature's.
    pub(crate) fn quota_keys(&self) -> &[String] {
        &self.keys[..self.keys.len() - 1]
    }

    /// Exact mode: the log of quota `index`.
    pub(crate) fn log(&self, index: usize) -> &str {
        &self.keys[4 * index]
    }

    /// Exact mode: the costs hash of quota `index`.
    pub(crate) fn costs(&self, index: usize) -> &str {
        &self.keys[4 * index + 1]
    }

    /// Approximate mode: the counts of quota `index`.
    pub(crate) fn counts(&self, index: usize) -> &str {
        &self.keys[index]
    }
}

/// `{prefix}:{key}:{window_us}:{max_calls}:{r|w}`: the stem of a quota's
/// Redis keys, with the hash tag `{key}`.
pub(crate) fn quota_key(prefix: &str, key: &Key, quota: &Quota) -> String {
    format!("{prefix}:{{{key}}}:{}", quota_signature(quota))
}

fn quota_signature(quota: &Quota) -> String {
    format!(
        "{}:{}:{}",
        micros(quota.window()),
        quota.max_calls(),
        if quota.is_per_request() { "r" } else { "w" }
    )
}

/// The signature of `limits`' quotas and safety margin, in any order (each
/// quota has logs of its own). While a key has admissions in its windows,
/// a call with another signature is refused with
/// [`ConflictingQuotas`](tower_quota::sliding_window::ConflictingQuotas):
/// processes that gave one key different quota lists would otherwise each
/// count only their own quotas.
fn signature(limits: &Limits) -> String {
    let mut quotas: Vec<String> = limits.quotas().iter().map(quota_signature).collect();
    quotas.sort_unstable();
    format!("{};m={}", quotas.join(","), micros(limits.safety_margin()))
}

pub(crate) fn micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_most_in_flight_lately_are_cold() {
        let flight = Flight::new(Instant::now());
        // Nothing was ever sent: the first request may open a connection.
        let first = flight.under_way();
        assert!(flight.is_cold(Instant::now()));
        flight.sent(Instant::now());
        drop(first);
        let second = flight.under_way();
        assert!(
            flight.is_cold(Instant::now()),
            "two at once, one sent before"
        );
        flight.sent(Instant::now());
        drop(second);
        // Two in flight: the pool holds two connections.
        assert!(!flight.is_cold(Instant::now()));
        flight.ended();
        flight.ended();
        let a = flight.under_way();
        let b = flight.under_way();
        assert!(!flight.is_cold(Instant::now()), "two again");
        let c = flight.under_way();
        assert!(flight.is_cold(Instant::now()), "a third");
        drop((a, b, c));
        // Ends never go below zero.
        flight.ended();
        assert!(!flight.is_cold(Instant::now()));
        assert!(flight.is_idle());
        let e = flight.under_way();
        assert!(!flight.is_idle(), "under way");
        drop(e);
        flight.sent(Instant::now());
        assert!(!flight.is_idle(), "in flight");
        flight.ended();
        // Idle longer than a pool keeps its connections: forgotten.
        tokio::time::advance(tower_quota::sliding_window::POOL_IDLE).await;
        let d = flight.under_way();
        assert!(flight.is_cold(Instant::now()));
        drop(d);
    }
}
