//! Idle memory of every keyed map in tower-quota: a million keys each, then
//! idle, measured by the counting allocator.
//!
//! ```text
//! cargo run --release -p quota-bench -- idle-memory
//! ```
//!
//! The keyed maps are the [`SlidingWindowLayer`]'s store, the
//! [`RetryAfterLayer`]'s gates and the [`CircuitBreakerLayer`]'s breakers.
//! For each, one table: the empty layer, the layer once each of 1,000,000
//! keys made one call that it must remember (bytes per key), and the layer
//! once the keys stayed idle for longer than the map remembers them and one
//! other key was called until the map let go of them. A retry budget
//! ([`JitterBackoffLayer`](tower_quota::JitterBackoffLayer)'s
//! `RetryBudget`) is not keyed: one budget shared by the layer, whatever the
//! keys, so it has no idle memory to measure.
//!
//! Fails if, after idleness, any map holds more than [`IDLE_BOUND`] above
//! its empty layer. The run is real time: it waits out each map's window
//! once (about two minutes in all).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use stats_alloc::Region;
use tokio::time::Instant;
use tower::{Layer, Service, service_fn};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::replay::ReplayBody;
use tower_quota::sliding_window::Overloaded;
use tower_quota::{BoxError, RetryAfterLayer, SlidingWindowLayer};

use crate::GLOBAL;

const KEYS: usize = 1_000_000;

/// The memory any map may hold after idleness above its empty layer: the
/// one key still called, and the least capacity a map keeps (a sliding
/// window shard or a breaker shard holding one key, the gate map and its
/// expiry heap holding one gate). A few KiB are measured; 64 KiB leaves
/// room for allocator and hash-map sizing differences while staying below
/// 0.03% of any full map (about 300 MB).
const IDLE_BOUND: i64 = 64 * 1024;

/// The sliding window's quota, per key. The window is longer than filling
/// the store takes, so that every key is still held when it is full; the run
/// waits this long once.
const SLIDING_MAX_CALLS: u64 = 10;
const SLIDING_WINDOW: Duration = Duration::from_secs(30);

/// How long the circuit breaker keeps a key with a failure: the default
/// count window forgets calls this old. Longer than filling the map takes,
/// so that every key is still kept when it is full; the run waits this long
/// once.
const FORGET_AFTER: Duration = Duration::from_secs(30);

/// How long a gate is kept after its last use when it has nothing else to
/// remember (see the `retry_after` module docs: a minute), plus the reset
/// the provider reported: the run waits this long once.
const GATE_IDLE: Duration = Duration::from_secs(61);

/// The quota every key's provider reports: none left, reset in a second.
const SPENT_QUOTA: &str = r#""default";r=0;t=1"#;

/// Calls between two looks at the memory while the gates are evicted: the
/// gate map has no key count to watch.
const GATE_BATCH: usize = 1_000;

/// Polls a future that must be ready at once: the providers answer at once,
/// and no call in this benchmark waits.
fn at_once<F: Future>(future: F) -> Result<F::Output, BoxError> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err("a call that should complete at once is pending".into()),
    }
}

/// Readies `service` and calls it with `request`, at once.
fn call<S, R>(service: &mut S, request: R) -> Result<S::Response, BoxError>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    at_once(poll_fn(|cx| service.poll_ready(cx)))?.map_err(Into::into)?;
    at_once(service.call(request))?.map_err(Into::into)
}

