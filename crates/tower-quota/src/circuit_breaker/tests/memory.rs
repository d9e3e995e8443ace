//! Idle keys give their memory back, without traffic to their own key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::super::*;
use super::breaker;
use crate::BoxError;

/// Distinct keys in the tests below: enough that a map kept forever shows.
const KEYS: usize = 20_000;

/// A provider failing every path but `/hot`, keyed by path.
fn by_path(
    layer: CircuitBreakerLayer,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
    by_path_failing(layer, Arc::new(AtomicBool::new(true)))
}

/// A provider failing every path but `/hot` while `failing` holds, keyed by
/// path.
fn by_path_failing(
    layer: CircuitBreakerLayer,
    failing: Arc<AtomicBool>,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone {
    let provider = service_fn(move |request: Request<()>| {
        let fail = request.uri().path() != "/hot" && failing.load(Ordering::Relaxed);
        async move {
            let status = if fail { 503 } else { 200 };
            Ok::<_, BoxError>(Response::builder().status(status).body(())?)
        }
    });
    layer
        .key_fn(|request: &Request<()>| request.uri().path().to_owned())
        .layer(provider)
}

async fn call_path<S>(service: &S, path: &str) -> Result<Response<()>, BoxError>
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    let request = Request::get(path).body(()).unwrap();
    service.clone().oneshot(request).await
}

/// One failing call from each of `keys` hosts.
async fn one_failure_each<S>(service: &S, keys: usize)
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    for index in 0..keys {
        let response = call_path(service, &format!("/host-{index}")).await.unwrap();
        assert_eq!(response.status(), 503);
    }
}

/// Calls one hot key until no more than `left` keys are kept, and returns
/// how many calls that took (giving up after `limit`).
async fn call_hot_key_until<S>(
    service: &S,
    layer: &CircuitBreakerLayer,
    left: usize,
    limit: usize,
) -> usize
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone,
{
    for calls in 0..limit {
        if layer.key_count() <= left {
            return calls;
        }
        call_path(service, "/hot").await.unwrap();
    }
    panic!(
        "{} keys still kept after {limit} calls to another key",
        layer.key_count()
    );
}

/// Calls to any key that sweep every key once: 16 entries per call, taking
/// the 16 shards in turn, so the largest shard sets the pace (a quarter
/// above the mean leaves room for the random spread of keys over shards).
fn sweep_calls(keys: usize) -> usize {
    keys / 16 * 5 / 4 + 64
}

#[tokio::test(start_paused = true)]
async fn regression_one_failure_from_each_of_many_keys_is_forgotten_after_forget_after() {
    // Before: one failure from each of 100,000 hosts left 100,000 breakers
    // forever (a count window never forgets).
    let layer = breaker().forget_after(Duration::from_secs(60)).unwrap();
    let service = by_path(layer.clone());
    one_failure_each(&service, KEYS).await;
    assert_eq!(layer.key_count(), KEYS, "failures in the window are kept");
    let grown = layer.breakers.capacity();
    assert!(grown >= KEYS, "{grown}");

    tokio::time::advance(Duration::from_secs(61)).await;
    call_hot_key_until(&service, &layer, 1, sweep_calls(KEYS)).await;
    let capacity = layer.breakers.capacity();
    assert!(
        capacity <= 16 * 32,
        "the shards shrank back: room for {capacity} entries"
    );
}

#[tokio::test(start_paused = true)]
async fn regression_failures_in_a_time_window_age_out_for_keys_not_called_again() {
    let layer = breaker()
        .window(Window::Time(Duration::from_secs(10)), 4)
        .unwrap();
    let service = by_path(layer.clone());
    one_failure_each(&service, KEYS).await;
    // Within the window, the failures count and are kept.
    tokio::time::advance(Duration::from_secs(9)).await;
    call_path(&service, "/hot").await.unwrap();
    assert!(layer.key_count() > KEYS - 64, "{}", layer.key_count());
    tokio::time::advance(Duration::from_secs(1)).await;
    call_hot_key_until(&service, &layer, 1, sweep_calls(KEYS)).await;
}

