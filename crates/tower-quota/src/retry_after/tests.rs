use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_layer::Layer;

use super::*;
use crate::replay::ReplayBody;
use crate::test_support::provider;

mod properties;

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

/// A provider's answers: the first request throttled with `retry_after`,
/// every one after it accepted.
fn throttled_once(retry_after: &'static str) -> impl Fn(usize) -> Response<()> + Send + Sync {
    move |n| {
        if n == 0 {
            throttled(retry_after)
        } else {
            status(200)
        }
    }
}

fn remaining(remaining: u64, reset_seconds: u64) -> Response<()> {
    Response::builder()
        .status(200)
        .header("ratelimit-limit", "10")
        .header("ratelimit-remaining", remaining.to_string())
        .header("ratelimit-reset", reset_seconds.to_string())
        .body(())
        .unwrap()
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/items").body(Empty::new()).unwrap()
}

fn exact() -> RetryAfterLayer {
    RetryAfterLayer::new().spread(Duration::ZERO)
}

#[test]
fn zero_max_attempts_and_zero_max_pause_are_rejected_at_construction() {
    assert_eq!(
        RetryAfterLayer::new().max_attempts(0).unwrap_err(),
        InvalidRetryAfter::ZeroMaxAttempts
    );
    let error = RetryAfterLayer::new()
        .max_pause(Duration::ZERO)
        .unwrap_err();
    assert_eq!(error, InvalidRetryAfter::ZeroMaxPause);
    assert!(error.to_string().contains("max_pause"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_request_is_resent_when_the_gate_opens() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("2"));
    let response = exact().layer(inner).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let server = response.extensions().get::<ServerSignal>().unwrap();
    assert_eq!(server.attempts(), 2);
    assert!(server.delay_observed());
    assert_eq!(server.waited(), Duration::from_secs(2));
    let times: Vec<_> = arrivals.lock().unwrap().iter().map(|a| a.at).collect();
    assert_eq!(times, [Duration::ZERO, Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn one_throttled_response_pauses_every_caller_of_the_key() {
    let start = Instant::now();
    // The first request is refused with a 2 s pause; everything else succeeds.
    let (inner, arrivals) = provider(start, throttled_once("2"));
    let service = exact().layer(inner);
    // The gate starts by probing the unknown quota with the first request.
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Arrive while the gate is closed: they wait for it, not for a 429.
    let mut later = Vec::new();
    for _ in 0..20 {
        later.push(tokio::spawn(service.clone().oneshot(get())));
    }
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    for handle in later {
        let response = handle.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response
                .extensions()
                .get::<ServerSignal>()
                .unwrap()
                .attempts(),
            1
        );
    }
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 22, "one refusal, then 21 successes");
    assert!(arrivals[1..].iter().all(|a| a.at >= Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn a_delay_above_max_wait_returns_the_response_at_once_and_the_gate_opens_at_max_pause() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| {
        if n == 0 {
            throttled("1000000")
        } else {
            status(200)
        }
    });
    let service = exact()
        .max_wait(Duration::from_secs(30))
        .max_pause(Duration::from_secs(120))
        .unwrap()
        .layer(inner);
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(Instant::now(), start, "not slept through");
    let server = response.extensions().get::<ServerSignal>().unwrap();
    assert_eq!(
        server.signal().retry_after,
        Some(Duration::from_secs(1_000_000))
    );
    assert_eq!(server.attempts(), 1);
    // The gate is closed for max_pause, not the 11 days claimed: longer
    // than max_wait, so a new request fails at once, naming the key and the
    // wait, instead of being sent.
    let error = service.clone().oneshot(get()).await.unwrap_err();
    let closed = error
        .downcast_ref::<GateClosed>()
        .expect("a GateClosed error");
    assert_eq!(closed.key().as_str(), "global");
    assert_eq!(closed.wait(), Duration::from_secs(120));
    assert_eq!(closed.reason(), GateReason::Throttled);
    assert_eq!(arrivals.lock().unwrap().len(), 1);
    // At the bound a probe goes, finds the provider recovered, and traffic
    // resumes.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(arrivals.lock().unwrap()[1].at, Duration::from_secs(120));
}

/// A 429 (or a 200) whose headers claim a pause of decades.
fn hostile_claims() -> Vec<(&'static str, Response<()>)> {
    let build = |code: u16, headers: &[(&str, &str)]| {
        let mut response = Response::builder().status(code);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(()).unwrap()
    };
    vec![
        (
            "Retry-After: 99999999999",
            build(429, &[("retry-after", "99999999999")]),
        ),
        (
            "a 2099 HTTP-date",
            build(429, &[("retry-after", "Thu, 01 Jan 2099 00:00:00 GMT")]),
        ),
        (
            "retry-after-ms: u64::MAX",
            build(429, &[("retry-after-ms", "18446744073709551615")]),
        ),
        (
            "RateLimit t=2^32",
            build(429, &[("ratelimit", r#""default";r=0;t=4294967296"#)]),
        ),
        (
            "200 with RateLimit r=0;t=2^32",
            build(200, &[("ratelimit", r#""default";r=0;t=4294967296"#)]),
        ),
        (
            "200 with X-RateLimit-Reset in epoch seconds of 2099",
            build(
                200,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "4070908800"),
                ],
            ),
        ),
    ]
}

/// Regression: one response closed a key's gate for up to 366 days, and
/// every later request failed with `GateClosed` until the process restarted.
#[tokio::test(start_paused = true)]
async fn regression_a_claimed_pause_of_decades_opens_at_max_pause_with_one_probe() {
    let max_pause = Duration::from_secs(30);
    for (name, hostile) in hostile_claims() {
        let start = Instant::now();
        let hostile = Mutex::new(Some(hostile));
        let (inner, arrivals) = provider(start, move |n| {
            let first = hostile.lock().unwrap().take();
            if n == 0 { first.unwrap() } else { status(200) }
        });
        // The provider takes a second to answer the probe.
        let inner = tower::service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
            let call = inner.clone().oneshot(request);
            async move {
                let response = call.await?;
                if Instant::now() > start {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok::<_, crate::BoxError>(response)
            }
        });
        let service = exact()
            .max_wait(Duration::from_secs(10))
            .max_pause(max_pause)
            .unwrap()
            .layer(inner);
        service.clone().oneshot(get()).await.unwrap();
        // While closed: refused at once, never for longer than max_pause.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let error = service.clone().oneshot(get()).await.unwrap_err();
        let closed = error.downcast_ref::<GateClosed>().expect(name);
        assert!(
            closed.wait() <= max_pause - Duration::from_secs(5),
            "{name}: {closed}"
        );

        // At the bound, five callers: one probes, four wait for its answer;
        // then the gate ramps up: two, then the last two once they answer.
        tokio::time::sleep_until(start + max_pause).await;
        let callers: Vec<_> = (0..5)
            .map(|_| tokio::spawn(service.clone().oneshot(get())))
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().status(), 200, "{name}");
        }
        let times: Vec<_> = arrivals.lock().unwrap().iter().map(|a| a.at).collect();
        let probe = max_pause;
        let answered = max_pause + Duration::from_secs(1);
        let second_round = answered + Duration::from_secs(1);
        assert_eq!(
            times,
            [
                Duration::ZERO,
                probe,
                answered,
                answered,
                second_round,
                second_round
            ],
            "{name}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_keeps_claiming_decades_gets_one_probe_per_max_pause() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| throttled("99999999999"));
    let service = exact()
        .max_wait(Duration::from_secs(1))
        .max_pause(Duration::from_secs(60))
        .unwrap()
        .layer(inner);
    // A caller every 10 s for 5 minutes.
    for _ in 0..30 {
        let _ = service.clone().oneshot(get()).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let times: Vec<_> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.at.as_secs())
        .collect();
    assert_eq!(times, [0, 60, 120, 180, 240]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_hands_the_probe_to_the_next_waiter() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| {
        if n == 0 {
            throttled("99999999999")
        } else {
            status(200)
        }
    });
    // The probe never answers; later requests answer at once.
    let inner = tower::service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let call = inner.clone().oneshot(request);
        async move {
            let response = call.await?;
            if Instant::now() - start == Duration::from_secs(30) {
                std::future::pending::<()>().await;
            }
            Ok::<_, crate::BoxError>(response)
        }
    });
    let service = exact()
        .max_pause(Duration::from_secs(30))
        .unwrap()
        .layer(inner);
    // The first request waits out the 30 s bound and is the probe.
    let probe = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let waiter = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep_until(start + Duration::from_secs(32)).await;
    assert_eq!(
        arrivals.lock().unwrap().len(),
        2,
        "the first request probed"
    );
    assert!(!waiter.is_finished(), "waits for the probe's answer");
    probe.abort();
    assert_eq!(waiter.await.unwrap().unwrap().status(), 200);
    let times: Vec<_> = arrivals.lock().unwrap().iter().map(|a| a.at).collect();
    assert_eq!(
        times,
        [
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_secs(32)
        ]
    );
}

/// Two RetryAfter layers, one inside the other: the outer one hands its
/// waiting budget to the inner on the calling thread, so the inner does not
/// wait out a server delay the outer's `max_wait` does not allow.
#[tokio::test(start_paused = true)]
async fn a_retry_after_layer_below_another_waits_within_the_outer_max_wait() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("30"));
    let service = tower::ServiceBuilder::new()
        .layer(exact().max_wait(Duration::from_secs(2)))
        .layer(exact().max_wait(Duration::from_secs(60)))
        .service(inner);
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(Instant::now(), start, "returned at once, no 30 s wait");
    assert_eq!(arrivals.lock().unwrap().len(), 1);
}

/// Regression: `max_wait` bounded each wait, not the request: re-sent four
/// times after `Retry-After: 4`, a request waited 16 s with `max_wait(10s)`.
#[tokio::test(start_paused = true)]
async fn regression_max_wait_bounds_the_total_wait_of_a_request_over_all_attempts() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| throttled("4"));
    let service = RetryAfterLayer::new()
        .spread(Duration::from_secs(1))
        .max_wait(Duration::from_secs(10))
        .max_attempts(10)
        .unwrap()
        .layer(inner);
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let server = response.extensions().get::<ServerSignal>().unwrap();
    assert!(server.waited() <= Duration::from_secs(10), "{server:?}");
    assert!(start.elapsed() <= Duration::from_secs(10));
    assert_eq!(
        arrivals.lock().unwrap().len(),
        3,
        "two waits of 4 s and spread"
    );
}

