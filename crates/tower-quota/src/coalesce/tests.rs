use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::{CoalesceError, CoalesceLayer};
use crate::BoxError;

/// Sets its flag when dropped: tells whether a call was aborted.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Upstream {
    /// A provider that answers after 50 ms with the request's path as the
    /// body and a header; `/fail` fails.
    fn service(
        &self,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        let calls = Arc::clone(&self.calls);
        let dropped = Arc::clone(&self.dropped);
        service_fn(move |request: http::Request<()>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let guard = DropFlag(Arc::clone(&dropped));
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(guard);
                if request.uri().path() == "/fail" {
                    return Err::<_, BoxError>("upstream down".into());
                }
                Ok(http::Response::builder()
                    .header("x-call", call)
                    .body(Full::new(Bytes::from(request.uri().path().to_owned())))
                    .expect("a valid response"))
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn request(method: http::Method, uri: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap()
}

/// Sends every request from a task of its own, all at once.
fn send_all<S>(
    service: &S,
    requests: impl IntoIterator<Item = http::Request<()>>,
) -> Vec<tokio::task::JoinHandle<Result<http::Response<Full<Bytes>>, BoxError>>>
where
    S: Service<http::Request<()>, Response = http::Response<Full<Bytes>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    requests
        .into_iter()
        .map(|request| tokio::spawn(service.clone().oneshot(request)))
        .collect()
}

async fn bodies(
    tasks: Vec<tokio::task::JoinHandle<Result<http::Response<Full<Bytes>>, BoxError>>>,
) -> Vec<(String, Bytes)> {
    let mut answers = Vec::new();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        let call = response.headers()["x-call"].to_str().unwrap().to_owned();
        answers.push((
            call,
            response.into_body().collect().await.unwrap().to_bytes(),
        ));
    }
    answers
}

#[tokio::test(start_paused = true)]
async fn a_hundred_identical_gets_share_one_upstream_call() {
    let upstream = Upstream::default();
    let service = CoalesceLayer::new().layer(upstream.service());
    let tasks = send_all(
        &service,
        (0..100).map(|_| request(http::Method::GET, "/v1/models?page=2")),
    );
    let answers = bodies(tasks).await;
    assert_eq!(upstream.calls(), 1);
    assert_eq!(answers.len(), 100);
    assert!(
        answers
            .iter()
            .all(|answer| *answer == ("0".to_owned(), Bytes::from("/v1/models")))
    );
    assert_eq!(service.in_flight(), 0, "the call is forgotten when it ends");
    // A request after the answer is a new call: nothing is cached.
    let later = service
        .clone()
        .oneshot(request(http::Method::GET, "/v1/models?page=2"))
        .await
        .unwrap();
    assert_eq!(later.headers()["x-call"], "1");
}

#[tokio::test(start_paused = true)]
async fn a_post_is_never_coalesced_unless_allowed() {
    let upstream = Upstream::default();
    let service = CoalesceLayer::new().layer(upstream.service());
    let tasks = send_all(
        &service,
        (0..10).map(|_| request(http::Method::POST, "/v1/jobs")),
    );
    let answers = bodies(tasks).await;
    assert_eq!(upstream.calls(), 10);
    let mut calls: Vec<_> = answers.into_iter().map(|(call, _)| call).collect();
    calls.sort();
    calls.dedup();
    assert_eq!(calls.len(), 10, "each POST got its own call");

    let upstream = Upstream::default();
    let service = CoalesceLayer::new()
        .allow_method(http::Method::POST)
        .layer(upstream.service());
    let tasks = send_all(
        &service,
        (0..10).map(|_| request(http::Method::POST, "/v1/search")),
    );
    bodies(tasks).await;
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn requests_differing_in_uri_method_or_key_are_separate_calls() {
    let upstream = Upstream::default();
    let by_tenant = |request: &http::Request<()>| -> crate::Key {
        request
            .headers()
            .get("x-tenant")
            .and_then(|tenant| tenant.to_str().ok())
            .map_or(crate::Key::GLOBAL, |tenant| {
                crate::Key::from(tenant.to_owned())
            })
    };
    let service = CoalesceLayer::new()
        .key_fn(by_tenant)
        .layer(upstream.service());
    let mut tenant_b = request(http::Method::GET, "/a");
    tenant_b
        .headers_mut()
        .insert("x-tenant", http::HeaderValue::from_static("b"));
    let tasks = send_all(
        &service,
        [
            request(http::Method::GET, "/a"),
            request(http::Method::GET, "/a"),
            request(http::Method::GET, "/a?x=1"),
            request(http::Method::HEAD, "/a"),
            tenant_b,
        ],
    );
    bodies(tasks).await;
    assert_eq!(upstream.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn when_every_caller_leaves_the_call_is_aborted_and_forgotten() {
    let upstream = Upstream::default();
    let service = CoalesceLayer::new().layer(upstream.service());
    let tasks = send_all(
        &service,
        (0..3).map(|_| request(http::Method::GET, "/slow")),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(service.in_flight(), 1);
    for task in &tasks[..2] {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(service.in_flight(), 1, "one caller still waits");
    assert!(!upstream.dropped.load(Ordering::SeqCst));
    tasks[2].abort();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(service.in_flight(), 0);
    assert!(
        upstream.dropped.load(Ordering::SeqCst),
        "the upstream call was not aborted"
    );
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn beyond_max_in_flight_a_request_is_sent_on_its_own() {
    let upstream = Upstream::default();
    let service = CoalesceLayer::new()
        .max_in_flight(1)
        .layer(upstream.service());
    let tasks = send_all(
        &service,
        [
            request(http::Method::GET, "/a"),
            request(http::Method::GET, "/a"),
            request(http::Method::GET, "/b"),
            request(http::Method::GET, "/b"),
        ],
    );
    let answers = bodies(tasks).await;
    assert_eq!(upstream.calls(), 3, "/a shared, each /b alone");
    assert_eq!(answers[2].1, "/b");
    assert_eq!(service.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_reaches_every_caller() {
    let upstream = Upstream::default();
    let service = CoalesceLayer::new().layer(upstream.service());
    let tasks = send_all(
        &service,
        (0..5).map(|_| request(http::Method::GET, "/fail")),
    );
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert!(
            matches!(
                error.downcast_ref::<CoalesceError>(),
                Some(CoalesceError::Upstream(source)) if source.to_string() == "upstream down"
            ),
            "{error}"
        );
    }
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_longer_than_max_body_bytes_fails() {
    let upstream = Upstream::default();
    let service = CoalesceLayer::new()
        .max_body_bytes(4)
        .layer(upstream.service());
    let error = service
        .oneshot(request(http::Method::GET, "/longer"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<CoalesceError>(),
            Some(CoalesceError::Body(_))
        ),
        "{error}"
    );
}
