//! Admissions in a loop, one task, for counting instructions with callgrind:
//! a count that the same binary and input repeat within a few tens of
//! instructions per request (the clock still moves, so a window's slices
//! roll over at slightly different admissions), whatever else the machine
//! is doing, where criterion's times on a shared 2-core machine move by
//! more than a few percent between runs.
//!
//! ```text
//! cargo build --release -p quota-bench --example instructions
//! for n in 10000 20000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/instructions stack $n 2>&1 | grep refs
//! done
//! ```
//!
//! The difference of the two totals divided by 10,000 is the instructions
//! per request, the setup taken out. Modes, as in `benches/admission.rs`:
//!
//! - `store`: `MemoryStore::acquire` alone, the global key;
//! - `layer`: `SlidingWindowLayer` with its defaults over a no-op service
//!   (`poll_ready`, `call`, the response future);
//! - `keyed`: the same keyed by a `u64`, 100,000 keys live, each admitted
//!   in turn, as the benchmark's keyed row (a window of a second);
//! - `http`, `pacing`, `retry-after`, `breaker`: the README stack built up
//!   from inside, one layer more in each (`http`: the service and the
//!   loop alone; `pacing`: by host with `HttpFeedback`; then
//!   `RetryAfterLayer`; then `CircuitBreakerLayer`), so that the
//!   differences between modes are each layer's part of `stack`;
//! - `stack`: the README stack (backoff, breaker, Retry-After, pacing by
//!   host with `HttpFeedback`) over a service that answers 200 without
//!   headers, one GET per iteration;
//! - `openai`: the same stack, its service answering with an OpenAI-style
//!   set of eight headers, five of them rate-limit fields;
//! - `least`, `least-one-copy`: the least the same four jobs do
//!   (`benches/support/least_stack.rs`), as `stack`: a copy of each request
//!   kept by the backoff and the Retry-After gate, or by the backoff alone.
//!
//! Quotas are huge and the window is 1 ms, so no admission waits and the
//! logs stay small. Under callgrind the program runs some fifty times
//! slower, and time-dependent paths (a window's slices rolling over) run
//! more often than at full speed: compare counts of one mode between two
//! builds, not with wall-clock figures.

use std::convert::Infallible;
use std::future::ready;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Empty;
use tower::{Service, ServiceBuilder, service_fn};
use tower_quota::replay::ReplayBody;
use tower_quota::sliding_window::{MemoryStore, Store};
use tower_quota::{
    CircuitBreakerLayer, HostKey, HttpFeedback, JitterBackoffLayer, Key, RetryAfterLayer,
    SlidingWindowLayer,
};

#[path = "../src/fixtures.rs"]
mod fixtures;
#[path = "../benches/support/least.rs"]
#[allow(dead_code)]
mod least;
#[path = "../benches/support/least_stack.rs"]
mod least_stack;
#[path = "../src/poll.rs"]
mod poll;

use poll::poll_now;

/// `poll_ready`, `call` and the response future, by hand.
fn admit<S: Service<R>, R>(service: &mut S, request: R) -> Result<S::Response, S::Error> {
    poll_now(std::future::poll_fn(|cx| service.poll_ready(cx)))?;
    poll_now(service.call(request))
}

