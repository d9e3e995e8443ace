//! The README stack, shared by the end-to-end tests that drive it, and the
//! turns the tests of this binary take.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, Semaphore};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::sliding_window::MemoryStore;
use tower_quota::{
    BoxError, HostKey, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer,
    UnitCost,
};

/// The tests of this binary run four at a time (`scripts/test` gives it
/// `--test-threads=4`): most of them wait on a provider's windows and use a
/// few percent of a core, so they run beside one another. Every test takes
/// its turn first, with [`beside_others`] or [`alone`], and holds it to its
/// end. The lock is fair: a test waiting to run alone holds back those that
/// ask after it.
static TURNS: RwLock<()> = RwLock::const_new(());

/// The turn of a test that mostly waits (on a provider's windows, a
/// network's delays, a paused clock): it runs beside the others that do.
pub(crate) async fn beside_others() -> RwLockReadGuard<'static, ()> {
    TURNS.read().await
}

/// [`beside_others`], for a test outside a runtime.
pub(crate) fn beside_others_blocking() -> RwLockReadGuard<'static, ()> {
    TURNS.blocking_read()
}

/// The turn of a test that runs alone: one that keeps the cores busy (the
/// tests beside it would measure its load, not the limiter), one that counts
/// on its own tasks getting their turn within a few yields (a pooled
/// connection going back between two requests), or one that captures
/// `tracing` events with a subscriber of its thread (a callsite first
/// reached on another test's thread, which has no subscriber, would be
/// cached as disabled for the whole process: tokio-rs/tracing#3611).
pub(crate) async fn alone() -> RwLockWriteGuard<'static, ()> {
    TURNS.write().await
}

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
    run_stack_phases(url, pacing, &[(count, concurrency)]).await
}

/// As [`run_stack`], one phase after another on one client and stack: each
/// phase sends its count of GETs, its concurrency at a time, once the
/// phase before it has ended. How many succeeded in all.
pub(crate) async fn run_stack_phases(
    url: &str,
    pacing: SlidingWindowLayer<HostKey, UnitCost, MemoryStore, HttpFeedback>,
    phases: &[(usize, usize)],
) -> usize {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(JitterBackoffLayer::new().max_attempts(4).unwrap())
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
        .layer(pacing)
        .timeout(Duration::from_secs(10))
        .service(client);
    let mut succeeded = 0;
    let mut sent = 0;
    for &(count, concurrency) in phases {
        succeeded += send_phase(url, &service, sent..sent + count, concurrency).await;
        sent += count;
    }
    succeeded
}

/// Sends the GETs numbered `range` to `url` through `service`,
/// `concurrency` at a time; returns how many succeeded.
async fn send_phase<S>(
    url: &str,
    service: &S,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> usize
where
    S: tower::Service<
            http::Request<Empty<bytes::Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in range {
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
