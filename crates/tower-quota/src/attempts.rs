//! The attempts of one logical request, counted once for the whole stack.
//!
//! Two layers of this crate re-send requests: [`JitterBackoffLayer`] retries
//! transient failures, and [`RetryAfterLayer`] below it re-sends a throttled
//! request once the server's delay has passed. Each has its own
//! `max_attempts`; stacked, their limits would multiply (3 backoff attempts,
//! each re-sent 3 times, is 9 requests). So the outermost retry layer puts an
//! [`AttemptBudget`] in the request's extensions, and every layer that sends
//! another attempt first takes one from it with
//! [`AttemptBudget::try_begin`]. One logical request then makes at most the
//! outermost layer's `max_attempts` attempts in total, whichever layer sends
//! them.
//!
//! Taking an attempt also numbers it: the [`Attempt`] extension, an optional
//! header (for example `x-retry-attempt: 2`) and, for gRPC requests,
//! `grpc-previous-rpc-attempts`, so servers and telemetry can tell attempts
//! apart.
//!
//! [`JitterBackoffLayer`]: crate::JitterBackoffLayer
//! [`RetryAfterLayer`]: crate::RetryAfterLayer

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http::Request;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};

/// The gRPC header counting the attempts before this one (gRPC retry design, A6).
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// The number of an attempt of a logical request, the first being 1; a
/// request extension set on every attempt by [`AttemptBudget::try_begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(pub u32);

/// The attempts one logical request may still make, shared by every layer
/// that re-sends it; see the [module docs](self).
///
/// Cheap to clone: clones share one counter.
///
/// ```
/// use tower_quota::attempts::{Attempt, AttemptBudget};
///
/// let budget = AttemptBudget::new(2).with_header(http::HeaderName::from_static("x-retry-attempt"));
/// let mut request = http::Request::get("/items").body(()).unwrap();
/// assert_eq!(budget.try_begin(&mut request), Some(1));
/// assert_eq!(budget.try_begin(&mut request), Some(2));
/// assert_eq!(budget.try_begin(&mut request), None, "two attempts in all");
/// assert_eq!(request.extensions().get::<Attempt>(), Some(&Attempt(2)));
/// assert_eq!(request.headers()["x-retry-attempt"], "2");
/// ```
#[derive(Debug, Clone)]
pub struct AttemptBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    used: AtomicU32,
    max: u32,
    header: Option<HeaderName>,
}

impl AttemptBudget {
    /// A budget of `max_attempts` attempts, none used yet.
    pub fn new(max_attempts: u32) -> Self {
        AttemptBudget {
            shared: Arc::new(Shared {
                used: AtomicU32::new(0),
                max: max_attempts,
                header: None,
            }),
        }
    }

    /// Also writes each attempt's number into the header `name`.
    pub fn with_header(self, name: HeaderName) -> Self {
        AttemptBudget {
            shared: Arc::new(Shared {
                used: AtomicU32::new(self.used()),
                max: self.shared.max,
                header: Some(name),
            }),
        }
    }

    /// The attempts made (begun) so far.
    pub fn used(&self) -> u32 {
        self.shared.used.load(Ordering::Acquire)
    }

    /// The most attempts in all.
    pub fn max(&self) -> u32 {
        self.shared.max
    }

    /// The attempts left.
    pub fn remaining(&self) -> u32 {
        self.max().saturating_sub(self.used())
    }

    /// Takes one attempt and numbers `request` as that attempt: the
    /// [`Attempt`] extension, the configured header, and
    /// `grpc-previous-rpc-attempts` for gRPC requests. Returns the attempt's
    /// number, or `None` (leaving `request` untouched) when every attempt is
    /// used.
    pub fn try_begin<B>(&self, request: &mut Request<B>) -> Option<u32> {
        let max = self.shared.max;
        let previous = self
            .shared
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < max).then_some(used + 1)
            })
            .ok()?;
        let attempt = previous + 1;
        request.extensions_mut().insert(Attempt(attempt));
        if let Some(name) = &self.shared.header {
            request
                .headers_mut()
                .insert(name.clone(), HeaderValue::from(attempt));
        }
        if is_grpc(request) {
            if previous == 0 {
                request.headers_mut().remove(GRPC_PREVIOUS_RPC_ATTEMPTS);
            } else {
                request
                    .headers_mut()
                    .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(previous));
            }
        }
        Some(attempt)
    }
}

/// Whether `request` is a gRPC call: its content type is `application/grpc`
/// or `application/grpc+<codec>`.
pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .get(..16)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("application/grpc"))
                && matches!(value.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_carry_the_count_of_previous_attempts() {
        let budget = AttemptBudget::new(3);
        let mut request = Request::post("/pkg.Service/Method")
            .header(CONTENT_TYPE, "application/grpc+proto")
            .body(())
            .unwrap();
        assert_eq!(budget.try_begin(&mut request), Some(1));
        assert!(!request.headers().contains_key(GRPC_PREVIOUS_RPC_ATTEMPTS));
        assert_eq!(budget.try_begin(&mut request), Some(2));
        assert_eq!(request.headers()[GRPC_PREVIOUS_RPC_ATTEMPTS], "1");
        assert_eq!(budget.remaining(), 1);
    }

    #[test]
    fn other_content_types_are_not_grpc() {
        let request = |content_type: &str| {
            Request::post("/")
                .header(CONTENT_TYPE, content_type)
                .body(())
                .unwrap()
        };
        assert!(is_grpc(&request("application/grpc")));
        assert!(is_grpc(&request("Application/GRPC;charset=x")));
        assert!(!is_grpc(&request("application/grpc-web")));
        assert!(!is_grpc(&request("application/json")));
    }
}
