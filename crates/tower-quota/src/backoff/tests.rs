use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

use super::*;
use crate::attempts::{Attempt, GRPC_PREVIOUS_RPC_ATTEMPTS};
use crate::replay::ReplayBody;
use crate::retry_after::RetryAfterLayer;
use crate::test_support::{Arrival, Arrivals, provider};
use crate::{BoxError, telemetry};

const MS: Duration = Duration::from_millis(1);

fn status(code: u16) -> Response<()> {
    Response::builder().status(code).body(()).unwrap()
}

fn throttled(retry_after: &str) -> Response<()> {
    Response::builder()
        .status(429)
        .header("retry-after", retry_after)
        .body(())
        .unwrap()
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/items").body(Empty::new()).unwrap()
}

fn times(arrivals: &Arrivals) -> Vec<Duration> {
    arrivals.lock().unwrap().iter().map(|a| a.at).collect()
}

fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

/// Every strategy's bounds for the `retry`-th retry, given the previous
/// delay: `(lowest, highest)`.
fn bounds(backoff: &Backoff, retry: u32, previous: Duration) -> (Duration, Duration) {
    let ceiling = backoff.ceiling(retry);
    match backoff.jitter() {
        Jitter::Full => (Duration::ZERO, ceiling),
        Jitter::Equal => (ceiling / 2, ceiling),
        Jitter::Decorrelated => {
            let previous = if retry == 1 { backoff.base() } else { previous };
            (
                backoff.base().min(backoff.max()),
                (previous * 3).min(backoff.max()),
            )
        }
        Jitter::None => (ceiling, ceiling),
    }
}

const STRATEGIES: [Jitter; 4] = [
    Jitter::Full,
    Jitter::Equal,
    Jitter::Decorrelated,
    Jitter::None,
];

// ----- construction -----

#[test]
fn invalid_settings_are_rejected_at_construction() {
    let layer = JitterBackoffLayer::new;
    assert_eq!(
        layer().backoff(Duration::ZERO, MS).unwrap_err(),
        InvalidBackoff::ZeroBase
    );
    assert_eq!(
        layer().backoff(2 * MS, MS).unwrap_err(),
        InvalidBackoff::MaxBelowBase {
            base: 2 * MS,
            max: MS
        }
    );
    assert_eq!(
        layer().max_attempts(0).unwrap_err(),
        InvalidBackoff::ZeroMaxAttempts
    );
    assert_eq!(
        layer().max_elapsed(Duration::ZERO).unwrap_err(),
        InvalidBackoff::ZeroMaxElapsed
    );
    assert!(matches!(
        layer().attempt_header("not a header").unwrap_err(),
        InvalidBackoff::InvalidHeaderName(_)
    ));
    assert_eq!(
        RetryBudget::new(Duration::from_millis(500), 1, 0.2).unwrap_err(),
        InvalidBackoff::BudgetTtlOutOfRange(Duration::from_millis(500))
    );
    assert_eq!(
        RetryBudget::new(Duration::from_secs(61), 1, 0.2).unwrap_err(),
        InvalidBackoff::BudgetTtlOutOfRange(Duration::from_secs(61))
    );
    for ratio in [-0.1, f32::NAN, 1000.5] {
        assert_eq!(
            RetryBudget::new(Duration::from_secs(1), 1, ratio).unwrap_err(),
            InvalidBackoff::BudgetRatioOutOfRange
        );
    }
    // Regression: `i32::MAX` passed the check and then panicked inside
    // tower's budget, which asserts `min_per_sec < i32::MAX`.
    for min in [u32::MAX, i32::MAX.unsigned_abs()] {
        assert_eq!(
            RetryBudget::new(Duration::from_secs(1), min, 0.2).unwrap_err(),
            InvalidBackoff::BudgetMinPerSecondTooLarge(min)
        );
    }
    let largest = RetryBudget::new(Duration::from_secs(60), i32::MAX.unsigned_abs() - 1, 1000.0);
    assert!(
        largest.is_ok(),
        "the largest floor tower accepts is accepted"
    );
    assert!(layer().backoff(MS, MS).is_ok(), "base may equal the cap");
}

