//! RetryAfterLayer against quota-mock over loopback.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{HeaderDialect, MockServer, Rule, Scripted};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::RetryAfterLayer;
use tower_quota::replay::ReplayBody;
use tower_quota::retry_after::ServerSignal;

/// `requests` GETs with `concurrency` in flight through RetryAfterLayer
/// alone; returns (status, attempts) of each.
async fn get_all(server: &MockServer, requests: usize, concurrency: usize) -> Vec<(u16, u32)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Empty<Bytes>>>();
    let service = ServiceBuilder::new()
        .layer(RetryAfterLayer::new())
        .service(client);
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let request = http::Request::get(format!("{}/items/{i}", server.url()))
            .body(Empty::new())
            .unwrap();
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(request).await.unwrap();
            // No signal: sent once, with nothing to say.
            let attempts = response
                .extensions()
                .get::<ServerSignal>()
                .map_or(1, ServerSignal::attempts);
            let status = response.status().as_u16();
            response.into_body().collect().await.unwrap();
            drop(permit);
            (status, attempts)
        });
    }
    let mut results = Vec::new();
    while let Some(result) = tasks.join_next().await {
        results.push(result.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_429_pauses_everyone_and_every_request_succeeds_after_the_gate_opens() {
    let _turn = crate::support::beside_others().await;
    // 40 per 2 s in fixed windows; refusals carry only Retry-After.
    let server = MockServer::builder()
        .rule(Rule::fixed_window(40, Duration::from_secs(2)))
        .headers(HeaderDialect::None)
        .start()
        .await
        .unwrap();
    let results = get_all(&server, 64, 64).await;
    let stats = server.stats();
    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "{results:?}"
    );
    // Only requests already in flight when the first 429 came back can be
    // refused: the 24 over the window's 40. None after the gate closed.
    let refused = stats.count(429);
    assert!(refused <= 24, "{refused} refusals");
    assert!(
        refused > 0,
        "the provider never pushed back: nothing was tested"
    );
    assert_eq!(stats.accepted(), 64);
    assert!(
        results.iter().all(|(_, attempts)| *attempts <= 2),
        "{results:?}"
    );
    server.shutdown().await;
}

async fn never_refused_with_quota_headers_only(dialect: HeaderDialect) {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(10, Duration::from_secs(1)))
        .headers(dialect)
        .retry_after(false)
        .start()
        .await
        .unwrap();
    let results = get_all(&server, 30, 16).await;
    let stats = server.stats();
    assert_eq!(stats.count(429), 0, "{dialect:?}: {:?}", stats.by_status);
    assert!(
        results
            .iter()
            .all(|(status, attempts)| *status == 200 && *attempts == 1)
    );
    // Every arrival counts, refused ones included.
    assert!(stats.max_arrivals_in_any_window(Duration::from_secs(1)) <= 10);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_ratelimit_headers_alone_keep_the_client_from_a_429() {
    let _turn = crate::support::beside_others().await;
    never_refused_with_quota_headers_only(HeaderDialect::XRateLimit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ietf_ratelimit_fields_alone_keep_the_client_from_a_429() {
    let _turn = crate::support::beside_others().await;
    never_refused_with_quota_headers_only(HeaderDialect::IetfStructured).await;
}

/// A provider whose first answer is 503 with `Retry-After: 1`.
async fn unavailable_once() -> MockServer {
    MockServer::builder()
        .scripted(
            Scripted::new(1, http::StatusCode::SERVICE_UNAVAILABLE)
                .retry_after(Duration::from_secs(1)),
        )
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_keyed_post_is_resent_byte_identical_after_a_503_with_retry_after() {
    let _turn = crate::support::beside_others().await;
    let server = unavailable_once().await;
    type Chunks = StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Chunks>>();
    let service = ServiceBuilder::new()
        .layer(RetryAfterLayer::new())
        .service(client);
    let frames: Vec<_> = (0..10u8)
        .map(|i| Ok(http_body::Frame::data(Bytes::from(vec![b'a' + i; 1024]))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let request = http::Request::post(format!("{}/upload", server.url()))
        .header("idempotency-key", "upload-1")
        .body(body)
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let stats = server.stats();
    assert_eq!(stats.arrivals.len(), 2);
    assert_eq!(stats.arrivals[0].status, 503);
    assert_eq!(stats.arrivals[0].body_len, 10 * 1024);
    assert_eq!(stats.arrivals[0].body_hash, stats.arrivals[1].body_hash);
    assert_eq!(stats.arrivals[1].body_len, 10 * 1024);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_replay_limit_is_sent_once() {
    let _turn = crate::support::beside_others().await;
    let server = unavailable_once().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let service = ServiceBuilder::new()
        .layer(RetryAfterLayer::new().max_replay_bytes(4 * 1024))
        .service(client);
    let request = http::Request::put(format!("{}/upload", server.url()))
        .body(Full::new(Bytes::from(vec![1u8; 10 * 1024])))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    let stats = server.stats();
    assert_eq!(stats.arrivals.len(), 1);
    assert_eq!(stats.arrivals[0].body_len, 10 * 1024);
    server.shutdown().await;
}

/// Regression: a POST without an `Idempotency-Key` was re-sent after a 503
/// with `Retry-After`, which a proxy may send after forwarding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_idempotency_key_is_sent_once_after_a_503_with_retry_after() {
    let _turn = crate::support::beside_others().await;
    let server = unavailable_once().await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody<Full<Bytes>>>();
    let service = ServiceBuilder::new()
        .layer(RetryAfterLayer::new())
        .service(client);
    let request = http::Request::post(format!("{}/orders", server.url()))
        .body(Full::new(Bytes::from_static(b"{\"item\":42}")))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(server.stats().arrivals.len(), 1);
    server.shutdown().await;
}
