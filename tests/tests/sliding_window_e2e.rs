//! SlidingWindowLayer against quota-mock over loopback: compliance measured
//! where a provider measures it, at the server, after real sockets added
//! their jitter.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{KeyBy, MockServer, Rule};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::{BoxError, Key, SlidingWindowLayer};

/// Sends `paths` through `service` with `concurrency` in flight; returns the
/// statuses.
async fn send_all<S>(service: S, base: &str, paths: Vec<String>, concurrency: usize) -> Vec<u16>
where
    S: tower::Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
        > + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for path in paths {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let request = http::Request::get(format!("{base}{path}"))
            .body(Empty::new())
            .unwrap();
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(request).await.map_err(Into::into).unwrap();
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
async fn strict_sliding_log_sees_no_429_at_the_quota_with_high_concurrency() {
    let _turn = crate::support::beside_others().await;
    let (quota, window) = (20, Duration::from_secs(1));
    let server = MockServer::builder()
        .rule(Rule::sliding_log(quota, window))
        .start()
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(SlidingWindowLayer::new(quota, window).unwrap())
        .service(client);

    let paths = (0..100).map(|i| format!("/items/{i}")).collect();
    let statuses = send_all(service, &server.url(), paths, 64).await;

    let stats = server.stats();
    assert_eq!(
        stats.count(429),
        0,
        "the server refused requests: {:?}",
        stats.by_status
    );
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 100);
    assert_eq!(stats.max_in_any_window(window), quota);
    // Four full windows after the first burst: the quota is used, not wasted.
    let accepted: Vec<Duration> = stats.arrivals.iter().map(|a| a.at).collect();
    let span = *accepted.iter().max().unwrap() - *accepted.iter().min().unwrap();
    assert!(span >= Duration::from_secs(4), "span {span:?}");
    assert!(
        span < Duration::from_millis(4_200),
        "span {span:?}: the limiter idled"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_paced_to_its_own_quota_at_the_server() {
    let _turn = crate::support::beside_others().await;
    let (quota, window) = (10, Duration::from_secs(1));
    let server = MockServer::builder()
        .rule(Rule::sliding_log(quota, window))
        .key_by(KeyBy::PathSegment)
        .start()
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let limiter = SlidingWindowLayer::new(quota, window).unwrap().key_fn(
        |request: &http::Request<Empty<Bytes>>| {
            let tenant = request
                .uri()
                .path()
                .trim_start_matches('/')
                .split('/')
                .next();
            Key::from(tenant.unwrap_or_default().to_owned())
        },
    );
    let service = ServiceBuilder::new().layer(limiter).service(client);

    let paths = (0..60)
        .map(|i| {
            if i % 3 == 0 {
                format!("/alpha/{i}")
            } else {
                format!("/beta/{i}")
            }
        })
        .collect();
    let statuses = send_all(service, &server.url(), paths, 48).await;

    let stats = server.stats();
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(stats.rules[0].max_accepted_in_any_window, quota);
    for tenant in ["alpha", "beta"] {
        assert!(
            stats.arrivals.iter().any(|a| a.key == tenant),
            "no arrivals for {tenant}"
        );
    }
    server.shutdown().await;
}
