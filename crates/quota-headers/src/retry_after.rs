//! `Retry-After` (RFC 9110 §10.2.3) and `retry-after-ms`.

use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::numbers::{self, NANOS_PER_MILLI, Reference};

/// Parses `Retry-After`: delay-seconds or an HTTP-date.
///
/// - delay-seconds is `1*DIGIT` (RFC 9110): `"120"` is two minutes and
///   `"1000000"` is a valid (large) delay — capping is the caller's job.
///   `"1.5"`, `"-1"`, `"+1"`, `""` and values past `u64::MAX` seconds are
///   absent.
/// - an HTTP-date may use any of the three formats RFC 9110 requires a
///   recipient to accept: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`),
///   RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
///   (`Sun Nov  6 08:49:37 1994`). The delay is the date minus `reference`;
///   a date in the past is `Duration::ZERO`.
///
/// Pass the response's `Date` as `reference` to measure the delay on the
/// server's clock (what [`parse`](crate::parse) does), or the local `now`.
/// Non-ASCII bytes give `None`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
///
/// let now = SystemTime::UNIX_EPOCH;
/// let delay = quota_headers::retry_after(&HeaderValue::from_static("120"), now);
/// assert_eq!(delay, Some(Duration::from_secs(120)));
/// assert_eq!(quota_headers::retry_after(&HeaderValue::from_static("1.5"), now), None);
/// ```
pub fn retry_after(value: &HeaderValue, reference: SystemTime) -> Option<Duration> {
    retry_after_from(value, &Reference::fixed(reference))
}

/// [`retry_after`], reading the reference time only for an HTTP-date.
pub(crate) fn retry_after_from(value: &HeaderValue, reference: &Reference<'_>) -> Option<Duration> {
    let text = numbers::header_str(value)?;
    if text
        .bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_digit())
    {
        return numbers::parse_u64(text).map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(numbers::until(date, reference.get()))
}

/// Parses `retry-after-ms`: a non-negative integer or decimal number of
/// milliseconds (`"1500"`, `"20.5"`). Negative, empty, non-numeric and
/// overflowing values are absent.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderValue;
///
/// let delay = quota_headers::retry_after_ms(&HeaderValue::from_static("1500.5"));
/// assert_eq!(delay, Some(Duration::from_micros(1_500_500)));
/// ```
pub fn retry_after_ms(value: &HeaderValue) -> Option<Duration> {
    numbers::parse_decimal(numbers::header_str(value)?, NANOS_PER_MILLI)
}
