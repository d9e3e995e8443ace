//! The cost of one admission, side by side with tower, governor and
//! tower-resilience, on the same machine in the same run.
//!
//! ```text
//! CARGO_TARGET_DIR=target cargo bench -p quota-bench
//! cargo run --release -p quota-bench -- micro     # the table in RESULTS.md
//! ```
//!
//! - `admit_one_task`: one admission when the limit is not hit, polled by
//!   hand (`poll_ready`, `call`, one poll of the future with a no-op waker)
//!   on an always-ready no-op service.
//! - `admit_two_tasks`: the same limiter shared by two tasks on a two-worker
//!   runtime, each admitting in a loop; one iteration is one admission by
//!   each task (two in all). Beside it, the two tasks on one store, each
//!   admitting 64 keys of its own in turn, and the README stack shared by
//!   two tasks sending to hosts of their own (with one task alone for
//!   reference).
//! - `stack_noop_http`: the whole stack over a no-op HTTP service:
//!   `JitterBackoff → RetryAfter → SlidingWindow` and the README stack
//!   against tower's `RateLimit → Retry`, and the least the README stack's
//!   four jobs do (`support/least_stack.rs`) for reference.
//! - `queued_waiters`: one key with N waiters always queued, on a paused
//!   clock: the cost of one admission and the wake-up of the next waiter;
//!   beside it, N tasks taking turns at one permit of a tokio `Semaphore`:
//!   what waking the next of N waiting tasks costs the runtime alone.
// Benchmarks measure wall time, which is what std's clock is for.
#![allow(clippy::disallowed_types, missing_docs)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, Request, Response};
use http_body_util::Empty;
use tower::limit::RateLimit;
use tower::limit::rate::Rate;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_quota::replay::ReplayBody;
use tower_quota::sliding_window::{MemoryStore, Store};
use tower_quota::{
    CircuitBreakerLayer, HostKey, HttpFeedback, JitterBackoffLayer, Key, RetryAfterLayer,
    SlidingWindowLayer,
};
use tower_resilience::ratelimiter::{RateLimiterLayer, WindowType};

#[path = "../src/fixtures.rs"]
mod fixtures;
#[path = "support/least.rs"]
mod least;
#[path = "support/least_stack.rs"]
mod least_stack;
#[path = "../src/poll.rs"]
mod poll;
mod support;

use fixtures::openai_headers;
use poll::poll_now;

/// One criterion row, then its allocations counted.
fn row<O>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group_name: &str,
    bench: &str,
    mut routine: impl FnMut() -> O,
) {
    group.bench_function(bench, |b| b.iter(&mut routine));
    support::count_allocations(group_name, bench, routine);
}

/// A quota no benchmark reaches: admissions are never limited. The window
/// is short so that sliding logs stay small.
const HUGE: u64 = 1 << 40;
const LOG_WINDOW: Duration = Duration::from_millis(1);
/// Keys live in the keyed row.
const LIVE_KEYS: u64 = 100_000;
/// Keys of each task in the two-task keyed row.
const KEYS_PER_TASK: u64 = 64;
/// tower-resilience preallocates its log with this capacity.
const RESILIENCE_LIMIT: usize = 1_000_000;

fn noop()
-> impl Service<(), Response = (), Error = Infallible, Future = Ready<Result<(), Infallible>>>
+ Clone
+ Send
+ 'static {
    service_fn(|(): ()| ready(Ok::<_, Infallible>(())))
}

/// `poll_ready`, `call` and the response future, by hand.
fn admit<S: Service<R>, R>(service: &mut S, request: R) -> Result<S::Response, S::Error> {
    poll_now(std::future::poll_fn(|cx| service.poll_ready(cx)))?;
    poll_now(service.call(request))
}

fn sliding_window_layer() -> SlidingWindowLayer {
    SlidingWindowLayer::new(HUGE, LOG_WINDOW).expect("valid quota")
}

fn resilience_layer() -> RateLimiterLayer {
    RateLimiterLayer::builder()
        .limit_for_period(RESILIENCE_LIMIT)
        .refresh_period(LOG_WINDOW)
        .window_type(WindowType::SlidingLog)
        .timeout_duration(Duration::from_secs(1))
        .build()
        .expect("valid limiter")
}

fn governor_direct() -> governor::DefaultDirectRateLimiter {
    governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX))
}

