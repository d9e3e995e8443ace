//! Tower middleware for programs that call rate-limited APIs.
//!
//! Data pipelines, crawlers, SDKs and gRPC clients want the highest
//! throughput a provider allows, no refused requests, and clean recovery
//! when the provider pushes back. This crate provides that as ordinary
//! [tower](https://docs.rs/tower) middleware, stacked with
//! `tower::ServiceBuilder` around any client service (hyper-util, reqwest
//! through an adapter, a tonic `Channel`).
//!
//! - [`sliding_window`]: exact sliding-window pacing per key: at most
//!   `max_calls` in *any* window, bursts allowed, shared by all clones.
//! - [`retry_after`]: server-directed waiting: obeys `Retry-After` and the
//!   rate-limit header dialects; one throttled response pauses every caller
//!   of its key, and the throttled request is re-sent when the gate opens.
//! - [`backoff`]: reactive recovery: retries transient failures with
//!   exponential backoff and independent jitter, within a retry budget; a
//!   server's delay is the floor of the wait. What counts as transient is
//!   decided by a [`classify`] classifier (HTTP and gRPC).
//! - [`circuit_breaker`]: fails fast while a provider is failing, probes now
//!   and then, and resumes when it recovers.
//! - [`concurrency`]: at most `max_in_flight` requests per key in flight,
//!   each slot held until its response body ends; in-process, or across
//!   processes as Redis leases that expire.
//! - [`batch`]: groups single items into one batch request (by count,
//!   bytes or delay) and splits the response back to each caller; the
//!   batch's cost is the sum of its items'.
//! - [`coalesce`]: identical idempotent requests in flight at once share
//!   one upstream call and one quota slot.
//! - [`replay`]: replayable request bodies, so retries resend the same bytes.
//! - [`attempts`]: one attempt limit and numbering for a whole stack.
//! - [`ServiceBuilderExt`]: one `ServiceBuilder` method per layer
//!   (`.jitter_backoff()`, `.retry_after()`, `.sliding_window(..)`,
//!   `.circuit_breaker()`).
//! - `connect` (feature `hyper-util`): connection telemetry for
//!   hyper-util's client: connections open, opened and their set-up time,
//!   and a mark on the first response of each new connection.
//! - `config` (feature `config`): a TOML table per provider (quotas,
//!   retries, `max_wait`, key) that builds a stack per provider and routes
//!   each request to it by host.
//! - [`metrics`] (feature `metrics`): counters and histograms through the
//!   `metrics` facade, recorded where the telemetry events are emitted.
//!
//! All time is read from tokio's clock, so tests on a paused clock
//! (`#[tokio::test(start_paused = true)]`) control every wait.
//! Telemetry goes through [`tracing`]; names are listed in [`telemetry`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::SlidingWindowLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! // 20 requests in any one-second window.
//! let client = ServiceBuilder::new()
//!     .layer(SlidingWindowLayer::new(20, Duration::from_secs(1))?)
//!     .service(service_fn(|request: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(request.uri().to_string()))
//!     }));
//!
//! let response = client.oneshot(http::Request::get("/v1/items").body(())?).await?;
//! assert_eq!(response.body(), "/v1/items");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attempts;
pub mod backoff;
pub mod batch;
mod builder;
pub mod circuit_breaker;
pub mod classify;
pub mod coalesce;
pub mod concurrency;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
#[cfg(feature = "hyper-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper-util")))]
pub mod connect;
mod key;
mod keymap;
pub mod metrics;
pub mod replay;
pub mod retry_after;
pub mod sliding_window;
pub mod telemetry;
#[cfg(test)]
mod test_support;
mod time;

pub use backoff::{JitterBackoff, JitterBackoffLayer};
pub use batch::{Batch, BatchLayer};
pub use builder::ServiceBuilderExt;
pub use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use concurrency::{Concurrency, ConcurrencyLayer};
pub use key::{
    Announced, CostFn, CostFromExtension, GlobalKey, HostKey, HttpFeedback, Key, KeyFn, NoUsage,
    Released, RequestCost, Room, UnitCost, Usage, UsageFn, UsageFromExtension,
};
pub use retry_after::{RetryAfter, RetryAfterLayer};
pub use sliding_window::{SlidingWindow, SlidingWindowLayer};

/// The boxed error of this crate's services, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
