//! Weighted quotas against quota-mock enforcing a token quota beside a
//! request quota, both as strict sliding logs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::SlidingWindowLayer;

const TOKENS: u64 = 200;
const REQUESTS: u64 = 20;
const WINDOW: Duration = Duration::from_secs(1);

fn header_u64(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

async fn provider() -> MockServer {
    MockServer::builder()
        .rule(Rule::sliding_log(TOKENS, WINDOW).weighted())
        .rule(Rule::sliding_log(REQUESTS, WINDOW))
        .cost_header(HeaderName::from_static("x-cost"))
        .actual_cost_header(HeaderName::from_static("x-actual-cost"))
        .usage_header(HeaderName::from_static("x-usage"))
        .start()
        .await
        .unwrap()
}

/// Sends requests declaring `costs[i]` (and, when given, really using
/// `actual[i]`) with 32 in flight; returns the statuses.
async fn send<S>(service: S, url: &str, calls: Vec<(u64, Option<u64>)>) -> Vec<u16>
where
    S: tower::Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
        > + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let in_flight = Arc::new(Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for (cost, actual) in calls {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let mut request =
            http::Request::post(format!("{url}/v1/completions")).header("x-cost", cost);
        if let Some(actual) = actual {
            request = request.header("x-actual-cost", actual);
        }
        let request = request.body(Empty::new()).unwrap();
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            response.into_body().collect().await.unwrap();
            drop(permit);
            status
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_quota_is_never_exceeded_with_small_and_large_requests() {
    let _turn = crate::support::beside_others().await;
    let server = provider().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let limiter = SlidingWindowLayer::new(TOKENS, WINDOW)
        .unwrap()
        .and_request_quota(REQUESTS, WINDOW)
        .unwrap()
        .cost_fn(|request: &http::Request<Empty<Bytes>>| {
            header_u64(request.headers(), "x-cost").unwrap_or(1)
        });
    let service = ServiceBuilder::new().layer(limiter).service(client);
    // Small and large requests mixed: 3, 120, 7, 60, 1, 150, ...
    let costs = [3, 120, 7, 60, 1, 150, 12, 45, 2, 90];
    let calls = (0..30).map(|i| (costs[i % costs.len()], None)).collect();
    let statuses = send(service, &server.url(), calls).await;

    let stats = server.stats();
    // What the provider saw, refused arrivals included: no refusal, so every
    // arrival was admitted and the admitted costs are all the costs.
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert_eq!(stats.accepted(), stats.total);
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(stats.max_cost_in_any_window(WINDOW) <= TOKENS);
    assert!(stats.max_arrivals_in_any_window(WINDOW) <= REQUESTS);
    // The token quota is what binds: the busiest window is nearly full.
    assert!(stats.max_cost_in_any_window(WINDOW) > TOKENS / 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_from_reported_usage_keep_the_quota_and_speed_things_up() {
    let _turn = crate::support::beside_others().await;
    let server = provider().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    // Every request declares 100 tokens but really uses 25.
    let calls: Vec<_> = (0..40).map(|_| (100, Some(25))).collect();
    let limiter = SlidingWindowLayer::new(TOKENS, WINDOW)
        .unwrap()
        .and_request_quota(REQUESTS, WINDOW)
        .unwrap()
        .cost_fn(|request: &http::Request<Empty<Bytes>>| {
            header_u64(request.headers(), "x-cost").unwrap_or(1)
        })
        .usage_fn(|response: &http::Response<hyper::body::Incoming>| {
            header_u64(response.headers(), "x-usage")
        });
    let service = ServiceBuilder::new().layer(limiter).service(client);
    let started = tokio::time::Instant::now();
    let statuses = send(service, &server.url(), calls).await;
    let elapsed = started.elapsed();

    let stats = server.stats();
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert_eq!(stats.accepted(), stats.total);
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(stats.max_cost_in_any_window(WINDOW) <= TOKENS);
    assert!(stats.max_arrivals_in_any_window(WINDOW) <= REQUESTS);
    // At 100 tokens each, 40 requests need 20 windows; charged their real 25
    // they need far fewer.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    server.shutdown().await;
}
