//! The entry point: every dialect, combined by the precedence rules in the
//! crate docs.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use crate::grpc::{self, Pushback};
use crate::{QuotaState, Signal, Source, ietf, names, vendors, x_rate_limit};
use crate::{grpc_pushback, grpc_status, retry_after, retry_after_ms, shopify_call_limit};

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
    let reference = headers
        .get(names::DATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| httpdate::parse_http_date(text.trim()).ok())
        .unwrap_or(now);

    let pushback = headers
        .get(names::GRPC_RETRY_PUSHBACK_MS)
        .map(grpc_pushback);
    let explicit = explicit_delay(headers, reference, pushback);
    let grpc_status = headers.get(names::GRPC_STATUS).and_then(grpc_status);
    let do_not_retry = pushback == Some(Pushback::DoNotRetry);
    let quotas = quotas(headers, reference);

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

/// `retry-after-ms` (most precise), then `Retry-After`, then gRPC pushback.
fn explicit_delay(
    headers: &HeaderMap,
    reference: SystemTime,
    pushback: Option<Pushback>,
) -> Option<(Duration, Source)> {
    let millis = headers
        .get(names::RETRY_AFTER_MS)
        .and_then(retry_after_ms)
        .map(|delay| (delay, Source::RetryAfterMs));
    let header = || {
        headers
            .get(names::RETRY_AFTER)
            .and_then(|value| retry_after(value, reference))
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

fn quotas(headers: &HeaderMap, reference: SystemTime) -> Vec<QuotaState> {
    let mut quotas = ietf_quotas(headers, reference);
    let first = |name: &str| headers.get(name).map(|value| value.as_bytes());
    quotas.extend(ietf::legacy_fields(
        first(names::RATELIMIT_LIMIT),
        first(names::RATELIMIT_REMAINING),
        first(names::RATELIMIT_RESET),
        first(names::RATELIMIT_POLICY),
        reference,
    ));
    quotas.extend(x_rate_limit::quota(headers, reference));
    vendors::openai(headers, &mut quotas);
    vendors::anthropic(headers, reference, &mut quotas);
    quotas.extend(
        headers
            .get(names::SHOPIFY_CALL_LIMIT)
            .and_then(shopify_call_limit),
    );
    quotas
}

/// `RateLimit` items completed with the `RateLimit-Policy` of the same name;
/// policies without a `RateLimit` item follow.
fn ietf_quotas(headers: &HeaderMap, reference: SystemTime) -> Vec<QuotaState> {
    let mut policies = joined(headers, names::RATELIMIT_POLICY)
        .and_then(|value| ietf::rate_limit_policy(&value))
        .unwrap_or_default();
    let mut quotas = joined(headers, names::RATELIMIT)
        .and_then(|value| ietf::rate_limit(&value, reference))
        .unwrap_or_default();
    for quota in quotas
        .iter_mut()
        .filter(|quota| quota.source == Source::IetfRateLimit)
    {
        let Some(index) = policies.iter().position(|policy| policy.name == quota.name) else {
            continue;
        };
        let policy = policies.remove(index);
        quota.limit = policy.limit;
        quota.window = policy.window;
        quota.unit = policy.unit;
        quota.partition_key = quota.partition_key.take().or(policy.partition_key);
    }
    quotas.extend(policies);
    quotas
}

/// All field lines of a structured field joined with `", "` (RFC 9651 §4.2).
fn joined(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let mut combined = values.next()?.as_bytes().to_vec();
    for value in values {
        combined.extend_from_slice(b", ");
        combined.extend_from_slice(value.as_bytes());
    }
    Some(combined)
}
