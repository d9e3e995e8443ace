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
    /// Exact mode: the log, costs, queue and floors of each quota;
    /// approximate mode: the counts of each quota. Then the anchor, which
    /// also holds the signature. See [`key_names`].
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
        let (keys, jumpers) = key_names(prefix, key, limits, approximate);
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

    /// The keys of the quotas, without the last (the anchor, passed again).
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

/// The Redis keys of `key` under `limits`, and (exact mode, when some
/// class leaves a share free) the jumpers' logs.
///
/// Exact mode: the log, costs, queue and floors of each quota, in the
/// order of `limits.quotas()`; approximate mode: the counter hash of each
/// quota. Then, last, the *anchor*: the log (or the counters) of the quota
/// whose own signature sorts first, named `{prefix}:{key}:log` (or
/// `{prefix}:{key}:counts`) whatever its quota, which also holds the
/// signature of the quota list (exact: a member scored `+inf`;
/// approximate: the field `q`) and expires with the longest-kept of the
/// key's Redis keys. Every process that counts the key finds the
/// signature under one name, and it costs no Redis key of its own. (Two
/// processes with one signature pick the same anchor quota; one with
/// another is refused while the key is busy, so a log never mixes two
/// quotas.) The anchor's name is passed twice, as its quota's and last.
pub(crate) fn key_names(
    prefix: &str,
    key: &Key,
    limits: &Limits,
    approximate: bool,
) -> (Vec<String>, Vec<String>) {
    let quotas = limits.quotas();
    let mut keys = Vec::with_capacity(quotas.len() * 4 + 1);
    let mut jumpers = Vec::new();
    // What the anchor is of its quota: its counters, or its log.
    let kind = if approximate { "counts" } else { "log" };
    let anchor = format!("{prefix}:{{{key}}}:{kind}");
    let first = anchor_index(limits);
    for (index, quota) in quotas.iter().enumerate() {
        let base = quota_key(prefix, key, quota);
        keys.push(if index == first {
            anchor.clone()
        } else {
            format!("{base}:{kind}")
        });
        if approximate {
            continue;
        }
        keys.push(format!("{base}:costs"));
        keys.push(format!("{base}:queue"));
        keys.push(format!("{base}:floors"));
        if limits.reserves() && !limits.is_strict() {
            jumpers.push(format!("{base}:jumpers"));
        }
    }
    keys.push(anchor);
    (keys, jumpers)
}

/// The index of the quota whose log (or counters) is the anchor (see
/// [`key_names`]): the first whose signature sorts first, so that lists
/// with one signature, in any order, agree on it.
fn anchor_index(limits: &Limits) -> usize {
    limits
        .quotas()
        .iter()
        .map(quota_signature)
        .enumerate()
        .min_by(|(_, a), (_, b)| a.cmp(b))
        .map_or(0, |(index, _)| index)
}

/// `{prefix}:{key}:{quota}`: the stem of a quota's Redis keys, with the
/// hash tag `{key}` (see [`quota_signature`]).
fn quota_key(prefix: &str, key: &Key, quota: &Quota) -> String {
    format!("{prefix}:{{{key}}}:{}", quota_signature(quota))
}

/// A quota as `{max_calls}/{window}:{r|w}`, `10/1m:r` for 10 requests a
/// minute: `r` when every request spends 1 of it, `w` when requests spend
/// their cost. The window is exact to the microsecond ([`span`]).
fn quota_signature(quota: &Quota) -> String {
    format!(
        "{}/{}:{}",
        quota.max_calls(),
        span(quota.window()),
        if quota.is_per_request() { "r" } else { "w" }
    )
}

/// A duration in the largest of hours, minutes, seconds, milliseconds and
/// microseconds that states it exactly (to the microsecond), as few bytes
/// as it takes: `1m`, `1500ms`, `0us`. Signatures are kept in every
/// key's log, and key names in Redis's keyspace: each byte counts per key.
fn span(duration: Duration) -> String {
    let micros = micros(duration);
    let unit = [
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
    ]
    .into_iter()
    .find(|(size, _)| micros != 0 && micros % size == 0);
    match unit {
        Some((size, name)) => format!("{}{name}", micros / size),
        None => format!("{micros}us"),
    }
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
    format!("{};m={}", quotas.join(","), span(limits.safety_margin()))
}

pub(crate) fn micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_exact_and_short() {
        let cases = [
            (Duration::ZERO, "0us"),
            (Duration::from_micros(1), "1us"),
            (Duration::from_micros(1_500), "1500us"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(7_200), "2h"),
            // Below a microsecond is not told apart, as before.
            (Duration::from_nanos(1_000_999), "1ms"),
            (Duration::MAX, "9223372036854775807us"),
        ];
        for (duration, text) in cases {
            assert_eq!(span(duration), text, "{duration:?}");
        }
        let quota = Quota::per_request(10, Duration::from_secs(60)).unwrap();
        assert_eq!(quota_signature(&quota), "10/1m:r");
        let tokens = Quota::new(90_000, Duration::from_millis(250)).unwrap();
        assert_eq!(quota_signature(&tokens), "90000/250ms:w");
    }

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