#[tokio::test(start_paused = true)]
async fn regression_expired_open_and_half_open_breakers_are_forgotten() {
    let layer = breaker()
        .consecutive_failures(Some(1))
        .forget_after(Duration::from_secs(60))
        .unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let service = by_path_failing(layer.clone(), failing.clone());
    let keys = 2_000;
    one_failure_each(&service, keys).await;
    // Every key opened; after the open period, half of them go half-open
    // with one successful probe of the two that close the breaker.
    let rejected = call_path(&service, "/host-0").await.unwrap_err();
    assert!(rejected.is::<CircuitOpen>());
    tokio::time::advance(Duration::from_secs(10)).await;
    failing.store(false, Ordering::Relaxed);
    for index in 0..keys / 2 {
        let probe = call_path(&service, &format!("/host-{index}")).await;
        assert_eq!(probe.unwrap().status(), 200);
    }
    // Open periods ended 59 s ago, the last probes 59 s ago: still kept.
    tokio::time::advance(Duration::from_secs(59)).await;
    for _ in 0..sweep_calls(keys) {
        call_path(&service, "/hot").await.unwrap();
    }
    assert!(layer.key_count() > keys - 32, "{}", layer.key_count());
    tokio::time::advance(Duration::from_secs(1)).await;
    call_hot_key_until(&service, &layer, 1, sweep_calls(keys)).await;
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_key_starts_closed_with_no_history() {
    let layer = breaker()
        .consecutive_failures(Some(2))
        .forget_after(Duration::from_secs(60))
        .unwrap();
    let service = by_path(layer.clone());
    call_path(&service, "/flaky").await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    call_hot_key_until(&service, &layer, 1, sweep_calls(1)).await;
    // The old failure is gone: one more does not make two in a row.
    call_path(&service, "/flaky").await.unwrap();
    call_path(&service, "/flaky").await.unwrap();
    let open = call_path(&service, "/flaky").await.unwrap_err();
    assert!(open.is::<CircuitOpen>());
}

#[tokio::test(start_paused = true)]
async fn a_streak_ends_when_its_failures_leave_the_window_even_before_a_sweep() {
    // Whether or not a sweep forgot the key, the outcome is the same.
    let layer = breaker()
        .consecutive_failures(Some(2))
        .forget_after(Duration::from_secs(60))
        .unwrap();
    let service = by_path(layer.clone());
    call_path(&service, "/flaky").await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    call_path(&service, "/flaky").await.unwrap();
    assert!(call_path(&service, "/flaky").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_keeps_its_breaker_through_sweeps() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
    handle.allow(10_000);
    let layer = breaker().consecutive_failures(Some(1));
    let service = layer
        .clone()
        .key_fn(|request: &Request<()>| request.uri().path().to_owned())
        .layer(mock);
    let slow = tokio::spawn(
        service
            .clone()
            .oneshot(Request::get("/slow").body(()).unwrap()),
    );
    let (_, slow_respond) = handle.next_request().await.unwrap();
    // Many calls to other keys sweep every shard several times meanwhile.
    for index in 0..sweep_calls(1) * 4 {
        let call = tokio::spawn(
            service
                .clone()
                .oneshot(Request::get(format!("/other-{index}")).body(()).unwrap()),
        );
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response(Response::new(()));
        call.await.unwrap().unwrap();
    }
    // The slow call fails: its breaker was kept, so the failure opens it.
    slow_respond.send_response(Response::builder().status(503).body(()).unwrap());
    slow.await.unwrap().unwrap();
    let open = service
        .oneshot(Request::get("/slow").body(()).unwrap())
        .await
        .unwrap_err();
    assert!(open.is::<CircuitOpen>(), "{open}");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_map_is_bounded_by_max_keys() {
    let layer = breaker()
        .consecutive_failures(Some(1))
        .max_keys(100)
        .unwrap();
    let service = by_path(layer.clone());
    for index in 0..1_000 {
        call_path(&service, &format!("/host-{index}"))
            .await
            .unwrap();
    }
    assert_eq!(layer.key_count(), 100);
    // The keys kept are judged: the first ones are open.
    let open = call_path(&service, "/host-0").await.unwrap_err();
    assert!(open.is::<CircuitOpen>());
    // Keys beyond the bound pass unjudged: failing again, still sent.
    assert_eq!(
        call_path(&service, "/host-999").await.unwrap().status(),
        503
    );
}
