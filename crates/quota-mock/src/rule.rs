//! Quota rules: how many requests a key may make in a window, and how the
//! window is counted.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How a [`Rule`] counts requests against its window.
///
/// Real providers disagree on this, and a client that is correct against one
/// counting method can be refused by another, so the mock offers the shapes
/// that matter: an exact log, fixed windows, a bursty bucket, a burst-free
/// pacer, and the approximate counter of gateways and CDNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Mode {
    /// An exact sliding log: at most `limit` accepted requests in *any*
    /// half-open interval `[t, t + window)`. The strictest of the three and
    /// the default.
    #[default]
    SlidingLog,
    /// Fixed windows aligned to server start that reset at each boundary
    /// (GitHub-style). Allows up to `2 * limit` requests in a short span
    /// around a boundary.
    FixedWindow,
    /// A token bucket holding `limit` tokens that refills continuously at
    /// `limit` tokens per `window` (nginx-style).
    TokenBucket,
    /// GCRA (a leaky bucket) without burst: one request per emission
    /// interval `window / limit` (rounded up to the nanosecond). A request is
    /// admitted if it arrives at least one interval after the previously
    /// admitted one — its theoretical arrival time, with zero tolerance. A
    /// refused request consumes nothing. For a
    /// [weighted](Rule#weighted-rules) rule a request of cost `c` is
    /// admitted on the same condition and holds the next one off for `c`
    /// intervals, so `limit` units pass per `window` in the long run.
    Gcra,
    /// A sliding window counter, the approximation many gateways and CDNs
    /// use (Cloudflare, nginx-like): periods of length `window` on a grid
    /// that starts at the key's first request; the estimate is
    /// `previous * (1 - elapsed / window) + current`, where `previous` and
    /// `current` are the counts of the previous and the current period and
    /// `elapsed` is the time since the current period began. A request is
    /// admitted if `estimate + 1 <= limit` (`+ cost` for a weighted rule).
    ///
    /// Like those gateways it **counts refused requests too**: every
    /// request that reaches the quota check adds to the current period,
    /// whichever rule refused it, so a client that keeps knocking while
    /// refused stays refused. (Scripted responses come before the quota
    /// check and are not counted.)
    SlidingWindowCounter,
    /// At most `limit` requests of one key in flight at once (units, for a
    /// [weighted](Rule#weighted-rules) rule): a request is in flight from
    /// its admission until the server hands its response over — through
    /// [processing time](crate::MockServerBuilder::processing) and
    /// [latency faults](crate::Fault::Latency) — or the client hangs up. A
    /// request that would exceed it gets a 429 *without* `Retry-After`, as
    /// nobody knows when a request in flight will finish, and consumes
    /// nothing. Such a rule has no window ([`Rule::window`] is zero).
    Concurrency,
}

impl Mode {
    /// The short name used in rule strings (`sliding`, `fixed`, `bucket`,
    /// `gcra`, `counter`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SlidingLog => "sliding",
            Mode::FixedWindow => "fixed",
            Mode::TokenBucket => "bucket",
            Mode::Gcra => "gcra",
            Mode::SlidingWindowCounter => "counter",
            Mode::Concurrency => "concurrency",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ParseRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sliding" | "sliding_log" | "sliding-log" | "log" => Ok(Mode::SlidingLog),
            "fixed" | "fixed_window" | "fixed-window" | "window" => Ok(Mode::FixedWindow),
            "bucket" | "token_bucket" | "token-bucket" => Ok(Mode::TokenBucket),
            "gcra" | "noburst" | "no_burst" | "no-burst" => Ok(Mode::Gcra),
            "counter" | "sliding_window_counter" | "sliding-window-counter" => {
                Ok(Mode::SlidingWindowCounter)
            }
            "concurrency" | "concurrent" | "in_flight" | "in-flight" => Ok(Mode::Concurrency),
            _ => Err(ParseRuleError::new(format!(
                "unknown mode {s:?} (expected sliding, fixed, bucket, gcra, counter or concurrency)"
            ))),
        }
    }
}

