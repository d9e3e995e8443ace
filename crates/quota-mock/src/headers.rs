//! Which quota headers responses carry, in which dialect, and how
//! `Retry-After` is written.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::quota::QuotaView;
use crate::rule::Rule;
use crate::stats::fnv1a64;

/// The rate-limit header dialect a response speaks.
///
/// Real providers report quota in many dialects; the mock speaks each one so
/// a client's parser (for example `quota-headers`) is exercised end to end.
/// Set the dialect for every key with
/// [`MockServerBuilder::headers`](crate::MockServerBuilder::headers) and
/// override it for one key with
/// [`MockServerBuilder::headers_for_key`](crate::MockServerBuilder::headers_for_key).
///
/// # What the values mean
///
/// Except for [`IetfStructured`](Self::IetfStructured), which reports every
/// rule, and [`OpenAi`](Self::OpenAi) and [`Anthropic`](Self::Anthropic),
/// which report requests and tokens apart, a dialect reports the **most
/// restrictive rule**: the one with the least remaining quota, and among
/// those the one that takes longest to free a unit. With
/// [weighted](crate::Rule#weighted-rules) rules "least remaining" means the
/// fewest more requests of the answered request's cost (`remaining / cost`),
/// so a refused request is answered with a rule that refused it.
///
/// **Weighted rules state units**: limit, remaining and used count units of
/// cost, not requests.
///
/// **Reset is when the rule next frees one unit of quota**, not when it is
/// whole again: for a fixed window the next boundary; for a token bucket
/// when the next whole token has refilled; for a sliding log when the oldest
/// admission still in the window leaves it; for GCRA when the emission
/// interval since the last admission is over (GCRA states `remaining` 1 or
/// 0, as it admits no burst); for a sliding window counter when the
/// estimate has fallen by one. So a client that sees
/// `remaining: 0` and waits until the reset is admitted, and it learns this
/// from the cheapest signal there is. (Precisely: the reset is when
/// `remaining` next grows by one, which also covers a rule overdrawn by an
/// actual cost, see
/// [`MockServerBuilder::actual_cost_header`](crate::MockServerBuilder::actual_cost_header).)
/// For a weighted rule that is when the *next unit* frees, which can be
/// sooner than when a request of cost `c > remaining + 1` fits; the
/// `Retry-After` of a 429 is always the delay until every rule has room for
/// that request's whole cost. A [concurrency](crate::Mode::Concurrency) rule
/// cannot tell when a request in flight will end: its reset is 0, and a 429
/// that only concurrency rules caused carries no `Retry-After`.
///
/// **Every reset is rounded up** (to whole seconds, or to milliseconds for
/// dialects with decimals), so a client that waits until the reset is never
/// early. Absolute resets (epoch seconds, RFC 3339) are computed from the
/// same wall-clock instant as the response's `Date` header, so a client that
/// measures them from `Date` cancels clock skew; such a reset is at most one
/// second later than the delay, because `Date` itself is truncated to the
/// second.
///
/// Every response also carries `Date`, and 429s carry `Retry-After` whatever
/// the dialect (unless turned off with
/// [`MockServerBuilder::retry_after`](crate::MockServerBuilder::retry_after)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HeaderDialect {
    /// GitHub-style: `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
    /// `X-RateLimit-Used` and `X-RateLimit-Reset` in epoch seconds.
    #[default]
    XRateLimit,
    /// As [`XRateLimit`](Self::XRateLimit), but `X-RateLimit-Reset` is
    /// seconds from now (as many smaller APIs send it).
    XRateLimitDelta,
    /// The current IETF draft (`draft-ietf-httpapi-ratelimit-headers`, -08
    /// and later): one policy per rule,
    /// `RateLimit-Policy: "20-per-1s";q=20;w=1, "100-per-1m";q=100;w=60` and
    /// `RateLimit: "20-per-1s";r=3;t=1, "100-per-1m";r=80;t=12`. A single
    /// rule is named `"default"`. `t` and `w` are whole seconds, rounded up
    /// (a 500 ms window is announced as `w=1`).
    IetfStructured,
    /// Older IETF drafts: `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` in seconds from now.
    IetfLegacy,
    /// Discord: `X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds
    /// with three decimals), `-Reset-After` (seconds with three decimals)
    /// and `-Bucket` (an opaque hash of the quota key).
    Discord,
    /// OpenAI: `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`
    /// and `x-ratelimit-reset-requests` as a Go duration (`20ms`, `1.5s`,
    /// `6m0s`), rounded up to the millisecond, for the most restrictive
    /// unweighted rule; `x-ratelimit-{limit,remaining,reset}-tokens` for the
    /// most restrictive [weighted](crate::Rule#weighted-rules) rule. Each
    /// group is left out when there is no such rule.
    OpenAi,
    /// Anthropic: `anthropic-ratelimit-requests-limit`, `-remaining` and
    /// `-reset` as an RFC 3339 UTC instant (`2026-11-28T20:11:51Z`) for the
    /// most restrictive unweighted rule, and
    /// `anthropic-ratelimit-tokens-{limit,remaining,reset}` for the most
    /// restrictive [weighted](crate::Rule#weighted-rules) rule. Each group is
    /// left out when there is no such rule.
    Anthropic,
    /// Shopify: `X-Shopify-Shop-Api-Call-Limit: used/limit`. Shopify states
    /// no reset, so a client learns when to retry only from `Retry-After`.
    Shopify,
    /// No quota headers; only `Retry-After` on 429s.
    None,
}

