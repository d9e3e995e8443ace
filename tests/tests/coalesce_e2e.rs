//! Coalescing against quota-mock: identical GETs in flight at once reach
//! the provider as one request, and spend one slot of its quota.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::SlidingWindowLayer;
use tower_quota::coalesce::CoalesceLayer;

#[tokio::test(start_paused = true)]
async fn a_hundred_identical_gets_reach_the_provider_once() {
    let _turn = crate::support::beside_others().await;
    let server = MockServer::builder()
        .on_caller_runtime()
        .rule(Rule::sliding_log(10, Duration::from_secs(60)))
        .processing(Duration::from_millis(100), Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(CoalesceLayer::new())
        .layer(SlidingWindowLayer::new(10, Duration::from_secs(60)).unwrap())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let url = format!("{}/v1/models", server.url());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let request = http::Request::get(&url).body(Empty::new()).unwrap();
        tasks.push(tokio::spawn(client.clone().oneshot(request)));
    }
    let mut answers = Vec::new();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        let status = response.status();
        let remaining = response.headers().get("x-ratelimit-remaining").cloned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        answers.push((status, remaining, body));
    }
    assert!(answers.iter().all(|answer| *answer == answers[0]));
    assert_eq!(answers[0].0, 200);
    let stats = server.stats();
    assert_eq!(stats.total, 1, "one upstream request for 100 callers");
    assert_eq!(stats.count(429), 0);
    // One slot of the client's window spent: 9 more go at once (on the
    // paused clock, a wait for the window would show as a minute).
    let before = tokio::time::Instant::now();
    for _ in 0..9 {
        let request = http::Request::get(format!("{url}/other"))
            .body(Empty::new())
            .unwrap();
        assert_eq!(client.clone().oneshot(request).await.unwrap().status(), 200);
    }
    assert!(
        before.elapsed() < Duration::from_secs(1),
        "{:?}",
        before.elapsed()
    );
    assert_eq!(server.stats().count(429), 0);
    assert_eq!(server.stats().total, 10);
    server.shutdown().await;
}