fn admit_one_task(c: &mut Criterion) {
    // tower's RateLimit creates its timer at construction: a runtime must be entered.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("admit_one_task");
    group.throughput(Throughput::Elements(1));

    const GROUP: &str = "admit_one_task";
    let mut ours = tower::Layer::layer(&sliding_window_layer(), noop());
    row(&mut group, GROUP, "tower_quota_sliding_window", || {
        admit(&mut ours, ())
    });

    // Keyed by an integer from the request, 100,000 keys live: each
    // iteration admits the next key in turn (a hit, never a new key). The
    // window is a second, so that no key goes idle (and is evicted) before
    // its turn comes again.
    let keyed_layer = SlidingWindowLayer::new(HUGE, Duration::from_secs(1)).expect("valid quota");
    let mut keyed = tower::Layer::layer(
        &keyed_layer.key_fn(|id: &u64| Key::from(*id)),
        service_fn(|_: u64| ready(Ok::<_, Infallible>(()))),
    );
    for id in 0..LIVE_KEYS {
        admit(&mut keyed, id).expect("room for every key");
    }
    let mut next = 0;
    row(&mut group, GROUP, "tower_quota_keyed", || {
        next = (next + 1) % LIVE_KEYS;
        admit(&mut keyed, next)
    });

    let store = MemoryStore::new();
    let limits = sliding_window_layer().limits().clone();
    row(&mut group, GROUP, "tower_quota_memory_store", || {
        poll_now(store.acquire(Key::GLOBAL, 1, &limits))
    });

    let mut tower_rate = RateLimit::new(noop(), Rate::new(HUGE, Duration::from_secs(1)));
    row(&mut group, GROUP, "tower_rate_limit", || {
        admit(&mut tower_rate, ())
    });

    let governor = governor_direct();
    row(&mut group, GROUP, "governor_check", || {
        black_box(governor.check())
    });

    // governor's keyed limiter (a GCRA cell per key in a DashMap) on the
    // same 100,000 `u64` keys in turn: what admitting by key costs when
    // the keys' state is larger than the caches.
    let governor_keyed = governor::RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::MAX));
    for id in 0..LIVE_KEYS {
        black_box(governor_keyed.check_key(&id)).expect("room for every key");
    }
    let mut next_governed = 0;
    row(&mut group, GROUP, "governor_keyed", || {
        next_governed = (next_governed + 1) % LIVE_KEYS;
        black_box(governor_keyed.check_key(&next_governed))
    });

    // For reference: the least an exact log does by key, on the same keys
    // in turn with the same window, each slot held a window past its
    // answer: what the keyed row's own work sits on.
    let least_keyed = least::LeastKeyedLog::new(
        usize::try_from(HUGE).unwrap_or(usize::MAX),
        Duration::from_secs(1),
    );
    for id in 0..LIVE_KEYS {
        let admitted = least_keyed.admit(id).expect("room for every key");
        least_keyed.answer(id, admitted);
    }
    let mut next_least = 0;
    row(&mut group, GROUP, "least_exact_keyed_log_answered", || {
        next_least = (next_least + 1) % LIVE_KEYS;
        let admitted = least_keyed.admit(next_least);
        if let Some(id) = admitted {
            least_keyed.answer(next_least, id);
        }
        black_box(admitted)
    });

    // For reference: the least an exact sliding log does (one lock, one
    // clock reading, a queue of instants), alone and with the answer that
    // holds the slot a window past it (a second lock and clock reading).
    let least = least::LeastLog::new(usize::try_from(HUGE).unwrap_or(usize::MAX), LOG_WINDOW);
    row(&mut group, GROUP, "least_exact_log", || {
        black_box(least.admit())
    });
    let least_answered =
        least::LeastLog::new(usize::try_from(HUGE).unwrap_or(usize::MAX), LOG_WINDOW);
    row(&mut group, GROUP, "least_exact_log_answered", || {
        let admitted = least_answered.admit();
        if let Some(id) = admitted {
            least_answered.answer(id);
        }
        black_box(admitted)
    });

    // For reference: reading the clock that tower-quota, tower and
    // tower-resilience use (governor reads quanta's TSC clock instead).
    row(
        &mut group,
        GROUP,
        "tokio_instant_now",
        tokio::time::Instant::now,
    );

    let mut resilience = tower::Layer::layer(&resilience_layer(), noop());
    row(&mut group, GROUP, "tower_resilience_sliding_log", || {
        admit(&mut resilience, ())
    });
    group.finish();
}

/// Two tasks on `runtime`'s workers, each running `task` for `iters`
/// iterations: the wall time until both are done.
fn contend<F, Fut>(runtime: &tokio::runtime::Runtime, iters: u64, task: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    runtime.block_on(async {
        let start = Instant::now();
        let tasks = [tokio::spawn(task(iters)), tokio::spawn(task(iters))];
        for handle in tasks {
            handle.await.expect("task");
        }
        start.elapsed()
    })
}