/// One quota: at most `limit` requests per `window`, counted by a [`Mode`].
///
/// Several rules on one server are all enforced: a request is accepted only
/// if every rule has room for it, and a refused request consumes nothing —
/// except in a [sliding window counter](Mode::SlidingWindowCounter), which
/// counts every request it sees.
///
/// # Weighted rules
///
/// A rule made [`weighted`](Rule::weighted) counts units instead of
/// requests: each request spends its *cost*, read from a request header
/// (see [`MockServerBuilder::cost_header`](crate::MockServerBuilder::cost_header)),
/// so `limit` is, say, 200,000 tokens per minute. An unweighted rule spends
/// 1 per request whatever the cost, so "500 requests and 200,000 tokens per
/// minute" is two rules on one server:
///
/// ```
/// use std::time::Duration;
/// use quota_mock::Rule;
///
/// let requests = Rule::sliding_log(500, Duration::from_secs(60));
/// let tokens = Rule::sliding_log(200_000, Duration::from_secs(60)).weighted();
/// assert_eq!(tokens, "200000/1m:sliding:cost".parse().unwrap());
/// assert!(!requests.is_weighted());
/// ```
///
/// The constructors do not validate; a rule with a zero limit or a zero
/// window makes [`MockServerBuilder::start`](crate::MockServerBuilder::start)
/// fail with [`std::io::ErrorKind::InvalidInput`]. Use [`Rule::new`] or
/// [`Rule::parse`] to validate up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    limit: u64,
    window: Duration,
    mode: Mode,
    weighted: bool,
}

impl Rule {
    /// An exact sliding log: `limit` requests in any window of `window`.
    pub fn sliding_log(limit: u64, window: Duration) -> Rule {
        Rule {
            limit,
            window,
            mode: Mode::SlidingLog,
            weighted: false,
        }
    }

    /// Fixed windows of `window` length, starting at server start, each
    /// allowing `limit` requests.
    pub fn fixed_window(limit: u64, window: Duration) -> Rule {
        Rule {
            limit,
            window,
            mode: Mode::FixedWindow,
            weighted: false,
        }
    }

    /// A token bucket of capacity `limit`, refilled continuously with
    /// `limit` tokens per `window`.
    pub fn token_bucket(limit: u64, window: Duration) -> Rule {
        Rule {
            limit,
            window,
            mode: Mode::TokenBucket,
            weighted: false,
        }
    }

    /// GCRA without burst: one request per `window / limit`, each admitted
    /// only if it arrives at least that long after the previously admitted
    /// one (see [`Mode::Gcra`]).
    pub fn no_burst(limit: u64, window: Duration) -> Rule {
        Rule {
            limit,
            window,
            mode: Mode::Gcra,
            weighted: false,
        }
    }

    /// A sliding window counter that weighs the previous period's count by
    /// how much of it still overlaps the window, and counts refused requests
    /// too (see [`Mode::SlidingWindowCounter`]).
    pub fn sliding_window_counter(limit: u64, window: Duration) -> Rule {
        Rule {
            limit,
            window,
            mode: Mode::SlidingWindowCounter,
            weighted: false,
        }
    }

    /// At most `max_in_flight` requests of one key being processed at once
    /// (see [`Mode::Concurrency`]).
    pub fn concurrency(max_in_flight: u64) -> Rule {
        Rule {
            limit: max_in_flight,
            window: Duration::ZERO,
            mode: Mode::Concurrency,
            weighted: false,
        }
    }

    /// A validated rule: a zero `limit` or a zero `window` is an error.
    /// A [`Mode::Concurrency`] rule has no window: `window` is ignored.
    pub fn new(limit: u64, window: Duration, mode: Mode) -> Result<Rule, ParseRuleError> {
        let window = if mode == Mode::Concurrency {
            Duration::ZERO
        } else {
            window
        };
        let rule = Rule {
            limit,
            window,
            mode,
            weighted: false,
        };
        rule.validate()?;
        Ok(rule)
    }

    /// This rule, counting each request's cost instead of 1 (see
    /// [Weighted rules](Rule#weighted-rules)).
    pub fn weighted(mut self) -> Rule {
        self.weighted = true;
        self
    }

