//! The entry point: every dialect, combined by the precedence rules in the
//! crate docs.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::grpc::{self, Pushback};
use crate::names::{Found, Slot};
use crate::numbers::Reference;
use crate::retry_after::retry_after_from;
use crate::{QuotaState, Signal, Source, ietf, vendors, x_rate_limit};
use crate::{grpc_pushback, grpc_status, retry_after_ms, shopify_call_limit};

/// Reads every known rate-limit dialect from one response's status and
/// headers into a [`Signal`].
///
/// `now` is the local wall-clock time the response was received; absolute
/// times in headers (HTTP-dates, epoch resets, RFC 3339 instants) are
/// measured from the response's `Date` header when it has a valid one (the
/// server's own clock, which cancels clock skew) and from `now` otherwise.
/// Nothing here reads a clock. Never panics, whatever the headers hold.
///
/// See the [crate docs](crate) for precedence and the `throttled` rule.
pub fn parse(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Signal {
    parse_with_clock(status, headers, || now)
}

/// [`parse`], with the receive time read from `clock` only when a value is
/// measured from it: not for a response without an absolute time, nor for
/// one whose valid `Date` header gives the server's clock.
///
/// ```
/// use http::{HeaderMap, HeaderValue, StatusCode};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", HeaderValue::from_static("2"));
/// let signal = quota_headers::parse_with_clock(StatusCode::TOO_MANY_REQUESTS, &headers, || {
///     unreachable!("a delay in seconds is not measured from the clock")
/// });
/// assert_eq!(signal.retry_after, Some(std::time::Duration::from_secs(2)));
/// ```
pub fn parse_with_clock(
    status: StatusCode,
    headers: &HeaderMap,
    clock: impl Fn() -> SystemTime,
) -> Signal {
    // Filled where it is kept: the table is 320 bytes.
    let mut found = Found::none(headers);
    found.fill();
    if found.is_empty() {
        // Nothing to read: no allocation, no `Date`.
        return Signal {
            throttled: status == StatusCode::TOO_MANY_REQUESTS,
            ..Signal::default()
        };
    }
    let reference = Reference::lazy(&clock, found.get(Slot::Date));

    let pushback = found.get(Slot::GrpcRetryPushbackMs).map(grpc_pushback);
    let explicit = explicit_delay(&found, &reference, pushback);
    let grpc_status = found.get(Slot::GrpcStatus).and_then(grpc_status);
    let do_not_retry = pushback == Some(Pushback::DoNotRetry);
    let quotas = quotas(&found, &reference);

    let throttle_response = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::SERVICE_UNAVAILABLE
        || grpc_status.is_some_and(grpc::is_throttle_code);
    let derived = if throttle_response && !do_not_retry {
        longest_exhausted_reset(&quotas)
    } else {
        None
    };
    let (retry_after, retry_after_source) = explicit.or(derived).unzip();

    let throttled = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some())
        || grpc_status.is_some_and(grpc::is_throttle_code);

    Signal {
        retry_after,
        retry_after_source,
        throttled,
        do_not_retry,
        grpc_status,
        quotas,
    }
}

/// Whether `headers` carry a field that can state a quota's window: only
/// the IETF fields do (`RateLimit`, `RateLimit-Policy`, and the legacy
/// `RateLimit-Limit`). Without one, no quota that [`parse`] reads has a
/// `window`, so a caller that only wants windows can skip the parse.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("9"));
/// assert!(!quota_headers::states_windows(&headers));
/// headers.insert("ratelimit-policy", HeaderValue::from_static("\"default\";q=100;w=60"));
/// assert!(quota_headers::states_windows(&headers));
/// ```
pub fn states_windows(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        matches!(
            name.as_str().as_bytes().first(),
            Some(b'r') if WINDOWS & Slot::of(name.as_str()).map_or(0, Slot::bit) != 0
        )
    })
}

/// The fields [`states_windows`] looks for.
const WINDOWS: u64 = Slot::mask(&[Slot::RateLimit, Slot::RateLimitPolicy, Slot::RateLimitLimit]);

/// `retry-after-ms` (most precise), then `Retry-After`, then gRPC pushback.
fn explicit_delay(
    found: &Found<'_>,
    reference: &Reference<'_>,
    pushback: Option<Pushback>,
) -> Option<(Duration, Source)> {
    let millis = found
        .get(Slot::RetryAfterMs)
        .and_then(retry_after_ms)
        .map(|delay| (delay, Source::RetryAfterMs));
    let header = || {
        found
            .get(Slot::RetryAfter)
            .and_then(|value| retry_after_from(value, reference))
            .map(|delay| (delay, Source::RetryAfter))
    };
    let pushback = || match pushback {
        Some(Pushback::RetryAfter(delay)) => Some((delay, Source::GrpcPushback)),
        _ => None,
    };
    millis.or_else(header).or_else(pushback)
}