impl HeaderDialect {
    /// Every dialect, in declaration order.
    pub const ALL: [HeaderDialect; 9] = [
        HeaderDialect::XRateLimit,
        HeaderDialect::XRateLimitDelta,
        HeaderDialect::IetfStructured,
        HeaderDialect::IetfLegacy,
        HeaderDialect::Discord,
        HeaderDialect::OpenAi,
        HeaderDialect::Anthropic,
        HeaderDialect::Shopify,
        HeaderDialect::None,
    ];

    /// The name used on the command line (`--headers`), e.g.
    /// `x-ratelimit-delta`; [`str::parse`] reads it back.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderDialect::XRateLimit => "x-ratelimit",
            HeaderDialect::XRateLimitDelta => "x-ratelimit-delta",
            HeaderDialect::IetfStructured => "ietf",
            HeaderDialect::IetfLegacy => "ietf-legacy",
            HeaderDialect::Discord => "discord",
            HeaderDialect::OpenAi => "openai",
            HeaderDialect::Anthropic => "anthropic",
            HeaderDialect::Shopify => "shopify",
            HeaderDialect::None => "none",
        }
    }
}

impl fmt::Display for HeaderDialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HeaderDialect {
    type Err = ParseHeaderDialectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        HeaderDialect::ALL
            .into_iter()
            .find(|dialect| dialect.as_str() == name)
            .ok_or_else(|| ParseHeaderDialectError(s.to_owned()))
    }
}

/// A `--headers` value that names no [`HeaderDialect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHeaderDialectError(String);

impl fmt::Display for ParseHeaderDialectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown header dialect {:?} (expected one of ", self.0)?;
        for (index, dialect) in HeaderDialect::ALL.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            f.write_str(dialect.as_str())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ParseHeaderDialectError {}

/// How `Retry-After` states its delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RetryAfterFormat {
    /// Delay-seconds, rounded up: `Retry-After: 8`.
    #[default]
    Seconds,
    /// An IMF-fixdate, rounded up to the next whole second and computed from
    /// the same instant as the response's `Date`:
    /// `Retry-After: Sun, 06 Nov 1994 08:49:45 GMT`. A client measuring it
    /// from `Date` is never early.
    HttpDate,
}

/// Header settings as the builder collects them.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderConfig {
    pub(crate) dialect: HeaderDialect,
    pub(crate) per_key: HashMap<String, HeaderDialect>,
    /// `false` drops `Retry-After` from quota 429s (scripted and fault
    /// responses keep theirs: they were configured explicitly).
    pub(crate) omit_retry_after_on_429: bool,
    pub(crate) retry_after_format: RetryAfterFormat,
}

