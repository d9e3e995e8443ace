//! The middleware in a chain: what runs per attempt, and which errors come
//! back as what.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Extensions, StatusCode};
use quota_mock::{MockServer, Scripted};
use reqwest_middleware::{ClientBuilder, Middleware, Next};
use tower_quota::sliding_window::Overloaded;
use tower_quota::{HostKey, HttpFeedback, JitterBackoffLayer, SlidingWindowLayer};
use tower_quota_reqwest::QuotaMiddleware;

use support::{client_with, provider, reqwest_client};

/// A provider of 100 requests a second whose first answer is a 503.
async fn failing_once() -> MockServer {
    provider(
        100,
        Duration::from_secs(1),
        Some(Scripted::new(1, StatusCode::SERVICE_UNAVAILABLE)),
    )
    .await
}

/// Counts the attempts that reach it, and leaves a mark in the extensions.
#[derive(Clone, Default)]
struct CountAttempts(Arc<AtomicUsize>);

#[derive(Clone, Debug, PartialEq)]
struct Mark(usize);

#[async_trait::async_trait]
impl Middleware for CountAttempts {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let attempt = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        extensions.insert(Mark(attempt));
        next.run(request, extensions).await
    }
}

/// Reads the mark the middlewares after it left.
#[derive(Clone, Default)]
struct ReadMark(Arc<std::sync::Mutex<Option<Mark>>>);

#[async_trait::async_trait]
impl Middleware for ReadMark {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let response = next.run(request, extensions).await;
        *self.0.lock().unwrap() = extensions.get::<Mark>().cloned();
        response
    }
}

/// What one attempt looked like to the middlewares after this crate's.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: http::Method,
    url: String,
    version: http::Version,
    header: Option<http::HeaderValue>,
    timeout: Option<Duration>,
    body: Option<Vec<u8>>,
}

/// Records every attempt that reaches it.
#[derive(Clone, Default)]
struct RecordAttempts(Arc<std::sync::Mutex<Vec<Seen>>>);

#[async_trait::async_trait]
impl Middleware for RecordAttempts {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.lock().unwrap().push(Seen {
            method: request.method().clone(),
            url: request.url().to_string(),
            version: request.version(),
            header: request.headers().get("x-tenant").cloned(),
            timeout: request.timeout().copied(),
            body: request
                .body()
                .and_then(reqwest::Body::as_bytes)
                .map(<[u8]>::to_vec),
        });
        next.run(request, extensions).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_the_request_as_the_caller_made_it() {
    let server = failing_once().await;
    let attempts = RecordAttempts::default();
    let client = ClientBuilder::new(reqwest_client())
        .with(QuotaMiddleware::new(100, Duration::from_secs(1)).unwrap())
        .with(attempts.clone())
        .build();
    let url = format!("{}/v1/items/1?page=2&sort=name#top", server.url());

    let response = client
        .put(&url)
        .header("x-tenant", "acme")
        .timeout(Duration::from_secs(7))
        .body(r#"{"name":"widget"}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let seen = attempts.0.lock().unwrap().clone();
    let expected = Seen {
        method: http::Method::PUT,
        url: reqwest::Url::parse(&url).unwrap().to_string(),
        version: http::Version::HTTP_11,
        header: Some(http::HeaderValue::from_static("acme")),
        timeout: Some(Duration::from_secs(7)),
        body: Some(br#"{"name":"widget"}"#.to_vec()),
    };
    // A 503, then the same request again.
    assert_eq!(seen, vec![expected.clone(), expected]);
    assert_eq!(server.stats().total, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middlewares_after_it_run_once_per_attempt() {
    let server = failing_once().await;
    let attempts = CountAttempts::default();
    let mark = ReadMark::default();
    let client = ClientBuilder::new(reqwest_client())
        .with(mark.clone())
        .with(QuotaMiddleware::new(100, Duration::from_secs(1)).unwrap())
        .with(attempts.clone())
        .build();

    let response = client
        .get(format!("{}/v1/items/1", server.url()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().total, 2);
    assert_eq!(attempts.0.load(Ordering::SeqCst), 2);
    // The last attempt's extensions reach the middlewares before it.
    assert_eq!(*mark.0.lock().unwrap(), Some(Mark(2)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_comes_back_as_reqwest_error_after_retries() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let attempts = CountAttempts::default();
    let backoff = JitterBackoffLayer::new()
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .unwrap()
        .max_attempts(3)
        .unwrap();
    let client = ClientBuilder::new(reqwest_client())
        .with(
            QuotaMiddleware::new(100, Duration::from_secs(1))
                .unwrap()
                .backoff(backoff),
        )
        .with(attempts.clone())
        .build();

    let error = client
        .get(format!("http://{addr}/v1/items/1"))
        .send()
        .await
        .unwrap_err();

    match &error {
        reqwest_middleware::Error::Reqwest(error) => assert!(error.is_connect(), "{error:?}"),
        other => panic!("expected reqwest's own error, got {other:?}"),
    }
    // A connect error is transient: every attempt was made.
    assert_eq!(attempts.0.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_window_comes_back_as_middleware_error() {
    let server = provider(100, Duration::from_secs(1), None).await;
    // One request a minute, and no patience: the second is refused at once.
    let pacing = SlidingWindowLayer::new(1, Duration::from_secs(60))
        .unwrap()
        .key_fn(HostKey)
        .usage_fn(HttpFeedback)
        .max_wait(Duration::from_millis(10));
    let client = client_with(
        QuotaMiddleware::new(1, Duration::from_secs(60))
            .unwrap()
            .pacing(pacing),
    );
    let url = format!("{}/v1/items/1", server.url());

    let first = client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let error = client.get(&url).send().await.unwrap_err();

    match &error {
        reqwest_middleware::Error::Middleware(error) => {
            let overloaded = error.downcast_ref::<Overloaded>();
            assert!(overloaded.is_some(), "{error:?}");
        }
        other => panic!("expected the pacing layer's error, got {other:?}"),
    }
    // The refused request never reached the provider.
    assert_eq!(server.stats().total, 1);
    server.shutdown().await;
}
