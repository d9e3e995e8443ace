use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::BatchError;
use crate::BoxError;

/// The output of one item sent through a [`Batch`](super::Batch).
///
/// Dropping it before the item's batch is sent takes the item out of the
/// batch; dropping it later only discards the output.
pub struct ResponseFuture<Out> {
    state: State<Out>,
}

enum State<Out> {
    Failed(Option<BatchError>),
    Waiting(oneshot::Receiver<Result<Out, BatchError>>),
}

impl<Out> ResponseFuture<Out> {
    pub(super) fn failed(error: BatchError) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
        }
    }

    pub(super) fn waiting(answer: oneshot::Receiver<Result<Out, BatchError>>) -> Self {
        ResponseFuture {
            state: State::Waiting(answer),
        }
    }
}

impl<Out> Future for ResponseFuture<Out> {
    type Output = Result<Out, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Failed(error) => {
                Poll::Ready(Err(error.take().unwrap_or(BatchError::Closed).into()))
            }
            State::Waiting(answer) => match std::task::ready!(Pin::new(answer).poll(cx)) {
                Ok(Ok(output)) => Poll::Ready(Ok(output)),
                Ok(Err(error)) => Poll::Ready(Err(error.into())),
                // The worker dropped the reply: it is gone.
                Err(_) => Poll::Ready(Err(BatchError::Closed.into())),
            },
        }
    }
}

impl<Out> fmt::Debug for ResponseFuture<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Failed(_) => "failed",
            State::Waiting(_) => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
