//! gRPC status and server pushback in a trailers-only response's headers.

use std::time::Duration;

use http::HeaderValue;

use crate::numbers;

/// What `grpc-retry-pushback-ms` tells the client (gRPC retry design, A6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// A non-negative integer: retry after this delay.
    RetryAfter(Duration),
    /// Negative or unparseable: the server asks the client not to retry.
    DoNotRetry,
}

/// Parses `grpc-retry-pushback-ms`.
///
/// The header being present always means something, so this never returns
/// "absent": a non-negative integer is a delay in milliseconds; anything else
/// (negative, decimal, empty, non-ASCII, past `u64::MAX`) is
/// [`Pushback::DoNotRetry`], as the gRPC retry design specifies.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderValue;
/// use quota_headers::{grpc_pushback, Pushback};
///
/// assert_eq!(
///     grpc_pushback(&HeaderValue::from_static("250")),
///     Pushback::RetryAfter(Duration::from_millis(250)),
/// );
/// assert_eq!(grpc_pushback(&HeaderValue::from_static("-1")), Pushback::DoNotRetry);
/// ```
pub fn grpc_pushback(value: &HeaderValue) -> Pushback {
    numbers::header_u64(value).map_or(Pushback::DoNotRetry, |millis| {
        Pushback::RetryAfter(Duration::from_millis(millis))
    })
}

/// Parses `grpc-status`: a non-negative decimal integer that fits an `i32`.
///
/// ```
/// use http::HeaderValue;
///
/// assert_eq!(quota_headers::grpc_status(&HeaderValue::from_static("8")), Some(8));
/// assert_eq!(quota_headers::grpc_status(&HeaderValue::from_static("x")), None);
/// ```
pub fn grpc_status(value: &HeaderValue) -> Option<i32> {
    let code = numbers::header_u64(value)?;
    i32::try_from(code).ok()
}

/// `RESOURCE_EXHAUSTED` or `UNAVAILABLE`: the codes that mean "throttled".
pub(crate) fn is_throttle_code(code: i32) -> bool {
    const RESOURCE_EXHAUSTED: i32 = 8;
    const UNAVAILABLE: i32 = 14;
    matches!(code, RESOURCE_EXHAUSTED | UNAVAILABLE)
}
