//! Batching: callers send single items, the layer sends them as one
//! request.
//!
//! # The problem
//!
//! A pipeline pushing millions of records cannot afford one request per
//! record: where a provider has a batch endpoint (embeddings, bulk
//! indexing, bulk writes), one request of 100 records spends one request
//! of a per-request quota instead of 100, and one round trip. tower has no
//! HTTP batching. [`BatchLayer`] groups the items its callers send into one
//! request with a user-given [`Combine`] function once the batch holds
//! `max_items` items, or would pass `max_bytes`, or `max_delay` has passed
//! since its first item; sends it through the inner service; and gives
//! each caller its own output, from a user-given [`Split`] of the response.
//!
//! A batch's cost is the sum of its items' costs ([`item_cost`], 1 each by
//! default), set on the batch request through [`CarryCost`]: for an
//! `http::Request`, the [`RequestCost`](crate::RequestCost) extension,
//! which a [`SlidingWindowLayer`](crate::SlidingWindowLayer) reads with
//! [`CostFromExtension`](crate::CostFromExtension). A quota counted in
//! items (or tokens) stays exact whatever the batch size.
//!
//! # Where it goes in a stack
//!
//! Outermost, in front of everything else: it batches, and the stack below
//! paces, obeys the server and retries whole batches.
//!
//! ```text
//! BatchLayer → JitterBackoffLayer → RetryAfterLayer → SlidingWindowLayer(CostFromExtension) → client
//! ```
//!
//! # The readiness contract
//!
//! Like tower's `Buffer`, the layer spawns a worker task that owns the
//! inner service; the [`Batch`] handles feed it through a channel. At most
//! `max_pending` items are queued or in flight (sent, not yet answered):
//! `poll_ready` waits for room, so producers slow down to what the stack
//! below lets through. The worker drives the inner service to readiness
//! before it sends each batch; each batch is then answered by a task of its
//! own, so the next one fills meanwhile.
//!
//! A caller that drops its future leaves the batch: its item is not sent
//! if the batch has not gone yet.
//!
//! # Errors
//!
//! A caller gets a [`BatchError`] (boxed): its batch failed (the inner
//! service's error, shared by every item), or its response could not be
//! split (the split failed, or gave another number of outputs than items),
//! or `call` came without `poll_ready` while the queue was full, or the
//! worker is gone. With [`split_failed_batches`], a failed batch is split in
//! halves and each half sent again, down to single items, so one bad item
//! fails alone.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_quota::batch::BatchLayer;
//! use tower_quota::{RequestCost, BoxError};
//! use tower_layer::Layer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // A batch endpoint: squares every number of the batch.
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counted = Arc::clone(&calls);
//! let endpoint = service_fn(move |request: http::Request<Vec<u64>>| {
//!     counted.fetch_add(1, Ordering::Relaxed);
//!     let cost = request.extensions().get::<RequestCost>().map(|cost| cost.0);
//!     assert_eq!(cost, Some(3), "the batch costs the sum of its items");
//!     let squares = request.into_body().iter().map(|n| n * n).collect::<Vec<_>>();
//!     async move { Ok::<_, Infallible>(http::Response::new(squares)) }
//! });
//! let layer = BatchLayer::new(
//!     |items: &[u64]| http::Request::new(items.to_vec()),
//!     |response: http::Response<Vec<u64>>, _items: usize| async move {
//!         Ok::<_, Infallible>(response.into_body())
//!     },
//! )
//! .max_items(3)?
//! .max_delay(Duration::from_millis(5));
//! let batcher = layer.layer(endpoint);
//!
//! let (a, b, c) = tokio::join!(
//!     batcher.clone().oneshot(2),
//!     batcher.clone().oneshot(3),
//!     batcher.clone().oneshot(4),
//! );
//! assert_eq!((a?, b?, c?), (4, 9, 16));
//! assert_eq!(calls.load(Ordering::Relaxed), 1, "one request for three items");
//! # Ok(())
//! # }
//! ```
//!
//! [`item_cost`]: BatchLayer::item_cost
//! [`split_failed_batches`]: BatchLayer::split_failed_batches

mod config;
mod error;
mod events;
mod functions;
mod future;
mod layer;
mod service;
#[cfg(test)]
mod tests;
mod worker;

pub use config::InvalidBatch;
pub use error::{BatchError, SplitCountMismatch};
pub use functions::{CarryCost, Combine, ItemBytes, NoBytes, Split};
pub use future::ResponseFuture;
pub use layer::BatchLayer;
pub use service::Batch;