// ----- the formulas -----

#[test]
fn every_strategy_draws_within_its_formula_bounds_and_cap() {
    let mut rng = SmallRng::seed_from_u64(7);
    for jitter in STRATEGIES {
        let backoff = Backoff::new(10 * MS, Duration::from_secs(1), jitter).unwrap();
        for _ in 0..200 {
            let mut previous = Duration::ZERO;
            for retry in 1..=12 {
                let delay = backoff.delay(retry, previous, &mut rng);
                let (low, high) = bounds(&backoff, retry, previous);
                assert!(
                    low <= delay && delay <= high,
                    "{jitter:?} retry {retry}: {delay:?} outside [{low:?}, {high:?}]"
                );
                assert!(delay <= backoff.max(), "{jitter:?} above the cap");
                previous = delay;
            }
        }
    }
    // The ceiling doubles from the base up to the cap, without overflow.
    let backoff = Backoff::new(10 * MS, Duration::from_secs(1), Jitter::None).unwrap();
    let ceilings: Vec<_> = (1..=8).map(|n| backoff.ceiling(n).as_millis()).collect();
    assert_eq!(ceilings, [10, 20, 40, 80, 160, 320, 640, 1000]);
    assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
}

#[test]
fn full_jitter_mean_at_the_cap_is_half_the_cap() {
    let cap = Duration::from_secs(10);
    let backoff = Backoff::new(Duration::from_millis(100), cap, Jitter::Full).unwrap();
    assert_eq!(backoff.ceiling(20), cap);
    let mut rng = rand::rng();
    let draws = 10_000u32;
    let total: Duration = (0..draws)
        .map(|_| backoff.delay(20, Duration::ZERO, &mut rng))
        .sum();
    let mean = total / draws;
    let half = cap / 2;
    let error = mean.abs_diff(half);
    assert!(
        error <= half / 20,
        "mean {mean:?} is more than 5% away from {half:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn waits_through_the_layer_stay_within_each_strategy_bounds() {
    for jitter in STRATEGIES {
        for seed in 0..20 {
            let start = Instant::now();
            let (inner, arrivals) = provider(start, |_| status(503));
            let layer = JitterBackoffLayer::new()
                .backoff(20 * MS, 200 * MS)
                .unwrap()
                .jitter(jitter)
                .max_attempts(8)
                .unwrap()
                .no_budget()
                .seed(seed);
            let backoff = layer.get_backoff();
            let response = layer.layer(inner).oneshot(get()).await.unwrap();
            assert_eq!(response.status(), 503);
            let gaps = gaps(&times(&arrivals));
            assert_eq!(gaps.len(), 7, "{jitter:?}: 8 attempts in all");
            let mut previous = Duration::ZERO;
            for (index, gap) in gaps.iter().enumerate() {
                let retry = u32::try_from(index).unwrap() + 1;
                let (low, high) = bounds(&backoff, retry, previous);
                assert!(
                    low <= *gap && *gap <= high,
                    "{jitter:?} retry {retry}: waited {gap:?}, outside [{low:?}, {high:?}]"
                );
                previous = *gap;
            }
        }
    }
}

// ----- independence -----

/// 1,000 requests that all get a 503 at the same instant, then succeed;
/// returns how many retries arrived in each 10 ms interval.
async fn retry_histogram(jitter: Jitter) -> BTreeMap<u128, usize> {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| status(200));
    // The first attempt of each request fails; later ones succeed.
    let inner = service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let attempt = Attempt::of(&request).0;
        let call = inner.clone().oneshot(request);
        async move {
            let response = call.await?;
            Ok::<_, BoxError>(if attempt == 1 { status(503) } else { response })
        }
    });
    let service = JitterBackoffLayer::new()
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .unwrap()
        .jitter(jitter)
        .no_budget()
        .layer(inner);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        tasks.push(tokio::spawn(service.clone().oneshot(get())));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), 200);
    }
    let times = times(&arrivals);
    assert_eq!(times.len(), 2000);
    assert_eq!(times.iter().filter(|at| at.is_zero()).count(), 1000);
    let mut histogram = BTreeMap::new();
    for at in times.iter().filter(|at| !at.is_zero()) {
        *histogram.entry(at.as_millis() / 10).or_default() += 1;
    }
    histogram
}

