//! Pacing and server-directed waiting, measured where the provider counts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use quota_mock::{Outcome, Scripted};
use tokio::sync::Semaphore;
use tower_quota_reqwest::QuotaMiddleware;

use support::{client_with, provider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_429_at_the_quota_through_client_with_middleware() {
    const QUOTA: u64 = 20;
    const WINDOW: Duration = Duration::from_secs(1);
    const REQUESTS: usize = 60;
    let server = provider(QUOTA, WINDOW, None).await;
    let client = client_with(QuotaMiddleware::new(QUOTA, WINDOW).unwrap());

    let in_flight = Arc::new(Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let permit = Arc::clone(&in_flight).acquire_owned().await.unwrap();
        let request = client.get(format!("{}/v1/items/{i}", server.url()));
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
    server.shutdown().await;
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
