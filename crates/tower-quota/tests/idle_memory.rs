//! Idle memory of every keyed map: a million keys each, then idle, measured
//! by a counting allocator on a paused clock.
//!
//! The keyed maps are the `SlidingWindowLayer`'s store, the
//! `RetryAfterLayer`'s gates and the `CircuitBreakerLayer`'s breakers. Each
//! test fills one map with 1,000,000 keys, lets the clock pass the time the
//! map remembers a key, calls one other key until the map lets go of the
//! others, and asserts that the layer then holds at most [`IDLE_BOUND`]
//! more than when it was empty. A retry budget is not keyed (one
//! `RetryBudget` shared by the layer), so it has no idle memory to measure.
//!
//! The allocator counts every thread of the process: the tests take turns
//! (`SERIAL`), and `scripts/test` runs each test binary with
//! `--test-threads=1` as well. `cargo run --release -p quota-bench --
//! idle-memory` measures the same maps in real time and prints their
//! tables.

use std::alloc::System;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, service_fn};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::replay::ReplayBody;
use tower_quota::sliding_window::Overloaded;
use tower_quota::{BoxError, RetryAfterLayer, SlidingWindowLayer};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One measurement at a time: the allocator's counts are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

const KEYS: usize = 1_000_000;

/// The most a layer may hold after idleness above its empty state: the one
/// key still called, and the least capacity a map keeps (a shard holding
/// one key, the gate map and its expiry heap holding one gate). A few KiB
/// are measured; the bound leaves room for hash-map sizing while staying
/// below 0.03% of any full map (300 MB and more).
const IDLE_BOUND: i64 = 64 * 1024;

/// The other key's calls, at most. The store and the breakers sweep about
/// 16 keys per call to any key, the gates up to 128: a million idle keys go
/// within about 63,000 calls.
const MOST_HOT_CALLS: usize = 200_000;

fn serial() -> MutexGuard<'static, ()> {
    // A failed test leaves nothing half-measured behind it.
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
}

/// Net bytes held since `region` began.
fn held(region: &Region<'_, System>) -> i64 {
    let change = region.change();
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

/// Polls a future that must be ready at once: the providers answer at once,
/// and no call in these tests waits.
fn at_once<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a call that should complete at once is pending"),
    }
}

/// Readies `service` and calls it with `request`, at once.
fn call<S, R>(service: &mut S, request: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    at_once(poll_fn(|cx| service.poll_ready(cx)))?;
    at_once(service.call(request))
}

/// The memory a map held at each step.
struct Measured {
    empty: i64,
    full: i64,
    idle: i64,
    hot_calls: usize,
}

impl Measured {
    fn check(&self, map: &str) {
        let per_key = (self.full - self.empty) / KEYS as i64;
        assert!(
            per_key > 0,
            "{map}: the full map should hold memory for its keys ({} B)",
            self.full - self.empty
        );
        assert!(
            self.idle - self.empty <= IDLE_BOUND,
            "{map}: after idleness and {} calls to one other key, {} B above the empty \
             layer ({} B; {per_key} B per key when full), more than the bound of {IDLE_BOUND} B",
            self.hot_calls,
            self.idle - self.empty,
            self.empty
        );
        println!(
            "| {map} | {} B | {:.1} MB ({per_key} B per key) | {} B after {} calls to one other key |",
            self.empty,
            self.full as f64 / 1e6,
            self.idle,
            self.hot_calls
        );
    }
}

#[test]
fn sliding_window_store_gives_back_a_million_idle_keys_without_their_traffic() {
    let _serial = serial();
    let window = Duration::from_secs(1);
    let measured = paused_runtime().block_on(async {
        let region = Region::new(GLOBAL);
        // The other key's caller does not wait: beyond its quota, calls are
        // refused at once, and each one still sweeps the store.
        let layer = SlidingWindowLayer::new(10, window)
            .expect("a valid quota")
            .max_wait(Duration::ZERO)
            .key_fn(|request: &Request<()>| request.uri().path().to_owned());
        let store = layer.get_store().clone();
        let provider = service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(())) });
        let mut service = layer.layer(provider);
        let get = |path: String| Request::get(path).body(()).expect("a valid path");
        let empty = held(&region);

        for index in 0..KEYS {
            call(&mut service, get(format!("/k-{index}"))).expect("a new key has room");
        }
        assert_eq!(store.key_count(), KEYS, "no time passed: every key is held");
        let full = held(&region);

        // Every admission leaves the window (and the margin, 1 ms).
        tokio::time::advance(window * 2).await;
        let mut hot_calls = 0;
        while store.key_count() > 1 {
            assert!(
                hot_calls < MOST_HOT_CALLS,
                "{} keys still held after {hot_calls} calls to another key",
                store.key_count()
            );
            if let Err(error) = call(&mut service, get("/hot".to_owned())) {
                assert!(error.is::<Overloaded>(), "{error}");
            }
            hot_calls += 1;
        }
        let idle = held(&region);
        drop(service);
        Measured {
            empty,
            full,
            idle,
            hot_calls,
        }
    });
    measured.check("SlidingWindowLayer");
}

