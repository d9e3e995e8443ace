//! What the server saw: every arrival, and the numbers that tell whether a
//! client stayed within its quota.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the quota check treated one arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Every rule had room; the request consumed quota. Its response may
    /// still be replaced by a fault (an error status or a reset connection).
    Admitted,
    /// Some rule had no room; the request got a 429 and consumed nothing
    /// (a [sliding window counter](crate::Mode::SlidingWindowCounter)
    /// counted it all the same).
    Refused,
    /// A [`Scripted`](crate::Scripted) response was served before the quota
    /// check; the request consumed nothing.
    Scripted,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// When the request head was received, since the server started (on
    /// tokio's clock). The quota decision uses this same instant.
    pub at: Duration,
    /// The quota key the request was counted under (see [`KeyBy`](crate::KeyBy)).
    pub key: String,
    /// The request method.
    pub method: String,
    /// The request path, without the query string.
    pub path: String,
    /// The status sent back, or `0` when no response was sent (a
    /// [`Fault::ConnectionReset`](crate::Fault::ConnectionReset), or a request
    /// body that failed mid-read).
    pub status: u16,
    /// How the quota check treated the request.
    pub outcome: Outcome,
    /// The numeric value of the `x-retry-attempt` request header, if any.
    pub attempt: Option<u32>,
    /// FNV-1a 64 of the request body bytes (see [`fnv1a64`](crate::fnv1a64)).
    pub body_hash: u64,
    /// The request body length in bytes.
    pub body_len: u64,
    /// What the request costs in the units of weighted rules: the actual
    /// cost header's value if it holds a whole number, else
    /// [`declared_cost`](Self::declared_cost). An admitted request was
    /// charged this much; other outcomes were charged nothing.
    #[serde(default = "one")]
    pub cost: u64,
    /// The cost header's value, or 1 when it is missing or not a whole
    /// number. Admission was decided on this cost.
    #[serde(default = "one")]
    pub declared_cost: u64,
}

fn one() -> u64 {
    1
}

impl Arrival {
    /// Whether the quota admitted this request (it consumed quota).
    pub fn is_accepted(&self) -> bool {
        self.outcome == Outcome::Admitted
    }
}

/// The compliance summary of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    /// The rule as a string, e.g. `20/1s:sliding`.
    pub rule: String,
    /// The rule's limit.
    pub limit: u64,
    /// The rule's window in milliseconds.
    pub window_ms: u64,
    /// Whether the rule counts costs (see [`Rule::weighted`](crate::Rule::weighted)).
    #[serde(default)]
    pub weighted: bool,
    /// The largest number of admitted arrivals of one key in any half-open
    /// interval `[t, t + window)` — for a weighted rule the largest sum of
    /// their [`cost`](Arrival::cost)s — computed exactly over the log. For a
    /// sliding-log or GCRA rule this never exceeds `limit` (unless an
    /// actual cost above the declared one overdrew it); for fixed windows,
    /// buckets and sliding window counters it shows how bursty the accepted
    /// traffic was. For a [concurrency](crate::Mode::Concurrency) rule,
    /// which has no window, it is instead the most requests (units) of one
    /// key in flight at once.
    pub max_accepted_in_any_window: u64,
    /// The largest number of arrivals of one key in any half-open interval
    /// `[t, t + window)`, whatever their outcome (refused and scripted ones
    /// included), one per request whatever its cost: how hard the client
    /// knocked. A [sliding window counter](crate::Mode::SlidingWindowCounter)
    /// counts refused requests too, so there this is what the rule saw.
    /// Zero for a concurrency rule, which has no window.
    #[serde(default)]
    pub max_arrivals_in_any_window: u64,
}