#[tokio::test(start_paused = true)]
async fn a_thousand_simultaneous_failures_retry_spread_out() {
    let histogram = retry_histogram(Jitter::Full).await;
    // Full jitter over [0, 1 s]: 100 intervals of 10 ms, 10 retries each on average.
    let mean = 1000.0 / 100.0;
    let busiest = *histogram.values().max().unwrap();
    assert!(
        (busiest as f64) <= 3.0 * mean,
        "{busiest} retries in one 10 ms interval: {histogram:?}"
    );
    assert!(histogram.keys().all(|interval| *interval <= 100));
}

#[tokio::test(start_paused = true)]
async fn without_jitter_simultaneous_failures_retry_in_one_interval() {
    let histogram = retry_histogram(Jitter::None).await;
    assert_eq!(histogram.len(), 1, "{histogram:?}");
    assert_eq!(histogram.get(&100), Some(&1000));
}

#[tokio::test(start_paused = true)]
async fn seeded_layers_repeat_but_each_request_draws_its_own_stream() {
    async fn waits(seed: u64) -> Vec<Duration> {
        let start = Instant::now();
        let (inner, arrivals) = provider(start, |_| status(503));
        let service = JitterBackoffLayer::new()
            .max_attempts(2)
            .unwrap()
            .no_budget()
            .seed(seed)
            .layer(inner);
        for _ in 0..3 {
            service.clone().oneshot(get()).await.unwrap();
        }
        gaps(&times(&arrivals)).into_iter().step_by(2).collect()
    }
    let first = waits(42).await;
    assert_eq!(first, waits(42).await, "same seed, same waits");
    assert_ne!(first[0], first[1], "each request has its own stream");
    assert_ne!(first[1], first[2]);
}

// ----- the budget -----

#[tokio::test(start_paused = true)]
async fn a_stream_of_failures_cannot_push_retries_over_the_budget() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| status(503));
    // 20% of requests plus 1 retry a second, over 10 s.
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2).unwrap();
    let capture = Capture::default();
    let _guard = capture.install();
    let service = JitterBackoffLayer::new()
        .backoff(MS, 10 * MS)
        .unwrap()
        .max_attempts(10)
        .unwrap()
        .budget(budget)
        .layer(inner);
    let requests = 200;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        tasks.push(tokio::spawn(service.clone().oneshot(get())));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), 503);
    }
    let retries = arrivals.lock().unwrap().len() - requests;
    // Within one ttl: 20% of 200 requests, plus 1 a second for 10 s.
    assert!(start.elapsed() < Duration::from_secs(10), "within one ttl");
    assert!(retries <= 40 + 10, "{retries} retries");
    assert!(retries >= 40, "the budget allows 40 at least: {retries}");
    // Every request ends with the budget spent (or, for a few, its attempts).
    let skipped = capture.named(telemetry::RETRY_SKIPPED);
    assert!(
        skipped
            .iter()
            .all(|event| event["reason"] == "budget_exhausted"),
        "{skipped:?}"
    );
    let budget_spent = skipped.len();
    let attempts_spent = capture.named(telemetry::RETRIES_EXHAUSTED).len();
    assert_eq!(budget_spent + attempts_spent, requests);
    assert!(
        budget_spent >= requests - retries,
        "{budget_spent} budget_exhausted events"
    );
}

// ----- the server's delay -----

