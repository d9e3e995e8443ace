//! Request coalescing: identical requests in flight at once share one
//! upstream call, and one quota slot.
//!
//! # The problem
//!
//! A cache that misses under load, a page that renders the same widget
//! many times, many workers asking for the same configuration: each sends
//! the same `GET` while the first is still in flight, and each spends a
//! slot of the provider's quota on an answer that is already on its way.
//! [`CoalesceLayer`] lets the first such request call upstream and makes
//! every identical request that arrives before its answer wait for that
//! answer instead. Identical means the same method, the same URI (query
//! included) and the same key from a user-chosen [`KeyFn`](crate::KeyFn)
//! (the caller's tenant or a hash of its credentials, so a response made
//! for one caller never reaches another).
//!
//! Every caller gets a copy of the response: its body is read to the end
//! once (up to `max_body_bytes`) into [`Bytes`](bytes::Bytes), and each
//! caller gets an `http::Response<Full<Bytes>>` with the same status,
//! headers, extensions and body. Only `GET` and `HEAD` are coalesced unless
//! a method is allowed explicitly ([`CoalesceLayer::allow_method`]): a
//! `POST` is never coalesced by default.
//!
//! The calls in flight are bounded (`max_in_flight` distinct calls; a
//! request beyond it is sent on its own) and forgotten when their call
//! ends. When every caller of a call drops its future, the call is
//! aborted and forgotten: nothing is left behind.
//!
//! # Where it goes in a stack
//!
//! Above the layers that spend quota, so that the shared call spends one
//! slot: right below a [`BatchLayer`](crate::BatchLayer) if there is one,
//! above the retrying and pacing layers.
//!
//! ```text
//! CoalesceLayer → JitterBackoffLayer → RetryAfterLayer → SlidingWindowLayer → client
//! ```
//!
//! # Errors
//!
//! A [`CoalesceError`] (boxed), shared by every caller of the call: the
//! inner service failed, or the body failed or was too long.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_quota::coalesce::CoalesceLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = Arc::clone(&calls);
//! let client = ServiceBuilder::new()
//!     .layer(CoalesceLayer::new())
//!     .service(service_fn(move |_request: http::Request<()>| {
//!         counted.fetch_add(1, Ordering::Relaxed);
//!         async {
//!             tokio::time::sleep(Duration::from_millis(100)).await;
//!             Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("v1"))))
//!         }
//!     }));
//! let get = || client.clone().oneshot(http::Request::get("/config").body(()).unwrap());
//! let (a, b) = tokio::join!(get(), get());
//! assert_eq!(a?.into_body().collect().await?.to_bytes(), "v1");
//! assert_eq!(b?.into_body().collect().await?.to_bytes(), "v1");
//! assert_eq!(calls.load(Ordering::Relaxed), 1, "one upstream call");
//! # Ok(())
//! # }
//! ```

mod error;
mod events;
mod flights;
mod future;
mod layer;
mod service;
#[cfg(test)]
mod tests;

pub use error::CoalesceError;
pub use future::ResponseFuture;
pub use layer::{CoalesceLayer, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT};
pub use service::Coalesce;