/// Regression: `spread(Duration::MAX)` was accepted, and a request waiting
/// for its turn to probe an unknown quota then waited for years.
#[tokio::test(start_paused = true)]
async fn regression_a_spread_of_duration_max_is_clamped_to_a_minute() {
    let layer = RetryAfterLayer::new()
        .spread(Duration::MAX)
        .max_wait(Duration::from_secs(120));
    assert_eq!(layer.config.spread, Duration::from_secs(60));
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| remaining(5, 1));
    // The first answer takes 10 minutes.
    let inner = tower::service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let call = inner.clone().oneshot(request);
        async move {
            let response = call.await?;
            if Instant::now() == start {
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            Ok::<_, crate::BoxError>(response)
        }
    });
    let service = layer.layer(inner);
    // Two requests for a key whose quota is unknown yet: the first probes,
    // the second goes one probe interval later, spread included.
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let second = service.oneshot(get()).await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(start.elapsed() <= Duration::from_secs(120));
    assert_eq!(arrivals.lock().unwrap().len(), 2);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
}

fn post(idempotency_key: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/orders");
    if let Some(key) = idempotency_key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Full::new(Bytes::from_static(b"{\"item\":42}")))
        .unwrap()
}

fn unavailable(retry_after: &str) -> Response<()> {
    Response::builder()
        .status(503)
        .header("retry-after", retry_after)
        .body(())
        .unwrap()
}