#[tokio::test(start_paused = true)]
async fn alone_a_server_delay_is_the_floor_of_the_wait() {
    for (base, expected) in [(200 * MS, Duration::from_secs(1)), (2000 * MS, 2000 * MS)] {
        let start = Instant::now();
        let (inner, arrivals) =
            provider(start, |n| if n == 0 { throttled("1") } else { status(200) });
        let service = JitterBackoffLayer::new()
            .backoff(base, base)
            .unwrap()
            .jitter(Jitter::None)
            .layer(inner);
        let response = service.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            times(&arrivals),
            [Duration::ZERO, expected],
            "base {base:?}"
        );
    }
}

/// JitterBackoff (4 attempts) over RetryAfter over a provider that refuses
/// 10 times in a row with `Retry-After: 1`.
async fn refused_ten_times(retry_after: RetryAfterLayer) -> (Response<()>, Vec<Arrival>) {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| if n < 10 { throttled("1") } else { status(200) });
    // Equal jitter of 800 ms: every backoff is 400 to 800 ms, so "server
    // delay plus backoff" would be at least 1.4 s.
    let service = tower::ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .backoff(800 * MS, 800 * MS)
                .unwrap()
                .jitter(Jitter::Equal)
                .max_attempts(4)
                .unwrap()
                .attempt_header("x-retry-attempt")
                .unwrap(),
        )
        .layer(retry_after)
        .service(inner);
    let response = service.oneshot(get()).await.unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    (response, arrivals)
}

#[tokio::test(start_paused = true)]
async fn with_retry_after_below_a_refused_request_makes_max_attempts_attempts_each_after_the_server_delay()
 {
    let spread = 100 * MS;
    for retry_after_attempts in [1, 3, 10] {
        let (response, arrivals) = refused_ten_times(
            RetryAfterLayer::new()
                .spread(spread)
                .max_attempts(retry_after_attempts)
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            arrivals.len(),
            4,
            "RetryAfter max_attempts {retry_after_attempts}: {arrivals:?}"
        );
        let numbers: Vec<_> = arrivals.iter().map(|a| a.attempt.unwrap()).collect();
        assert_eq!(numbers, [1, 2, 3, 4]);
        let headers: Vec<_> = arrivals.iter().map(|a| a.header.clone().unwrap()).collect();
        assert_eq!(headers, ["1", "2", "3", "4"]);
        let times: Vec<_> = arrivals.iter().map(|a| a.at).collect();
        for gap in gaps(&times) {
            assert!(
                Duration::from_secs(1) <= gap && gap <= Duration::from_secs(1) + spread,
                "RetryAfter max_attempts {retry_after_attempts}: waited {gap:?}, not the server delay plus jitter: {times:?}"
            );
        }
    }
}

/// A backoff of 1 ms, no jitter, `max_attempts` attempts in all.
fn backoff_of(max_attempts: u32) -> JitterBackoffLayer {
    JitterBackoffLayer::new()
        .backoff(MS, MS)
        .unwrap()
        .jitter(Jitter::None)
        .max_attempts(max_attempts)
        .unwrap()
}

/// A RetryAfter layer that would re-send 10 times on its own.
fn resending_ten_times() -> RetryAfterLayer {
    RetryAfterLayer::new()
        .spread(Duration::ZERO)
        .max_attempts(10)
        .unwrap()
}