/// A row of two tasks, each calling `step` on `shared` once per iteration.
fn in_two_tasks<S: Send + Sync + 'static>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    bench: &str,
    shared: Arc<S>,
    step: fn(&S),
) {
    group.bench_function(bench, |b| {
        b.iter_custom(|iters| {
            contend(runtime, iters, |iters| {
                let shared = shared.clone();
                async move {
                    for _ in 0..iters {
                        step(&shared);
                    }
                }
            })
        })
    });
}

/// Two tasks on two worker threads share one limiter; the time of one
/// iteration is the wall time for each task to make one admission.
fn admit_two_tasks(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("admit_two_tasks");
    group.throughput(Throughput::Elements(2));

    let ours = tower::Layer::layer(&sliding_window_layer(), noop());
    group.bench_function("tower_quota_sliding_window", |b| {
        b.iter_custom(|iters| {
            contend(&runtime, iters, |iters| {
                let mut service = ours.clone();
                async move {
                    for _ in 0..iters {
                        let _ = service.ready().await.expect("ready").call(()).await;
                    }
                }
            })
        })
    });

    // One store, each task admitting keys of its own (64 each, in turn):
    // what the two tasks share is the store, its shards and their locks,
    // and a key's shard only by chance.
    let keyed = tower::Layer::layer(
        &sliding_window_layer().key_fn(|id: &u64| Key::from(*id)),
        service_fn(|_: u64| ready(Ok::<_, Infallible>(()))),
    );
    let task = AtomicU64::new(0);
    group.bench_function("tower_quota_keys_per_task", |b| {
        b.iter_custom(|iters| {
            contend(&runtime, iters, |iters| {
                let mut service = keyed.clone();
                let first = task.fetch_add(1, Ordering::Relaxed) % 2 * KEYS_PER_TASK;
                async move {
                    for i in 0..iters {
                        let key = first + i % KEYS_PER_TASK;
                        let _ = service.ready().await.expect("ready").call(key).await;
                    }
                }
            })
        })
    });

    // The README stack, cloned into each task, each task sending to a host
    // of its own; beside it, one task alone on the same runtime (its time
    // per iteration is one request): a stack that lets the two tasks run
    // side by side takes about the one task's time per iteration.
    let stack = readme_stack(HeaderMap::new());
    let hosts: [http::Uri; 2] = [
        "http://api-0.example.com/v1/items".parse().expect("uri"),
        "http://api-1.example.com/v1/items".parse().expect("uri"),
    ];
    group.bench_function("readme_stack_own_hosts", |b| {
        b.iter_custom(|iters| {
            let task = AtomicU64::new(0);
            contend(&runtime, iters, |iters| {
                let at = task.fetch_add(1, Ordering::Relaxed) % 2;
                send(stack.clone(), hosts[at as usize].clone(), iters)
            })
        })
    });
    group.bench_function("readme_stack_one_task", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                tokio::spawn(send(stack.clone(), hosts[0].clone(), iters))
                    .await
                    .expect("task");
                start.elapsed()
            })
        })
    });

    // Unshared, tower's RateLimit would give each task a quota of its own:
    // shared as users must share it, behind a Buffer.
    let tower_rate = runtime.block_on(async {
        tower::buffer::Buffer::new(
            RateLimit::new(noop(), Rate::new(HUGE, Duration::from_secs(1))),
            1024,
        )
    });
    group.bench_function("tower_rate_limit_buffered", |b| {
        b.iter_custom(|iters| {
            contend(&runtime, iters, |iters| {
                let mut service = tower_rate.clone();
                async move {
                    for _ in 0..iters {
                        let _ = service.ready().await.expect("ready").call(()).await;
                    }
                }
            })
        })
    });

    // The least an exact log does (see `admit_one_task`), each slot held a
    // window past its answer: the floor of an exact log behind one lock.
    let least = Arc::new(least::LeastLog::new(
        usize::try_from(HUGE).unwrap_or(usize::MAX),
        LOG_WINDOW,
    ));
    in_two_tasks(
        &mut group,
        &runtime,
        "least_exact_log_answered",
        least,
        |least| {
            if let Some(id) = black_box(least.admit()) {
                least.answer(id);
            }
        },
    );

    let governor = Arc::new(governor_direct());
    in_two_tasks(
        &mut group,
        &runtime,
        "governor_check",
        governor,
        |governor| {
            let _ = black_box(governor.check());
        },
    );

    let resilience = tower::Layer::layer(&resilience_layer(), noop());
    group.bench_function("tower_resilience_sliding_log", |b| {
        b.iter_custom(|iters| {
            contend(&runtime, iters, |iters| {
                let mut service = resilience.clone();
                async move {
                    for _ in 0..iters {
                        let _ = service.ready().await.expect("ready").call(()).await;
                    }
                }
            })
        })
    });
    group.finish();
}

