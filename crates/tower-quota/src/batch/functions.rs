//! The user-given functions of a batcher: how items become one request,
//! how the response becomes one output per item, and what each item weighs.

use std::future::Future;

use crate::BoxError;

/// Builds one batch request from its items, in the order the callers sent
/// them.
///
/// Implemented for any closure `Fn(&[Item]) -> Request`. The items are
/// borrowed, not moved: a failed batch can be split and built again from
/// the same items (see [`BatchLayer::split_failed_batches`](super::BatchLayer::split_failed_batches)).
pub trait Combine<Item> {
    /// The batch request.
    type Request;

    /// One request carrying every item of `items`.
    fn combine(&self, items: &[Item]) -> Self::Request;
}

impl<F, Item, Request> Combine<Item> for F
where
    F: Fn(&[Item]) -> Request,
{
    type Request = Request;

    fn combine(&self, items: &[Item]) -> Request {
        self(items)
    }
}

/// Splits the response to a batch into one output per item, in the order
/// of the items.
///
/// Implemented for any closure `Fn(Response, usize) -> Future` whose
/// future gives `Result<Vec<Output>, E>`: asynchronous, so that an HTTP
/// response's body can be read to the end first. The `usize` is the number
/// of items in the batch; a split that gives another number of outputs
/// fails every item of the batch with
/// [`BatchError::Split`](super::BatchError::Split). A split that fails for
/// an error status (a 429 or 5xx to the whole batch) fails the batch the
/// same way, and the batch is split and sent again when the layer allows it.
pub trait Split<Response> {
    /// What each caller gets.
    type Output;
    /// Why a response could not be split.
    type Error: Into<BoxError>;
    /// The split, in progress.
    type Future: Future<Output = Result<Vec<Self::Output>, Self::Error>>;

    /// One output per item, from the response to a batch of `items` items.
    fn split(&self, response: Response, items: usize) -> Self::Future;
}

impl<F, Response, Fut, Output, E> Split<Response> for F
where
    F: Fn(Response, usize) -> Fut,
    Fut: Future<Output = Result<Vec<Output>, E>>,
    E: Into<BoxError>,
{
    type Output = Output;
    type Error = E;
    type Future = Fut;

    fn split(&self, response: Response, items: usize) -> Fut {
        self(response, items)
    }
}

/// How many bytes an item adds to a batch, for
/// [`BatchLayer::max_bytes`](super::BatchLayer::max_bytes).
///
/// Implemented for [`NoBytes`] (the default: no byte limit) and any closure
/// `Fn(&Item) -> usize`.
pub trait ItemBytes<Item> {
    /// The bytes `item` adds to a batch.
    fn bytes(&self, item: &Item) -> usize;
}

impl<F, Item> ItemBytes<Item> for F
where
    F: Fn(&Item) -> usize,
{
    fn bytes(&self, item: &Item) -> usize {
        self(item)
    }
}

/// The default [`ItemBytes`]: every item weighs nothing, so only
/// `max_items` and `max_delay` close a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBytes;

impl<Item> ItemBytes<Item> for NoBytes {
    fn bytes(&self, _item: &Item) -> usize {
        0
    }
}

/// A batch request that carries its cost to the layers below, so that a
/// weighted quota charges the sum of its items' costs.
///
/// Implemented for `http::Request<B>`: the cost goes in the
/// [`RequestCost`](crate::RequestCost) extension, which
/// [`CostFromExtension`](crate::CostFromExtension) reads for a
/// [`SlidingWindowLayer`](crate::SlidingWindowLayer). Implement it for
/// another request type to carry the cost your own way.
pub trait CarryCost {
    /// Records `cost` on the request.
    fn set_cost(&mut self, cost: u64);
}

impl<B> CarryCost for http::Request<B> {
    fn set_cost(&mut self, cost: u64) {
        self.extensions_mut().insert(crate::RequestCost(cost));
    }
}
