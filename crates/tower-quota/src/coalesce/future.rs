use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::CoalesceError;
use super::flights::{FlightKey, Flights, Outcome};
use crate::BoxError;

/// The response future of [`Coalesce`](super::Coalesce): a copy of the
/// response of the call the request joined or started.
///
/// Dropping it leaves the call; the call is aborted (and forgotten) when
/// its last caller leaves.
pub struct ResponseFuture {
    answer: Option<oneshot::Receiver<Outcome>>,
    call: Call,
}

enum Call {
    /// A shared call, registered in the map.
    Registered {
        flights: Arc<Flights>,
        key: FlightKey,
        id: u64,
    },
    /// A call of this request alone.
    Alone(AbortHandle),
    /// Answered, or never started.
    Done,
}

impl ResponseFuture {
    pub(super) fn registered(
        answer: oneshot::Receiver<Outcome>,
        flights: Arc<Flights>,
        key: FlightKey,
        id: u64,
    ) -> Self {
        ResponseFuture {
            answer: Some(answer),
            call: Call::Registered { flights, key, id },
        }
    }

    pub(super) fn alone(answer: oneshot::Receiver<Outcome>, task: AbortHandle) -> Self {
        ResponseFuture {
            answer: Some(answer),
            call: Call::Alone(task),
        }
    }

    pub(super) fn failed() -> Self {
        ResponseFuture {
            answer: None,
            call: Call::Done,
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Full<Bytes>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(answer) = this.answer.as_mut() else {
            return Poll::Ready(Err(CoalesceError::Closed.into()));
        };
        let outcome = std::task::ready!(Pin::new(answer).poll(cx));
        this.answer = None;
        this.call = Call::Done;
        Poll::Ready(match outcome {
            Ok(Ok(snapshot)) => Ok(snapshot.response()),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(CoalesceError::Closed.into()),
        })
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        // Closes this caller's channel first, so that `leave` sees it gone.
        drop(self.answer.take());
        match std::mem::replace(&mut self.call, Call::Done) {
            Call::Registered { flights, key, id } => flights.leave(&key, id),
            Call::Alone(task) => task.abort(),
            Call::Done => {}
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match self.call {
            Call::Registered { .. } => "shared",
            Call::Alone(_) => "alone",
            Call::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("call", &call)
            .finish()
    }
}
