//! Fail fast while a provider is failing.
//!
//! # The problem
//!
//! A batch job that keeps sending into a provider that answers every call
//! with `503` wastes its quota, its time and the provider's patience: every
//! call waits for a timeout or a retry schedule only to fail. Better to
//! notice the failures, stop sending for a while, probe now and then, and
//! resume when the provider has recovered.
//!
//! # What it does
//!
//! [`CircuitBreakerLayer`] keeps a breaker per key, shared by every clone:
//!
//! - **Closed**: calls pass and their outcomes are classified with the same
//!   [`Classify`](crate::classify::Classify) as the backoff layer (HTTP by
//!   default): what it calls transient (connect errors, timeouts, 5xx) is a
//!   failure; successes and permanent failures such as a `404` show the
//!   provider answering. The breaker opens when the failure rate over a
//!   [`Window`] of the last calls (by count or by time) reaches the
//!   threshold, once at least `minimum_calls` were made, or after a run of
//!   consecutive failures.
//! - **Open**: calls fail at once with [`CircuitOpen`], carrying the time
//!   until the next probe. The open period has jitter, so breakers that
//!   opened together do not probe together.
//! - **Half-open**: exactly `half_open_probes` calls are let through; the
//!   rest fail at once. All probes succeeding closes the breaker; one
//!   failing opens it again.
//!
//! Every period (closed, open, each half-open) has a generation of its own,
//! and a call's outcome counts only in the period it was admitted in: a slow
//! probe from an earlier half-open period that answers in the next one, or
//! a call sent before the breaker opened, counts for nothing, and a stale
//! probe that is cancelled gives no permit to the current period.
//!
//! Throttled responses (429) do not count as failures by default: the
//! provider is healthy and says when to come back, which
//! [`RetryAfterLayer`](crate::RetryAfterLayer) handles. A cancelled call
//! counts for nothing.
//!
//! # Memory: a million keys
//!
//! A crawler keyed by host meets millions of keys, most of them once. A
//! key's breaker is kept only while it holds something worth its memory;
//! otherwise the key is forgotten and behaves, when called again, as a
//! closed breaker with no history. A breaker is idle, and forgotten, when
//!
//! - it is closed, no call of it is in flight, and no failure is left in
//!   its window: a [`Window::Time`] forgets calls older than its length, a
//!   [`Window::Count`] calls older than
//!   [`forget_after`](CircuitBreakerLayer::forget_after) (5 minutes by
//!   default) as well as those beyond its last `n`;
//! - it is open or half-open, and nothing happened for `forget_after` since
//!   its open period ended or its last probe started or finished.
//!
//! Forgetting needs no traffic to the key or its shard: every call
//! examines the next 16 entries of another of the 16 shards, each shard
//! visiting the others in turn, so every key is looked at again within
//! about `keys / 16` calls, with bounded work per call; shards that fall
//! below a quarter of their capacity are shrunk. At most
//! [`max_keys`](CircuitBreakerLayer::max_keys) keys are
//! kept (100,000 by default): beyond that, calls of new keys pass unjudged
//! until idle keys are forgotten.
//! [`key_count`](CircuitBreakerLayer::key_count) tells how many are kept.
//!
//! Measured with a counting allocator by `cargo run --release -p
//! quota-bench -- idle-memory` (one failure from each of 1,000,000 keys,
//! `forget_after` 30 s): the empty layer holds 2.4 KB (its shards on cache
//! lines of their own); the full map 266 MB, 265 bytes per key with a
//! failure; once the keys are idle, 62,938 calls to one other key forget
//! them all, and the layer holds 15 KB, within 64 KiB of the empty layer
//! (the bound the benchmark checks). A million keys with one success each
//! never hold more than a few dozen entries (55 at most in that run).
//!
//! # Bad settings
//!
//! The builder refuses what cannot work, naming the setting: an open
//! duration, a time window or a `forget_after` above a year, a count window
//! above 100,000 calls, a jitter outside `[0, 1)`, a failure rate outside
//! `(0, 1]`, zero probes or zero keys ([`InvalidCircuitBreaker`]). Time
//! arithmetic saturates, so no accepted setting panics at run time.
//!
//! # Where it goes in a stack
//!
//! Inside the retry layer, so that retries meet the fast failure instead of
//! the failing provider (and a [`CircuitOpen`] is not retried in a loop: the
//! default classifier calls it permanent), and outside the pacing layer, so
//! that refused calls spend no quota:
//!
//! ```text
//! JitterBackoffLayer → CircuitBreakerLayer → RetryAfterLayer → SlidingWindowLayer → client
//! ```
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let failing = service_fn(|_request: http::Request<()>| async {
//!     Ok::<_, tower_quota::BoxError>(http::Response::builder().status(503).body(())?)
//! });
//! let breaker = CircuitBreakerLayer::new().consecutive_failures(Some(3));
//! let service = ServiceBuilder::new().layer(breaker).service(failing);
//!
//! for _ in 0..3 {
//!     let response = service.clone().oneshot(http::Request::new(())).await?;
//!     assert_eq!(response.status(), 503);
//! }
//! // Three failures in a row: the next call fails at once, unsent.
//! let error = service.oneshot(http::Request::new(())).await.unwrap_err();
//! assert!(error.downcast_ref::<CircuitOpen>().is_some());
//! # Ok(())
//! # }
//! ```

mod breakers;
mod config;
mod error;
mod events;
mod future;
mod layer;
mod service;
mod state;

pub use config::Window;
pub use error::{CircuitOpen, InvalidCircuitBreaker};
pub use future::ResponseFuture;
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
pub use state::CircuitState;

#[cfg(test)]
mod tests;
