use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::*;
use crate::{BoxError, Key};

mod memory;

/// A provider answering every call with the status in `status`, counting calls.
#[allow(clippy::type_complexity)]
fn provider(
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |_request: Request<()>| {
        let status = status.load(Ordering::SeqCst);
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(Response::builder().status(status).body(())?) }
    })
}

fn setup(
    layer: CircuitBreakerLayer,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicU16>,
    Arc<AtomicUsize>,
) {
    let status = Arc::new(AtomicU16::new(200));
    let calls = Arc::new(AtomicUsize::new(0));
    (
        layer.layer(provider(status.clone(), calls.clone())),
        status,
        calls,
    )
}

/// A breaker with an exact open period: 10 s, no jitter, 2 probes.
fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new()
        .window(Window::Count(10), 4)
        .unwrap()
        .failure_rate(0.5)
        .unwrap()
        .consecutive_failures(None)
        .open_duration(Duration::from_secs(10), 0.0)
        .unwrap()
        .half_open_probes(2)
        .unwrap()
}

async fn call<S>(service: &S) -> Result<Response<()>, BoxError>
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    service.clone().oneshot(Request::new(())).await
}

fn rejected(result: Result<Response<()>, BoxError>) -> CircuitOpen {
    match result {
        Err(error) => error
            .downcast_ref::<CircuitOpen>()
            .expect("a CircuitOpen error")
            .clone(),
        Ok(response) => panic!("expected a fast failure, got {}", response.status()),
    }
}

#[test]
fn invalid_settings_are_rejected_at_construction() {
    let layer = CircuitBreakerLayer::new();
    assert!(layer.clone().failure_rate(0.0).is_err());
    assert!(layer.clone().failure_rate(1.5).is_err());
    assert!(layer.clone().failure_rate(f64::NAN).is_err());
    assert_eq!(
        layer.clone().window(Window::Count(0), 1).unwrap_err(),
        InvalidCircuitBreaker::EmptyWindow
    );
    assert!(
        layer
            .clone()
            .window(Window::Time(Duration::ZERO), 1)
            .is_err()
    );
    assert!(layer.clone().window(Window::Count(5), 0).is_err());
    assert!(
        layer
            .clone()
            .open_duration(Duration::from_secs(1), 1.0)
            .is_err()
    );
    assert_eq!(
        layer.half_open_probes(0).unwrap_err(),
        InvalidCircuitBreaker::ZeroProbes
    );
}

#[tokio::test(start_paused = true)]
async fn opens_on_the_failure_rate_once_enough_calls_were_made() {
    let (service, status, calls) = setup(breaker());
    // One failure in three calls: below the minimum of 4 calls, nothing to judge.
    call(&service).await.unwrap();
    call(&service).await.unwrap();
    status.store(503, Ordering::SeqCst);
    call(&service).await.unwrap();
    // The fourth call makes 2 failures in 4: a rate of 0.5, the threshold.
    call(&service).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let open = rejected(call(&service).await);
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_in(), Duration::from_secs(10));
    assert_eq!(open.key(), &Key::GLOBAL);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the rejected call was not sent"
    );
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures() {
    let (service, status, _) = setup(
        breaker()
            .consecutive_failures(Some(3))
            .window(Window::Count(100), 100)
            .unwrap(),
    );
    status.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        call(&service).await.unwrap();
    }
    rejected(call(&service).await);
}

