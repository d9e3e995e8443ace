//! Server-directed waiting: obey `Retry-After` and rate-limit headers, and
//! let one throttled response pause every caller of its key.
//!
//! # The problem
//!
//! A provider that refuses a request with `429 Too Many Requests` and
//! `Retry-After: 2` has said exactly what to do. A client that retries each
//! refused request on its own schedule keeps spending requests the provider
//! will refuse; a client with 64 requests in flight gets 64 refusals where one
//! would have done. Providers also announce the quota left before it runs
//! out (`X-RateLimit-Remaining: 0`, `RateLimit: "default";r=0;t=30`, and a
//! dozen other dialects): a client that reads them need not be refused at all.
//!
//! # What it does
//!
//! [`RetryAfterLayer`] parses every response with [`quota_headers::parse`]
//! and keeps a shared **gate** per key:
//!
//! - A throttled response with a delay (429, 503 with `Retry-After`, gRPC
//!   `RESOURCE_EXHAUSTED` with pushback) closes the gate for that delay;
//!   every request of the key waits for it instead of being sent. Unless
//!   the provider shows it has room sooner, by its own count: a
//!   [`SlidingWindowLayer`](crate::SlidingWindowLayer) below keeps sending
//!   what already passed the gate at its pace, and when the provider
//!   accepts a request that left the window's queue after the refusal came
//!   back (the [`Released`](crate::Released) mark), the gate reopens as
//!   after a probe, and the refused request and the callers held go back
//!   to it at once (`gate_reopened`). A `Retry-After` in whole seconds
//!   then costs the key the refused request, not the rest of the second.
//! - A response saying no quota remains until a reset closes the gate until
//!   the reset. While the server reports `remaining` before a reset, the
//!   layer never sends more than that (requests already in flight count).
//!   Once a reset passes, one request at a time probes the new quota until a
//!   response reports it: a sliding-window provider frees its quota
//!   gradually, so a reset may mean one more request, not a full quota.
//! - When the gate opens, the requests that waited do not leave as a herd
//!   the provider would refuse again. One goes first as a probe and the
//!   others wait for its answer: a throttled probe closes the gate again.
//!   After an unthrottled one the gate ramps up (slow start): as many
//!   requests go as the ones it let through are answered, plus one per
//!   answer, so 1, 2, 4, ... per round trip. A refusal during the ramp
//!   halves it instead of closing the gate for everyone (the refused
//!   request still waits out its own delay); the ramp ends at 64 requests
//!   in flight, or once as long as the pause has passed without a
//!   refusal. Waiters also leave at random instants over
//!   [`spread`](RetryAfterLayer::spread), not all at once, and still pass
//!   through any pacing below.
//! - A throttled request is re-sent once the gate opens, up to
//!   [`max_attempts`](RetryAfterLayer::max_attempts) attempts in all, when
//!   that is safe: after a `429` (or gRPC `RESOURCE_EXHAUSTED`) whatever
//!   its method, since the server refused it without processing it; after a
//!   `503` with a delay or gRPC `UNAVAILABLE` with pushback, which a proxy
//!   may send after the server processed the request, only idempotent
//!   methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and requests with an
//!   `Idempotency-Key` header, unless
//!   [`resend_all_methods`](RetryAfterLayer::resend_all_methods). The rule
//!   is [`JitterBackoffLayer`](crate::JitterBackoffLayer)'s, from one place
//!   ([`classify`](crate::classify)). Either way the gate closes for the
//!   delay.
//! - [`max_wait`](RetryAfterLayer::max_wait) bounds the waiting of one
//!   request over all its attempts, and of the whole stack: it is the most
//!   the [`WaitBudget`](crate::attempts::WaitBudget) shared with a retry
//!   layer above (see [`attempts`](crate::attempts)) allows. A server delay
//!   above what is left is never slept through, here or above: the
//!   response returns at once, and a request that finds its gate closed
//!   for longer fails with [`GateClosed`].
//! - No gate stays closed longer than
//!   [`max_pause`](RetryAfterLayer::max_pause) (5 minutes by default) on a
//!   server's word. When a longer pause is claimed, the gate opens at the
//!   bound and lets one request through as a probe; the others wait for its
//!   answer, which closes the gate again or lets traffic resume, ramping
//!   up.
//! - A request body is buffered while it is first sent (up to
//!   [`max_replay_bytes`](RetryAfterLayer::max_replay_bytes), 64 KiB by
//!   default) so the re-sent request carries the same bytes; a larger body
//!   is sent once and never re-sent, and the `rate_limit_hit` event says so.
//! - Every response with something to say carries a [`ServerSignal`]
//!   extension: the parsed signal, the number of attempts and the time
//!   waited. A response without a rate-limit signal, to a request sent once
//!   that never waited, carries none (nothing allocated): read its absence
//!   as one attempt, no wait, an empty signal.
//! - Memory follows the active keys. A gate is evicted once it has nothing
//!   left to remember (open, its reported quota reset, nothing in flight)
//!   and a minute has passed since its last use. The gates are kept in 16
//!   shards, each with its own lock and its own timeline of evictions
//!   falling due. Every request carries out up to 64 that are due in its
//!   key's shard at the gate and again at the answer, and every fourth of
//!   a shard's operations visits another shard in turn and carries out up
//!   to 256 there, so the gates of keys that see no more traffic go
//!   without any request of theirs; the maps shrink once they are mostly
//!   empty. (100,000 hosts reporting `RateLimit`: 799 requests to one
//!   other key after the hosts went quiet took the maps from capacity
//!   114,688 back to 6.) Nothing is written that all keys share, so
//!   threads sending to different hosts seldom wait for each other.
//!
//! # Bad input
//!
//! Header values come from strangers. The parsers are total (any bytes give
//! a value or nothing, never a panic); epoch resets are corrected for clock
//! skew with the response's `Date`, and a reset sent in epoch milliseconds
//! where seconds belong is read as milliseconds. Every delay is bounded
//! twice: a request waits `max_wait` at most in all (a longer delay returns
//! the response, or fails with [`GateClosed`], at once), and a gate closes
//! for `max_pause` at most, then probes. So a `Retry-After: 99999999999`, a
//! date in 2099, a `retry-after-ms` of `u64::MAX` or a
//! `RateLimit: "default";r=0;t=4294967296` cost one probe per key every
//! `max_pause`, not a key locked out until the process restarts. Arithmetic
//! on server values saturates.
//!
//! # Where it goes in a stack
//!
//! Between the retry layer (outside) and the pacing layer (inside): re-sent
//! requests are paced like any other. When the pacing layer is configured
//! with the provider's exact quota, turn off
//! [`pace_by_quota_headers`](RetryAfterLayer::pace_by_quota_headers): the
//! exact limiter keeps the quota, and reset times in whole seconds would only
//! hold requests longer. Either way, and the backoff layer above sees from
//! [`ServerSignal::delay_observed`] that the server's delay was already
//! waited, so it is not waited twice.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::retry_after::{RetryAfterLayer, ServerSignal};
//! use tower_quota::replay::ReplayBody;
//! use http_body_util::Empty;
//! use bytes::Bytes;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! // A provider that refuses the first request and asks for 2 s.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let provider = service_fn(move |_request: http::Request<ReplayBody<Empty<Bytes>>>| {
//!     let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let response = if call == 0 {
//!             http::Response::builder().status(429).header("retry-after", "2").body(())?
//!         } else {
//!             http::Response::new(())
//!         };
//!         Ok::<_, tower_quota::BoxError>(response)
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RetryAfterLayer::new().spread(Duration::ZERO))
//!     .service(provider);
//!
//! let start = tokio::time::Instant::now();
//! let response = client.oneshot(http::Request::get("/items").body(Empty::new())?).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(start.elapsed(), Duration::from_secs(2));
//! assert_eq!(response.extensions().get::<ServerSignal>().unwrap().attempts(), 2);
//! # Ok(())
//! # }
//! ```

mod error;
mod events;
mod extension;
mod future;
mod gate;
mod layer;
mod seqs;
mod service;

pub use error::{GateClosed, InvalidRetryAfter};
pub use extension::ServerSignal;
pub use future::ResponseFuture;
pub use gate::GateReason;
pub use layer::RetryAfterLayer;
pub use service::RetryAfter;

#[cfg(test)]
mod tests;