fn main() -> Result<(), tower_quota::BoxError> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "stack".to_owned());
    let iterations: u32 = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let _entered = runtime.enter();
    let layer = SlidingWindowLayer::new(1 << 40, Duration::from_millis(1))?;
    match mode.as_str() {
        "store" => {
            let store = MemoryStore::new();
            let limits = layer.limits().clone();
            for _ in 0..iterations {
                poll_now(store.acquire(Key::GLOBAL, 1, &limits))?;
            }
        }
        "layer" => {
            let mut service =
                tower::Layer::layer(&layer, service_fn(|(): ()| ready(Ok::<_, Infallible>(()))));
            for _ in 0..iterations {
                admit(&mut service, ())?;
            }
        }
        "stack" | "openai" => {
            // Each response gets its own copy of them, as from a client; the
            // service holds none, so that its clones cost what the
            // benchmark's do.
            static HEADERS: OnceLock<HeaderMap> = OnceLock::new();
            let headers = HEADERS.get_or_init(|| match mode.as_str() {
                "openai" => fixtures::openai_headers(),
                _ => HeaderMap::new(),
            });
            let mut stack = ServiceBuilder::new()
                .layer(JitterBackoffLayer::new())
                .layer(CircuitBreakerLayer::new())
                .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
                .layer(
                    layer
                        .key_fn(HostKey)
                        .usage_fn(HttpFeedback)
                        .max_wait(Duration::from_secs(30)),
                )
                .service(service_fn(
                    move |_: Request<ReplayBody<ReplayBody<Empty<Bytes>>>>| {
                        let mut response = Response::new(Empty::<Bytes>::new());
                        if !headers.is_empty() {
                            *response.headers_mut() = headers.clone();
                        }
                        ready(Ok::<_, Infallible>(response))
                    },
                ));
            let uri: http::Uri = "http://api.example.com/v1/items".parse()?;
            for _ in 0..iterations {
                let request = Request::get(uri.clone()).body(Empty::<Bytes>::new())?;
                admit(&mut stack, request)?;
            }
        }
        "least" | "least-one-copy" => {
            let mut stack = least_stack::least_stack(
                service_fn(|_: Request<Empty<Bytes>>| {
                    ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
                }),
                1 << 40,
                Duration::from_millis(1),
                mode == "least",
            );
            let uri: http::Uri = "http://api.example.com/v1/items".parse()?;
            for _ in 0..iterations {
                let request = Request::get(uri.clone()).body(Empty::<Bytes>::new())?;
                admit(&mut stack, request)?;
            }
        }
        "keyed" => {
            let keyed_layer = SlidingWindowLayer::new(1 << 40, Duration::from_secs(1))?;
            let mut keyed = tower::Layer::layer(
                &keyed_layer.key_fn(|id: &u64| Key::from(*id)),
                service_fn(|_: u64| ready(Ok::<_, Infallible>(()))),
            );
            for id in 0..100_000 {
                admit(&mut keyed, id)?;
            }
            let mut next = 0;
            for _ in 0..iterations {
                next = (next + 1) % 100_000;
                admit(&mut keyed, next)?;
            }
        }
        "http" | "pacing" | "retry-after" | "breaker" => {
            let pacing = layer
                .key_fn(HostKey)
                .usage_fn(HttpFeedback)
                .max_wait(Duration::from_secs(30));
            let uri: http::Uri = "http://api.example.com/v1/items".parse()?;
            // The README stack's inner layers over the stack's service,
            // without the headers: each mode adds the next layer out.
            macro_rules! run {
                ($builder:expr, $body:ty) => {{
                    let mut stack = $builder.service(service_fn(|_: Request<$body>| {
                        ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
                    }));
                    for _ in 0..iterations {
                        let request = Request::get(uri.clone()).body(Empty::<Bytes>::new())?;
                        admit(&mut stack, request)?;
                    }
                }};
            }
            match mode.as_str() {
                "http" => run!(ServiceBuilder::new(), Empty<Bytes>),
                "pacing" => run!(ServiceBuilder::new().layer(pacing), Empty<Bytes>),
                "retry-after" => run!(
                    ServiceBuilder::new()
                        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
                        .layer(pacing),
                    ReplayBody<Empty<Bytes>>
                ),
                _ => run!(
                    ServiceBuilder::new()
                        .layer(CircuitBreakerLayer::new())
                        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
                        .layer(pacing),
                    ReplayBody<Empty<Bytes>>
                ),
            }
        }
        other => {
            return Err(format!(
                "unknown mode {other:?}: store, layer, keyed, http, pacing, retry-after, \
                 breaker, stack or openai"
            )
            .into());
        }
    }
    eprintln!("{mode}: {iterations} iterations");
    Ok(())
}
