use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::config::{BatchConfig, InvalidBatch};
use super::worker::{Shared, Worker};
use super::{Batch, CarryCost, Combine, ItemBytes, NoBytes, Split};
use crate::{BoxError, CostFn, UnitCost};

/// Groups single items into batch requests; see the [module docs](super).
///
/// `Item` is what callers send; `Comb` builds a request from items, `Spl`
/// splits its response, `W` weighs each item's cost (1 by default) and `Z`
/// its bytes (nothing by default).
pub struct BatchLayer<Item, Comb, Spl, W = UnitCost, Z = NoBytes> {
    config: BatchConfig,
    combine: Comb,
    split: Spl,
    cost_fn: W,
    bytes_fn: Z,
    _item: PhantomData<fn(Item)>,
}

impl<Item, Comb, Spl> BatchLayer<Item, Comb, Spl> {
    /// A batcher that builds each batch request with `combine` and splits
    /// its response with `split`: up to 100 items per batch, sent 10 ms
    /// after its first item at the latest, each item costing 1, at most
    /// 10,000 items queued or in flight.
    pub fn new(combine: Comb, split: Spl) -> Self {
        BatchLayer {
            config: BatchConfig::default(),
            combine,
            split,
            cost_fn: UnitCost,
            bytes_fn: NoBytes,
            _item: PhantomData,
        }
    }
}

impl<Item, Comb, Spl, W, Z> BatchLayer<Item, Comb, Spl, W, Z> {
    /// Sends a batch as soon as it holds `max_items` items.
    ///
    /// # Errors
    ///
    /// [`InvalidBatch::ZeroMaxItems`] for 0, and
    /// [`InvalidBatch::MaxPendingBelowMaxItems`] above `max_pending`.
    pub fn max_items(mut self, max_items: usize) -> Result<Self, InvalidBatch> {
        if max_items == 0 {
            return Err(InvalidBatch::ZeroMaxItems);
        }
        if self.config.max_pending < max_items {
            return Err(InvalidBatch::MaxPendingBelowMaxItems {
                max_pending: self.config.max_pending,
                max_items,
            });
        }
        self.config.max_items = max_items;
        Ok(self)
    }

    /// Sends a batch at the latest `max_delay` after its first item came,
    /// full or not. The default is 10 ms.
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.config.max_delay = max_delay;
        self
    }

    /// Keeps each batch within `max_bytes`, weighing each item with
    /// `bytes_fn`: an item that would take the batch past it goes into the
    /// next batch. An item heavier than `max_bytes` on its own is sent
    /// alone.
    ///
    /// # Errors
    ///
    /// [`InvalidBatch::ZeroMaxBytes`] for 0.
    pub fn max_bytes<Z2>(
        self,
        max_bytes: usize,
        bytes_fn: Z2,
    ) -> Result<BatchLayer<Item, Comb, Spl, W, Z2>, InvalidBatch> {
        if max_bytes == 0 {
            return Err(InvalidBatch::ZeroMaxBytes);
        }
        Ok(BatchLayer {
            config: BatchConfig {
                max_bytes: Some(max_bytes),
                ..self.config
            },
            combine: self.combine,
            split: self.split,
            cost_fn: self.cost_fn,
            bytes_fn,
            _item: PhantomData,
        })
    }

    /// What each item costs (a [`CostFn`] over items, such as a closure
    /// `Fn(&Item) -> u64`); a batch costs the sum of its items' costs,
    /// saturating, and carries it on its request ([`CarryCost`]). The
    /// default is 1 per item.
    pub fn item_cost<W2>(self, cost_fn: W2) -> BatchLayer<Item, Comb, Spl, W2, Z> {
        BatchLayer {
            config: self.config,
            combine: self.combine,
            split: self.split,
            cost_fn,
            bytes_fn: self.bytes_fn,
            _item: PhantomData,
        }
    }

    /// Bounds the items queued or in flight (sent, not yet answered):
    /// `poll_ready` waits while `max_pending` are, so producers slow down
    /// to what the stack below lets through. The default is 10,000.
    ///
    /// # Errors
    ///
    /// [`InvalidBatch::MaxPendingBelowMaxItems`] below `max_items`.
    pub fn max_pending(mut self, max_pending: usize) -> Result<Self, InvalidBatch> {
        if max_pending < self.config.max_items {
            return Err(InvalidBatch::MaxPendingBelowMaxItems {
                max_pending,
                max_items: self.config.max_items,
            });
        }
        self.config.max_pending = max_pending;
        Ok(self)
    }

    /// When a batch fails (the inner service errs, or the split fails, as
    /// for a 5xx or 429 to the whole batch), sends each half again, as two
    /// batches, down to single items, instead of failing every item: one
    /// bad item then fails alone. Each half passes through the whole stack
    /// below again, pacing included. Off by default: a failed batch fails
    /// its items with the batch's error.
    pub fn split_failed_batches(mut self, enabled: bool) -> Self {
        self.config.split_failed = enabled;
        self
    }
}

impl<S, Item, Comb, Spl, W, Z> Layer<S> for BatchLayer<Item, Comb, Spl, W, Z>
where
    S: Service<Comb::Request> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
    Item: Send + 'static,
    Comb: Combine<Item> + Clone + Send + Sync + 'static,
    Comb::Request: CarryCost + Send,
    Spl: Split<S::Response> + Clone + Send + Sync + 'static,
    Spl::Future: Send,
    Spl::Output: Send + 'static,
    W: CostFn<Item> + Clone + Send + 'static,
    Z: ItemBytes<Item> + Clone + Send + 'static,
{
    type Service = Batch<Item, Spl::Output>;

    /// Spawns the batcher's worker on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    fn layer(&self, inner: S) -> Self::Service {
        let (service, sender) = Batch::new(self.config.max_pending);
        let shared = Arc::new(Shared {
            combine: self.combine.clone(),
            split: self.split.clone(),
            split_failed: self.config.split_failed,
        });
        let worker = Worker::new(
            inner,
            sender,
            self.config,
            shared,
            self.cost_fn.clone(),
            self.bytes_fn.clone(),
        );
        tokio::spawn(worker.run());
        service
    }
}

impl<Item, Comb: Clone, Spl: Clone, W: Clone, Z: Clone> Clone
    for BatchLayer<Item, Comb, Spl, W, Z>
{
    fn clone(&self) -> Self {
        BatchLayer {
            config: self.config,
            combine: self.combine.clone(),
            split: self.split.clone(),
            cost_fn: self.cost_fn.clone(),
            bytes_fn: self.bytes_fn.clone(),
            _item: PhantomData,
        }
    }
}

impl<Item, Comb, Spl, W, Z> fmt::Debug for BatchLayer<Item, Comb, Spl, W, Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLayer")
            .field("max_items", &self.config.max_items)
            .field("max_bytes", &self.config.max_bytes)
            .field("max_delay", &self.config.max_delay)
            .field("max_pending", &self.config.max_pending)
            .field("split_failed", &self.config.split_failed)
            .field("item", &std::any::type_name::<Item>())
            .finish_non_exhaustive()
    }
}