/// The README's pairing, called twice: the backoff's budget reaches the
/// RetryAfter layer below on the calling thread, and once a call has shown
/// that it does, a first attempt carries no extension at all (nothing
/// allocated for the budgets) while the attempts stay counted once.
#[tokio::test(start_paused = true)]
async fn once_handed_on_the_thread_the_budget_leaves_the_first_attempt_bare_and_still_counts() {
    let start = Instant::now();
    // The first request is answered at once; the second is refused for good.
    let (inner, arrivals) = provider(start, |n| if n == 0 { status(200) } else { throttled("1") });
    let service = tower::ServiceBuilder::new()
        .layer(backoff_of(4))
        .layer(resending_ten_times())
        .service(inner);
    assert_eq!(service.clone().oneshot(get()).await.unwrap().status(), 200);
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let arrivals = arrivals.lock().unwrap().clone();
    let numbers: Vec<_> = arrivals.iter().map(|a| a.attempt.unwrap()).collect();
    assert_eq!(
        numbers,
        [1, 1, 2, 3, 4],
        "4 attempts in all, not 10: {arrivals:?}"
    );
    assert!(
        arrivals[0].extensions > 0,
        "the first call still carries the budget"
    );
    assert_eq!(
        arrivals[1].extensions, 0,
        "then a first attempt carries none"
    );
    // The layer below re-sent with the budget it was handed, numbered.
    assert!(arrivals[2..].iter().all(|a| a.extensions > 0));
}

/// With a `Buffer` between them, the RetryAfter layer is called later, on
/// the buffer's task: the budget cannot go on the thread, and every
/// request keeps carrying it in its extensions, so attempts are still
/// counted once for the stack.
#[tokio::test(start_paused = true)]
async fn across_a_buffer_the_budget_goes_in_the_extensions_and_attempts_count_once() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| throttled("1"));
    let service = tower::ServiceBuilder::new()
        .layer(backoff_of(3))
        .buffer(8)
        .layer(resending_ten_times())
        .service(inner);
    for request in 0..3 {
        let response = service.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let arrivals = arrivals.lock().unwrap().clone();
        let numbers: Vec<_> = arrivals[request * 3..]
            .iter()
            .map(|a| a.attempt.unwrap())
            .collect();
        assert_eq!(numbers, [1, 2, 3], "request {request}: {arrivals:?}");
        assert!(arrivals[request * 3].extensions > 0);
    }
}

/// Regression: with `Retry-After: 30` and RetryAfterLayer `max_wait(2s)`,
/// JitterBackoffLayer took the server delay as its floor and slept 30 s.
#[tokio::test(start_paused = true)]
async fn regression_a_server_delay_over_the_stack_max_wait_is_not_slept_through_by_the_backoff() {
    let capture = Capture::default();
    let _guard = capture.install();
    let start = Instant::now();
    let (inner, arrivals) = provider(
        start,
        |n| if n == 0 { throttled("30") } else { status(200) },
    );
    let service = tower::ServiceBuilder::new()
        .layer(JitterBackoffLayer::new())
        .layer(RetryAfterLayer::new().max_wait(Duration::from_secs(2)))
        .service(inner);
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(Instant::now(), start, "returned at once");
    assert_eq!(arrivals.lock().unwrap().len(), 1);
    assert!(capture.named(telemetry::RETRIES_EXHAUSTED).is_empty());
    let skipped = capture.named(telemetry::RETRY_SKIPPED);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["reason"], "max_wait");
    assert_eq!(skipped[0]["retry_after_ms"], "30000");
}

#[tokio::test(start_paused = true)]
async fn backoff_sleeps_spend_the_same_waiting_budget_as_the_gate() {
    let capture = Capture::default();
    let _guard = capture.install();
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| status(503));
    let service = tower::ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .backoff(800 * MS, Duration::from_secs(10))
                .unwrap()
                .jitter(Jitter::None)
                .max_attempts(5)
                .unwrap(),
        )
        .layer(RetryAfterLayer::new().max_wait(Duration::from_secs(2)))
        .service(inner);
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), 503);
    // 0.8 s, then 1.6 s would pass the 2 s budget.
    assert_eq!(times(&arrivals), [Duration::ZERO, 800 * MS]);
    assert_eq!(
        capture.named(telemetry::RETRY_SKIPPED)[0]["reason"],
        "max_wait"
    );
}

// ----- idempotency and bodies -----

fn post(idempotency_key: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/orders");
    if let Some(key) = idempotency_key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Full::new(Bytes::from_static(b"{\"item\":42}")))
        .unwrap()
}

