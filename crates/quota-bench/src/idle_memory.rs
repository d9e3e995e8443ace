//! Idle memory of `CircuitBreakerLayer`: a million keys with one failure
//! each, then idle, measured by the counting allocator.
//!
//! ```text
//! cargo run --release -p quota-bench -- idle-memory
//! ```
//!
//! Prints its table; fails if the memory held after idleness exceeds
//! [`IDLE_BOUND`] above the empty layer's.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use stats_alloc::Region;
use tokio::time::Instant;
use tower::{Layer, Service, service_fn};
use tower_quota::BoxError;
use tower_quota::circuit_breaker::CircuitBreakerLayer;

use crate::GLOBAL;

const KEYS: usize = 1_000_000;

/// How long a key with a failure is kept: the default count window forgets
/// calls this old. Longer than filling the map takes, so that every key is
/// still kept when it is full; the run waits this long once.
const FORGET_AFTER: Duration = Duration::from_secs(30);

/// The memory held after idleness may exceed the empty layer's by this
/// much: the shards' minimum capacity and the one hot key.
const IDLE_BOUND: i64 = 64 * 1024;

/// Polls a future that is ready at once (the provider answers at once).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

/// Net bytes held since `region` began.
fn held(region: &Region<'_, std::alloc::System>) -> i64 {
    let change = region.change();
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

pub(crate) async fn run() -> Result<(), BoxError> {
    let region = Region::new(GLOBAL);
    let layer = CircuitBreakerLayer::new()
        .forget_after(FORGET_AFTER)?
        .max_keys(KEYS)?;
    // Every path fails but `/hot` and `/ok-*`; one key per path.
    let provider = service_fn(|request: http::Request<()>| async move {
        let path = request.uri().path();
        let status = if path == "/hot" || path.starts_with("/ok-") {
            200
        } else {
            503
        };
        Ok::<_, BoxError>(http::Response::builder().status(status).body(())?)
    });
    let mut service = layer
        .clone()
        .key_fn(|request: &http::Request<()>| request.uri().path().to_owned())
        .layer(provider);
    let mut call = |path: &str| -> Result<u16, BoxError> {
        now(std::future::poll_fn(|cx| service.poll_ready(cx)))?;
        let request = http::Request::get(path).body(())?;
        Ok(now(service.call(request))?.status().as_u16())
    };
    let empty = held(&region);

    // Healthy keys are idle at once: the sweep keeps up with them.
    let started = Instant::now();
    let mut most_kept = 0;
    for index in 0..KEYS {
        call(&format!("/ok-{index}"))?;
        most_kept = most_kept.max(layer.key_count());
    }
    let healthy_time = started.elapsed();
    let healthy = held(&region);
    let healthy_kept = layer.key_count();

    let started = Instant::now();
    for index in 0..KEYS {
        call(&format!("/host-{index}"))?;
    }
    let filled = held(&region);
    let filled_keys = layer.key_count();
    let fill_time = started.elapsed();

    // Every key idle: its failure is older than forget_after.
    tokio::time::sleep(FORGET_AFTER + Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut hot_calls = 0usize;
    while layer.key_count() > 1 {
        call("/hot")?;
        hot_calls += 1;
    }
    let sweep_time = started.elapsed();
    let idle = held(&region);

    println!(
        "CircuitBreakerLayer, {KEYS} keys with one failure each (forget_after {FORGET_AFTER:?})\n"
    );
    println!("| state | keys kept | bytes held | per key |");
    println!("|---|---:|---:|---:|");
    println!("| empty layer | 0 | {empty} B | |");
    println!(
        "| after one success per key ({healthy_time:.1?}; at most {most_kept} kept) | {healthy_kept} | {healthy} B | |"
    );
    println!(
        "| after one failure per key ({fill_time:.1?}) | {filled_keys} | {:.1} MB | {} B |",
        filled as f64 / 1e6,
        (filled - healthy) / filled_keys.saturating_sub(healthy_kept).max(1) as i64
    );
    println!(
        "| idle, after {hot_calls} calls to one other key ({sweep_time:.1?}) | {} | {idle} B | |",
        layer.key_count()
    );
    println!(
        "\nafter idleness: {} B above the empty layer (bound {IDLE_BOUND} B)",
        idle - empty
    );
    if idle - empty > IDLE_BOUND {
        return Err(format!(
            "idle memory {} B above the empty layer exceeds the bound of {IDLE_BOUND} B",
            idle - empty
        )
        .into());
    }
    drop(service);
    drop(layer);
    Ok(())
}