/// A snapshot of everything the server recorded.
///
/// Served as JSON at `GET /__quota/stats`; [`MockServer::stats`](crate::MockServer::stats)
/// returns the same value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of recorded arrivals.
    pub total: u64,
    /// Arrivals per response status (`0` is "no response").
    pub by_status: BTreeMap<u16, u64>,
    /// One entry per configured rule, in configuration order.
    pub rules: Vec<RuleStats>,
    /// Every arrival, ordered by arrival time.
    pub arrivals: Vec<Arrival>,
}

impl Stats {
    pub(crate) fn from_arrivals(mut arrivals: Vec<Arrival>, rules: &[crate::Rule]) -> Stats {
        arrivals.sort_by_key(|arrival| arrival.at);
        let mut by_status = BTreeMap::new();
        for arrival in &arrivals {
            *by_status.entry(arrival.status).or_insert(0) += 1;
        }
        let rules = rules
            .iter()
            .map(|rule| RuleStats {
                rule: rule.to_string(),
                limit: rule.limit(),
                window_ms: u64::try_from(rule.window().as_millis()).unwrap_or(u64::MAX),
                weighted: rule.is_weighted(),
                max_accepted_in_any_window: if rule.is_weighted() {
                    max_cost_in_any_window(&arrivals, rule.window())
                } else {
                    max_in_any_window(&arrivals, rule.window())
                },
                max_arrivals_in_any_window: max_arrivals_in_any_window(&arrivals, rule.window()),
            })
            .collect();
        Stats {
            total: arrivals.len() as u64,
            by_status,
            rules,
            arrivals,
        }
    }

    /// Number of arrivals answered with `status` (`0` for "no response").
    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Number of arrivals the quota admitted (see [`Outcome::Admitted`]);
    /// refused and scripted arrivals are not counted.
    pub fn accepted(&self) -> u64 {
        self.arrivals
            .iter()
            .filter(|arrival| arrival.is_accepted())
            .count() as u64
    }

    /// The largest number of admitted arrivals of one key in any half-open
    /// interval `[t, t + window)`, over all keys.
    pub fn max_in_any_window(&self, window: Duration) -> u64 {
        max_in_any_window(&self.arrivals, window)
    }

    /// The largest number of arrivals of one key in any half-open interval
    /// `[t, t + window)`, over all keys, counting every recorded arrival
    /// whatever its outcome or status: what the provider saw, refused
    /// requests included.
    pub fn max_arrivals_in_any_window(&self, window: Duration) -> u64 {
        max_arrivals_in_any_window(&self.arrivals, window)
    }

    /// What the quota admitted against what it could have admitted over the
    /// same time: accepted ÷ (limit × (span + window) ÷ window), where span
    /// runs from the first to the last accepted arrival. 1.0 means the
    /// provider was kept as busy as its quota allows; 0.0 when nothing was
    /// accepted.
    pub fn utilization(&self, limit: u64, window: Duration) -> f64 {
        let mut accepted = self
            .arrivals
            .iter()
            .filter(|arrival| arrival.is_accepted())
            .map(|arrival| arrival.at);
        let Some(first) = accepted.next() else {
            return 0.0;
        };
        let (count, first, last) = accepted.fold((1u64, first, first), |(n, lo, hi), at| {
            (n + 1, lo.min(at), hi.max(at))
        });
        let window = window.as_secs_f64();
        let possible = limit as f64 * ((last - first).as_secs_f64() + window) / window;
        count as f64 / possible
    }

    /// The largest sum of [`Arrival::cost`] over admitted arrivals of one
    /// key in any half-open interval `[t, t + window)`, over all keys: what
    /// a weighted rule with this window saw at its busiest.
    pub fn max_cost_in_any_window(&self, window: Duration) -> u64 {
        max_cost_in_any_window(&self.arrivals, window)
    }
}

fn max_in_any_window(arrivals: &[Arrival], window: Duration) -> u64 {
    max_weight_in_any_window(arrivals.iter().filter(|a| a.is_accepted()), window, |_| 1)
}

fn max_cost_in_any_window(arrivals: &[Arrival], window: Duration) -> u64 {
    max_weight_in_any_window(
        arrivals.iter().filter(|a| a.is_accepted()),
        window,
        |arrival| arrival.cost,
    )
}