#[tokio::test(start_paused = true)]
async fn half_open_after_the_open_period_then_closes_when_the_probes_succeed() {
    let (service, status, calls) = setup(breaker());
    status.store(503, Ordering::SeqCst);
    for _ in 0..4 {
        call(&service).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(
        rejected(call(&service).await).retry_in(),
        Duration::from_secs(6)
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    status.store(200, Ordering::SeqCst);
    // Two probes pass and succeed: closed again, calls flow.
    call(&service).await.unwrap();
    call(&service).await.unwrap();
    for _ in 0..10 {
        assert_eq!(call(&service).await.unwrap().status(), 200);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 16);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_the_breaker_again() {
    let (service, status, calls) = setup(breaker());
    status.store(503, Ordering::SeqCst);
    for _ in 0..4 {
        call(&service).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        call(&service).await.unwrap().status(),
        503,
        "the probe went through"
    );
    let open = rejected(call(&service).await);
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_in(), Duration::from_secs(10));
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_the_configured_probes_through_under_concurrency() {
    let status = Arc::new(AtomicU16::new(503));
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let answer = status.clone();
    // A slow provider, so that every probe is still in flight when the
    // others arrive.
    let slow = service_fn(move |_request: Request<()>| {
        let status = answer.load(Ordering::SeqCst);
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut response = Response::new(());
            *response.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
            Ok::<_, BoxError>(response)
        }
    });
    let service = breaker().half_open_probes(3).unwrap().layer(slow);
    for _ in 0..4 {
        call(&service).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    status.store(200, Ordering::SeqCst);
    let mut handles = Vec::new();
    for _ in 0..50 {
        handles.push(tokio::spawn(service.clone().oneshot(Request::new(()))));
    }
    let mut passed = 0;
    let mut refused = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Ok(_) => passed += 1,
            Err(error) => {
                let open = error.downcast_ref::<CircuitOpen>().unwrap();
                assert_eq!(open.state(), CircuitState::HalfOpen);
                refused += 1;
            }
        }
    }
    assert_eq!((passed, refused), (3, 47));
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 3);
    // The three probes succeeded: closed.
    call(&service).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_place_back() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
    let service = breaker()
        .half_open_probes(1)
        .unwrap()
        .consecutive_failures(Some(1))
        .layer(mock);
    handle.allow(10);
    let failing = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(Response::builder().status(503).body(()).unwrap());
    failing.await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    // The one probe is cancelled before it answers...
    let probe = tokio::spawn(service.clone().oneshot(Request::new(())));
    let _request = handle.next_request().await.unwrap();
    probe.abort();
    let _ = probe.await;
    // ...so the next call may probe.
    let next = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(Response::new(()));
    assert_eq!(next.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn throttled_responses_do_not_trip_by_default() {
    let (service, status, calls) = setup(breaker());
    status.store(429, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(call(&service).await.unwrap().status(), 429);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);

    let (service, status, _) = setup(breaker().count_throttled(true));
    status.store(429, Ordering::SeqCst);
    for _ in 0..4 {
        call(&service).await.unwrap();
    }
    rejected(call(&service).await);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_provider_failures() {
    let (service, status, _) = setup(breaker());
    status.store(404, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(call(&service).await.unwrap().status(), 404);
    }
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let (service, status, _) = setup(
        breaker()
            .window(Window::Time(Duration::from_secs(5)), 4)
            .unwrap(),
    );
    status.store(503, Ordering::SeqCst);
    call(&service).await.unwrap();
    call(&service).await.unwrap();
    tokio::time::advance(Duration::from_secs(6)).await;
    status.store(200, Ordering::SeqCst);
    // The two failures left the window: 1 failure in 4 calls does not trip.
    call(&service).await.unwrap();
    call(&service).await.unwrap();
    status.store(503, Ordering::SeqCst);
    call(&service).await.unwrap();
    status.store(200, Ordering::SeqCst);
    call(&service).await.unwrap();
    call(&service).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn keys_have_breakers_of_their_own() {
    let status = Arc::new(AtomicU16::new(503));
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = provider(status.clone(), calls.clone());
    let service = breaker()
        .key_fn(|request: &Request<()>| request.uri().path().to_owned())
        .layer(inner);
    for _ in 0..4 {
        service
            .clone()
            .oneshot(Request::get("/a").body(()).unwrap())
            .await
            .unwrap();
    }
    let error = service
        .clone()
        .oneshot(Request::get("/a").body(()).unwrap())
        .await
        .unwrap_err();
    assert!(error.is::<CircuitOpen>());
    status.store(200, Ordering::SeqCst);
    let other = service
        .oneshot(Request::get("/b").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_open_period_has_jitter_within_bounds() {
    let mut periods = Vec::new();
    for _ in 0..20 {
        let (service, status, _) = setup(
            breaker()
                .open_duration(Duration::from_secs(10), 0.2)
                .unwrap(),
        );
        status.store(503, Ordering::SeqCst);
        for _ in 0..4 {
            call(&service).await.unwrap();
        }
        periods.push(rejected(call(&service).await).retry_in());
    }
    assert!(
        periods
            .iter()
            .all(|p| *p >= Duration::from_secs(8) && *p <= Duration::from_secs(12)),
        "{periods:?}"
    );
    periods.dedup();
    assert!(
        periods.len() > 10,
        "breakers that open together must not probe together"
    );
    let _ = Instant::now();
}

#[test]
fn regression_open_duration_max_is_rejected_naming_the_setting() {
    // Accepted before, then panicked at the first open: "overflow when
    // adding duration to instant" (and in `mul_f64` with jitter).
    for duration in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        for jitter in [0.0, 0.5] {
            let error = CircuitBreakerLayer::new()
                .open_duration(duration, jitter)
                .unwrap_err();
            assert_eq!(error, InvalidCircuitBreaker::OpenDuration(duration));
            assert!(error.to_string().contains("open_duration"), "{error}");
        }
    }
}

#[test]
fn regression_time_window_of_duration_max_is_rejected_naming_the_setting() {
    // Accepted before, then panicked on the first call.
    let error = CircuitBreakerLayer::new()
        .window(Window::Time(Duration::MAX), 1)
        .unwrap_err();
    assert_eq!(error, InvalidCircuitBreaker::WindowTooLong(Duration::MAX));
    assert!(error.to_string().contains("window"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn the_longest_accepted_periods_open_and_expire_without_panicking() {
    let year = Duration::from_secs(365 * 24 * 60 * 60);
    let (service, status, _) = setup(
        breaker()
            .window(Window::Time(year), 4)
            .unwrap()
            .open_duration(year, 0.99)
            .unwrap(),
    );
    status.store(503, Ordering::SeqCst);
    for _ in 0..4 {
        call(&service).await.unwrap();
    }
    let open = rejected(call(&service).await);
    assert!(open.retry_in() <= year.mul_f64(1.99), "{open:?}");
    tokio::time::advance(year.mul_f64(2.0)).await;
    status.store(200, Ordering::SeqCst);
    // Half-open: two probes close it.
    call(&service).await.unwrap();
    call(&service).await.unwrap();
    assert_eq!(call(&service).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_saturates_on_durations_beyond_what_the_builder_accepts() {
    // Defence in depth: even a configuration the builder refuses never
    // makes the breaker's arithmetic panic.
    let mut layer = breaker();
    let config = std::sync::Arc::make_mut(&mut layer.config);
    config.open_duration = Duration::MAX;
    config.open_jitter = 0.5;
    config.window = Window::Time(Duration::MAX);
    config.consecutive_failures = Some(1);
    let (service, status, _) = setup(layer);
    status.store(503, Ordering::SeqCst);
    call(&service).await.unwrap();
    let open = rejected(call(&service).await);
    assert_eq!(open.state(), CircuitState::Open);
    assert!(open.retry_in() > Duration::from_secs(365 * 24 * 60 * 60));
}

/// A breaker in front of a `tower_test` mock that opens on one failure and
/// lets two probes through, so a test answers each call when it likes.
fn two_probe_breaker() -> (
    impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static,
    MockHandle,
) {
    let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
    handle.allow(100);
    let service = breaker()
        .half_open_probes(2)
        .unwrap()
        .consecutive_failures(Some(1))
        .layer(mock);
    (service, handle)
}

/// A call that must fail at once; one that was sent instead (and that the
/// mock never answers) fails the test after a second of paused time.
async fn refused_at_once<S>(service: &S) -> CircuitOpen
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    let result = tokio::time::timeout(Duration::from_secs(1), call(service))
        .await
        .expect("the call should have been refused at once, not sent");
    rejected(result)
}

fn status(code: u16) -> Response<()> {
    Response::builder().status(code).body(()).unwrap()
}

type MockHandle = tower_test::mock::Handle<Request<()>, Response<()>>;
type InFlight = (
    tokio::task::JoinHandle<Result<Response<()>, BoxError>>,
    tower_test::mock::SendResponse<Response<()>>,
);

/// Opens the breaker, waits out the open period, and starts two probes:
/// the first is left in flight (returned with its responder), the second
/// fails, so the breaker opens again and the first probe is stale once the
/// next half-open period begins.
async fn a_stale_probe_in_flight<S>(service: &S, handle: &mut MockHandle) -> InFlight
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static,
{
    let failing = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(status(503));
    failing.await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    // Half-open, first period: two probes.
    let slow = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, slow_respond) = handle.next_request().await.unwrap();
    let failing = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(status(503));
    failing.await.unwrap().unwrap();
    assert_eq!(
        rejected(call(service).await).state(),
        CircuitState::Open,
        "the failed probe opened the breaker again"
    );
    // Second half-open period, while the first period's slow probe is still
    // in flight.
    tokio::time::advance(Duration::from_secs(10)).await;
    (slow, slow_respond)
}

#[tokio::test(start_paused = true)]
async fn regression_a_slow_probe_from_an_earlier_half_open_period_does_not_count_in_the_next() {
    let (service, mut handle) = two_probe_breaker();
    let (slow, slow_respond) = a_stale_probe_in_flight(&service, &mut handle).await;
    // A probe of the new period succeeds...
    let probe = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(status(200));
    probe.await.unwrap().unwrap();
    // ...and the stale one answers too: it must not be the second success.
    slow_respond.send_response(status(200));
    slow.await.unwrap().unwrap();
    // Still half-open: one probe of this period left, then calls are refused.
    let last_probe = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, last_respond) = handle.next_request().await.unwrap();
    let refused = refused_at_once(&service).await;
    assert_eq!(refused.state(), CircuitState::HalfOpen);
    last_respond.send_response(status(200));
    last_probe.await.unwrap().unwrap();
    // Two successes of this period: closed.
    let next = tokio::spawn(service.clone().oneshot(Request::new(())));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(status(200));
    assert_eq!(next.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn regression_a_cancelled_stale_probe_does_not_raise_permits_above_the_configured_number() {
    let (service, mut handle) = two_probe_breaker();
    let (slow, _slow_respond) = a_stale_probe_in_flight(&service, &mut handle).await;
    // The first call of the new period makes it half-open with two permits;
    // the stale probe is cancelled now, and must not add a third.
    let first = tokio::spawn(service.clone().oneshot(Request::new(())));
    let _first_request = handle.next_request().await.unwrap();
    slow.abort();
    let _ = slow.await;
    let second = tokio::spawn(service.clone().oneshot(Request::new(())));
    let _second_request = handle.next_request().await.unwrap();
    let third = refused_at_once(&service).await;
    assert_eq!(third.state(), CircuitState::HalfOpen);
    first.abort();
    second.abort();
}

#[test]
fn memory_settings_are_checked_at_construction() {
    let layer = CircuitBreakerLayer::new();
    assert_eq!(
        layer.clone().forget_after(Duration::ZERO).unwrap_err(),
        InvalidCircuitBreaker::ForgetAfter(Duration::ZERO)
    );
    assert!(layer.clone().forget_after(Duration::MAX).is_err());
    assert_eq!(
        layer.clone().max_keys(0).unwrap_err(),
        InvalidCircuitBreaker::ZeroKeys
    );
    let error = layer.clone().window(Window::Count(100_001), 1).unwrap_err();
    assert_eq!(error, InvalidCircuitBreaker::WindowTooLarge(100_001));
    assert!(error.to_string().contains("window"), "{error}");
    assert!(layer.window(Window::Count(100_000), 1).is_ok());
}