/// Net bytes held since `region` began.
fn held(region: &Region<'_, std::alloc::System>) -> i64 {
    let change = region.change();
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

fn megabytes(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// What one map held after idleness, above its empty layer.
struct Idle {
    map: &'static str,
    above_empty: i64,
}

pub(crate) async fn run() -> Result<(), BoxError> {
    let results = [
        sliding_window().await?,
        retry_after().await?,
        circuit_breaker().await?,
    ];
    println!("| map | after idleness, above the empty layer | bound |");
    println!("|---|---:|---:|");
    for idle in &results {
        println!("| {} | {} B | {IDLE_BOUND} B |", idle.map, idle.above_empty);
    }
    let over: Vec<String> = results
        .iter()
        .filter(|idle| idle.above_empty > IDLE_BOUND)
        .map(|idle| format!("{}: {} B", idle.map, idle.above_empty))
        .collect();
    if !over.is_empty() {
        return Err(format!(
            "idle memory above the empty layer exceeds the bound of {IDLE_BOUND} B: {}",
            over.join(", ")
        )
        .into());
    }
    Ok(())
}

/// `SlidingWindowLayer`: one admission from each key, then idle. The other
/// key is called by a caller that does not wait (`max_wait` zero): beyond
/// its quota, its calls are refused at once, and every call, admitted or
/// refused, is an operation on the store that sweeps idle keys.
async fn sliding_window() -> Result<Idle, BoxError> {
    let region = Region::new(GLOBAL);
    let layer = SlidingWindowLayer::new(SLIDING_MAX_CALLS, SLIDING_WINDOW)?
        .max_wait(Duration::ZERO)
        .key_fn(|request: &Request<()>| request.uri().path().to_owned());
    let store = layer.get_store().clone();
    let provider = service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(())) });
    let mut service = layer.layer(provider);
    let empty = held(&region);

    let started = Instant::now();
    for index in 0..KEYS {
        call(&mut service, Request::get(format!("/k-{index}")).body(())?)?;
    }
    let fill_time = started.elapsed();
    let filled = held(&region);
    let filled_keys = store.key_count();
    if filled_keys != KEYS {
        return Err(format!(
            "{filled_keys} of {KEYS} keys held when full: the window must outlast the fill"
        )
        .into());
    }

    // Every key idle: its admission left the window (and the margin).
    tokio::time::sleep(SLIDING_WINDOW + Duration::from_millis(100)).await;
    let started = Instant::now();
    let (mut admitted, mut refused) = (0usize, 0usize);
    while store.key_count() > 1 {
        match call(&mut service, Request::get("/hot").body(())?) {
            Ok(_) => admitted += 1,
            Err(error) if error.is::<Overloaded>() => refused += 1,
            Err(error) => return Err(error),
        }
    }
    let sweep_time = started.elapsed();
    let idle = held(&region);

    println!(
        "SlidingWindowLayer, {KEYS} keys with one admission each \
         ({SLIDING_MAX_CALLS} per {SLIDING_WINDOW:?}, max_wait 0)\n"
    );
    println!("| state | keys held | bytes held | per key |");
    println!("|---|---:|---:|---:|");
    println!("| empty layer | 0 | {empty} B | |");
    println!(
        "| after one admission per key ({fill_time:.1?}) | {filled_keys} | {} | {} B |",
        megabytes(filled),
        (filled - empty) / filled_keys as i64
    );
    println!(
        "| idle, after {} calls to one other key, {admitted} admitted and {refused} refused \
         ({sweep_time:.1?}) | {} | {idle} B | |\n",
        admitted + refused,
        store.key_count()
    );
    drop(service);
    Ok(Idle {
        map: "SlidingWindowLayer (store)",
        above_empty: idle - empty,
    })
}

