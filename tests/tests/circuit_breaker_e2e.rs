//! CircuitBreakerLayer against quota-mock switched to 100% 503 for a while.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{Fault, MockServer};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, Window};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_an_outage_lets_only_probes_through_and_closes_after_recovery() {
    let _turn = crate::support::beside_others().await;
    let server = MockServer::builder().start().await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let open_for = Duration::from_millis(300);
    let breaker = CircuitBreakerLayer::new()
        .window(Window::Count(10), 5)
        .unwrap()
        .consecutive_failures(Some(3))
        .open_duration(open_for, 0.0)
        .unwrap()
        .half_open_probes(1)
        .unwrap();
    let service = ServiceBuilder::new().layer(breaker).service(client);
    let url = format!("{}/v1/items", server.url());

    let (mut ok, mut failed, mut fast) = (0u64, 0u64, 0u64);
    let mut last_statuses = Vec::new();
    let started = tokio::time::Instant::now();
    let outage = Duration::from_millis(400)..Duration::from_millis(1_600);
    let mut outage_started = false;
    let mut outage_ended = false;
    while started.elapsed() < Duration::from_millis(2_600) {
        let now = started.elapsed();
        if !outage_started && now >= outage.start {
            server
                .set_faults(vec![Fault::ErrorRate {
                    fraction: 1.0,
                    statuses: vec![http::StatusCode::SERVICE_UNAVAILABLE],
                }])
                .unwrap();
            outage_started = true;
        }
        if !outage_ended && now >= outage.end {
            server.set_faults(Vec::new()).unwrap();
            outage_ended = true;
        }
        let request = http::Request::get(&url).body(Empty::new()).unwrap();
        match service.clone().oneshot(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                if status == 200 {
                    ok += 1
                } else {
                    failed += 1
                }
                last_statuses.push(status);
            }
            Err(error) => {
                assert!(error.is::<CircuitOpen>(), "{error}");
                fast += 1;
                last_statuses.push(0);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = server.stats();
    // Fast failures never reach the provider.
    assert_eq!(stats.total, ok + failed);
    assert!(fast > 20, "the breaker never opened: {fast} fast failures");
    // While the provider was down, it received the 3 failures that opened the
    // breaker and one probe per open period, no more.
    let periods = (outage.end - outage.start).as_millis() / open_for.as_millis() + 1;
    assert!(
        failed <= 3 + periods as u64,
        "{failed} failures reached the provider"
    );
    // After the recovery the breaker closed and calls flow again.
    assert!(
        last_statuses.iter().rev().take(20).all(|s| *s == 200),
        "{last_statuses:?}"
    );
    server.shutdown().await;
}
