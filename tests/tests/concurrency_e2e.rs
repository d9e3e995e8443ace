//! A provider that counts what is in flight (at most 5 at once, GitHub
//! style) and takes its time answering, behind the README stack with a
//! concurrency layer: 100 callers at once, every request succeeds, and the
//! provider, as it measures, never has more than 5 in flight.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::concurrency::ConcurrencyLayer;
use tower_quota::{HostKey, JitterBackoffLayer, RetryAfterLayer};

use crate::support;

const SLOTS: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_quota_holds_at_the_provider() {
    let _turn = crate::support::beside_others().await;
    let server = MockServer::builder()
        .rule(Rule::concurrency(u64::from(SLOTS)))
        .rule(Rule::sliding_log(100, Duration::from_secs(1)))
        .processing(Duration::from_millis(100), Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(JitterBackoffLayer::new())
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
        .layer(ConcurrencyLayer::new(SLOTS).unwrap().key_fn(HostKey))
        .layer(support::readme_pacing(100, Duration::from_secs(1)))
        .service(client);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..100 {
        let service = service.clone();
        let request = http::Request::get(format!("{}/v1/items/{n}", server.url()))
            .body(Empty::new())
            .unwrap();
        calls.spawn(async move {
            let response = service.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            response.into_body().collect().await.unwrap();
            status
        });
    }
    let mut ok = 0;
    while let Some(status) = calls.join_next().await {
        ok += usize::from(status.unwrap() == 200);
    }
    let elapsed = started.elapsed();
    let stats = server.stats();
    server.shutdown().await;
    let peak = stats.rules[0].max_accepted_in_any_window;
    println!(
        "100 callers, {SLOTS} slots: {ok} succeeded in {elapsed:?}; server {:?}, \
         most in flight at once {peak}",
        stats.by_status
    );
    assert_eq!(ok, 100);
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert_eq!(stats.total, 100, "no request was sent twice");
    assert!(peak <= u64::from(SLOTS), "{peak} in flight at once");
    // The slots were used: 100 requests of 0.1-0.3 s, 5 at a time, take
    // about 4 s; one at a time would take 20.
    assert_eq!(peak, u64::from(SLOTS));
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
}
