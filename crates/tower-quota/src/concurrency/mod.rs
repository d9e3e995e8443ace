//! Concurrency quotas: at most `max_in_flight` requests of a key in flight
//! at once.
//!
//! Some providers count what is in flight rather than (or beside) what
//! arrives per window: GitHub allows 100 concurrent requests, the IETF
//! `RateLimit-Policy` field names `qu="concurrent-requests"`, and many
//! model-serving APIs cap parallel generations. [`ConcurrencyLayer`] holds
//! each key to its `max_in_flight`: a request takes a slot before it is
//! sent and gives it back when its response body ends (or fails, or is
//! dropped), or when the request fails or is dropped before its response.
//! Waiters of a key take slots in the order they came.
//!
//! Unlike tower's `ConcurrencyLimit`, the count is per key, shared by every
//! clone of the layer, and lasts until the body ends (a provider counts a
//! streamed response as in flight until its last byte). Requests wait in
//! the response future, never in `poll_ready`, so a slow key does not hold
//! up the others.
//!
//! # Where it goes in the stack
//!
//! Right above the [`SlidingWindowLayer`](crate::SlidingWindowLayer): a
//! request takes its concurrency slot first, then its place in the window,
//! so no window slot is spent while a request waits for a concurrency one.
//! Below the retrying layers, each attempt holds a slot only while it is in
//! flight, not during backoff sleeps.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_quota::concurrency::ConcurrencyLayer;
//! use tower_quota::{HostKey, SlidingWindowLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let client = service_fn(|_: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(ConcurrencyLayer::new(5)?.key_fn(HostKey))
//!     .layer(SlidingWindowLayer::new(20, Duration::from_secs(1))?.key_fn(HostKey))
//!     .service(client);
//! let response = service
//!     .oneshot(Request::get("https://api.example.com/v1/items").body(Full::default())?)
//!     .await?;
//! // The slot is given back when the body ends.
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "ok");
//! # Ok(())
//! # }
//! ```
//!
//! # Across processes
//!
//! `tower_quota_redis::RedisLeases` counts the slots in Redis, as leases
//! that expire: a process that dies while holding slots frees them within
//! the lease time.

mod body;
mod events;
mod future;
mod layer;
mod memory;
mod service;
mod store;
#[cfg(test)]
mod tests;

pub use body::LeasedBody;
pub use future::ResponseFuture;
pub use layer::ConcurrencyLayer;
pub use memory::MemoryLeases;
pub use service::Concurrency;
pub use store::{Lease, LeaseStore};