/// `RetryAfterLayer`: each key's provider reports a spent quota, so the
/// layer keeps a gate closed for it; then idle. The other key's provider
/// reports nothing. The layer does not say how many gates it keeps: the
/// other key is called in batches until a batch gives no memory back.
async fn retry_after() -> Result<Idle, BoxError> {
    type Body = Empty<Bytes>;
    let region = Region::new(GLOBAL);
    let layer =
        RetryAfterLayer::new().key_fn(|request: &Request<Body>| request.uri().path().to_owned());
    let provider = service_fn(|request: Request<ReplayBody<Body>>| async move {
        let response = if request.uri().path() == "/hot" {
            Response::new(())
        } else {
            Response::builder()
                .header("ratelimit", SPENT_QUOTA)
                .body(())?
        };
        Ok::<_, BoxError>(response)
    });
    let mut service = layer.layer(provider);
    let empty = held(&region);

    let started = Instant::now();
    for index in 0..KEYS {
        call(
            &mut service,
            Request::get(format!("/k-{index}")).body(Body::new())?,
        )?;
    }
    let fill_time = started.elapsed();
    let filled = held(&region);

    // Every gate has nothing left to remember: its quota reset and a minute
    // passed since its last use.
    tokio::time::sleep(GATE_IDLE + Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut calls = 0;
    let mut before = held(&region);
    loop {
        for _ in 0..GATE_BATCH {
            call(&mut service, Request::get("/hot").body(Body::new())?)?;
        }
        calls += GATE_BATCH;
        let now_held = held(&region);
        if now_held >= before {
            break;
        }
        before = now_held;
        if calls >= KEYS {
            return Err(format!("the gates still hold {now_held} B after {calls} calls").into());
        }
    }
    let sweep_time = started.elapsed();
    let idle = held(&region);

    println!("RetryAfterLayer, {KEYS} keys each answered with `RateLimit: {SPENT_QUOTA}`\n");
    println!("| state | bytes held | per key |");
    println!("|---|---:|---:|");
    println!("| empty layer | {empty} B | |");
    println!(
        "| after one spent quota per key ({fill_time:.1?}) | {} | {} B |",
        megabytes(filled),
        (filled - empty) / KEYS as i64
    );
    println!(
        "| idle, after {calls} calls to one other key, the last {GATE_BATCH} giving nothing back \
         ({sweep_time:.1?}) | {idle} B | |\n"
    );
    drop(service);
    Ok(Idle {
        map: "RetryAfterLayer (gates)",
        above_empty: idle - empty,
    })
}

/// `CircuitBreakerLayer`: one failure from each key, then idle; a million
/// keys with one success each first, which are never kept for long.
async fn circuit_breaker() -> Result<Idle, BoxError> {
    let region = Region::new(GLOBAL);
    let layer = CircuitBreakerLayer::new()
        .forget_after(FORGET_AFTER)?
        .max_keys(KEYS)?;
    // Every path fails but `/hot` and `/ok-*`; one key per path.
    let provider = service_fn(|request: Request<()>| async move {
        let path = request.uri().path();
        let status = if path == "/hot" || path.starts_with("/ok-") {
            200
        } else {
            503
        };
        Ok::<_, BoxError>(Response::builder().status(status).body(())?)
    });
    let mut service = layer
        .clone()
        .key_fn(|request: &Request<()>| request.uri().path().to_owned())
        .layer(provider);
    let mut call_path = |path: &str| -> Result<u16, BoxError> {
        Ok(call(&mut service, Request::get(path).body(())?)?
            .status()
            .as_u16())
    };
    let empty = held(&region);

    // Healthy keys are idle at once: the sweep keeps up with them.
    let started = Instant::now();
    let mut most_kept = 0;
    for index in 0..KEYS {
        call_path(&format!("/ok-{index}"))?;
        most_kept = most_kept.max(layer.key_count());
    }
    let healthy_time = started.elapsed();
    let healthy = held(&region);
    let healthy_kept = layer.key_count();

    let started = Instant::now();
    for index in 0..KEYS {
        call_path(&format!("/host-{index}"))?;
    }
    let filled = held(&region);
    let filled_keys = layer.key_count();
    let fill_time = started.elapsed();

    // Every key idle: its failure is older than forget_after.
    tokio::time::sleep(FORGET_AFTER + Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut hot_calls = 0usize;
    while layer.key_count() > 1 {
        call_path("/hot")?;
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
        "| after one failure per key ({fill_time:.1?}) | {filled_keys} | {} | {} B |",
        megabytes(filled),
        (filled - healthy) / filled_keys.saturating_sub(healthy_kept).max(1) as i64
    );
    println!(
        "| idle, after {hot_calls} calls to one other key ({sweep_time:.1?}) | {} | {idle} B | |\n",
        layer.key_count()
    );
    drop(service);
    drop(layer);
    Ok(Idle {
        map: "CircuitBreakerLayer (breakers)",
        above_empty: idle - empty,
    })
}