/// tower's retry, as users write it for HTTP: clone the request's parts,
/// retry 5xx and errors up to 3 attempts within a `TpsBudget`.
#[derive(Clone)]
struct TowerRetryPolicy {
    attempts: u32,
    budget: Arc<TpsBudget>,
}

impl<E> tower::retry::Policy<Request<Empty<Bytes>>, Response<Empty<Bytes>>, E>
    for TowerRetryPolicy
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<Empty<Bytes>>,
        result: &mut Result<Response<Empty<Bytes>>, E>,
    ) -> Option<Self::Future> {
        let failed = result
            .as_ref()
            .map_or(true, |response| response.status().is_server_error());
        if !failed {
            self.budget.deposit();
            return None;
        }
        if self.attempts <= 1 || !self.budget.withdraw() {
            return None;
        }
        self.attempts -= 1;
        Some(tokio::time::sleep(Duration::from_millis(100)))
    }

    fn clone_request(&mut self, request: &Request<Empty<Bytes>>) -> Option<Request<Empty<Bytes>>> {
        let mut clone = Request::new(Empty::new());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

/// Sends `iters` body-less GETs to `uri` through `service`, one at a time.
async fn send<S>(mut service: S, uri: http::Uri, iters: u64)
where
    S: Service<Request<Empty<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..iters {
        let request = Request::get(uri.clone())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let _ = service.ready().await.expect("ready").call(request).await;
    }
}

/// The README stack over a no-op service answering 200 with `headers`
/// (shared, so that cloning the service, as the layers do per request,
/// copies no headers).
fn readme_stack(
    headers: HeaderMap,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Empty<Bytes>>,
    Error = tower_quota::BoxError,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let headers = Arc::new(headers);
    ServiceBuilder::new()
        .layer(JitterBackoffLayer::new())
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
        .layer(
            sliding_window_layer()
                .key_fn(HostKey)
                .usage_fn(HttpFeedback)
                .max_wait(Duration::from_secs(30)),
        )
        .service(service_fn(
            move |_: Request<ReplayBody<ReplayBody<Empty<Bytes>>>>| {
                // Each response gets its own headers, as from a client: a
                // copy, counted with the stack's allocations (2 when there
                // are headers, none without).
                let mut response = Response::new(Empty::<Bytes>::new());
                *response.headers_mut() = HeaderMap::clone(&headers);
                ready(Ok::<_, Infallible>(response))
            },
        ))
}

fn stack_noop_http(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("stack_noop_http");
    group.throughput(Throughput::Elements(1));
    let uri: http::Uri = "http://api.example.com/v1/items".parse().expect("uri");
    let request = || {
        Request::get(uri.clone())
            .body(Empty::<Bytes>::new())
            .expect("request")
    };

    const GROUP: &str = "stack_noop_http";
    let mut ours = ServiceBuilder::new()
        .layer(JitterBackoffLayer::new())
        .layer(RetryAfterLayer::new())
        .layer(sliding_window_layer())
        .service(service_fn(
            |_: Request<ReplayBody<ReplayBody<Empty<Bytes>>>>| {
                ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
            },
        ));
    row(&mut group, GROUP, "tower_quota_three_layers", || {
        admit(&mut ours, request()).expect("response")
    });

    // The README stack (backoff, breaker, Retry-After, pacing by host with
    // feedback from responses) over a service that answers 200, with no
    // headers and with an OpenAI-style set of eight.
    for (bench, headers) in [
        ("readme_stack_no_headers", HeaderMap::new()),
        ("readme_stack_openai_headers", openai_headers()),
    ] {
        let mut stack = readme_stack(headers);
        row(&mut group, GROUP, bench, || {
            admit(&mut stack, request()).expect("response")
        });
    }

    // The least the README stack's four jobs do (`benches/support/least_stack.rs`),
    // over the same service answering 200 without headers: its Retry-After
    // gate re-sending throttled requests itself (a copy of each request
    // kept in two layers, as the README stack does), or handing them up to
    // the backoff (one copy).
    for (bench, resends) in [
        ("least_readme_stack", true),
        ("least_readme_stack_one_copy", false),
    ] {
        let mut least = least_stack::least_stack(
            service_fn(|_: Request<Empty<Bytes>>| {
                ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
            }),
            HUGE as usize,
            LOG_WINDOW,
            resends,
        );
        row(&mut group, GROUP, bench, || {
            admit(&mut least, request()).expect("response")
        });
    }

    // `Retry` needs a `Clone` inner service and `RateLimit` is not one: below
    // `Retry` it would need a `Buffer`. Outside `Retry` (retries not paced)
    // is tower's cheapest arrangement, measured here.
    let mut tower_stack = ServiceBuilder::new()
        .rate_limit(HUGE, Duration::from_secs(1))
        .retry(TowerRetryPolicy {
            attempts: 3,
            budget: Arc::new(TpsBudget::default()),
        })
        .service(service_fn(|_: Request<Empty<Bytes>>| {
            ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
        }));
    row(&mut group, GROUP, "tower_retry_rate_limit", || {
        admit(&mut tower_stack, request()).expect("response")
    });
    group.finish();
}