fn max_arrivals_in_any_window(arrivals: &[Arrival], window: Duration) -> u64 {
    max_weight_in_any_window(arrivals.iter(), window, |_| 1)
}

fn max_weight_in_any_window<'a>(
    arrivals: impl Iterator<Item = &'a Arrival>,
    window: Duration,
    weight: impl Fn(&Arrival) -> u64,
) -> u64 {
    let mut by_key: BTreeMap<&str, Vec<(Duration, u64)>> = BTreeMap::new();
    for arrival in arrivals {
        by_key
            .entry(&arrival.key)
            .or_default()
            .push((arrival.at, weight(arrival)));
    }
    by_key
        .into_values()
        .map(|weighted| max_weight_in_window_sorted(weighted, window))
        .max()
        .unwrap_or(0)
}

/// Two-pointer sweep: the busiest window starts at some arrival, so for each
/// `i` sum the weights of the `j >= i` with `t_j < t_i + window`. Weights
/// are never negative, so the sum only grows as the end moves right.
fn max_weight_in_window_sorted(mut weighted: Vec<(Duration, u64)>, window: Duration) -> u64 {
    weighted.sort_unstable_by_key(|&(t, _)| t);
    let mut best: u128 = 0;
    let mut sum: u128 = 0;
    let mut end = 0;
    for (start, &(t, _)) in weighted.iter().enumerate() {
        if end < start {
            end = start;
            sum = 0;
        }
        let limit = t.checked_add(window);
        while end < weighted.len() && limit.is_none_or(|limit| weighted[end].0 < limit) {
            sum += u128::from(weighted[end].1);
            end += 1;
        }
        best = best.max(sum);
        if end > start {
            sum -= u128::from(weighted[start].1);
        }
    }
    u64::try_from(best).unwrap_or(u64::MAX)
}

