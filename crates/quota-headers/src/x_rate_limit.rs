//! `X-RateLimit-*` (GitHub, X/Twitter, many others) and Discord's extension.

use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::names::{Found, Slot};
use crate::numbers::{self, NANOS_PER_SECOND, Reference};
use crate::signal::{Counted, Labels};
use crate::{QuotaState, Source};

/// Parses a reset given in seconds that may be a delta or a Unix epoch
/// timestamp (`X-RateLimit-Reset`, legacy IETF resets).
///
/// The value is a non-negative integer or decimal number of seconds
/// (Discord sends `1470173023.123`). **Epoch rule:** a value of at least
/// 1,000,000,000 (2001-09-09 as epoch seconds; no provider sends a delta
/// that large) is an epoch timestamp and the result is the time from
/// `reference` until it (zero if it already passed); a smaller value is the
/// delay itself. Pass the response's `Date` as `reference` to correct for
/// clock skew (what [`parse`](crate::parse) does), or the local `now`.
///
/// An epoch in *milliseconds* (a common mistake) is recognized: a value
/// that as epoch seconds lies more than 1,000 years after `reference` but
/// as epoch milliseconds lies between a day before and a year after it is
/// read as milliseconds, instead of as a pause of tens of thousands of
/// years.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use http::HeaderValue;
///
/// let date = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let epoch = HeaderValue::from_static("1700000060");
/// assert_eq!(quota_headers::reset_seconds(&epoch, date), Some(Duration::from_secs(60)));
/// let delta = HeaderValue::from_static("60");
/// assert_eq!(quota_headers::reset_seconds(&delta, date), Some(Duration::from_secs(60)));
/// let millis = HeaderValue::from_static("1700000060000");
/// assert_eq!(quota_headers::reset_seconds(&millis, date), Some(Duration::from_secs(60)));
/// ```
pub fn reset_seconds(value: &HeaderValue, reference: SystemTime) -> Option<Duration> {
    numbers::delta_or_epoch(decimal_seconds(value)?, reference)
}

/// Parses a non-negative integer or decimal number of seconds, such as
/// Discord's `X-RateLimit-Reset-After: 1.234`. Negative, empty and
/// overflowing values are absent.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderValue;
///
/// let delay = quota_headers::decimal_seconds(&HeaderValue::from_static("1.234"));
/// assert_eq!(delay, Some(Duration::from_millis(1234)));
/// ```
pub fn decimal_seconds(value: &HeaderValue) -> Option<Duration> {
    numbers::parse_decimal(numbers::header_str(value)?, NANOS_PER_SECOND)
}

/// The `X-RateLimit-*` family as one quota, added to `quotas` when it has a
/// number; Discord when any of its own headers is present.
pub(crate) fn push_quota(
    found: &Found<'_>,
    reference: &Reference<'_>,
    quotas: &mut Vec<QuotaState>,
) {
    let label = |slot: Slot| {
        found
            .str(slot)
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    let reset_after_header = found.get(Slot::XRateLimitResetAfter);
    let is_discord = found.any(Slot::mask(&[
        Slot::XRateLimitResetAfter,
        Slot::XRateLimitBucket,
        Slot::XRateLimitScope,
    ]));

    let limit = found.u64(Slot::XRateLimitLimit);
    let remaining = found.u64(Slot::XRateLimitRemaining).or_else(|| {
        let used = found.u64(Slot::XRateLimitUsed)?;
        limit?.checked_sub(used)
    });
    // A delay field is preferred over an epoch field: it needs no clock.
    let reset_after = reset_after_header.and_then(decimal_seconds).or_else(|| {
        let seconds = decimal_seconds(found.get(Slot::XRateLimitReset)?)?;
        numbers::delta_or_epoch_from(seconds, reference)
    });
    let source = if is_discord {
        Source::Discord
    } else {
        Source::XRateLimit
    };
    let counted = Counted {
        limit,
        remaining,
        reset_after,
    };
    QuotaState::push_counted(quotas, source, counted, || Labels {
        name: label(Slot::XRateLimitScope)
            .or_else(|| label(Slot::XRateLimitResource))
            .map(Into::into),
        unit: None,
        partition_key: label(Slot::XRateLimitBucket),
    });
}