/// Header settings ready to write responses: the config plus one IETF
/// policy per rule.
#[derive(Debug)]
pub(crate) struct QuotaHeaders {
    config: HeaderConfig,
    policies: Vec<Policy>,
}

/// One rule as announced in `RateLimit-Policy`.
#[derive(Debug)]
struct Policy {
    name: String,
    window_seconds: u64,
}

/// The largest integer a structured field may carry (RFC 9651 §3.3.1).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static X_RATELIMIT_USED: HeaderName = HeaderName::from_static("x-ratelimit-used");
static X_RATELIMIT_RESET_AFTER: HeaderName = HeaderName::from_static("x-ratelimit-reset-after");
static X_RATELIMIT_BUCKET: HeaderName = HeaderName::from_static("x-ratelimit-bucket");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static OPENAI_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
static OPENAI_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
static OPENAI_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
static ANTHROPIC_LIMIT: HeaderName = HeaderName::from_static("anthropic-ratelimit-requests-limit");
static ANTHROPIC_REMAINING: HeaderName =
    HeaderName::from_static("anthropic-ratelimit-requests-remaining");
static ANTHROPIC_RESET: HeaderName = HeaderName::from_static("anthropic-ratelimit-requests-reset");
static OPENAI_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
static OPENAI_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-tokens");
static OPENAI_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
static ANTHROPIC_LIMIT_TOKENS: HeaderName =
    HeaderName::from_static("anthropic-ratelimit-tokens-limit");
static ANTHROPIC_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("anthropic-ratelimit-tokens-remaining");
static ANTHROPIC_RESET_TOKENS: HeaderName =
    HeaderName::from_static("anthropic-ratelimit-tokens-reset");
static SHOPIFY_CALL_LIMIT: HeaderName = HeaderName::from_static("x-shopify-shop-api-call-limit");

impl QuotaHeaders {
    pub(crate) fn new(config: HeaderConfig, rules: &[Rule]) -> Self {
        QuotaHeaders {
            config,
            policies: policies(rules),
        }
    }

    /// The dialect responses to `key` speak.
    pub(crate) fn dialect_for(&self, key: &str) -> HeaderDialect {
        self.config
            .per_key
            .get(key)
            .copied()
            .unwrap_or(self.config.dialect)
    }

    /// Whether quota 429s carry `Retry-After`.
    pub(crate) fn retry_after_on_429(&self) -> bool {
        !self.config.omit_retry_after_on_429
    }

    pub(crate) fn config(&self) -> &HeaderConfig {
        &self.config
    }

    /// `Retry-After` for `delay`, measured from `wall_now`.
    pub(crate) fn write_retry_after(
        &self,
        delay: Duration,
        wall_now: SystemTime,
        headers: &mut HeaderMap,
    ) {
        let value = match self.config.retry_after_format {
            RetryAfterFormat::Seconds => HeaderValue::from(delay_seconds(delay)),
            RetryAfterFormat::HttpDate => {
                let at = UNIX_EPOCH + Duration::from_secs(epoch_seconds_after(wall_now, delay));
                http_date(at)
            }
        };
        headers.insert(RETRY_AFTER, value);
    }

