//! [tower-quota](tower_quota)'s layers for [reqwest], as a
//! [reqwest-middleware](reqwest_middleware) [`Middleware`](reqwest_middleware::Middleware).
//!
//! reqwest's `Client` is not a `tower::Service`, so the tower-quota stack
//! cannot wrap it directly. [`QuotaMiddleware`] runs the stack inside a
//! reqwest-middleware chain instead: a reqwest user adds one `.with(..)` and
//! keeps sending with reqwest's own request builders.
//!
//! ```text
//! request ─▶ JitterBackoffLayer ─▶ RetryAfterLayer ─▶ SlidingWindowLayer ─▶ middlewares after this one ─▶ reqwest::Client
//!             retries transient     obeys Retry-After    at most N in any
//!             failures, jittered    and RateLimit        window, per host
//! ```
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use reqwest_middleware::ClientBuilder;
//! use tower_quota_reqwest::QuotaMiddleware;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let provider = quota_mock::MockServer::builder()
//! #     .rule(quota_mock::Rule::sliding_log(20, Duration::from_secs(1)))
//! #     .start()
//! #     .await?;
//! # let url = provider.url();
//! // 20 requests in any second, per host; Retry-After obeyed; retries jittered.
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(QuotaMiddleware::new(20, Duration::from_secs(1))?)
//!     .build();
//!
//! let response = client.get(format!("{url}/v1/items/1")).send().await?;
//! assert!(response.status().is_success());
//! # Ok(())
//! # }
//! ```
//!
//! # Where it goes in the chain
//!
//! Register it first (outermost) unless a middleware must see the logical
//! request once, such as one that logs or traces the whole call. Every
//! attempt it sends, retries included, runs the middlewares registered
//! after it and then the client: an authentication middleware there signs
//! each attempt anew, and a tracing middleware there sees each attempt.
//!
//! # How: `Next` is borrowed
//!
//! A reqwest-middleware `Next<'_>` borrows the client's middleware list for
//! the length of one `handle` call, so a tower stack built once cannot own
//! it. The layers are built once (in [`QuotaMiddleware::new`]) and hold all
//! the shared state behind `Arc`s; per request, `handle` stacks them around
//! a short-lived innermost service that sends each attempt with a clone of
//! `Next`. That costs a few reference counts and allocations per request
//! (`quota-bench`'s `reqwest_overhead` example measures the middleware
//! without a network: about 3 µs per request on a 2-vCPU VM), and the stack's
//! future borrows `Next`, which is fine because tower-quota's layers never
//! spawn: the whole stack runs inside `handle`'s future.
//!
//! The alternative, an innermost `reqwest::Client` of the middleware's own,
//! would need no per-request stack but would silently skip every
//! middleware registered after this one; this crate does not do that.
//!
//! # Bodies
//!
//! A retry resends the request body byte for byte:
//!
//! - an in-memory body (`.body(String)`, `.json(..)`, `Bytes`, ...) is sent
//!   again from its bytes, and stays a body reqwest can clone and knows the
//!   length of; its bytes are shared by the request and every attempt, not
//!   copied;
//! - a streaming body (`Body::wrap_stream`, a file) is buffered by the
//!   layers' [`ReplayBody`](tower_quota::replay::ReplayBody) while the first
//!   attempt sends it, and replayed from that buffer.
//!
//! Either way a body over the layers' replay limit (64 KiB by default,
//! `max_replay_bytes` on [`JitterBackoffLayer`](tower_quota::JitterBackoffLayer)
//! and [`RetryAfterLayer`](tower_quota::RetryAfterLayer)) is sent once and
//! not retried; a streaming body that grows past it is not retried either.
//! Which requests may be retried at all follows the layers' idempotency
//! rules: a `POST` needs an `Idempotency-Key` header.
//!
//! # Timeouts
//!
//! reqwest's timeouts (`ClientBuilder::timeout`, `RequestBuilder::timeout`)
//! apply to each attempt, not to the logical request, and do not count the
//! time spent waiting for room in the window. A timed-out attempt, like a
//! connect error, is transient and retried.
//!
//! # Errors
//!
//! - An error of the client or of a middleware after this one (after the
//!   retries it earned) comes back unchanged:
//!   [`reqwest_middleware::Error::Reqwest`] still answers `is_timeout()`,
//!   `is_connect()`.
//! - The layers' own refusals come back as
//!   [`reqwest_middleware::Error::Middleware`], whose `anyhow::Error`
//!   downcasts to the layer's error type:
//!   [`Overloaded`](tower_quota::sliding_window::Overloaded) (the window has
//!   no room within `max_wait`),
//!   [`CostTooLarge`](tower_quota::sliding_window::CostTooLarge),
//!   [`ConflictingQuotas`](tower_quota::sliding_window::ConflictingQuotas),
//!   [`GateClosed`](tower_quota::retry_after::GateClosed) (the server paused
//!   the key for longer than the request may wait),
//!   [`ReplayError`](tower_quota::replay::ReplayError). Any other error (a
//!   store's, such as tower-quota-redis's) keeps its message and source
//!   chain.
//! - A `429` or `5xx` that is not retried (attempts spent, budget spent, a
//!   non-idempotent request) is a response, as reqwest returns it.
//!
//! # Extensions
//!
//! Each attempt gets its own copy of the chain's `http::Extensions`; what
//! the middlewares after this one left in the last attempt's copy is merged
//! back for the middlewares before it. The response's URL is the final one
//! (after reqwest's redirects) of the last attempt.
//!
//! # Telemetry
//!
//! The layers log through `tracing` (target `tower_quota`) as in any
//! tower-quota stack: method, path (no query string), key, status, waits.
//! This crate adds no events and records no headers.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod chain;
mod middleware;

pub use chain::{AttemptBody, AttemptRequest};
pub use middleware::{DefaultPacing, QuotaMiddleware};
