//! Retried requests carry the original body, whatever reqwest body it was.

mod support;

use std::time::Duration;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame};
use quota_mock::{MockServer, Scripted, fnv1a64};
use tower_quota_reqwest::QuotaMiddleware;

use support::{client_with, provider};

const ORDER: &str = r#"{"order":7,"item":"widget","quantity":1}"#;

/// A body of frames of unknown total length, as a stream is.
struct Frames(VecDeque<&'static str>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.0.pop_front();
        Poll::Ready(frame.map(|frame| Ok(Frame::data(Bytes::from_static(frame.as_bytes())))))
    }
}

async fn throttled_once_by_503() -> MockServer {
    provider(
        100,
        Duration::from_secs(1),
        Some(Scripted::new(1, StatusCode::SERVICE_UNAVAILABLE)),
    )
    .await
}

/// The provider saw a 503 then a 200, each with `body`.
fn assert_resent_with(server: &MockServer, body: &[u8]) {
    let stats = server.stats();
    let seen: Vec<_> = stats
        .arrivals
        .iter()
        .map(|arrival| (arrival.status, arrival.body_hash, arrival.body_len))
        .collect();
    let expected = (fnv1a64(body), body.len() as u64);
    assert_eq!(
        seen,
        vec![(503, expected.0, expected.1), (200, expected.0, expected.1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_idempotency_key_is_resent_with_the_same_body() {
    let server = throttled_once_by_503().await;
    let client = client_with(QuotaMiddleware::new(100, Duration::from_secs(1)).unwrap());

    let response = client
        .post(format!("{}/v1/orders", server.url()))
        .header("idempotency-key", "order-7")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(ORDER)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_resent_with(&server, ORDER.as_bytes());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_is_replayed_from_the_first_attempt() {
    let server = throttled_once_by_503().await;
    let client = client_with(QuotaMiddleware::new(100, Duration::from_secs(1)).unwrap());
    // Three frames that reqwest cannot clone: the layers buffer them.
    let body = reqwest::Body::wrap(Frames(VecDeque::from([
        "{\"order\":7,",
        "\"item\":\"widget\",",
        "\"quantity\":1}",
    ])));

    let response = client
        .post(format!("{}/v1/orders", server.url()))
        .header("idempotency-key", "order-7")
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_resent_with(&server, ORDER.as_bytes());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_without_idempotency_key_is_not_resent_after_503() {
    let server = throttled_once_by_503().await;
    let client = client_with(QuotaMiddleware::new(100, Duration::from_secs(1)).unwrap());

    let response = client
        .post(format!("{}/v1/orders", server.url()))
        .body(ORDER)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.stats().total, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_replay_limit_is_sent_once() {
    let server = throttled_once_by_503().await;
    let client = client_with(QuotaMiddleware::new(100, Duration::from_secs(1)).unwrap());
    // Past the layers' default replay limit of 64 KiB.
    let upload = vec![b'x'; 100 * 1024];

    let response = client
        .post(format!("{}/v1/uploads", server.url()))
        .header("idempotency-key", "upload-1")
        .body(upload.clone())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let stats = server.stats();
    assert_eq!(stats.total, 1);
    assert_eq!(stats.arrivals[0].body_hash, fnv1a64(&upload));
    server.shutdown().await;
}
