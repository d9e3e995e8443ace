//! A request's deadline across processes: the Redis store keeps it as
//! `max_wait`, so a request that cannot be admitted in time is refused at
//! once and none is admitted after its deadline.

mod support;

use std::time::Duration;

use tokio::time::Instant;
use tower_quota::sliding_window::{Overloaded, Place, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_is_kept_as_max_wait_across_processes() {
    let Some(server) = support::shared() else {
        return;
    };
    // Two stores, two connections: two processes as far as Redis knows.
    let first = RedisStore::builder(server.url()).build().await.unwrap();
    let second = RedisStore::builder(server.url()).build().await.unwrap();
    let layer = SlidingWindowLayer::new(2, Duration::from_secs(2)).unwrap();
    let limits = layer.limits();
    let key = Key::from(support::unique_key("deadline"));
    for _ in 0..2 {
        first.acquire(key.clone(), 1, limits).await.unwrap();
    }
    let asked = Instant::now();
    let late = Place::new().deadline(asked + Duration::from_millis(300));
    let error = second
        .acquire_placed(key.clone(), 1, limits, late)
        .await
        .unwrap_err();
    let overloaded = error.downcast_ref::<Overloaded>().expect("Overloaded");
    assert!(
        overloaded.wait() > Duration::from_millis(300),
        "{overloaded}"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "refused at once"
    );

    let deadline = asked + Duration::from_secs(5);
    let patient = Place::new().deadline(deadline);
    second
        .acquire_placed(key.clone(), 1, limits, patient)
        .await
        .unwrap();
    let admitted = Instant::now();
    assert!(admitted <= deadline);
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_share_holds_across_processes_and_critical_requests_take_it_at_once() {
    use tower_quota::sliding_window::{CostTooLarge, Priority};
    let Some(server) = support::shared() else {
        return;
    };
    let batch_process = RedisStore::builder(server.url()).build().await.unwrap();
    let critical_process = RedisStore::builder(server.url()).build().await.unwrap();
    let layer = SlidingWindowLayer::new(10, Duration::from_secs(2))
        .unwrap()
        .reserve(Priority::Critical, 0.2)
        .unwrap();
    let limits = layer.limits().clone();
    let key = Key::from(support::unique_key("reserve"));
    let batch = Place::new().priority(Priority::Batch);

    // A batch request larger than what batch may use never fits.
    let error = batch_process
        .acquire_placed(key.clone(), 9, &limits, batch.clone())
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<CostTooLarge>().is_some(), "{error}");

    // Batch takes what it may: 8 of 10 at once; the 9th is reserved for
    // when the first leaves, although two slots are free now.
    let start = Instant::now();
    for _ in 0..8 {
        let admission = batch_process
            .acquire_placed(key.clone(), 1, &limits, batch.clone())
            .await
            .unwrap();
        assert_eq!(admission.waited(), Duration::ZERO);
    }
    let ninth = tokio::spawn({
        let (store, limits, key, batch) = (
            batch_process.clone(),
            limits.clone(),
            key.clone(),
            batch.clone(),
        );
        async move {
            store.acquire_placed(key, 1, &limits, batch).await.unwrap();
            start.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The other process's critical requests take the two reserved slots
    // at once, ahead of the batch reservation.
    let critical = Place::new().priority(Priority::Critical);
    for _ in 0..2 {
        let asked = Instant::now();
        let admission = critical_process
            .acquire_placed(key.clone(), 1, &limits, critical.clone())
            .await
            .unwrap();
        assert_eq!(admission.waited(), Duration::ZERO);
        assert!(asked.elapsed() < Duration::from_millis(500));
    }
    // The share is spent: a third critical request would wait for a slot,
    // past its deadline, so it is refused at once.
    let asked = Instant::now();
    let third = critical
        .clone()
        .deadline(asked + Duration::from_millis(500));
    let error = critical_process
        .acquire_placed(key.clone(), 1, &limits, third)
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<Overloaded>().is_some(), "{error}");
    assert!(asked.elapsed() < Duration::from_millis(500));

    let ninth = ninth.await.unwrap();
    assert!(ninth >= Duration::from_millis(1900), "{ninth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_mixing_classes_with_a_reserve_stay_within_the_quota_at_the_provider() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use quota_mock::{MockServer, Rule};
    use tower::{ServiceBuilder, ServiceExt};
    use tower_quota::sliding_window::{PlaceFromExtensions, Priority};

    let Some(redis) = support::shared() else {
        return;
    };
    let server = MockServer::builder()
        .rule(Rule::sliding_log(10, Duration::from_secs(1)))
        .start()
        .await
        .unwrap();
    let prefix = support::unique_key("classes");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..4 {
        // A store of its own: its own connection, as another process has.
        let store = RedisStore::builder(redis.url())
            .prefix(prefix.clone())
            .build()
            .await
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(
                SlidingWindowLayer::new(10, Duration::from_secs(1))
                    .unwrap()
                    .reserve(Priority::Critical, 0.4)
                    .unwrap()
                    .place_fn(PlaceFromExtensions)
                    .store(store),
            )
            .service(client.clone());
        let plan = (0..12)
            .map(|_| (Duration::ZERO, Priority::Batch))
            .chain((0..3).map(|n| {
                (
                    Duration::from_millis(300 + 1500 * n + 60 * worker),
                    Priority::Critical,
                )
            }));
        for (n, (after, class)) in plan.enumerate() {
            let service = service.clone();
            let url = format!("{}/items/{worker}-{n}", server.url());
            calls.spawn(async move {
                tokio::time::sleep_until(start + after).await;
                let mut request = http::Request::get(url).body(Empty::new()).unwrap();
                request.extensions_mut().insert(class);
                let asked = Instant::now();
                let response = service.oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                (class, status, asked.elapsed())
            });
        }
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = calls.join_next().await {
        outcomes.push(outcome.unwrap());
    }
    let stats = server.stats();
    server.shutdown().await;
    let peak = stats.rules[0].max_accepted_in_any_window;
    let critical_waits: Vec<Duration> = outcomes
        .iter()
        .filter(|(class, _, _)| *class == Priority::Critical)
        .map(|(_, _, waited)| *waited)
        .collect();
    println!(
        "60 requests over 4 stores: server {:?}, busiest window {peak}, critical waits {critical_waits:?}",
        stats.by_status
    );
    assert_eq!(stats.total, 60, "every request arrived once");
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert!(peak <= 10, "{peak} in one window");
    // Batch saturated what it may use the whole time (48 requests, 5 s);
    // the critical requests found the reserve free, and one that finds it
    // spent waits for its own share, not behind the batch reservations.
    let prompt = critical_waits
        .iter()
        .filter(|waited| **waited < Duration::from_millis(300))
        .count();
    assert!(prompt >= 10, "{critical_waits:?}");
    assert!(
        critical_waits
            .iter()
            .all(|waited| *waited < Duration::from_secs(2)),
        "{critical_waits:?}"
    );
}
