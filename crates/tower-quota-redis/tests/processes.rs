//! Four OS processes, each with its own Redis connection, share one quota
//! of 50 per second against quota-mock's strict sliding log.
//!
//! The test re-runs its own binary four times with `TQ_WORKER` set: in a
//! worker process, `worker_process` sends requests for a few windows; in the
//! parent it returns at once.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::SlidingWindowLayer;
use tower_quota_redis::RedisStore;

const MAX_CALLS: u64 = 50;
const WINDOW: Duration = Duration::from_secs(1);
const WORKERS: usize = 4;
/// How long each worker sends: several windows.
const RUN: Duration = Duration::from_millis(3_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_quota_with_zero_429s() {
    let Some(redis) = support::shared() else {
        return;
    };
    let server = MockServer::builder()
        .rule(Rule::sliding_log(MAX_CALLS, WINDOW))
        .start()
        .await
        .unwrap();
    let prefix = support::unique_key("tq");
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "worker_process",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("TQ_WORKER", "1")
                .env("TQ_REDIS_URL", redis.url())
                .env("TQ_PREFIX", &prefix)
                .env("TQ_MOCK_URL", server.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("worker process starts")
        })
        .collect();
    let mut sent = 0;
    for worker in workers {
        let output = tokio::task::spawn_blocking(move || worker.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "worker failed: {stdout}");
        let line = stdout
            .lines()
            .find_map(|line| line.split_once("worker sent ").map(|(_, count)| count))
            .unwrap_or_else(|| panic!("worker did not report: {stdout}"));
        let count: u64 = line.trim().parse().unwrap();
        assert!(count > 0, "every worker got some of the quota");
        sent += count;
    }

    let stats = server.stats();
    println!(
        "{WORKERS} processes sent {sent}; server: {:?}, max in any {WINDOW:?}: {}",
        stats.by_status,
        stats.max_in_any_window(WINDOW)
    );
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert_eq!(stats.accepted(), sent);
    assert!(stats.max_in_any_window(WINDOW) <= MAX_CALLS);
    // The quota was used, not wasted: a burst, then 50 per window.
    assert!(sent >= MAX_CALLS * 3, "{sent}");
}

/// One worker process; does nothing unless `TQ_WORKER` is set.
#[test]
fn worker_process() {
    if std::env::var_os("TQ_WORKER").is_none() {
        return;
    }
    let env = |name: &str| std::env::var(name).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sent = runtime.block_on(async {
        let store = RedisStore::builder(env("TQ_REDIS_URL"))
            .prefix(env("TQ_PREFIX"))
            .build()
            .await
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let service = ServiceBuilder::new()
            .layer(
                SlidingWindowLayer::new(MAX_CALLS, WINDOW)
                    .unwrap()
                    // Separate processes on a loaded two-core machine wake
                    // from their timers with more jitter than one process
                    // on loopback: a margin of 25 ms absorbs it.
                    .safety_margin(Duration::from_millis(25))
                    .unwrap()
                    .store(store),
            )
            .service(client);
        let base = env("TQ_MOCK_URL");
        let in_flight = Arc::new(Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        let deadline = tokio::time::Instant::now() + RUN;
        let mut i = 0;
        loop {
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => permit.unwrap(),
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let request = http::Request::get(format!("{base}/items/{i}"))
                .body(Empty::new())
                .unwrap();
            i += 1;
            let service = service.clone();
            tasks.spawn(async move {
                let response = service.oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                drop(permit);
                status
            });
        }
        // Requests still waiting for a slot are dropped: their reservations
        // are removed, and they are never sent.
        let mut sent = 0;
        while let Some(result) = tokio::time::timeout(Duration::from_millis(100), tasks.join_next())
            .await
            .ok()
            .flatten()
        {
            let status = result.unwrap();
            assert_eq!(status, 200);
            sent += 1;
        }
        tasks.shutdown().await;
        sent
    });
    println!("worker sent {sent}");
}
