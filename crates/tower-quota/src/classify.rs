//! What one attempt's result means for a retry: success, throttled (with an
//! optional server delay), transient, or permanent.
//!
//! A retry layer must not guess. A `404` will be a `404` again; a `503` from
//! an overloaded replica may well succeed on the next try; a `429` with
//! `Retry-After: 2` will succeed in two seconds and not before; a connection
//! refused before the request was written is safe to retry even for a
//! `POST`-shaped API, a reset in the middle of a response may not be. A
//! [`Classify`] turns each attempt's result into an [`Outcome`], and the retry
//! layer ([`JitterBackoffLayer`](crate::JitterBackoffLayer)) acts on it.
//!
//! Two classifiers are provided, and any closure
//! `Fn(Result<&Res, &BoxError>) -> Outcome` is one too:
//!
//! - [`HttpClassifier`] (the default): connect errors, timeouts, `408`,
//!   `429`, `500`, `502`, `503` and `504` are retryable. A `Retry-After` (or
//!   any rate-limit header dialect [`quota_headers`] reads) on a throttled
//!   response becomes the server delay; when a
//!   [`RetryAfterLayer`](crate::RetryAfterLayer) below already read the
//!   headers, their reading (its [`ServerSignal`]) is used instead of a
//!   second parse.
//! - [`GrpcClassifier`]: for trailers-only gRPC responses, `UNAVAILABLE` is
//!   transient and `RESOURCE_EXHAUSTED` is throttled when the server sent a
//!   `grpc-retry-pushback-ms` delay; a negative pushback means "do not
//!   retry". Errors are classified as by [`HttpClassifier`].
//!
//! Whether a failed request may be sent again at all is a separate
//! question, answered in one place for every layer that re-sends: any
//! request may be re-sent after a `429` (or gRPC `RESOURCE_EXHAUSTED`),
//! which says the server refused it without processing it; after anything
//! else (a `503` may come from a proxy that forwarded the request, a
//! timeout from a server that processed it) only idempotent methods (GET,
//! HEAD, OPTIONS, PUT, DELETE, TRACE) and requests with an
//! `Idempotency-Key` header are, unless the layer opts in to every method.
//!
//! Errors are recognized by walking their [`source`](std::error::Error::source)
//! chain, so they are found however deeply a client wraps them: tower's and
//! tokio's timeout `Elapsed`, and [`std::io::Error`]s of kind
//! `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`,
//! `NotConnected`, `TimedOut` and `BrokenPipe` (hyper-util's connect errors
//! carry the `io::Error` of the failed connect). Anything else is permanent.
//!
//! ```
//! use std::time::Duration;
//! use tower_quota::BoxError;
//! use tower_quota::classify::{Classify, HttpClassifier, Outcome};
//!
//! let throttled = http::Response::builder().status(429).header("retry-after", "2").body(()).unwrap();
//! assert_eq!(HttpClassifier.classify(Ok(&throttled)), Outcome::Throttled(Some(Duration::from_secs(2))));
//!
//! let refused: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
//! assert_eq!(HttpClassifier.classify(Err::<&http::Response<()>, _>(&refused)), Outcome::Transient);
//!
//! // A classifier of your own: also retry 409 Conflict.
//! let conflicts_too = |result: Result<&http::Response<()>, &BoxError>| match result {
//!     Ok(response) if response.status() == 409 => Outcome::Transient,
//!     other => HttpClassifier.classify(other),
//! };
//! let conflict = http::Response::builder().status(409).body(()).unwrap();
//! assert_eq!(conflicts_too.classify(Ok(&conflict)), Outcome::Transient);
//! ```

use std::error::Error;
use std::io;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use quota_headers::{Pushback, Signal, grpc_pushback, grpc_status};

use crate::BoxError;
use crate::retry_after::ServerSignal;

/// What one attempt's result means for a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The attempt succeeded (or failed in a way a retry cannot fix and the
    /// caller must see as it is, such as a `404`): return it.
    Success,
    /// The server refused the attempt for its quota; when it said how long to
    /// wait, that delay is the least the retry waits.
    Throttled(Option<Duration>),
    /// The attempt failed in a way that may not happen again: retry it after
    /// a backoff.
    Transient,
    /// The attempt failed and will fail again: return it.
    Permanent,
}

impl Outcome {
    /// Whether a retry may fix it: [`Throttled`](Outcome::Throttled) or
    /// [`Transient`](Outcome::Transient).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Outcome::Throttled(_) | Outcome::Transient)
    }
}

