//! Polling by hand, for the benchmarks: the binary's `memory` command,
//! `benches/admission.rs` and `examples/instructions.rs` (the last two
//! include this file by its path).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls a future that completes without waiting (an admission that has
/// room, a service that answers at once), spinning otherwise.
pub(crate) fn poll_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}