/// Turns taken by many tasks, and the time until `iters` more are taken:
/// each task counts its turns, and the one that takes the last one wanted
/// wakes the measurement.
#[derive(Default)]
struct Turns {
    taken: AtomicU64,
    wanted: AtomicU64,
    reached: tokio::sync::Notify,
}

impl Turns {
    fn new() -> Arc<Self> {
        Arc::new(Turns {
            wanted: AtomicU64::new(u64::MAX),
            ..Turns::default()
        })
    }

    /// A task took a turn.
    fn took(&self) {
        if self.taken.fetch_add(1, Ordering::Relaxed) + 1 == self.wanted.load(Ordering::Relaxed) {
            self.reached.notify_one();
        }
    }

    /// The time the tasks on `runtime` take for `iters` more turns.
    fn time(&self, runtime: &tokio::runtime::Runtime, iters: u64) -> Duration {
        runtime.block_on(async {
            let start = Instant::now();
            self.wanted.store(
                self.taken.load(Ordering::Relaxed) + iters,
                Ordering::Relaxed,
            );
            self.reached.notified().await;
            start.elapsed()
        })
    }
}

/// N tasks wait on one key of a `MemoryStore`, each re-queueing as soon as
/// it is admitted, so N waiters are always queued. On a paused clock the
/// runtime jumps to the next instant the head may go; the measured time per
/// admission is the admission, the wake-up of the next waiter and its poll.
fn queued_waiters(c: &mut Criterion) {
    let mut group = c.benchmark_group("queued_waiters");
    group.throughput(Throughput::Elements(1));
    for waiters in [10usize, 1_000, 10_000] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let store = MemoryStore::new();
        // 100 admissions per 10 ms window: each timer expiry admits a batch.
        let limits = SlidingWindowLayer::new(100, Duration::from_millis(10))
            .and_then(|layer| layer.safety_margin(Duration::ZERO))
            .expect("valid quota")
            .limits()
            .clone();
        let turns = Turns::new();
        runtime.block_on(async {
            for _ in 0..waiters {
                let (store, limits, turns) = (store.clone(), limits.clone(), turns.clone());
                tokio::spawn(async move {
                    loop {
                        let admission = store.acquire(Key::from_static("k"), 1, &limits).await;
                        black_box(admission.expect("admitted"));
                        turns.took();
                    }
                });
            }
            // Let every task queue up.
            tokio::task::yield_now().await;
        });
        group.bench_with_input(BenchmarkId::from_parameter(waiters), &waiters, |b, _| {
            b.iter_custom(|iters| turns.time(&runtime, iters))
        });
        // Dropping the runtime drops the tasks and their waiters.
        drop(runtime);
    }
    // The reference: N tasks queued on one permit of tokio's (FIFO)
    // semaphore, each queueing again once it has had its turn. Each turn
    // wakes the task that queued N turns ago, whose memory (task and
    // future) has left the caches when N is large: the runtime's own cost
    // of that wake-up, with no limiter.
    for waiters in [10usize, 10_000] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let permit = Arc::new(tokio::sync::Semaphore::new(1));
        let turns = Turns::new();
        runtime.block_on(async {
            for _ in 0..waiters {
                let (permit, turns) = (permit.clone(), turns.clone());
                tokio::spawn(async move {
                    loop {
                        let held = permit.acquire().await.expect("never closed");
                        black_box(&held);
                        drop(held);
                        turns.took();
                        // Turns pass between the tasks, not within one.
                        tokio::task::yield_now().await;
                    }
                });
            }
            tokio::task::yield_now().await;
        });
        group.bench_with_input(
            BenchmarkId::new("tokio_semaphore", waiters),
            &waiters,
            |b, _| b.iter_custom(|iters| turns.time(&runtime, iters)),
        );
        drop(runtime);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = admit_one_task, admit_two_tasks, stack_noop_http, queued_waiters
}
criterion_main!(benches);