/// Classifies the result of one attempt; see the [module docs](self).
///
/// Implemented for [`HttpClassifier`], [`GrpcClassifier`] and any closure
/// `Fn(Result<&Res, &BoxError>) -> Outcome`.
pub trait Classify<Res> {
    /// The outcome of an attempt that returned `result`.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome;
}

impl<Res, F> Classify<Res> for F
where
    F: Fn(Result<&Res, &BoxError>) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        self(result)
    }
}

/// The default classifier, for HTTP: connect errors, timeouts, `408`,
/// `429`, `500`, `502`, `503` and `504` are retryable; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl<B> Classify<Response<B>> for HttpClassifier {
    fn classify(&self, result: Result<&Response<B>, &BoxError>) -> Outcome {
        match result {
            Ok(response) => classify_response(response),
            Err(error) => classify_error(error),
        }
    }
}

/// Classifies `response` by its status, reading its headers on a throttle:
/// as a [`RetryAfterLayer`](crate::RetryAfterLayer) below read them, when
/// one did (its [`ServerSignal`]), instead of parsing them again.
fn classify_response<B>(response: &Response<B>) -> Outcome {
    let parsed = response
        .extensions()
        .get::<ServerSignal>()
        .map(ServerSignal::signal);
    classify_status(response.status(), response.headers(), parsed)
}

/// The classifier for gRPC over HTTP/2 (tonic and others): `UNAVAILABLE`,
/// and `RESOURCE_EXHAUSTED` with server pushback, are retryable; see the
/// [module docs](self).
///
/// Only trailers-only responses carry their status in the headers; a
/// response that streams its status in the trailers is a success to a retry
/// layer, which must hand the stream to the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClassifier;

/// gRPC status `OK`.
const GRPC_OK: i32 = 0;
/// gRPC status `RESOURCE_EXHAUSTED`.
const GRPC_RESOURCE_EXHAUSTED: i32 = 8;
/// gRPC status `UNAVAILABLE`.
const GRPC_UNAVAILABLE: i32 = 14;

impl<B> Classify<Response<B>> for GrpcClassifier {
    fn classify(&self, result: Result<&Response<B>, &BoxError>) -> Outcome {
        let response = match result {
            Ok(response) => response,
            Err(error) => return classify_error(error),
        };
        let headers = response.headers();
        let Some(code) = headers.get("grpc-status").and_then(grpc_status) else {
            // Not trailers-only: the status comes at the end of the stream.
            // An HTTP-level failure (a proxy's 503) is classified as HTTP.
            return classify_response(response);
        };
        let pushback = headers.get("grpc-retry-pushback-ms").map(grpc_pushback);
        match (code, pushback) {
            (GRPC_OK, _) => Outcome::Success,
            (_, Some(Pushback::DoNotRetry)) => Outcome::Permanent,
            (GRPC_UNAVAILABLE, Some(Pushback::RetryAfter(delay))) => {
                Outcome::Throttled(Some(delay))
            }
            (GRPC_UNAVAILABLE, None) => Outcome::Transient,
            (GRPC_RESOURCE_EXHAUSTED, Some(Pushback::RetryAfter(delay))) => {
                Outcome::Throttled(Some(delay))
            }
            // RESOURCE_EXHAUSTED without pushback may be a message too large
            // or a quota that will not refill soon: not retried.
            _ => Outcome::Permanent,
        }
    }
}

/// The header that makes any request safe to send again.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether `request` may be sent again after a failure the server may have
/// processed it in: an idempotent method, or an `Idempotency-Key` header.
pub(crate) fn is_idempotent<B>(request: &Request<B>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || request.headers().contains_key(IDEMPOTENCY_KEY)
}

/// Whether the response says the server refused the request for its quota
/// without processing it (`429`, gRPC `RESOURCE_EXHAUSTED`), so that any
/// request may be sent again. A `503` or gRPC `UNAVAILABLE` may come from a
/// proxy after the request was processed.
pub(crate) fn refused_unprocessed(status: StatusCode, signal: &Signal) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || signal.grpc_status == Some(GRPC_RESOURCE_EXHAUSTED)
}

