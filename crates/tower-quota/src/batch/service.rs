use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::{BatchError, ResponseFuture};
use crate::BoxError;

/// One item on its way to the worker, with its caller's reply channel and
/// its place in the `max_pending` bound (given back when it is answered).
pub(super) struct Message<Item, Out> {
    pub(super) item: Item,
    pub(super) reply: oneshot::Sender<Result<Out, BatchError>>,
    pub(super) permit: OwnedSemaphorePermit,
}

/// The handle callers send single items through; made by
/// [`BatchLayer`](super::BatchLayer).
///
/// Cheap to clone: every clone feeds the same worker, which owns the inner
/// service. `poll_ready` is ready while fewer than `max_pending` items are
/// queued or in flight; `call` sends the item and returns a future of its
/// own output.
pub struct Batch<Item, Out> {
    sender: mpsc::UnboundedSender<Message<Item, Out>>,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
    max_pending: usize,
}

impl<Item, Out> Batch<Item, Out> {
    pub(super) fn new(max_pending: usize) -> (Self, mpsc::UnboundedReceiver<Message<Item, Out>>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let semaphore = PollSemaphore::new(Arc::new(Semaphore::new(max_pending)));
        let service = Batch {
            sender,
            semaphore,
            permit: None,
            max_pending,
        };
        (service, receiver)
    }

    /// How many more items may be queued before `poll_ready` waits.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

impl<Item, Out> Service<Item> for Batch<Item, Out> {
    type Response = Out;
    type Error = BoxError;
    type Future = ResponseFuture<Out>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.sender.is_closed() {
            return Poll::Ready(Err(BatchError::Closed.into()));
        }
        if self.permit.is_none() {
            match std::task::ready!(self.semaphore.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                // The semaphore is never closed; treat it as the worker gone.
                None => return Poll::Ready(Err(BatchError::Closed.into())),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, item: Item) -> Self::Future {
        let permit = match self.permit.take() {
            Some(permit) => permit,
            None => match self.semaphore.clone_inner().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    return ResponseFuture::failed(BatchError::QueueFull {
                        max_pending: self.max_pending,
                    });
                }
            },
        };
        let (reply, answer) = oneshot::channel();
        let message = Message {
            item,
            reply,
            permit,
        };
        if self.sender.send(message).is_err() {
            return ResponseFuture::failed(BatchError::Closed);
        }
        ResponseFuture::waiting(answer)
    }
}

impl<Item, Out> Clone for Batch<Item, Out> {
    /// A handle to the same worker; its readiness is its own.
    fn clone(&self) -> Self {
        Batch {
            sender: self.sender.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
            max_pending: self.max_pending,
        }
    }
}

impl<Item, Out> fmt::Debug for Batch<Item, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("max_pending", &self.max_pending)
            .field("available", &self.available())
            .field("ready", &self.permit.is_some())
            .finish()
    }
}