/// The exhausted quota that resets last, as `(reset_after, source)`.
fn longest_exhausted_reset(quotas: &[QuotaState]) -> Option<(Duration, Source)> {
    quotas
        .iter()
        .filter(|quota| quota.remaining == Some(0))
        .filter_map(|quota| Some((quota.reset_after?, quota.source)))
        .max_by_key(|(reset_after, _)| *reset_after)
}

const IETF: u64 = Slot::mask(&[Slot::RateLimit, Slot::RateLimitPolicy]);
const IETF_LEGACY: u64 = Slot::mask(&[
    Slot::RateLimitLimit,
    Slot::RateLimitRemaining,
    Slot::RateLimitReset,
]);
const X_RATE_LIMIT: u64 = Slot::mask(&[
    Slot::XRateLimitLimit,
    Slot::XRateLimitRemaining,
    Slot::XRateLimitReset,
    Slot::XRateLimitUsed,
    Slot::XRateLimitResetAfter,
]);
const OPENAI: u64 = Slot::mask(&[
    Slot::OpenAiLimitRequests,
    Slot::OpenAiRemainingRequests,
    Slot::OpenAiResetRequests,
    Slot::OpenAiLimitTokens,
    Slot::OpenAiRemainingTokens,
    Slot::OpenAiResetTokens,
]);
const ANTHROPIC: u64 = Slot::mask(&[
    Slot::AnthropicRequestsLimit,
    Slot::AnthropicRequestsRemaining,
    Slot::AnthropicRequestsReset,
    Slot::AnthropicTokensLimit,
    Slot::AnthropicTokensRemaining,
    Slot::AnthropicTokensReset,
    Slot::AnthropicInputTokensLimit,
    Slot::AnthropicInputTokensRemaining,
    Slot::AnthropicInputTokensReset,
    Slot::AnthropicOutputTokensLimit,
    Slot::AnthropicOutputTokensRemaining,
    Slot::AnthropicOutputTokensReset,
]);

/// Every dialect's quotas, in dialect order; a dialect none of whose
/// headers is present is not read at all.
fn quotas(found: &Found<'_>, reference: &Reference<'_>) -> Vec<QuotaState> {
    let mut quotas = Vec::new();
    if found.any(IETF) {
        ietf_quotas(found, reference, &mut quotas);
    }
    if found.any(IETF_LEGACY) {
        let first = |slot: Slot| found.get(slot).map(HeaderValue::as_bytes);
        quotas.extend(ietf::legacy_fields(
            first(Slot::RateLimitLimit),
            first(Slot::RateLimitRemaining),
            first(Slot::RateLimitReset),
            first(Slot::RateLimitPolicy),
            reference,
        ));
    }
    // Without a number (limit, remaining, used or a reset) the family gives
    // no quota, whatever labels (resource, bucket, scope) are present.
    if found.any(X_RATE_LIMIT) {
        x_rate_limit::push_quota(found, reference, &mut quotas);
    }
    if found.any(OPENAI) {
        vendors::openai(found, &mut quotas);
    }
    if found.any(ANTHROPIC) {
        vendors::anthropic(found, reference, &mut quotas);
    }
    quotas.extend(
        found
            .get(Slot::ShopifyCallLimit)
            .and_then(shopify_call_limit),
    );
    quotas
}

/// `RateLimit` items completed with the `RateLimit-Policy` of the same name;
/// policies without a `RateLimit` item follow.
fn ietf_quotas(found: &Found<'_>, reference: &Reference<'_>, quotas: &mut Vec<QuotaState>) {
    let start = quotas.len();
    if let Some(value) = field_value(found, Slot::RateLimit) {
        ietf::push_rate_limit(&value, reference, quotas);
    }
    let rate_limit = start..quotas.len();
    if let Some(value) = field_value(found, Slot::RateLimitPolicy) {
        ietf::merge_policies(&value, quotas, rate_limit);
    }
}

/// A structured field's value: its only field line as it is, or all its
/// field lines joined with `", "` (RFC 9651 §4.2).
fn field_value<'a>(found: &Found<'a>, slot: Slot) -> Option<Cow<'a, [u8]>> {
    let first = found.get(slot)?;
    let Some(lines) = found.all_lines(slot) else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut lines = lines.iter();
    let mut combined = lines.next()?.as_bytes().to_vec();
    for value in lines {
        combined.extend_from_slice(b", ");
        combined.extend_from_slice(value.as_bytes());
    }
    Some(Cow::Owned(combined))
}