fn grpc(code: &str, pushback_ms: &str) -> Response<()> {
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", code)
        .header("grpc-retry-pushback-ms", pushback_ms)
        .body(())
        .unwrap()
}

/// Regression: a POST was re-sent after a 503 with `Retry-After` (or gRPC
/// UNAVAILABLE with pushback), which a proxy may send after the server
/// processed it.
#[tokio::test(start_paused = true)]
async fn regression_a_post_is_not_resent_after_a_503_or_grpc_unavailable() {
    for first in [unavailable("1"), grpc("14", "1000")] {
        let first = Mutex::new(Some(first));
        let start = Instant::now();
        let (inner, arrivals) = provider(start, move |_| {
            first.lock().unwrap().take().unwrap_or_else(|| status(200))
        });
        let response = exact().layer(inner).oneshot(post(None)).await.unwrap();
        let server = response.extensions().get::<ServerSignal>().unwrap();
        assert!(server.signal().throttled, "the refusal is returned");
        assert_eq!(arrivals.lock().unwrap().len(), 1, "sent once");
    }
}

#[tokio::test(start_paused = true)]
async fn a_post_is_resent_after_a_429_or_grpc_resource_exhausted() {
    for first in [throttled("1"), grpc("8", "1000")] {
        let first = Mutex::new(Some(first));
        let start = Instant::now();
        let (inner, arrivals) = provider(start, move |_| {
            first.lock().unwrap().take().unwrap_or_else(|| status(200))
        });
        let response = exact().layer(inner).oneshot(post(None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(arrivals.lock().unwrap().len(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_503_idempotent_methods_keyed_posts_and_opted_in_layers_resend() {
    let cases: Vec<(&str, RetryAfterLayer, Request<Full<Bytes>>)> = vec![
        (
            "PUT",
            exact(),
            Request::put("/orders/42").body(Full::default()).unwrap(),
        ),
        ("keyed POST", exact(), post(Some("order-42"))),
        ("opted in", exact().resend_all_methods(), post(None)),
    ];
    for (name, layer, request) in cases {
        let start = Instant::now();
        let (inner, arrivals) = provider(start, |n| {
            if n == 0 {
                unavailable("1")
            } else {
                status(200)
            }
        });
        let response = layer.layer(inner).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(arrivals.lock().unwrap().len(), 2, "{name}");
    }
}

/// Regression: the gates of 100,000 hosts reporting `RateLimit` were kept
/// until as many operations again swept the map, and the map never shrank.
#[tokio::test(start_paused = true)]
async fn regression_idle_gates_are_evicted_by_traffic_to_any_key_and_the_map_shrinks() {
    use super::gate::{IDLE_GRACE, MIN_CAPACITY, SHARDS, SWEEP_BUDGET, VISIT_EVERY};

    let hosts = if cfg!(debug_assertions) {
        5_000
    } else {
        100_000
    };
    let start = Instant::now();
    let (inner, _) = provider(start, |_| {
        Response::builder()
            .header("ratelimit", r#""default";r=9;t=10"#)
            .header("ratelimit-policy", r#""default";q=10;w=10"#)
            .body(())
            .unwrap()
    });
    let layer = exact().key_fn(|request: &Request<Empty<Bytes>>| request.uri().path().to_owned());
    let gates = layer.gates.clone();
    let service = layer.layer(inner);
    let get_path = |path: String| Request::get(path).body(Empty::new()).unwrap();
    for host in 0..hosts {
        let response = service
            .clone()
            .oneshot(get_path(format!("/{host}")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(gates.len(), hosts, "every host's quota is remembered");
    let full_capacity = gates.capacity();

    // Every quota resets and the hosts go quiet; one other key stays busy.
    tokio::time::advance(Duration::from_secs(10) + IDLE_GRACE + Duration::from_secs(1)).await;
    // Each request sweeps twice (gate and answer), SWEEP_BUDGET gates each
    // on average in the shards it visits, taking them in turn: the largest
    // shard sets the pace (a quarter above the mean leaves room for the
    // random spread of keys over shards), and one round of visits reaches
    // every shard.
    let requests = (hosts * 5 / 4).div_ceil(2 * SWEEP_BUDGET) + SHARDS * VISIT_EVERY / 2 + 1;
    for _ in 0..requests {
        service
            .clone()
            .oneshot(get_path("/busy".to_owned()))
            .await
            .unwrap();
    }
    assert!(gates.len() <= 1, "{} gates left of {hosts}", gates.len());
    assert!(
        gates.capacity() <= MIN_CAPACITY,
        "capacity {} (was {full_capacity})",
        gates.capacity()
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_max_attempts() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| throttled("1"));
    let service = exact().max_attempts(4).unwrap().layer(inner);
    let response = service.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response
            .extensions()
            .get::<ServerSignal>()
            .unwrap()
            .attempts(),
        4
    );
    let times: Vec<_> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.at.as_secs())
        .collect();
    assert_eq!(times, [0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_response_without_a_delay_is_returned() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| status(429));
    let response = exact().layer(inner).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        arrivals.lock().unwrap().len(),
        1,
        "left to the backoff layer"
    );
}

#[tokio::test(start_paused = true)]
async fn never_sends_more_than_the_server_says_remain_before_the_reset() {
    let start = Instant::now();
    // The server says 3 remain until a reset 10 s away, then counts down.
    let left = Arc::new(Mutex::new(4u64));
    let counter = left.clone();
    let (inner, arrivals) = provider(start, move |_| {
        let mut left = counter.lock().unwrap();
        *left = left.saturating_sub(1);
        let elapsed = Instant::now() - start;
        let reset = 10u64.saturating_sub(elapsed.as_secs());
        remaining(*left, reset)
    });
    let service = exact().layer(inner);
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(tokio::spawn(service.clone().oneshot(get())));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap().unwrap().status(), 200);
    }
    let times: Vec<_> = arrivals.lock().unwrap().iter().map(|a| a.at).collect();
    let before_reset = times
        .iter()
        .filter(|t| **t < Duration::from_secs(10))
        .count();
    assert_eq!(
        before_reset, 4,
        "the probe and the 3 that remained: {times:?}"
    );
    assert!(times[4] >= Duration::from_secs(10), "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn waiters_leave_spread_out_when_the_gate_opens() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("1"));
    let spread = Duration::from_millis(500);
    let service = RetryAfterLayer::new().spread(spread).layer(inner);
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut handles = vec![first];
    for _ in 0..50 {
        handles.push(tokio::spawn(service.clone().oneshot(get())));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let arrivals = arrivals.lock().unwrap();
    let mut times: Vec<_> = arrivals[2..].iter().map(|a| a.at).collect();
    times.sort();
    times.dedup();
    assert!(
        times.len() > 40,
        "{} distinct instants for 50 waiters",
        times.len()
    );
    // The re-sent request went at the gate's opening plus its own jitter,
    // and the others within the spread after it.
    let opened = arrivals[1].at;
    assert!(opened >= Duration::from_secs(1) && opened <= Duration::from_secs(1) + spread);
    assert!(
        times
            .iter()
            .all(|t| *t >= Duration::from_secs(1) && *t <= opened + 2 * spread)
    );
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_resent_byte_identical() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("1"));
    let service = exact().layer(inner);
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = (0..10u8)
        .map(|i| Ok(http_body::Frame::data(Bytes::from(vec![i; 1024]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let request = Request::post("/upload").body(body).unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    assert_eq!(arrivals[0].body.len(), 10 * 1024);
    assert_eq!(arrivals[0].body, arrivals[1].body);
}

/// A user's extension, carried by a request.
#[derive(Clone, Debug, PartialEq)]
struct Tag(u32);

#[tokio::test(start_paused = true)]
async fn a_resent_request_is_the_first_one_again() {
    // What each attempt carried: method, URI, version, headers, the user's
    // extension and the count of extensions, and the body.
    type Seen = (
        http::Method,
        http::Uri,
        http::Version,
        http::HeaderMap,
        Option<Tag>,
        usize,
        Bytes,
    );
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |request: Request<ReplayBody<Full<Bytes>>>| {
            let seen = Arc::clone(&seen);
            async move {
                let (parts, body) = request.into_parts();
                let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
                let mut seen = seen.lock().unwrap();
                seen.push((
                    parts.method,
                    parts.uri,
                    parts.version,
                    parts.headers,
                    parts.extensions.get::<Tag>().cloned(),
                    parts.extensions.len(),
                    body,
                ));
                Ok::<_, crate::BoxError>(throttled_once("1")(seen.len() - 1))
            }
        })
    };
    let service = exact().layer(inner);
    for tag in [None, Some(Tag(7))] {
        seen.lock().unwrap().clear();
        let mut request = Request::put("https://api.example.com/v1/items/3?x=1")
            .version(http::Version::HTTP_2)
            .header("x-request", "abc")
            .header("x-request", "def")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        if let Some(tag) = &tag {
            request.extensions_mut().insert(tag.clone());
        }
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "refused once, then re-sent");
        assert_eq!(seen[0], seen[1], "the re-sent request is the first one");
        let (method, uri, version, headers, seen_tag, extensions, body) = &seen[0];
        assert_eq!(method, http::Method::PUT);
        assert_eq!(uri, "https://api.example.com/v1/items/3?x=1");
        assert_eq!(*version, http::Version::HTTP_2);
        let values: Vec<_> = headers.get_all("x-request").iter().collect();
        assert_eq!(values, ["abc", "def"]);
        assert_eq!(*seen_tag, tag);
        assert_eq!(*extensions, usize::from(tag.is_some()));
        assert_eq!(body.as_ref(), b"payload");
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| throttled("1"));
    let service = exact().max_replay_bytes(1024).layer(inner);
    let request = Request::post("/upload")
        .body(Full::new(Bytes::from(vec![7u8; 4096])))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(
        arrivals[0].body.len(),
        4096,
        "the one attempt carried the whole body"
    );
}

#[tokio::test(start_paused = true)]
async fn every_response_carries_the_parsed_signal() {
    let start = Instant::now();
    let (inner, _) = provider(start, |_| remaining(7, 30));
    let response = exact().layer(inner).oneshot(get()).await.unwrap();
    let server = response.extensions().get::<ServerSignal>().unwrap();
    assert_eq!(server.signal().min_remaining(), Some(7));
    assert_eq!(server.attempts(), 1);
    assert!(!server.delay_observed());
}

#[tokio::test(start_paused = true)]
async fn keys_have_separate_gates() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("5"));
    let service = exact()
        .key_fn(|request: &Request<Empty<Bytes>>| request.uri().path().to_owned())
        .layer(inner);
    let blocked = tokio::spawn(
        service
            .clone()
            .oneshot(Request::get("/a").body(Empty::new()).unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    let other = service
        .oneshot(Request::get("/b").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(
        arrivals.lock().unwrap()[1].at,
        Duration::from_millis(1),
        "not held by /a's gate"
    );
    assert_eq!(blocked.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_uses_the_readied_service_and_errors_pass_through() {
    #[derive(Debug)]
    struct Broken;
    impl std::fmt::Display for Broken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("broken")
        }
    }
    impl std::error::Error for Broken {}

    let (mock, mut handle) =
        tower_test::mock::pair::<Request<ReplayBody<Empty<Bytes>>>, Response<()>>();
    let mut service = tower_test::mock::Spawn::new(exact().layer(mock));
    handle.allow(0);
    tokio_test::assert_pending!(service.poll_ready());
    handle.allow(1);
    tokio_test::assert_ready_ok!(service.poll_ready());
    // The mock panics when a clone that was not readied is called.
    let call = tokio::spawn(service.call(get()));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error(Broken);
    let error = call.await.unwrap().unwrap_err();
    assert!(error.downcast_ref::<Broken>().is_some(), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn without_pacing_by_quota_headers_only_throttling_closes_the_gate() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| {
        if n == 3 {
            throttled("2")
        } else {
            remaining(0, 30)
        }
    });
    let service = exact().pace_by_quota_headers(false).layer(inner);
    for _ in 0..5 {
        service.clone().oneshot(get()).await.unwrap();
    }
    let times: Vec<_> = arrivals.lock().unwrap().iter().map(|a| a.at).collect();
    // `remaining: 0` did not hold anyone; the 429's Retry-After did.
    assert_eq!(
        times,
        [
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(2)
        ]
    );
}

/// The provider behind `inner` answers after `latency(status)`.
fn with_latency<S>(
    inner: S,
    latency: fn(StatusCode) -> Duration,
) -> impl tower::Service<
    Request<ReplayBody<Empty<Bytes>>>,
    Response = Response<()>,
    Error = crate::BoxError,
    Future: Send,
> + Clone
where
    S: tower::Service<
            Request<ReplayBody<Empty<Bytes>>>,
            Response = Response<()>,
            Error = crate::BoxError,
            Future: Send,
        > + Clone
        + Send
        + 'static,
{
    tower::service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let call = inner.clone().oneshot(request);
        async move {
            let response = call.await?;
            tokio::time::sleep(latency(response.status())).await;
            Ok::<_, crate::BoxError>(response)
        }
    })
}

/// How many requests reached the provider at each instant, in
/// milliseconds from the start.
fn per_instant(arrivals: &crate::test_support::Arrivals) -> Vec<(u128, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for arrival in arrivals.lock().unwrap().iter() {
        *counts.entry(arrival.at.as_millis()).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

#[tokio::test(start_paused = true)]
async fn a_reopened_gate_lets_one_probe_go_first_then_doubles_per_round_trip() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("1"));
    let service = exact().layer(with_latency(inner, |_| Duration::from_millis(100)));
    // Refused at 100 ms: the gate closes until 1.1 s.
    one_then_many(&service, Duration::from_millis(200), 20).await;
    // The refused request and the 20 callers: one probe, then 2, 4, 8 and
    // the last 6, a round trip (100 ms) apart.
    assert_eq!(
        per_instant(&arrivals),
        [
            (0, 1),
            (1_100, 1),
            (1_200, 2),
            (1_300, 4),
            (1_400, 8),
            (1_500, 6)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_during_the_ramp_halves_it_and_only_the_refused_request_waits_its_delay() {
    let start = Instant::now();
    // The first request is refused for 1 s, and the first of the ramp's
    // third round for 10 s. Refusals come back after 50 ms, the rest after
    // 100 ms.
    let (inner, arrivals) = provider(start, |n| match n {
        0 => throttled("1"),
        4 => throttled("10"),
        _ => status(200),
    });
    let latency = |status: StatusCode| {
        if status == StatusCode::TOO_MANY_REQUESTS {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(100)
        }
    };
    let service = exact().layer(with_latency(inner, latency));
    // Refused at 50 ms: the gate closes until 1.05 s.
    one_then_many(&service, Duration::from_millis(100), 30).await;
    // Probe at 1.05 s, then 2 and 4. One of the 4 is refused at 1.3 s: the
    // ramp of 4 halves to 2, the three others' answers add 3, so 5 go at
    // 1.35 s (7 without the refusal), then 10, then the last 9. The gate
    // stays open for them; the refused request alone waits its 10 s.
    assert_eq!(
        per_instant(&arrivals),
        [
            (0, 1),
            (1_050, 1),
            (1_150, 2),
            (1_250, 4),
            (1_350, 5),
            (1_450, 10),
            (1_550, 9),
            (11_300, 1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_probe_closes_the_gate_again_and_the_next_opening_probes_again() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| if n < 2 { throttled("1") } else { status(200) });
    let service = exact().layer(with_latency(inner, |_| Duration::from_millis(100)));
    one_then_many(&service, Duration::from_millis(200), 10).await;
    // The probe at 1.1 s is refused at 1.2 s: the gate closes until 2.2 s,
    // when one probe goes again, then 2, 4 and the last 4.
    assert_eq!(
        per_instant(&arrivals),
        [
            (0, 1),
            (1_100, 1),
            (2_200, 1),
            (2_300, 2),
            (2_400, 4),
            (2_500, 4)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_ramp_ends_once_the_pause_has_passed_and_its_gate_is_still_evicted() {
    use super::gate::{IDLE_GRACE, SHARDS, VISIT_EVERY};

    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("1"));
    let layer = exact().key_fn(|request: &Request<Empty<Bytes>>| request.uri().path().to_owned());
    let gates = layer.gates.clone();
    let service = layer.layer(with_latency(inner, |_| Duration::from_millis(100)));
    // Refused at 100 ms; the re-sent request probes at 1.1 s and its answer
    // at 1.2 s starts a ramp that lasts as long as the pause, 1 s.
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::sleep_until(start + Duration::from_millis(2_200)).await;
    // The ramp is over: 50 callers go at once.
    let callers: Vec<_> = (0..50)
        .map(|_| tokio::spawn(service.clone().oneshot(get())))
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(per_instant(&arrivals), [(0, 1), (1_100, 1), (2_200, 50)]);

    // A gate that ramped has nothing left to remember after it: evicted
    // once the sweeps of another key's traffic reach its shard (two
    // operations a request, every shard visited in turn).
    tokio::time::advance(IDLE_GRACE + Duration::from_secs(1)).await;
    for _ in 0..SHARDS * VISIT_EVERY / 2 {
        service
            .clone()
            .oneshot(Request::get("/other").body(Empty::new()).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(gates.len(), 1, "only /other's gate is kept");
}

#[tokio::test(start_paused = true)]
async fn a_ramp_stops_limiting_once_it_reaches_its_cap() {
    use super::gate::RAMP_CAP;

    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("30"));
    let service = exact().layer(with_latency(inner, |_| Duration::from_millis(100)));
    // Probe at 30.1 s; the ramp then doubles per round trip, 2, 4, ..., and
    // reaches its cap in the seventh round, long before its 30 s are over:
    // from then on the 500 callers go without a limit.
    one_then_many(&service, Duration::from_millis(200), 500).await;
    let rounds: Vec<usize> = per_instant(&arrivals).iter().map(|(_, n)| *n).collect();
    assert_eq!(rounds[..7], [1, 1, 2, 4, 8, 16, 32]);
    assert!(rounds[7] > RAMP_CAP as usize, "{rounds:?}");
    assert_eq!(rounds.iter().sum::<usize>(), 502);
}

#[tokio::test(start_paused = true)]
async fn a_probe_refused_without_a_delay_hands_the_probe_to_the_next_request() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |n| match n {
        0 => throttled("1"),
        1 => status(429),
        _ => status(200),
    });
    let service = exact().layer(with_latency(inner, |_| Duration::from_millis(100)));
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut callers = vec![first];
    for _ in 0..5 {
        callers.push(tokio::spawn(service.clone().oneshot(get())));
    }
    let mut refused = 0;
    for caller in callers {
        let response = caller.await.unwrap().unwrap();
        refused += usize::from(response.status() == StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(
        refused, 1,
        "the refusal without a delay goes back to its caller"
    );
    // The probe at 1.1 s is refused without a delay at 1.2 s: the gate has
    // no pause to wait, and the next request probes; then the ramp.
    assert_eq!(
        per_instant(&arrivals),
        [(0, 1), (1_100, 1), (1_200, 1), (1_300, 2), (1_400, 2)]
    );
}

/// A provider that reports a quota of requests in flight (IETF
/// `qu="concurrent-requests"`) with none left: that frees as requests end,
/// not at the reset, so it does not close the gate; ten requests go at once.
#[tokio::test(start_paused = true)]
async fn a_quota_of_requests_in_flight_does_not_pace_the_gate() {
    let start = Instant::now();
    let (inner, arrivals) = provider(start, |_| {
        Response::builder()
            .status(200)
            .header(
                "ratelimit-policy",
                "\"conc\";q=5;qu=\"concurrent-requests\"",
            )
            .header("ratelimit", "\"conc\";r=0;t=5")
            .body(())
            .unwrap()
    });
    let service = exact().layer(with_latency(inner, |_| Duration::from_millis(100)));
    // The first answer reports the quota; then ten go at once.
    service.clone().oneshot(get()).await.unwrap();
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(get())))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), 200);
    }
    let times: Vec<_> = arrivals.lock().unwrap().iter().map(|a| a.at).collect();
    assert!(
        times[1..].iter().all(|at| *at == times[1]),
        "all at once: {times:?}"
    );
}

/// Sends one request through `service` (the one the provider throttles),
/// then, `after` later, `waiters` more at once; every one ends in a 200.
async fn one_then_many<S>(service: &S, after: Duration, waiters: usize)
where
    S: tower::Service<Request<Empty<Bytes>>, Response = Response<()>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Debug + Send + 'static,
{
    let first = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(after).await;
    let mut callers = vec![first];
    for _ in 0..waiters {
        callers.push(tokio::spawn(service.clone().oneshot(get())));
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn a_gate_that_reopens_after_the_requests_deadline_is_not_waited_for() {
    use crate::sliding_window::Deadline;
    let start = Instant::now();
    let (inner, arrivals) = provider(start, throttled_once("5"));
    let service = exact().layer(inner);
    let response = service.clone().oneshot(get()).await.unwrap();
    // Re-sent after the 5 s the server asked for: no deadline.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
    let (inner, arrivals_2) = provider(Instant::now(), throttled_once("5"));
    let service = exact().layer(inner);
    let begun = Instant::now();
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline(begun + Duration::from_secs(2)));
    let response = service.clone().oneshot(request).await.unwrap();
    // The 429 comes back at once: its wait would end past the deadline.
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(Instant::now(), begun);
    // The gate is now closed for 5 s: a request whose deadline comes first
    // fails at once instead of being held there.
    let mut request = get();
    request
        .extensions_mut()
        .insert(Deadline(begun + Duration::from_secs(1)));
    let error = service.clone().oneshot(request).await.unwrap_err();
    assert!(error.downcast_ref::<GateClosed>().is_some(), "{error}");
    assert_eq!(Instant::now(), begun, "refused at once");
    assert_eq!(arrivals.lock().unwrap().len(), 2);
    assert_eq!(arrivals_2.lock().unwrap().len(), 1);
}

/// A provider whose first request is refused for 10 s after 100 ms, and
/// whose second, sent at the start too, waited in a pacing layer below until
/// `released` and is accepted at 200 ms; the rest are accepted at once.
fn refusal_then_a_request_released_at(
    start: Instant,
    released: Duration,
) -> (
    impl tower::Service<
        Request<ReplayBody<Empty<Bytes>>>,
        Response = Response<()>,
        Error = crate::BoxError,
        Future: Send,
    > + Clone,
    crate::test_support::Arrivals,
) {
    let (inner, arrivals) = provider(start, throttled_once("10"));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = tower::service_fn(move |request: Request<ReplayBody<Empty<Bytes>>>| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let call = inner.clone().oneshot(request);
        async move {
            let mut response = call.await?;
            match n {
                0 => tokio::time::sleep(Duration::from_millis(100)).await,
                1 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    response
                        .extensions_mut()
                        .insert(crate::Released::new(start + released));
                }
                _ => {}
            }
            Ok::<_, crate::BoxError>(response)
        }
    });
    (service, arrivals)
}

/// Every arrival's instant, in milliseconds from the start, in order.
fn sorted_millis(arrivals: &crate::test_support::Arrivals) -> Vec<u128> {
    let mut times: Vec<u128> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.at.as_millis())
        .collect();
    times.sort_unstable();
    times
}

#[tokio::test(start_paused = true)]
async fn a_request_released_below_after_the_refusal_and_accepted_reopens_the_gate() {
    let start = Instant::now();
    let (inner, arrivals) = refusal_then_a_request_released_at(start, Duration::from_millis(150));
    let service = exact().layer(inner);
    let refused = tokio::spawn(service.clone().oneshot(get()));
    let released = tokio::spawn(service.clone().oneshot(get()));
    // The refusal closed the gate at 100 ms for 10 s; a caller comes to it
    // at 120 ms. The second request left the pacing layer at 150 ms and
    // was accepted at 200 ms.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let waiting = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(180)).await;
    let late = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(late.status(), 200);
    for caller in [released, refused, waiting] {
        assert_eq!(caller.await.unwrap().unwrap().status(), 200);
    }
    let times = sorted_millis(&arrivals);
    // At 200 ms the provider has room by its own count: the refused
    // request and the caller held at the gate go then, not at 10.1 s; the
    // caller at 300 ms goes at once.
    assert_eq!(times, [0, 0, 200, 200, 300]);
}

#[tokio::test(start_paused = true)]
async fn a_request_released_below_before_the_refusal_leaves_the_gate_closed() {
    let start = Instant::now();
    let (inner, arrivals) = refusal_then_a_request_released_at(start, Duration::from_millis(50));
    let service = exact().layer(inner);
    let refused = tokio::spawn(service.clone().oneshot(get()));
    let released = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = tokio::spawn(service.clone().oneshot(get()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nothing went while the gate is closed.
    assert_eq!(arrivals.lock().unwrap().len(), 2);
    assert_eq!(released.await.unwrap().unwrap().status(), 200);
    assert_eq!(refused.await.unwrap().unwrap().status(), 200);
    assert_eq!(late.await.unwrap().unwrap().status(), 200);
    let times = sorted_millis(&arrivals);
    // Accepted, but it may have reached the provider before the refusal:
    // the gate holds the caller at 300 ms until it opens at 10.1 s, with
    // the refused request as its probe first.
    assert_eq!(times, [0, 0, 10_100, 10_100]);
}