#[test]
fn retry_after_gates_give_back_a_million_idle_keys_without_their_traffic() {
    type Body = Empty<Bytes>;
    let _serial = serial();
    let measured = paused_runtime().block_on(async {
        let region = Region::new(GLOBAL);
        let layer = RetryAfterLayer::new()
            .key_fn(|request: &Request<Body>| request.uri().path().to_owned());
        // Every key's provider reports a spent quota, so its gate closes;
        // the other key's reports nothing.
        let provider = service_fn(|request: Request<ReplayBody<Body>>| async move {
            let response = if request.uri().path() == "/hot" {
                Response::new(())
            } else {
                Response::builder()
                    .header("ratelimit", r#""default";r=0;t=1"#)
                    .body(())?
            };
            Ok::<_, BoxError>(response)
        });
        let mut service = layer.layer(provider);
        let get = |path: String| Request::get(path).body(Body::new()).expect("a valid path");
        let empty = held(&region);

        for index in 0..KEYS {
            call(&mut service, get(format!("/k-{index}"))).expect("a new key's gate is open");
        }
        let full = held(&region);

        // Every gate has nothing left to remember: its quota reset (1 s) and
        // a minute passed since its last use.
        tokio::time::advance(Duration::from_secs(62)).await;
        // The layer does not tell how many gates it keeps: call the other
        // key in batches until a batch gives no memory back.
        const BATCH: usize = 1_000;
        let mut hot_calls = 0;
        let mut before = held(&region);
        loop {
            for _ in 0..BATCH {
                call(&mut service, get("/hot".to_owned())).expect("an open gate");
            }
            hot_calls += BATCH;
            let now_held = held(&region);
            if now_held >= before {
                break;
            }
            before = now_held;
            assert!(
                hot_calls < MOST_HOT_CALLS,
                "{now_held} B still held after {hot_calls} calls to another key"
            );
        }
        let idle = held(&region);
        drop(service);
        Measured {
            empty,
            full,
            idle,
            hot_calls,
        }
    });
    measured.check("RetryAfterLayer");
}

#[test]
fn circuit_breakers_give_back_a_million_idle_keys_without_their_traffic() {
    let _serial = serial();
    let forget_after = Duration::from_secs(30);
    let measured = paused_runtime().block_on(async {
        let region = Region::new(GLOBAL);
        let layer = CircuitBreakerLayer::new()
            .forget_after(forget_after)
            .expect("a valid forget_after")
            .max_keys(KEYS)
            .expect("a valid max_keys");
        // Every path fails but `/hot`; one key per path.
        let provider = service_fn(|request: Request<()>| async move {
            let status = if request.uri().path() == "/hot" {
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
        let get = |path: String| Request::get(path).body(()).expect("a valid path");
        let empty = held(&region);

        for index in 0..KEYS {
            call(&mut service, get(format!("/k-{index}"))).expect("a closed breaker lets go");
        }
        assert_eq!(layer.key_count(), KEYS, "every failure is kept");
        let full = held(&region);

        // Every failure is older than forget_after.
        tokio::time::advance(forget_after + Duration::from_secs(1)).await;
        let mut hot_calls = 0;
        while layer.key_count() > 1 {
            assert!(
                hot_calls < MOST_HOT_CALLS,
                "{} keys still kept after {hot_calls} calls to another key",
                layer.key_count()
            );
            call(&mut service, get("/hot".to_owned())).expect("a healthy key");
            hot_calls += 1;
        }
        let idle = held(&region);
        drop(service);
        drop(layer);
        Measured {
            empty,
            full,
            idle,
            hot_calls,
        }
    });
    measured.check("CircuitBreakerLayer");
}
