//! The README stack, shared by the end-to-end tests that drive it.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::sliding_window::MemoryStore;
use tower_quota::{
    BoxError, HostKey, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer,
    UnitCost,
};

/// The README stack's pacing layer: `quota` per `window`, per host, with
/// feedback from the provider's answers.
pub(crate) fn readme_pacing(
    quota: u64,
    window: Duration,
) -> SlidingWindowLayer<HostKey, UnitCost, MemoryStore, HttpFeedback> {
    SlidingWindowLayer::new(quota, window)
        .unwrap()
        .key_fn(HostKey)
        .usage_fn(HttpFeedback)
        .max_wait(Duration::from_secs(30))
}

/// Sends `count` GETs to `url` through the README stack (defaults only, a
/// fresh hyper-util client), `concurrency` at a time; returns how many
/// succeeded.
#[allow(
    dead_code,
    reason = "not every test binary that shares this module uses it"
)]
pub(crate) async fn run_readme_stack(
    url: &str,
    quota: u64,
    window: Duration,
    count: usize,
    concurrency: usize,
) -> usize {
    run_stack(url, readme_pacing(quota, window), count, concurrency).await
}

/// As [`run_readme_stack`], with `pacing` as the pacing layer.
pub(crate) async fn run_stack(
    url: &str,
    pacing: SlidingWindowLayer<HostKey, UnitCost, MemoryStore, HttpFeedback>,
    count: usize,
    concurrency: usize,
) -> usize {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(JitterBackoffLayer::new().max_attempts(4).unwrap())
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
        .layer(pacing)
        .timeout(Duration::from_secs(10))
        .service(client);
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let request = http::Request::get(format!("{url}/v1/items/{i}"))
            .body(Empty::new())
            .unwrap();
        let service = service.clone();
        tasks.spawn(async move {
            let result: Result<bool, BoxError> = async {
                let response = service.oneshot(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok(ok)
            }
            .await;
            drop(permit);
            matches!(result, Ok(true))
        });
    }
    let mut succeeded = 0;
    while let Some(ok) = tasks.join_next().await {
        succeeded += usize::from(ok.unwrap());
    }
    succeeded
}
