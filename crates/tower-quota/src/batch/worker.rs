//! The task that owns the inner service: collects items into batches,
//! sends each batch, and answers each caller from its response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::config::BatchConfig;
use super::error::SplitCountMismatch;
use super::events::{self, Closed};
use super::service::Message;
use super::{BatchError, CarryCost, Combine, ItemBytes, Split};
use crate::{BoxError, CostFn};

/// What every batch of a layer needs, shared by the tasks that send them.
pub(super) struct Shared<Comb, Spl> {
    pub(super) combine: Comb,
    pub(super) split: Spl,
    pub(super) split_failed: bool,
}

/// A caller waiting for its item's output.
struct Waiter<Out> {
    reply: oneshot::Sender<Result<Out, BatchError>>,
    cost: u64,
    /// Its place in the `max_pending` bound, given back when answered.
    _permit: OwnedSemaphorePermit,
}

/// The items of one batch, and their callers, in the same order.
struct Items<Item, Out> {
    items: Vec<Item>,
    waiters: Vec<Waiter<Out>>,
}

impl<Item, Out> Items<Item, Out> {
    fn with_capacity(capacity: usize) -> Self {
        Items {
            items: Vec::with_capacity(capacity),
            waiters: Vec::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, message: Message<Item, Out>, cost: u64) {
        self.items.push(message.item);
        self.waiters.push(Waiter {
            reply: message.reply,
            cost,
            _permit: message.permit,
        });
    }

    /// Drops the items whose callers dropped their futures.
    fn retain_wanted(&mut self) {
        if self.waiters.iter().all(|waiter| !waiter.reply.is_closed()) {
            return;
        }
        let items = std::mem::take(&mut self.items);
        let waiters = std::mem::take(&mut self.waiters);
        for (item, waiter) in items.into_iter().zip(waiters) {
            if !waiter.reply.is_closed() {
                self.items.push(item);
                self.waiters.push(waiter);
            }
        }
    }

    /// The sum of the items' costs, saturating.
    fn cost(&self) -> u64 {
        self.waiters
            .iter()
            .fold(0_u64, |sum, waiter| sum.saturating_add(waiter.cost))
    }

    fn split_off(&mut self, at: usize) -> Self {
        Items {
            items: self.items.split_off(at),
            waiters: self.waiters.split_off(at),
        }
    }

    fn answer(self, outputs: Vec<Out>) {
        for (waiter, output) in self.waiters.into_iter().zip(outputs) {
            // A caller that dropped its future wants nothing.
            let _ = waiter.reply.send(Ok(output));
        }
    }

    fn fail(self, error: BatchError) {
        for waiter in self.waiters {
            let _ = waiter.reply.send(Err(error.clone()));
        }
    }
}

pub(super) struct Worker<S, Item, Out, Comb, Spl, W, Z> {
    inner: S,
    receiver: mpsc::UnboundedReceiver<Message<Item, Out>>,
    config: BatchConfig,
    shared: Arc<Shared<Comb, Spl>>,
    cost_fn: W,
    bytes_fn: Z,
    batch: Items<Item, Out>,
    batch_bytes: usize,
    /// When the open batch must leave: `max_delay` after its first item.
    deadline: Option<Instant>,
}

impl<S, Item, Comb, Spl, W, Z> Worker<S, Item, Spl::Output, Comb, Spl, W, Z>
where
    S: Service<Comb::Request> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
    Item: Send + 'static,
    Comb: Combine<Item> + Send + Sync + 'static,
    Comb::Request: CarryCost + Send,
    Spl: Split<S::Response> + Send + Sync + 'static,
    Spl::Future: Send,
    Spl::Output: Send + 'static,
    W: CostFn<Item>,
    Z: ItemBytes<Item>,
{
    pub(super) fn new(
        inner: S,
        receiver: mpsc::UnboundedReceiver<Message<Item, Spl::Output>>,
        config: BatchConfig,
        shared: Arc<Shared<Comb, Spl>>,
        cost_fn: W,
        bytes_fn: Z,
    ) -> Self {
        Worker {
            inner,
            receiver,
            config,
            shared,
            cost_fn,
            bytes_fn,
            batch: Items::with_capacity(0),
            batch_bytes: 0,
            deadline: None,
        }
    }

    /// Runs until every handle is dropped, then sends what is left.
    pub(super) async fn run(mut self) {
        loop {
            let received = match self.deadline {
                None => self.receiver.recv().await,
                Some(deadline) => tokio::select! {
                    biased;
                    received = self.receiver.recv() => received,
                    () = tokio::time::sleep_until(deadline) => {
                        self.send(Closed::Delay).await;
                        continue;
                    }
                },
            };
            match received {
                Some(message) => self.push(message).await,
                None => {
                    self.send(Closed::Shutdown).await;
                    return;
                }
            }
        }
    }

    async fn push(&mut self, message: Message<Item, Spl::Output>) {
        let bytes = self.bytes_fn.bytes(&message.item);
        if let Some(max_bytes) = self.config.max_bytes
            && !self.batch.is_empty()
            && self.batch_bytes.saturating_add(bytes) > max_bytes
        {
            self.send(Closed::Bytes).await;
        }
        let now = Instant::now();
        let max_delay = self.config.max_delay;
        let deadline = *self.deadline.get_or_insert_with(|| {
            // A `max_delay` too long to add to the clock: no deadline within
            // reach, so only size closes the batch.
            crate::time::saturating_add(now, max_delay)
        });
        let cost = self.cost_fn.cost(&message.item);
        self.batch.push(message, cost);
        self.batch_bytes = self.batch_bytes.saturating_add(bytes);
        if self.batch.len() >= self.config.max_items {
            self.send(Closed::Items).await;
        } else if self
            .config
            .max_bytes
            .is_some_and(|max_bytes| self.batch_bytes >= max_bytes)
        {
            self.send(Closed::Bytes).await;
        } else if now >= deadline {
            // A steady stream of items keeps `recv` ready ahead of the timer.
            self.send(Closed::Delay).await;
        }
    }

    /// Sends the open batch once the inner service is ready, without the
    /// items whose callers left, and answers its callers from a task of
    /// its own, so that the next batch fills meanwhile.
    async fn send(&mut self, closed: Closed) {
        self.deadline = None;
        self.batch_bytes = 0;
        let capacity = self.config.max_items.min(1024);
        let batch = std::mem::replace(&mut self.batch, Items::with_capacity(capacity));
        if batch.is_empty() {
            return;
        }
        let ready = self.inner.ready().await.map(|_| ()).map_err(Into::into);
        let inner = self.inner.clone();
        match ready {
            Ok(()) => {
                let sending = send_ready(
                    std::mem::replace(&mut self.inner, inner),
                    Arc::clone(&self.shared),
                    batch,
                    closed,
                );
                tokio::spawn(sending);
            }
            Err(error) => {
                let count = batch.len();
                fail(batch, BatchError::failed(count, error));
            }
        }
    }
}

type Sending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sends `batch` through `inner`, which `poll_ready` has readied, and
/// answers its callers.
fn send_ready<S, Item, Comb, Spl>(
    mut inner: S,
    shared: Arc<Shared<Comb, Spl>>,
    mut batch: Items<Item, Spl::Output>,
    closed: Closed,
) -> Sending
where
    S: Service<Comb::Request> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
    Item: Send + 'static,
    Comb: Combine<Item> + Send + Sync + 'static,
    Comb::Request: CarryCost + Send,
    Spl: Split<S::Response> + Send + Sync + 'static,
    Spl::Future: Send,
    Spl::Output: Send + 'static,
{
    batch.retain_wanted();
    if batch.is_empty() {
        return Box::pin(std::future::ready(()));
    }
    let cost = batch.cost();
    let mut request = shared.combine.combine(&batch.items);
    request.set_cost(cost);
    events::sent(batch.len(), cost, closed);
    let call = inner.call(request);
    Box::pin(async move {
        let count = batch.len();
        let answered: Result<S::Response, BoxError> = call.await.map_err(Into::into);
        let outcome = match answered {
            Ok(response) => split(&shared.split, response, count).await,
            Err(error) => Err(BatchError::failed(count, error)),
        };
        match outcome {
            Ok(outputs) => batch.answer(outputs),
            Err(error) if shared.split_failed && count > 1 => {
                events::failed(&error, count, true);
                let right = batch.split_off(count / 2);
                let left = resend(inner.clone(), Arc::clone(&shared), batch);
                let right = resend(inner, shared, right);
                tokio::join!(left, right);
            }
            Err(error) => fail(batch, error),
        }
    })
}

/// Drives `inner` to readiness again, then sends `batch`: a half of a
/// failed batch.
fn resend<S, Item, Comb, Spl>(
    mut inner: S,
    shared: Arc<Shared<Comb, Spl>>,
    batch: Items<Item, Spl::Output>,
) -> Sending
where
    S: Service<Comb::Request> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
    Item: Send + 'static,
    Comb: Combine<Item> + Send + Sync + 'static,
    Comb::Request: CarryCost + Send,
    Spl: Split<S::Response> + Send + Sync + 'static,
    Spl::Future: Send,
    Spl::Output: Send + 'static,
{
    Box::pin(async move {
        let ready: Result<(), BoxError> = inner.ready().await.map(|_| ()).map_err(Into::into);
        match ready {
            Ok(()) => send_ready(inner, shared, batch, Closed::Resplit).await,
            Err(error) => {
                let count = batch.len();
                fail(batch, BatchError::failed(count, error));
            }
        }
    })
}

/// One output per item, or the batch's error.
async fn split<Response, Spl>(
    split: &Spl,
    response: Response,
    count: usize,
) -> Result<Vec<Spl::Output>, BatchError>
where
    Spl: Split<Response>,
{
    match split.split(response, count).await {
        Ok(outputs) if outputs.len() == count => Ok(outputs),
        Ok(outputs) => Err(BatchError::split(
            count,
            Box::new(SplitCountMismatch {
                expected: count,
                got: outputs.len(),
            }),
        )),
        Err(error) => Err(BatchError::split(count, error.into())),
    }
}

/// Fails every item of `batch` with `error`.
fn fail<Item, Out>(batch: Items<Item, Out>, error: BatchError) {
    events::failed(&error, batch.len(), false);
    batch.fail(error);
}