    /// The quota headers for `key`'s dialect. `wall_now` is the instant the
    /// response's `Date` states; absolute resets are computed from it.
    pub(crate) fn write(
        &self,
        key: &str,
        view: &QuotaView,
        wall_now: SystemTime,
        headers: &mut HeaderMap,
    ) {
        let rule = &view.restrictive;
        let used = rule.limit.saturating_sub(rule.remaining);
        let dialect = self.dialect_for(key);
        match dialect {
            HeaderDialect::XRateLimit | HeaderDialect::XRateLimitDelta => {
                let reset = if dialect == HeaderDialect::XRateLimit {
                    epoch_seconds_after(wall_now, rule.reset_after)
                } else {
                    delay_seconds(rule.reset_after)
                };
                headers.insert(X_RATELIMIT_LIMIT.clone(), rule.limit.into());
                headers.insert(X_RATELIMIT_REMAINING.clone(), rule.remaining.into());
                headers.insert(X_RATELIMIT_USED.clone(), used.into());
                headers.insert(X_RATELIMIT_RESET.clone(), reset.into());
            }
            HeaderDialect::IetfStructured => self.write_ietf(view, headers),
            HeaderDialect::IetfLegacy => {
                headers.insert(RATELIMIT_LIMIT.clone(), rule.limit.into());
                headers.insert(RATELIMIT_REMAINING.clone(), rule.remaining.into());
                headers.insert(
                    RATELIMIT_RESET.clone(),
                    delay_seconds(rule.reset_after).into(),
                );
            }
            HeaderDialect::Discord => {
                let since_epoch = wall_now
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO);
                let reset = decimal_seconds(since_epoch.saturating_add(rule.reset_after));
                headers.insert(X_RATELIMIT_LIMIT.clone(), rule.limit.into());
                headers.insert(X_RATELIMIT_REMAINING.clone(), rule.remaining.into());
                headers.insert(X_RATELIMIT_RESET.clone(), text_value(reset));
                headers.insert(
                    X_RATELIMIT_RESET_AFTER.clone(),
                    text_value(decimal_seconds(rule.reset_after)),
                );
                headers.insert(
                    X_RATELIMIT_BUCKET.clone(),
                    text_value(format!("{:016x}", fnv1a64(key.as_bytes()))),
                );
            }
            HeaderDialect::OpenAi => {
                let names = [
                    (false, [&OPENAI_LIMIT, &OPENAI_REMAINING, &OPENAI_RESET]),
                    (
                        true,
                        [
                            &OPENAI_LIMIT_TOKENS,
                            &OPENAI_REMAINING_TOKENS,
                            &OPENAI_RESET_TOKENS,
                        ],
                    ),
                ];
                for (weighted, [limit, remaining, reset]) in names {
                    if let Some(rule) = view.restrictive_among(weighted) {
                        headers.insert(limit.clone(), rule.limit.into());
                        headers.insert(remaining.clone(), rule.remaining.into());
                        headers.insert(reset.clone(), text_value(go_duration(rule.reset_after)));
                    }
                }
            }
            HeaderDialect::Anthropic => {
                let names = [
                    (
                        false,
                        [&ANTHROPIC_LIMIT, &ANTHROPIC_REMAINING, &ANTHROPIC_RESET],
                    ),
                    (
                        true,
                        [
                            &ANTHROPIC_LIMIT_TOKENS,
                            &ANTHROPIC_REMAINING_TOKENS,
                            &ANTHROPIC_RESET_TOKENS,
                        ],
                    ),
                ];
                for (weighted, [limit, remaining, reset]) in names {
                    if let Some(rule) = view.restrictive_among(weighted) {
                        let at = epoch_seconds_after(wall_now, rule.reset_after);
                        headers.insert(limit.clone(), rule.limit.into());
                        headers.insert(remaining.clone(), rule.remaining.into());
                        headers.insert(reset.clone(), text_value(rfc3339_utc(at)));
                    }
                }
            }
            HeaderDialect::Shopify => {
                headers.insert(
                    SHOPIFY_CALL_LIMIT.clone(),
                    text_value(format!("{used}/{}", rule.limit)),
                );
            }
            HeaderDialect::None => {}
        }
    }

    fn write_ietf(&self, view: &QuotaView, headers: &mut HeaderMap) {
        let mut policy_field = sfv::ListSerializer::new();
        let mut state_field = sfv::ListSerializer::new();
        for (policy, rule) in self.policies.iter().zip(&view.rules) {
            // Every name is built as a valid sf-string (see `policies`).
            let Ok(name) = sfv::StringRef::from_str(&policy.name) else {
                continue;
            };
            let _ = policy_field
                .bare_item(name)
                .parameter(sfv::key_ref("q"), sf_integer(rule.limit))
                .parameter(sfv::key_ref("w"), sf_integer(policy.window_seconds));
            let _ = state_field
                .bare_item(name)
                .parameter(sfv::key_ref("r"), sf_integer(rule.remaining))
                .parameter(
                    sfv::key_ref("t"),
                    sf_integer(delay_seconds(rule.reset_after)),
                );
        }
        if let (Some(policy_field), Some(state_field)) =
            (policy_field.finish(), state_field.finish())
        {
            headers.insert(RATELIMIT_POLICY.clone(), text_value(policy_field));
            headers.insert(RATELIMIT.clone(), text_value(state_field));
        }
    }
}