/// Regression: the give-up was silent; it is a `retry_skipped` event with
/// reason `not_idempotent`, and the event carries its name as a field.
#[tokio::test(start_paused = true)]
async fn a_post_without_idempotency_key_is_not_retried_and_says_why() {
    let capture = Capture::default();
    let _guard = capture.install();
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| if n == 0 { status(503) } else { status(200) });
    let response = JitterBackoffLayer::new()
        .layer(inner)
        .oneshot(post(None))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(arrivals.lock().unwrap().len(), 1);
    let skipped = capture.named(telemetry::RETRY_SKIPPED);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["reason"], "not_idempotent");
    assert_eq!(skipped[0]["event"], "retry_skipped");
    assert_eq!(skipped[0]["http.response.status_code"], "503");
    assert_eq!(skipped[0]["attempt"], "1");
}

#[tokio::test(start_paused = true)]
async fn a_post_with_idempotency_key_is_retried_byte_identical() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| if n < 2 { status(503) } else { status(200) });
    let response = JitterBackoffLayer::new()
        .layer(inner)
        .oneshot(post(Some("order-42")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 3);
    for arrival in arrivals.iter() {
        assert_eq!(arrival.body, Bytes::from_static(b"{\"item\":42}"));
    }
}

#[tokio::test(start_paused = true)]
async fn retry_all_methods_retries_a_post() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| if n == 0 { status(502) } else { status(200) });
    let response = JitterBackoffLayer::new()
        .retry_all_methods()
        .layer(inner)
        .oneshot(post(None))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(arrivals.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_limit_is_sent_once_and_telemetry_says_so() {
    let capture = Capture::default();
    let _guard = capture.install();
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| status(503));
    let request = Request::put("/blob")
        .body(Full::new(Bytes::from(vec![7u8; 1024])))
        .unwrap();
    let response = JitterBackoffLayer::new()
        .max_replay_bytes(100)
        .layer(inner)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].body.len(), 1024, "sent whole, once");
    let events = capture.named(telemetry::RETRY_SKIPPED);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "body_not_replayable");
    assert!(capture.named(telemetry::RETRIES_EXHAUSTED).is_empty());
}

// ----- classification, limits, numbering -----

#[tokio::test(start_paused = true)]
async fn permanent_failures_and_successes_are_not_retried() {
    for code in [200, 404, 400, 501] {
        let start = Instant::now();
        let (inner, arrivals) = provider(start, move |_| status(code));
        let response = JitterBackoffLayer::new()
            .layer(inner)
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(response.status(), code);
        assert_eq!(arrivals.lock().unwrap().len(), 1, "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn connect_errors_are_retried_and_the_last_error_is_returned() {
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |_request: Request<ReplayBody<Empty<Bytes>>>| {
        *counted.lock().unwrap() += 1;
        async {
            Err::<Response<()>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        }
    });
    let capture = Capture::default();
    let _guard = capture.install();
    let error = JitterBackoffLayer::new()
        .layer(inner)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(
        error.downcast_ref::<std::io::Error>().unwrap().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert_eq!(*calls.lock().unwrap(), 3);
    let scheduled = capture.named(telemetry::RETRY_SCHEDULED);
    assert_eq!(scheduled.len(), 2);
    assert_eq!(scheduled[0]["error.kind"], "connect");
    assert_eq!(scheduled[0]["attempt"], "1");
    assert_eq!(scheduled[1]["attempt"], "2");
    let exhausted = capture.named(telemetry::RETRIES_EXHAUSTED);
    assert_eq!(exhausted[0]["reason"], "max_attempts");
    assert_eq!(exhausted[0]["attempt"], "3");
    let spans = capture.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["http.request.resend_count"], "2");
    assert_eq!(spans[0]["url.template"], "/items");
    assert!(spans[0]["request_id"].parse::<u64>().is_ok(), "{spans:?}");
}

#[tokio::test(start_paused = true)]
async fn a_server_delay_past_max_elapsed_is_not_slept_through() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| throttled("3600"));
    let response = JitterBackoffLayer::new()
        .max_elapsed(Duration::from_secs(30))
        .unwrap()
        .layer(inner)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(arrivals.lock().unwrap().len(), 1);
    assert_eq!(Instant::now(), start, "returned at once");
}

