//! Four OS processes, each with its own Redis connection, share one quota
//! of 50 per second against quota-mock's strict sliding log, across a
//! simulated network: every connection goes through quota-mock's proxy,
//! which holds a new connection for 150 ms (TCP and TLS across a
//! continent) and delays each chunk by 5–25 ms in each direction. The
//! layer keeps its defaults: slots are released relative to the answers,
//! on the Redis clock, and requests that may open a connection (the first
//! window's, and any beyond the most a worker had in flight before: the
//! workers' shares of the quota change from window to window) reach the
//! provider 155–175 ms after their admission. They are held for the cold
//! bound (300 ms), not `sent_within` (100 ms).
//!
//! The test re-runs its own binary four times with `TQ_WORKER` set: in a
//! worker process, `worker_process` sends requests for a few windows; in the
//! parent it returns at once.

mod support;

use std::pin::pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use quota_mock::{MockServer, NetworkProxy, Rule};
use tokio::sync::{Semaphore, watch};
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
    let proxy = NetworkProxy::builder(server.addr())
        .connect_delay(Duration::from_millis(150))
        .latency(Duration::from_millis(5), Duration::from_millis(25))
        .seed(0x7a11)
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
                .env("TQ_MOCK_URL", proxy.url())
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
    // Every arrival counts, refused ones included: the provider saw them.
    let mut arrivals: Vec<Duration> = stats.arrivals.iter().map(|arrival| arrival.at).collect();
    arrivals.sort_unstable();
    let busiest = (0..arrivals.len())
        .map(|start| {
            arrivals[start..]
                .iter()
                .take_while(|at| **at < arrivals[start] + WINDOW)
                .count()
        })
        .max()
        .unwrap_or(0) as u64;
    println!(
        "{WORKERS} processes sent {sent} through the network proxy; server: {:?}, \
         max arrivals in any {WINDOW:?}: {busiest}",
        stats.by_status,
    );
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert_eq!(stats.total, sent, "{:?}", stats.by_status);
    assert!(busiest <= MAX_CALLS, "{busiest} arrivals in one window");
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
        // Called once a request is admitted: marks it as sent.
        let send = support::marking_client();
        // The default safety margin: no margin set by hand.
        let service = ServiceBuilder::new()
            .layer(
                SlidingWindowLayer::new(MAX_CALLS, WINDOW)
                    .unwrap()
                    .store(store.clone()),
            )
            .service(send);
        let base = env("TQ_MOCK_URL");
        let in_flight = Arc::new(Semaphore::new(16));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let deadline = tokio::time::Instant::now() + RUN;
        let mut i = 0;
        loop {
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => permit.unwrap(),
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let sent = support::Sent::default();
            let mut request = http::Request::get(format!("{base}/items/{i}"))
                .body(Empty::new())
                .unwrap();
            request.extensions_mut().insert(sent.clone());
            i += 1;
            let service = service.clone();
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                let mut call = pin!(service.oneshot(request));
                let response = loop {
                    tokio::select! {
                        biased;
                        response = &mut call => break response.unwrap(),
                        _ = stopped.changed() => {
                            // Still waiting for its slot: dropped, its
                            // reservation removed, never sent. Sent: its
                            // answer is awaited.
                            if !sent.is_sent() {
                                return None;
                            }
                        }
                    }
                };
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                drop(permit);
                Some(status)
            });
        }
        stop.send(true).unwrap();
        let mut sent = 0;
        while let Some(result) = tasks.join_next().await {
            // Any status: the parent checks them at the server.
            if result.unwrap().is_some() {
                sent += 1;
            }
        }
        // The answers and the dropped waiters' removals reach Redis
        // before the worker exits.
        store.flush().await;
        sent
    });
    println!("worker sent {sent}");
}
