//! Total parsers for `Retry-After` and the rate-limit header dialects, into
//! one normalized [`Signal`].
//!
//! Servers say "slow down" in many dialects: RFC 9110's `Retry-After`, the
//! IETF `RateLimit` drafts (three generations of them), the de-facto
//! `X-RateLimit-*` family, and provider-specific headers from Discord,
//! OpenAI, Anthropic, Shopify and gRPC. This crate reads all of them from a
//! status code and a [`http::HeaderMap`] and answers two questions: *how long
//! should I wait before retrying this response?* ([`Signal::retry_after`])
//! and *how much quota is left, and until when?* ([`Signal::quotas`]).
//!
//! It depends only on `http`, `httpdate` and `sfv`: no async runtime, no
//! tower. `tower-quota`'s `RetryAfterLayer` is built on it.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use quota_headers::{Signal, Source};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", HeaderValue::from_static("30"));
//! headers.insert("ratelimit-policy", HeaderValue::from_static(r#""hourly";q=1000;w=3600"#));
//! headers.insert("ratelimit", HeaderValue::from_static(r#""hourly";r=0;t=1800"#));
//!
//! let signal: Signal = quota_headers::parse(StatusCode::TOO_MANY_REQUESTS, &headers, SystemTime::now());
//!
//! assert!(signal.throttled);
//! assert_eq!(signal.retry_after, Some(Duration::from_secs(30)));
//! assert_eq!(signal.retry_after_source, Some(Source::RetryAfter));
//! assert!(signal.is_exhausted());
//! assert_eq!(signal.exhausted_until(), Some(Duration::from_secs(1800)));
//! let hourly = &signal.quotas[0];
//! assert_eq!((hourly.limit, hourly.window), (Some(1000), Some(Duration::from_secs(3600))));
//! ```
//!
//! # Headers from strangers: every parser is total
//!
//! Any bytes in — empty, non-UTF-8, absurdly long, numbers past `u64::MAX` —
//! give a value or "absent" (`None`) out, never a panic. All arithmetic is
//! integer and checked; there are no floats. Malformed, negative and
//! overflowing values are absent; a date or reset in the past is
//! `Duration::ZERO`. Large values are reported as they are: **capping a
//! delay is the caller's job** (the layer's `max_wait`), not this crate's.
//!
//! No parser reads a clock. [`parse`] takes the receive time `now`
//! explicitly, so tests control time completely.
//!
//! # Dialects
//!
//! | Dialect | Headers | [`Source`] |
//! |---|---|---|
//! | RFC 9110 | `Retry-After` (delay-seconds, or an HTTP-date in IMF-fixdate, RFC 850 or asctime form) | `RetryAfter` |
//! | Azure OpenAI and others | `retry-after-ms` (integer or decimal ms) | `RetryAfterMs` |
//! | gRPC | `grpc-status`, `grpc-retry-pushback-ms` | `GrpcPushback` |
//! | IETF draft -08 and later | `RateLimit-Policy: "burst";q=100;w=60` and `RateLimit: "burst";r=50;t=30` (structured-field Lists, matched by policy name; `qu` unit, `pk` partition key) | `IetfRateLimit` |
//! | IETF drafts before -08 | `RateLimit-Limit` / `-Remaining` / `-Reset`, or the dictionary `RateLimit: limit=100, remaining=50, reset=5` | `IetfLegacy` |
//! | GitHub, X and many more | `X-RateLimit-Limit` / `-Remaining` / `-Reset` / `-Used` / `-Resource` | `XRateLimit` |
//! | Discord | the above plus `X-RateLimit-Reset-After`, `-Bucket`, `-Scope` | `Discord` |
//! | OpenAI | `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as Go durations (`6m0s`) | `OpenAi` |
//! | Anthropic | `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`, resets in RFC 3339 | `Anthropic` |
//! | Shopify | `X-Shopify-Shop-Api-Call-Limit: 32/40` (used/limit) | `Shopify` |
//!
//! [`HEADER_NAMES`] lists every header read.
//!
//! # Epoch or delta: the reset rule
//!
//! `X-RateLimit-Reset` is epoch seconds at GitHub and X but seconds-until at
//! others, and the legacy IETF fields are sometimes sent as epochs too. The
//! rule: **a reset of at least 1,000,000,000 seconds is a Unix epoch
//! timestamp** (that is September 2001; no provider sends a delta of 31
//! years); a smaller value is a delta. Decimal epochs (Discord's
//! `1470173023.123`) are accepted.
//!
//! Some servers send epoch *milliseconds* where seconds belong. Read as
//! seconds, such a reset lies tens of thousands of years ahead; so a value
//! that as epoch seconds lies more than 1,000 years after the reference
//! time but as epoch milliseconds lies between a day before and a year
//! after it is read as milliseconds. Other large values are reported as
//! they are (`"default";r=0;t=4294967296` is a reset in 2106): bounding a
//! pause is the caller's job.
//!
//! # Clock skew
//!
//! The server's clock is not ours. Absolute times — epoch resets, Anthropic's
//! RFC 3339 resets and `Retry-After` HTTP-dates — are measured from the
//! response's `Date` header when it has a valid one: `reset − Date` is the
//! wait the server means, whatever our clock says. Without `Date` they are
//! measured from `now`. Delays (delay-seconds, `t`, `Reset-After`, Go
//! durations) are used as given. Delay fields are preferred over epoch
//! fields when a dialect sends both (Discord's `Reset-After` over `Reset`).
//!
//! # Precedence for `retry_after`
//!
//! 1. `retry-after-ms`, when valid — it says the same as `Retry-After` with
//!    more precision, and servers that send it also send a rounded
//!    `Retry-After`;
//! 2. `Retry-After`;
//! 3. `grpc-retry-pushback-ms` with a non-negative delay;
//! 4. only when the response is a throttle (status 429 or 503, or gRPC
//!    status 8 or 14) and none of the above is present: the longest
//!    `reset_after` among quotas with `remaining == 0`, with that quota's
//!    [`Source`] as `retry_after_source`. Not derived when the server sent a
//!    "do not retry" pushback.
//!
//! On a successful response with an exhausted quota `retry_after` stays
//! `None` — nothing needs retrying — and [`Signal::exhausted_until`] tells a
//! caller how long to hold back further requests.
//!
//! # When is a response `throttled`?
//!
//! `throttled` is true for status 429; for status 503 *only with a delay*
//! (a bare 503 is an outage, not a quota, and is left to backoff); and for a
//! trailers-only gRPC response whose `grpc-status` is 8
//! (`RESOURCE_EXHAUSTED`) or 14 (`UNAVAILABLE`). A negative or unparseable
//! `grpc-retry-pushback-ms` sets [`Signal::do_not_retry`].
//!
//! # Individual parsers
//!
//! Each dialect's leaf parser is public and total too: [`retry_after`],
//! [`retry_after_ms`], [`grpc_pushback`], [`grpc_status`], [`go_duration`],
//! [`rfc3339`], [`reset_seconds`], [`decimal_seconds`],
//! [`rate_limit_policy`], [`rate_limit`], [`shopify_call_limit`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod go_duration;
mod grpc;
mod ietf;
mod names;
mod numbers;
mod parse;
mod retry_after;
mod rfc3339;
mod signal;
mod vendors;
mod x_rate_limit;

pub use go_duration::go_duration;
pub use grpc::{Pushback, grpc_pushback, grpc_status};
pub use ietf::{rate_limit, rate_limit_policy};
pub use names::HEADER_NAMES;
pub use parse::{parse, parse_with_clock, states_windows};
pub use retry_after::{retry_after, retry_after_ms};
pub use rfc3339::rfc3339;
pub use signal::{QuotaState, Signal, Source};
pub use vendors::shopify_call_limit;
pub use x_rate_limit::{decimal_seconds, reset_seconds};