/// FNV-1a, 64-bit: the stable hash recorded as [`Arrival::body_hash`].
///
/// ```
/// assert_eq!(quota_mock::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
/// assert_eq!(quota_mock::fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(at_ms: u64, key: &str, outcome: Outcome) -> Arrival {
        Arrival {
            at: Duration::from_millis(at_ms),
            key: key.to_owned(),
            method: "GET".to_owned(),
            path: "/".to_owned(),
            status: if outcome == Outcome::Refused {
                429
            } else {
                200
            },
            outcome,
            attempt: None,
            body_hash: fnv1a64(b""),
            body_len: 0,
            cost: 1,
            declared_cost: 1,
        }
    }

    fn costly(at_ms: u64, key: &str, outcome: Outcome, cost: u64) -> Arrival {
        Arrival {
            cost,
            declared_cost: cost,
            ..arrival(at_ms, key, outcome)
        }
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn window_is_half_open() {
        let window = Duration::from_millis(1000);
        let arrivals = [
            arrival(0, "k", Outcome::Admitted),
            arrival(1000, "k", Outcome::Admitted),
        ];
        assert_eq!(max_in_any_window(&arrivals, window), 1);
        let arrivals = [
            arrival(0, "k", Outcome::Admitted),
            arrival(999, "k", Outcome::Admitted),
        ];
        assert_eq!(max_in_any_window(&arrivals, window), 2);
    }

    #[test]
    fn busiest_window_counts_only_admitted_arrivals_per_key() {
        let window = Duration::from_millis(1000);
        let arrivals = vec![
            arrival(0, "a", Outcome::Admitted),
            arrival(100, "b", Outcome::Admitted),
            arrival(200, "a", Outcome::Refused),
            arrival(300, "a", Outcome::Scripted),
            arrival(900, "a", Outcome::Admitted),
            arrival(1100, "a", Outcome::Admitted),
            arrival(1500, "a", Outcome::Admitted),
            arrival(1800, "b", Outcome::Admitted),
        ];
        // "a": 900, 1100, 1500 fit in [900, 1900).
        assert_eq!(max_in_any_window(&arrivals, window), 3);
        // Counting every arrival, "a" has 0, 200, 300, 900 in [0, 1000).
        assert_eq!(max_arrivals_in_any_window(&arrivals, window), 4);
        let stats = Stats::from_arrivals(arrivals, &[crate::Rule::sliding_log(5, window)]);
        assert_eq!(stats.total, 8);
        assert_eq!(stats.count(429), 1);
        assert_eq!(stats.count(200), 7);
        assert_eq!(stats.accepted(), 6);
        assert_eq!(stats.rules[0].rule, "5/1s:sliding");
        assert_eq!(stats.rules[0].window_ms, 1000);
        assert_eq!(stats.rules[0].max_accepted_in_any_window, 3);
        assert_eq!(stats.rules[0].max_arrivals_in_any_window, 4);
        assert_eq!(stats.max_arrivals_in_any_window(window), 4);
        assert_eq!(
            stats.max_arrivals_in_any_window(Duration::from_millis(1)),
            1
        );
    }

    #[test]
    fn sweep_agrees_with_brute_force() {
        let window = Duration::from_millis(250);
        // A fixed pseudo-random pattern with duplicates.
        let times: Vec<Duration> = (0..300u64)
            .map(|i| Duration::from_millis((i * 7919) % 2003))
            .collect();
        let brute = times
            .iter()
            .map(|&t| times.iter().filter(|&&u| u >= t && u < t + window).count())
            .max()
            .unwrap() as u64;
        let weighted = times.iter().map(|&t| (t, 1)).collect();
        assert_eq!(max_weight_in_window_sorted(weighted, window), brute);
    }

    #[test]
    fn weighted_sweep_agrees_with_brute_force() {
        let window = Duration::from_millis(250);
        let weighted: Vec<(Duration, u64)> = (0..300u64)
            .map(|i| (Duration::from_millis((i * 7919) % 2003), (i * 31) % 17))
            .collect();
        let brute = weighted
            .iter()
            .map(|&(t, _)| {
                weighted
                    .iter()
                    .filter(|&&(u, _)| u >= t && u < t + window)
                    .map(|&(_, cost)| cost)
                    .sum::<u64>()
            })
            .max()
            .unwrap();
        assert_eq!(max_weight_in_window_sorted(weighted, window), brute);
    }

    #[test]
    fn weighted_rules_report_the_busiest_sum_of_costs() {
        let window = Duration::from_millis(1000);
        let arrivals = vec![
            costly(0, "a", Outcome::Admitted, 40),
            costly(500, "a", Outcome::Admitted, 50),
            // Refused and scripted arrivals were charged nothing.
            costly(600, "a", Outcome::Refused, 500),
            costly(700, "a", Outcome::Scripted, 500),
            // [0, 1000): 40 + 50 + 10, the busiest.
            costly(999, "a", Outcome::Admitted, 10),
            costly(1400, "a", Outcome::Admitted, 30),
            costly(1500, "b", Outcome::Admitted, 99),
            costly(2600, "a", Outcome::Admitted, 0),
        ];
        let stats = Stats::from_arrivals(
            arrivals,
            &[
                crate::Rule::sliding_log(100, window).weighted(),
                crate::Rule::sliding_log(5, window),
            ],
        );
        assert_eq!(stats.max_cost_in_any_window(window), 100);
        assert_eq!(stats.max_cost_in_any_window(Duration::from_millis(1)), 99);
        assert_eq!(stats.rules[0].rule, "100/1s:sliding:cost");
        assert!(stats.rules[0].weighted);
        assert_eq!(stats.rules[0].max_accepted_in_any_window, 100);
        // The unweighted rule counts arrivals: 0, 500, 999.
        assert!(!stats.rules[1].weighted);
        assert_eq!(stats.rules[1].max_accepted_in_any_window, 3);
    }
}
