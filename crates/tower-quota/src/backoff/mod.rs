//! Reactive recovery: retry transient failures with exponential backoff and
//! independent random jitter, within a retry budget.
//!
//! # The problem
//!
//! Calls to a remote API fail for reasons that go away: a connection is
//! refused while a replica restarts, a `503` comes from an overloaded load
//! balancer, a request times out. Retrying at once mostly fails again, and
//! retrying on a fixed schedule makes every client that failed at the same
//! instant come back at the same instant: the provider sees the same spike
//! again, one backoff later. Retrying without a limit turns an outage into
//! a multiple of the normal load, just when the provider can least take it.
//!
//! # What it does
//!
//! [`JitterBackoffLayer`] classifies the result of every attempt (see
//! [`classify`](crate::classify)) and retries what is throttled or
//! transient:
//!
//! - **Backoff with jitter.** The `n`-th retry waits a random delay drawn
//!   from `t = min(max, base × 2^(n-1))` by the [`Jitter`] strategy: full
//!   jitter (uniform in `[0, t]`, the default), equal jitter, decorrelated
//!   jitter (the formulas of the AWS article "Exponential Backoff and
//!   Jitter"), or none, for comparison.
//! - **Independent per request.** Each logical request draws its own random
//!   stream, so two requests that fail at the same instant do not retry at
//!   the same instant. (tower's `ExponentialBackoffMaker` clones one
//!   generator state into every request, so concurrent requests draw the
//!   same sequence; this layer does not.) With [`seed`](JitterBackoffLayer::seed)
//!   the streams are repeatable, and still one per request.
//! - **Bounded.** [`max_attempts`](JitterBackoffLayer::max_attempts) (3 by
//!   default) counts every attempt of a logical request, including those a
//!   [`RetryAfterLayer`](crate::RetryAfterLayer) below sends (see
//!   [`attempts`](crate::attempts)); [`max_elapsed`](JitterBackoffLayer::max_elapsed)
//!   (60 s) bounds the time from the first attempt to the last retry.
//! - **A retry budget.** A [`RetryBudget`], shared by every clone of the
//!   layer, allows retries of about 20% of requests plus 10 a second; when
//!   it is spent, the failure goes back to the caller and a
//!   `retry_skipped` event with reason `budget_exhausted` says why. Retries can never multiply the load.
//! - **The server's delay is the floor.** When the server said how long to
//!   wait (`Retry-After`, a rate-limit reset, gRPC pushback), the wait is
//!   the longer of that delay and the jittered backoff, never their sum.
//!   When a `RetryAfterLayer` below has already waited it (its
//!   [`ServerSignal`](crate::retry_after::ServerSignal) says
//!   [`delay_observed`](crate::retry_after::ServerSignal::delay_observed)),
//!   its gate holds the next attempt back until the server's delay has
//!   passed, and only the backoff is added here, running at the same time.
//! - **One waiting budget for the stack.** Every wait is checked against and
//!   spent from the request's [`WaitBudget`](crate::attempts::WaitBudget),
//!   which a `RetryAfterLayer` below lowers to its
//!   [`max_wait`](crate::RetryAfterLayer::max_wait). A server delay (or a
//!   backoff) above what is left is not slept through: the response goes
//!   back at once, and a `retry_skipped` event with reason `max_wait` and
//!   the server's `retry_after_ms` says why.
//! - **Only safe requests.** By default only idempotent methods (GET, HEAD,
//!   OPTIONS, PUT, DELETE, TRACE) and requests with an `Idempotency-Key`
//!   header are retried; [`retry_all_methods`](JitterBackoffLayer::retry_all_methods)
//!   opts in to the rest.
//! - **Same bytes.** Bodies are wrapped in a [`ReplayBody`](crate::replay::ReplayBody),
//!   buffered (up to [`max_replay_bytes`](JitterBackoffLayer::max_replay_bytes),
//!   64 KiB by default) while the first attempt sends them. A larger body is
//!   sent once and not retried, and a `retry_skipped` event with reason
//!   `body_not_replayable` says so. A request that is not retried for its
//!   method says so too (`not_idempotent`).
//! - **Numbered attempts.** Every attempt after the first carries an
//!   [`Attempt`](crate::attempts::Attempt) extension (a request without one
//!   is a first attempt: [`Attempt::of`](crate::attempts::Attempt::of)), optionally a header
//!   ([`attempt_header`](JitterBackoffLayer::attempt_header), for example
//!   `x-retry-attempt`), and gRPC requests carry `grpc-previous-rpc-attempts`.
//!
//! Telemetry: a `jitter_backoff` span per logical request records
//! `http.request.resend_count`; `retry_scheduled` and `server_error_retry`
//! events report each retry (attempt, `backoff_ms`, reason, status or
//! `error.kind`), `retry_skipped` (a retry the request had attempts for)
//! and `retries_exhausted` (no attempts or time left) each failure that
//! goes back. Neither headers nor query strings are recorded. See
//! [`telemetry`](crate::telemetry).
//!
//! # Where it goes in a stack
//!
//! Outermost of the tower-quota layers: above
//! [`RetryAfterLayer`](crate::RetryAfterLayer), which obeys what the server
//! says about its quota, and [`SlidingWindowLayer`](crate::SlidingWindowLayer),
//! which paces every attempt, retries included. A per-attempt timeout
//! (`tower::timeout::TimeoutLayer`) goes below all of them, so that a timed
//! out attempt is retried; a timeout for the whole logical request goes
//! above this layer.
//!
//! # Built on tower's retry machinery, and where not
//!
//! The budget is tower's [`TpsBudget`](tower::retry::budget::TpsBudget)
//! behind a validated constructor. The service and its future are this
//! crate's own rather than `tower::retry::Retry` with a `Policy`, because:
//!
//! - the retry decision must classify errors by walking their source chain,
//!   so the inner service's error is boxed first; with `tower::retry::Retry`
//!   the error adapter and the policy become bounds of the public response
//!   future's type;
//! - the decision reads and numbers attempts through an
//!   [`AttemptBudget`](crate::attempts::AttemptBudget) shared with the layers
//!   below (handed on the calling thread, so that a request never retried
//!   allocates nothing for it; see [`attempts`](crate::attempts)), and every
//!   attempt runs inside the request's span;
//! - the per-request random stream and start instant are created in `call`,
//!   where `Retry` offers no per-request hook (its policy is cloned after
//!   `clone_request`).
//!
//! The readiness contract is tower's: the first attempt is sent to the
//! service that `poll_ready` readied, and each retry drives a clone of the
//! inner service to readiness before calling it.
//!
//! # Errors
//!
//! The service's error is [`BoxError`](crate::BoxError); the inner service's
//! errors pass through inside the box. A retry that is refused returns the
//! last attempt's response or error unchanged.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::JitterBackoffLayer;
//! use tower_quota::attempts::Attempt;
//! use tower_quota::replay::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! // A provider whose first two answers are 503s.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let provider = service_fn(move |request: http::Request<ReplayBody<Empty<Bytes>>>| {
//!     let call = calls.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let status = if call < 2 { 503 } else { 200 };
//!         let attempt = Attempt::of(&request).0;
//!         Ok::<_, tower_quota::BoxError>(http::Response::builder().status(status).body(attempt)?)
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(
//!         JitterBackoffLayer::new()
//!             .backoff(Duration::from_millis(100), Duration::from_secs(2))?
//!             .max_attempts(4)?
//!             .attempt_header("x-retry-attempt")?,
//!     )
//!     .service(provider);
//!
//! let start = tokio::time::Instant::now();
//! let response = client.oneshot(http::Request::get("/items").body(Empty::new())?).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(*response.body(), 3, "the third attempt succeeded");
//! // Full jitter: at most 100 ms, then at most 200 ms.
//! assert!(start.elapsed() <= Duration::from_millis(300));
//! # Ok(())
//! # }
//! ```

mod budget;
mod error;
mod events;
mod future;
mod jitter;
mod layer;
mod policy;
mod service;

pub use budget::RetryBudget;
pub use error::InvalidBackoff;
pub use future::ResponseFuture;
pub use jitter::{Backoff, Jitter};
pub use layer::JitterBackoffLayer;
pub use service::JitterBackoff;

#[cfg(test)]
mod tests;
