//! The response body that holds its request's slot until it ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Lease;

pin_project! {
    /// A response body that holds its request's concurrency slot: the slot
    /// is given back when the body ends, fails or is dropped. A body that
    /// is empty from the start gives it back at once.
    pub struct LeasedBody<B> {
        #[pin]
        inner: B,
        lease: Option<Lease>,
    }
}

impl<B: Body> LeasedBody<B> {
    /// Wraps `inner`, holding `lease` until it ends.
    pub fn new(inner: B, lease: Lease) -> Self {
        let lease = (!inner.is_end_stream()).then_some(lease);
        LeasedBody { inner, lease }
    }
}

impl<B> LeasedBody<B> {
    /// Whether the body still holds its slot.
    pub fn holds_slot(&self) -> bool {
        self.lease.is_some()
    }

    /// The wrapped body; the slot is given back.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for LeasedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            *this.lease = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for LeasedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedBody")
            .field("inner", &self.inner)
            .field("holds_slot", &self.lease.is_some())
            .finish()
    }
}