/// `parsed`: the signal of `headers`, when it is known already.
fn classify_status(status: StatusCode, headers: &HeaderMap, parsed: Option<&Signal>) -> Outcome {
    match status.as_u16() {
        429 | 503 => {
            let parsed_now;
            let signal = match parsed {
                Some(signal) => signal,
                None => {
                    parsed_now = quota_headers::parse_with_clock(status, headers, SystemTime::now);
                    &parsed_now
                }
            };
            if signal.do_not_retry {
                Outcome::Permanent
            } else if status == StatusCode::TOO_MANY_REQUESTS || signal.retry_after.is_some() {
                Outcome::Throttled(signal.retry_after)
            } else {
                Outcome::Transient
            }
        }
        408 | 500 | 502 | 504 => Outcome::Transient,
        _ if status.is_client_error() || status.is_server_error() => Outcome::Permanent,
        _ => Outcome::Success,
    }
}

fn classify_error(error: &BoxError) -> Outcome {
    match error_kind(error) {
        ErrorKind::Other => Outcome::Permanent,
        _ => Outcome::Transient,
    }
}

/// What kind of failure an error is, as telemetry's `error.kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Connect,
    Timeout,
    ConnectionReset,
    Other,
}

impl ErrorKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectionReset => "connection_reset",
            ErrorKind::Other => "other",
        }
    }
}

