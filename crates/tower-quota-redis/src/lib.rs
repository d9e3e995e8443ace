//! A Redis [`Store`](tower_quota::sliding_window::Store) for tower-quota's
//! `SlidingWindowLayer`: many processes share one exact quota.
//!
//! # The problem
//!
//! Ten workers with a 10 requests/s limiter each send 100 requests/s
//! together. Once a pipeline outgrows one process, the quota must live where
//! every worker sees it. [`RedisStore`] keeps it in Redis, with the same
//! guarantee as the in-process store: no window of any quota ever holds more
//! than its `max_calls`, across all processes.
//!
//! # How one admission works
//!
//! - **One round trip.** Each admission is one Lua script call (EVALSHA; the
//!   script is loaded again by itself after a Redis restart or `SCRIPT FLUSH`).
//!   The script reads the clock with Redis `TIME`, never a worker's clock,
//!   drops the entries that have left every window, and either admits the
//!   request now or *reserves* the earliest instant at which every quota of
//!   the key has room, and returns the wait. The worker then sleeps (on
//!   tokio's clock) until that instant and sends.
//! - **Exact logs.** Each quota of a key is a sorted set of admissions (one
//!   member per admission, score = its Redis time in microseconds) with a
//!   hash beside it for costs other than 1 and the running sum. An admission
//!   is held for `window + safety_margin`, as in the in-process store.
//!   Workers on other hosts, or busy processes on one host, wake from their
//!   timers and reach the provider with more jitter than one process on
//!   loopback: give the layer a margin of a few tens of milliseconds
//!   ([`SlidingWindowLayer::safety_margin`](tower_quota::SlidingWindowLayer::safety_margin));
//!   the multi-process test uses 25 ms.
//!   Admissions of a key are recorded in increasing time order, so one check
//!   of the window ending at the new admission keeps every window at or
//!   under its limit.
//! - **Order.** Requests of one key are served in the order their scripts
//!   run in Redis. That is first-come first-served per Redis, not FIFO in
//!   the order requests were made across processes (which no store could
//!   see); within one process, requests issued one after another keep their
//!   order.
//! - **Several quotas, costs.** A key may carry several quotas (requests per
//!   second and tokens per minute): one call checks and records them all.
//!   A quota made with `Quota::per_request` spends 1 per request, others
//!   spend the request's cost. A cost larger than a quota's `max_calls` is
//!   refused at once with
//!   [`CostTooLarge`](tower_quota::sliding_window::CostTooLarge), without a call.
//! - **Cancellation.** A request dropped before its reserved instant removes
//!   its reservation (one call from a spawned task). Requests that reserved
//!   later instants keep them: the freed room goes to the next arrivals.
//! - **Bounds.** With `max_wait`, a request whose reserved wait would exceed
//!   it is refused with
//!   [`Overloaded`](tower_quota::sliding_window::Overloaded) and nothing is recorded; with
//!   `max_queue`, so is a request that would wait behind `max_queue`
//!   reservations.
//! - **Corrections.** [`Store::correct`](tower_quota::sliding_window::Store::correct)
//!   sets the cost recorded for an admission to the real one (one call from
//!   a spawned task, with the timeout).
//! - **Redis Cluster.** All Redis keys of one quota key carry the hash tag
//!   `{key}`, so a script touches one slot. Keys get `PEXPIRE`, so idle
//!   quotas vanish by themselves.
//!
//! # Failures
//!
//! Every call has a timeout ([`DEFAULT_TIMEOUT`], 250 ms, by default). When
//! Redis cannot decide (connection down, error reply, timeout), the
//! [`FailurePolicy`] chosen in the builder applies: refuse with a
//! [`RedisStoreError`] (`FailClosed`, the default), admit (`FailOpen`), or
//! admit through an in-process limiter holding a share of each quota
//! (`LocalFallback`). Each failure emits a `store_error` event (target
//! `tower_quota`, fields `key`, `error.kind`, `policy`; never the URL or
//! password). After a connection failure or a timeout, Redis is not waited
//! on again for one timeout period, so an outage costs each request at most
//! one timeout. The connection manager reconnects by itself: when Redis is
//! back, admissions go through it again without a restart of the program.
//!
//! A Redis restarted empty has forgotten the admissions of the current
//! windows: up to `max_calls` more may be admitted in the first window after
//! it. Admissions made by the local fallback are likewise unknown to Redis.
//!
//! # Approximate mode
//!
//! [`RedisStoreBuilder::approximate`] replaces each log with a
//! sliding-window counter: the counts of two fixed windows, the previous
//! one weighted by how much of it the sliding window still covers. Memory
//! is O(1) per key and quota, whatever the quota, and each call is O(1).
//!
//! Its error bound: no *fixed* window ever holds more than `max_calls`, and
//! any sliding window of the quota's length (plus margin) holds at most
//! `max_calls + previous * f`, where `previous` is the count of the fixed
//! window before and `f` the fraction of the current fixed window elapsed:
//! always under `2 * max_calls`, and reached only when a whole window's
//! admissions crowd at its very end. Under steady load the estimate is
//! close to the true count. Use it for quotas with many thousands of
//! admissions per window, where the provider's own enforcement is usually
//! approximate too; use the exact mode when every window must stay under
//! the limit.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::SlidingWindowLayer;
//! use tower_quota_redis::{FailurePolicy, RedisStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .prefix("tq")
//!     .timeout(Duration::from_millis(200))
//!     .failure_policy(FailurePolicy::LocalFallback { share: 0.25 })
//!     .build()
//!     .await?;
//! // 50 requests in any second, shared by every process using this Redis.
//! let client = ServiceBuilder::new()
//!     .layer(SlidingWindowLayer::new(50, Duration::from_secs(1))?.store(store))
//!     .service(service_fn(|request: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(request.uri().to_string())
//!     }));
//! let response = client.oneshot(http::Request::get("/v1/items").body(())?).await?;
//! assert_eq!(response, "/v1/items");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod error;
mod scripts;
mod store;

pub use builder::{DEFAULT_PREFIX, DEFAULT_TIMEOUT, FailurePolicy, RedisStoreBuilder};
pub use error::{RedisStoreError, RedisStoreErrorKind};
pub use store::{Acquire, RedisStore, STORE_ERROR};