/// `max_elapsed` counts from the response future's first poll, when the
/// first attempt goes, not from `call`: a future polled late still has all
/// of it for its retries.
#[tokio::test(start_paused = true)]
async fn max_elapsed_counts_from_the_first_attempt_not_from_call() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| match n {
        0 => throttled("2"),
        _ => status(200),
    });
    let mut service = JitterBackoffLayer::new()
        .max_elapsed(Duration::from_secs(5))
        .unwrap()
        .layer(inner);
    let future = service.ready().await.unwrap().call(get());
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = future.await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "retried: 2 s of 5 since the first attempt"
    );
    let times = times(&arrivals);
    assert_eq!(times.len(), 2);
    assert_eq!(
        times[0],
        Duration::from_secs(10),
        "the first attempt went at the first poll"
    );
    assert!(times[1] >= Duration::from_secs(12), "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn grpc_attempts_carry_previous_rpc_attempts() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let inner = service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        record.lock().unwrap().push(
            request
                .headers()
                .get(GRPC_PREVIOUS_RPC_ATTEMPTS)
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        let unavailable = record.lock().unwrap().len() < 3;
        async move {
            let mut response = Response::builder()
                .status(200)
                .header("content-type", "application/grpc");
            if unavailable {
                response = response.header("grpc-status", "14");
            }
            Ok::<_, BoxError>(response.body(()).unwrap())
        }
    });
    let request = Request::post("/pkg.Items/Get")
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .unwrap();
    let response = JitterBackoffLayer::new()
        .classifier(crate::classify::GrpcClassifier)
        .retry_all_methods()
        .layer(inner)
        .oneshot(request)
        .await
        .unwrap();
    assert!(!response.headers().contains_key("grpc-status"));
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some("1".to_owned()), Some("2".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_uses_the_readied_service_and_retries_ready_their_own() {
    let (service, mut handle) =
        tower_test::mock::spawn_layer::<Request<ReplayBody<Empty<Bytes>>>, Response<()>, _>(
            JitterBackoffLayer::new()
                .backoff(MS, MS)
                .unwrap()
                .jitter(Jitter::None),
        );
    let mut service = service;
    handle.allow(1);
    tokio_test::assert_ready_ok!(service.poll_ready());
    let response = tokio::spawn(service.call(get()));
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(
        request.extensions().get::<Attempt>(),
        None,
        "a first attempt"
    );
    assert_eq!(Attempt::of(&request), Attempt(1));
    send.send_response(status(503));
    // The retry waits for readiness: the mock allows no more calls yet.
    tokio::time::sleep(10 * MS).await;
    assert!(!response.is_finished());
    handle.allow(1);
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.extensions().get::<Attempt>(), Some(&Attempt(2)));
    send.send_response(status(200));
    assert_eq!(response.await.unwrap().unwrap().status(), 200);
}

// ----- telemetry capture -----

/// Records the `tower_quota` events and closed spans, with their fields as
/// strings.
#[derive(Clone, Default)]
struct Capture {
    events: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    spans: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn named(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| event["name"] == name)
            .cloned()
            .collect()
    }

    fn spans(&self) -> Vec<BTreeMap<String, String>> {
        self.spans.lock().unwrap().clone()
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && span.metadata().target() == telemetry::TARGET
            && let Some(fields) = span.extensions().get::<Fields>()
        {
            self.spans.lock().unwrap().push(fields.0.clone());
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != telemetry::TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields
            .0
            .insert("name".to_owned(), event.metadata().name().to_owned());
        self.events.lock().unwrap().push(fields.0);
    }
}