/// The kind of `error`, from the first recognizable error in its source chain.
pub(crate) fn error_kind(error: &BoxError) -> ErrorKind {
    let mut next: Option<&(dyn Error + 'static)> = Some(&**error);
    while let Some(error) = next {
        if error.is::<tower::timeout::error::Elapsed>() || error.is::<tokio::time::error::Elapsed>()
        {
            return ErrorKind::Timeout;
        }
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotConnected => {
                    ErrorKind::Connect
                }
                io::ErrorKind::TimedOut => ErrorKind::Timeout,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => ErrorKind::ConnectionReset,
                // An io::Error wrapping another error: look inside.
                _ if io.get_ref().is_some() => {
                    next = io.get_ref().map(|inner| inner as &(dyn Error + 'static));
                    continue;
                }
                _ => ErrorKind::Other,
            };
        }
        next = error.source();
    }
    ErrorKind::Other
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn http(status: u16, headers: &[(&'static str, &'static str)]) -> Outcome {
        HttpClassifier.classify(Ok(&response(status, headers)))
    }

    fn grpc(headers: &[(&'static str, &'static str)]) -> Outcome {
        GrpcClassifier.classify(Ok(&response(200, headers)))
    }

    fn error(error: impl Into<BoxError>) -> Outcome {
        HttpClassifier.classify(Err::<&Response<()>, _>(&error.into()))
    }

    /// An error that wraps another, as clients do.
    #[derive(Debug)]
    struct Wrapped(BoxError);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error")
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn retryable_statuses_are_transient_or_throttled() {
        for status in [408, 500, 502, 503, 504] {
            assert_eq!(http(status, &[]), Outcome::Transient, "{status}");
        }
        assert_eq!(http(429, &[]), Outcome::Throttled(None));
        assert_eq!(
            http(429, &[("retry-after", "3")]),
            Outcome::Throttled(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            http(503, &[("retry-after", "1")]),
            Outcome::Throttled(Some(Duration::from_secs(1)))
        );
    }

    #[test]
    fn other_statuses_are_success_or_permanent() {
        for status in [200, 201, 204, 301, 304] {
            assert_eq!(http(status, &[]), Outcome::Success, "{status}");
        }
        for status in [400, 401, 403, 404, 409, 422, 501, 505] {
            assert_eq!(http(status, &[]), Outcome::Permanent, "{status}");
        }
    }

    #[test]
    fn transport_errors_are_found_anywhere_in_the_source_chain() {
        use io::ErrorKind as K;
        for kind in [
            K::ConnectionRefused,
            K::ConnectionReset,
            K::ConnectionAborted,
            K::TimedOut,
            K::BrokenPipe,
            K::NotConnected,
        ] {
            assert_eq!(error(io::Error::from(kind)), Outcome::Transient, "{kind}");
            let wrapped = Wrapped(Box::new(Wrapped(io::Error::from(kind).into())));
            assert_eq!(error(wrapped), Outcome::Transient, "wrapped {kind}");
        }
        assert_eq!(
            error(tower::timeout::error::Elapsed::new()),
            Outcome::Transient
        );
        assert_eq!(
            error(Wrapped(tower::timeout::error::Elapsed::new().into())),
            Outcome::Transient
        );
        assert_eq!(
            error(io::Error::from(K::PermissionDenied)),
            Outcome::Permanent
        );
        assert_eq!(error("something else"), Outcome::Permanent);
        assert_eq!(
            error_kind(&Wrapped(io::Error::from(K::ConnectionRefused).into()).into()),
            ErrorKind::Connect
        );
    }

    #[test]
    fn grpc_unavailable_is_transient_and_resource_exhausted_needs_pushback() {
        assert_eq!(grpc(&[("grpc-status", "0")]), Outcome::Success);
        assert_eq!(grpc(&[("grpc-status", "14")]), Outcome::Transient);
        assert_eq!(
            grpc(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "50")]),
            Outcome::Throttled(Some(Duration::from_millis(50)))
        );
        assert_eq!(
            grpc(&[("grpc-status", "8"), ("grpc-retry-pushback-ms", "250")]),
            Outcome::Throttled(Some(Duration::from_millis(250)))
        );
        assert_eq!(grpc(&[("grpc-status", "8")]), Outcome::Permanent);
        assert_eq!(
            grpc(&[("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")]),
            Outcome::Permanent
        );
        assert_eq!(grpc(&[("grpc-status", "5")]), Outcome::Permanent);
        // Status in the trailers: the stream goes to the caller.
        assert_eq!(grpc(&[]), Outcome::Success);
        assert_eq!(
            GrpcClassifier.classify(Ok(&response(503, &[]))),
            Outcome::Transient
        );
    }

    #[test]
    fn only_a_quota_refusal_makes_every_method_safe_to_send_again() {
        let request = |method: &str, key: Option<&str>| {
            let mut builder = Request::builder().method(method).uri("/");
            if let Some(key) = key {
                builder = builder.header(IDEMPOTENCY_KEY, key);
            }
            builder.body(()).unwrap()
        };
        for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&request(method, None)), "{method}");
        }
        assert!(!is_idempotent(&request("POST", None)));
        assert!(!is_idempotent(&request("PATCH", None)));
        assert!(is_idempotent(&request("POST", Some("order-42"))));

        let signal = |headers: &[(&'static str, &'static str)], status: u16| {
            let response = response(status, headers);
            quota_headers::parse(response.status(), response.headers(), SystemTime::now())
        };
        let refused = |status: u16, headers: &[(&'static str, &'static str)]| {
            refused_unprocessed(
                StatusCode::from_u16(status).unwrap(),
                &signal(headers, status),
            )
        };
        assert!(refused(429, &[]));
        assert!(refused(200, &[("grpc-status", "8")]));
        assert!(!refused(503, &[("retry-after", "1")]));
        assert!(!refused(
            200,
            &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "10")]
        ));
    }

    /// A throttle a RetryAfterLayer below already read is classified by
    /// its reading (the `ServerSignal` it put on the response), not by a
    /// second parse of the headers: here the two differ, so the test can
    /// tell which one was used.
    #[test]
    fn a_throttle_read_below_is_classified_by_that_reading() {
        let with_signal = |status: u16, headers, retry_after, do_not_retry| {
            let mut response = response(status, headers);
            let mut signal = Signal::default();
            signal.throttled = true;
            signal.retry_after = retry_after;
            signal.do_not_retry = do_not_retry;
            response.extensions_mut().insert(ServerSignal {
                signal,
                attempts: 1,
                waited: Duration::ZERO,
            });
            response
        };
        let five = Some(Duration::from_secs(5));
        let read_below = with_signal(429, &[("retry-after", "2")], five, false);
        assert_eq!(
            HttpClassifier.classify(Ok(&read_below)),
            Outcome::Throttled(five)
        );
        let read_below = with_signal(503, &[], five, false);
        assert_eq!(
            HttpClassifier.classify(Ok(&read_below)),
            Outcome::Throttled(five),
            "a 503 with a delay, as read below"
        );
        let read_below = with_signal(503, &[("retry-after", "2")], None, true);
        assert_eq!(
            GrpcClassifier.classify(Ok(&read_below)),
            Outcome::Permanent,
            "gRPC's HTTP-level fallback reads it too"
        );
        // Other statuses are classified by status alone, as before.
        let read_below = with_signal(500, &[], five, false);
        assert_eq!(HttpClassifier.classify(Ok(&read_below)), Outcome::Transient);
    }

    #[test]
    fn closures_are_classifiers() {
        let never = |_: Result<&Response<()>, &BoxError>| Outcome::Permanent;
        assert_eq!(never.classify(Ok(&response(503, &[]))), Outcome::Permanent);
    }
}