/// `value` as a structured-field integer, capped at the largest one.
fn sf_integer(value: u64) -> sfv::Integer {
    // At most 999,999,999,999,999 after the cap: exact as an i64.
    sfv::integer(value.min(SF_INTEGER_MAX) as i64)
}

/// Sets `Date` to `wall_now`.
pub(crate) fn write_date(wall_now: SystemTime, headers: &mut HeaderMap) {
    headers.insert(DATE, http_date(wall_now));
}

/// One IETF policy per rule: `"default"` alone, else named after the rule
/// (`20-per-1s`), with the mode and then the position appended when that
/// name is taken, so every name is unique and a valid sf-string.
fn policies(rules: &[Rule]) -> Vec<Policy> {
    let mut names: Vec<String> = Vec::with_capacity(rules.len());
    for (index, rule) in rules.iter().enumerate() {
        let base = if rules.len() == 1 {
            "default".to_owned()
        } else {
            let text = rule.to_string();
            let quota = text
                .split_once(':')
                .map_or(text.as_str(), |(quota, _)| quota);
            quota.replacen('/', "-per-", 1)
        };
        let candidates = [
            base.clone(),
            format!("{base}-{}", rule.mode()),
            format!("{base}-{}-{}", rule.mode(), index + 1),
        ];
        let name = candidates
            .into_iter()
            .find(|candidate| !names.contains(candidate))
            .unwrap_or_else(|| format!("rule-{}", index + 1));
        names.push(name);
    }
    names
        .into_iter()
        .zip(rules)
        .map(|(name, rule)| Policy {
            name,
            window_seconds: delay_seconds(rule.window()),
        })
        .collect()
}

/// Every value written here is ASCII built from numbers, hex digits and
/// fixed punctuation, so it is always a valid header value.
fn text_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("quota headers are visible ASCII")
}

fn http_date(at: SystemTime) -> HeaderValue {
    text_value(httpdate::fmt_http_date(at))
}

/// Delay-seconds rounded up, so a client that obeys it is never early.
pub(crate) fn delay_seconds(delay: Duration) -> u64 {
    let seconds = delay.as_secs();
    if delay.subsec_nanos() > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    }
}

/// The epoch second (rounded up) `delay` after `wall_now`. Wall time is used
/// for absolute values only; every quota decision follows tokio's clock.
fn epoch_seconds_after(wall_now: SystemTime, delay: Duration) -> u64 {
    let since_epoch = wall_now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    delay_seconds(since_epoch.saturating_add(delay))
}

/// Milliseconds, rounded up.
fn millis_up(duration: Duration) -> u128 {
    duration.as_nanos().div_ceil(1_000_000)
}

/// Seconds with exactly three decimals, rounded up: `1.234`, `60.000`.
fn decimal_seconds(duration: Duration) -> String {
    let millis = millis_up(duration);
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// A Go `time.Duration` string at millisecond precision, rounded up, in the
/// shape Go's `Duration.String` prints: `0s`, `20ms`, `1.5s`, `6m0s`,
/// `1h0m0.25s`.
fn go_duration(duration: Duration) -> String {
    let millis = millis_up(duration);
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let hours = millis / 3_600_000;
    let minutes = millis / 60_000 % 60;
    let seconds = millis / 1000 % 60;
    let fraction = millis % 1000;
    let mut text = String::new();
    if hours > 0 {
        let _ = write!(text, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(text, "{minutes}m");
    }
    let _ = write!(text, "{seconds}");
    if fraction > 0 {
        let digits = format!("{fraction:03}");
        let _ = write!(text, ".{}", digits.trim_end_matches('0'));
    }
    text.push('s');
    text
}

/// `YYYY-MM-DDTHH:MM:SSZ` for an epoch second (at most the last second of
/// year 9999, the last RFC 3339 can write).
fn rfc3339_utc(epoch_seconds: u64) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch_seconds.min(LAST_SECOND_OF_9999));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests;