    /// Parses `LIMIT/WINDOW[:MODE][:cost]`, e.g. `10/1s`, `100/1m`,
    /// `5000/1h`, `20/500ms`, `10/1s:fixed`, `10/1s:bucket`,
    /// `10/1s:sliding`, `20/1s:gcra` (alias `:noburst`), `100/1m:counter`,
    /// and for a [weighted](Rule#weighted-rules) rule `200000/1m:cost` or
    /// `200000/1m:bucket:cost`. A [concurrency](Mode::Concurrency) rule has
    /// no window: `5:concurrency`.
    ///
    /// The window is a [`humantime`] duration; the mode defaults to
    /// [`Mode::SlidingLog`]. The suffixes may come in either order, each at
    /// most once. A zero limit or zero window is an error.
    pub fn parse(s: &str) -> Result<Rule, ParseRuleError> {
        let s = s.trim();
        let mut parts = s.split(':');
        let quota = parts.next().unwrap_or_default();
        let mut mode = None;
        let mut weighted = false;
        for part in parts {
            if part.trim().eq_ignore_ascii_case("cost") {
                if weighted {
                    return Err(ParseRuleError::new(format!("{s:?}: `cost` given twice")));
                }
                weighted = true;
            } else if mode.replace(part.parse::<Mode>()?).is_some() {
                return Err(ParseRuleError::new(format!("{s:?}: more than one mode")));
            }
        }
        let mode = mode.unwrap_or_default();
        if mode == Mode::Concurrency {
            let limit = quota.trim().parse::<u64>().map_err(|e| {
                ParseRuleError::new(format!(
                    "{s:?}: a concurrency rule is LIMIT:concurrency, e.g. 5:concurrency \
                     ({quota:?}: {e})"
                ))
            })?;
            let rule = Rule::new(limit, Duration::ZERO, mode)?;
            return Ok(if weighted { rule.weighted() } else { rule });
        }
        let (limit, window) = quota
            .split_once('/')
            .ok_or_else(|| ParseRuleError::new(format!("{s:?} is not LIMIT/WINDOW, e.g. 10/1s")))?;
        let limit = limit
            .trim()
            .parse::<u64>()
            .map_err(|e| ParseRuleError::new(format!("bad limit {limit:?}: {e}")))?;
        let window = window.trim();
        // "10/s" reads naturally as "10 per second".
        let window = if window.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(window)
                .map_err(|e| ParseRuleError::new(format!("bad window {window:?}: {e}")))?
        } else {
            humantime::parse_duration(&format!("1{window}"))
                .map_err(|e| ParseRuleError::new(format!("bad window {window:?}: {e}")))?
        };
        let rule = Rule::new(limit, window, mode)?;
        Ok(if weighted { rule.weighted() } else { rule })
    }

    /// The number of requests (units, for a weighted rule) allowed per
    /// window (the bucket capacity for [`Mode::TokenBucket`]).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window length (the time to refill a whole bucket for
    /// [`Mode::TokenBucket`]; zero for [`Mode::Concurrency`]).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How requests are counted.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether each request spends its cost (`true`) or 1 (`false`).
    pub fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// This rule with another limit (not validated).
    pub(crate) fn with_limit(mut self, limit: u64) -> Rule {
        self.limit = limit;
        self
    }

    /// What a request of `cost` spends of this rule.
    pub(crate) fn spend(&self, cost: u64) -> u64 {
        if self.weighted { cost } else { 1 }
    }

    pub(crate) fn validate(&self) -> Result<(), ParseRuleError> {
        if self.limit == 0 {
            return Err(ParseRuleError::new(format!(
                "rule {self}: limit must be at least 1"
            )));
        }
        if self.window.is_zero() && self.mode != Mode::Concurrency {
            return Err(ParseRuleError::new(format!(
                "rule {self}: window must not be zero"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    /// Formats as `LIMIT/WINDOW:MODE[:cost]`, e.g. `20/1s:sliding` or
    /// `200000/1m:sliding:cost` (`LIMIT:concurrency[:cost]` for a
    /// concurrency rule), which [`Rule::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.limit)?;
        if self.mode != Mode::Concurrency {
            f.write_str("/")?;
            write_window(f, self.window)?;
        }
        write!(f, ":{}", self.mode)?;
        if self.weighted {
            f.write_str(":cost")?;
        }
        Ok(())
    }
}

fn write_window(f: &mut fmt::Formatter<'_>, window: Duration) -> fmt::Result {
    let nanos = window.as_nanos();
    const SEC: u128 = 1_000_000_000;
    let units: [(u128, &str); 6] = [
        (3600 * SEC, "h"),
        (60 * SEC, "m"),
        (SEC, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    for (size, suffix) in units {
        if nanos != 0 && nanos.is_multiple_of(size) {
            return write!(f, "{}{}", nanos / size, suffix);
        }
    }
    write!(f, "0s")
}

impl FromStr for Rule {
    type Err = ParseRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rule::parse(s)
    }
}

/// A rule string or rule values that do not describe a usable quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRuleError {
    message: String,
}

impl ParseRuleError {
    fn new(message: String) -> Self {
        ParseRuleError { message }
    }
}

impl fmt::Display for ParseRuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseRuleError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(
            Rule::parse("10/1s").unwrap(),
            Rule::sliding_log(10, Duration::from_secs(1))
        );
        assert_eq!(
            Rule::parse("100/1m").unwrap(),
            Rule::sliding_log(100, Duration::from_secs(60))
        );
        assert_eq!(
            Rule::parse("5000/1h").unwrap(),
            Rule::sliding_log(5000, Duration::from_secs(3600))
        );
        assert_eq!(
            Rule::parse("20/500ms").unwrap(),
            Rule::sliding_log(20, Duration::from_millis(500))
        );
        assert_eq!(
            Rule::parse("10/s").unwrap(),
            Rule::sliding_log(10, Duration::from_secs(1))
        );
    }

    #[test]
    fn parses_mode_suffix() {
        assert_eq!(
            Rule::parse("10/1s:fixed").unwrap().mode(),
            Mode::FixedWindow
        );
        assert_eq!(
            Rule::parse("10/1s:bucket").unwrap().mode(),
            Mode::TokenBucket
        );
        assert_eq!(
            Rule::parse("10/1s:sliding").unwrap().mode(),
            Mode::SlidingLog
        );
        assert_eq!(Rule::parse("20/1s:gcra").unwrap().mode(), Mode::Gcra);
        assert_eq!(
            Rule::parse("20/1s:noburst").unwrap(),
            Rule::no_burst(20, Duration::from_secs(1))
        );
        assert_eq!(
            Rule::parse("100/1m:counter").unwrap(),
            Rule::sliding_window_counter(100, Duration::from_secs(60))
        );
        assert_eq!(
            Rule::parse("100/1m:cost:counter").unwrap(),
            Rule::sliding_window_counter(100, Duration::from_secs(60)).weighted()
        );
        assert!(Rule::parse("10/1s:leaky").is_err());
        assert!(Rule::parse("10/1s:gcra:counter").is_err());
        assert_eq!(Rule::parse("5:concurrency").unwrap(), Rule::concurrency(5));
        assert_eq!(Rule::parse("5:in-flight").unwrap(), Rule::concurrency(5));
        assert_eq!(
            Rule::parse("50000:cost:concurrent").unwrap(),
            Rule::concurrency(50_000).weighted()
        );
        assert!(Rule::parse("5/1s:concurrency").is_err());
        assert!(Rule::parse("0:concurrency").is_err());
        assert!(Rule::parse("5").is_err());
        assert_eq!(
            Rule::new(3, Duration::from_secs(9), Mode::Concurrency),
            Ok(Rule::concurrency(3))
        );
    }

    #[test]
    fn parses_cost_suffix_in_either_order() {
        let minute = Duration::from_secs(60);
        let tokens = Rule::sliding_log(200_000, minute).weighted();
        assert_eq!(Rule::parse("200000/1m:cost").unwrap(), tokens);
        assert_eq!(Rule::parse("200000/1m:sliding:cost").unwrap(), tokens);
        assert_eq!(Rule::parse("200000/1m:COST:sliding").unwrap(), tokens);
        assert_eq!(
            Rule::parse("500/1m:fixed:cost").unwrap(),
            Rule::fixed_window(500, minute).weighted()
        );
        assert!(!Rule::parse("500/1m:fixed").unwrap().is_weighted());
        assert!(Rule::parse("0/1m:cost").is_err());
    }

    #[test]
    fn weighted_rules_spend_the_cost_and_others_spend_one() {
        let rule = Rule::token_bucket(100, Duration::from_secs(1));
        assert_eq!(rule.spend(40), 1);
        assert_eq!(rule.weighted().spend(40), 40);
        assert_eq!(rule.weighted().spend(0), 0);
    }

    #[test]
    fn zero_limit_or_window_is_an_error_not_a_panic() {
        assert!(Rule::parse("0/1s").is_err());
        assert!(Rule::parse("10/0s").is_err());
        assert!(Rule::new(0, Duration::from_secs(1), Mode::SlidingLog).is_err());
        assert!(Rule::sliding_log(1, Duration::ZERO).validate().is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        for input in [
            "",
            "/",
            "10",
            "ten/1s",
            "10/",
            "10/1parsec",
            "-1/1s",
            "10/1s:",
            "::",
            "10/1s:cost:cost",
            "10/1s:fixed:bucket",
            "10/1s:costs",
        ] {
            assert!(Rule::parse(input).is_err(), "{input:?} parsed");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "20/1s:sliding",
            "100/1m:fixed",
            "5000/1h:bucket",
            "20/500ms:sliding",
            "3/90s:sliding",
            "200000/1m:sliding:cost",
            "1000/1s:bucket:cost",
            "20/1s:gcra",
            "100/1m:counter",
            "5000/1m:counter:cost",
            "8:concurrency",
            "1000:concurrency:cost",
        ] {
            let rule = Rule::parse(input).unwrap();
            assert_eq!(rule.to_string(), input);
            assert_eq!(Rule::parse(&rule.to_string()).unwrap(), rule);
        }
    }
}
