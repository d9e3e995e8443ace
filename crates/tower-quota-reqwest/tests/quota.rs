//! Pacing and server-directed waiting, measured where the provider counts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use quota_mock::{MockServer, NetworkProxy, Outcome, Scripted};
use tokio::sync::Semaphore;
use tower_quota_reqwest::QuotaMiddleware;

use support::{client_with, provider};

const QUOTA: u64 = 20;
const WINDOW: Duration = Duration::from_secs(1);
const REQUESTS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_429_at_the_quota_through_client_with_middleware() {
    let server = provider(QUOTA, WINDOW, None).await;
    let succeeded = send_at_concurrency_16(&server.url()).await;
    assert_at_most_the_quota_and_no_429(&server, succeeded);
    server.shutdown().await;
}

/// The same across quota-mock's simulated network: connections cost 30 ms
/// to open (a handshake), one-way delays vary between 5 and 25 ms, so the
/// provider counts each request somewhere between its admission and its
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_429_at_the_quota_across_a_network() {
    let server = provider(QUOTA, WINDOW, None).await;
    let network = NetworkProxy::builder(server.addr())
        .connect_delay(Duration::from_millis(30))
        .latency(Duration::from_millis(5), Duration::from_millis(25))
        .seed(7)
        .start()
        .await
        .unwrap();
    let succeeded = send_at_concurrency_16(&network.url()).await;
    assert_at_most_the_quota_and_no_429(&server, succeeded);
    server.shutdown().await;
}

/// Sends `REQUESTS` GETs to `url`, 16 at a time, through a client with
/// `QuotaMiddleware::new(QUOTA, WINDOW)`; returns how many succeeded.
async fn send_at_concurrency_16(url: &str) -> usize {
    let client = client_with(QuotaMiddleware::new(QUOTA, WINDOW).unwrap());
    let in_flight = Arc::new(Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let permit = Arc::clone(&in_flight).acquire_owned().await.unwrap();
        let request = client.get(format!("{url}/v1/items/{i}"));
        tasks.spawn(async move {
            let response = request.send().await;
            let ok = match response {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            drop(permit);
            ok
        });
    }
    let mut succeeded = 0;
    while let Some(ok) = tasks.join_next().await {
        succeeded += usize::from(ok.unwrap());
    }
    succeeded
}

/// Every request succeeded, the provider refused none and counted at most
/// the quota in any window, every arrival included.
fn assert_at_most_the_quota_and_no_429(server: &MockServer, succeeded: usize) {
    let stats = server.stats();
    eprintln!(
        "succeeded {succeeded}/{REQUESTS}; arrivals {}; 429s {}; max arrivals in any {WINDOW:?}: {}",
        stats.total,
        stats.count(429),
        stats.max_arrivals_in_any_window(WINDOW)
    );
    assert_eq!(succeeded, REQUESTS);
    assert_eq!(stats.count(429), 0);
    assert!(stats.max_arrivals_in_any_window(WINDOW) <= QUOTA);
    assert_eq!(stats.total, REQUESTS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_request_is_resent_no_earlier_than_retry_after() {
    const RETRY_AFTER: Duration = Duration::from_secs(1);
    let server = provider(
        100,
        Duration::from_secs(1),
        Some(Scripted::new(1, StatusCode::TOO_MANY_REQUESTS).retry_after(RETRY_AFTER)),
    )
    .await;
    let client = client_with(QuotaMiddleware::new(100, Duration::from_secs(1)).unwrap());

    let url = format!("{}/v1/items/1", server.url());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The response still knows where it came from.
    assert_eq!(response.url().as_str(), url);

    let stats = server.stats();
    let arrivals: Vec<_> = stats.arrivals.iter().collect();
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    assert_eq!(arrivals[0].outcome, Outcome::Scripted);
    assert_eq!(arrivals[0].status, 429);
    assert_eq!(arrivals[1].status, 200);
    let waited = arrivals[1].at - arrivals[0].at;
    eprintln!("resent {waited:?} after the 429 (Retry-After {RETRY_AFTER:?})");
    assert!(waited >= RETRY_AFTER, "resent after {waited:?}");
    server.shutdown().await;
}
