//! Admissions per second of 4 worker processes sharing quotas through one
//! `redis-server` and through a 3-master Redis Cluster (with replicas),
//! measured in the same run, on the same machine.
//!
//! ```text
//! cargo run --release -p tower-quota-redis --features cluster --example fleet_rate
//! ```
//!
//! Starts its own servers (from PATH; the cluster with `redis-cli --cluster
//! create`) on free loopback ports. Each worker admits requests of 100 keys
//! (round robin) from 64 tasks for 3 s under a quota too large to wait
//! for, so the figure is the store's throughput, not the quota's.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use tower_quota::sliding_window::Store;
use tower_quota::{BoxError, Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

const WORKERS: usize = 4;
const TASKS: usize = 64;
const KEYS: usize = 100;
const DURATION: Duration = Duration::from_secs(3);

fn main() -> Result<(), BoxError> {
    if let Ok(target) = std::env::var("TQ_FLEET_WORKER") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let admitted = runtime.block_on(worker(&target))?;
        println!("admitted {admitted}");
        return Ok(());
    }
    let single = support::RedisServer::start().ok_or("redis-server is not on PATH")?;
    let cluster = support::RedisCluster::start().ok_or("redis-server is not on PATH")?;
    let single_rate = fleet(&format!("single {}", single.url()))?;
    let cluster_rate = fleet(&format!("cluster {}", cluster.urls().join(",")))?;
    println!(
        "{WORKERS} processes x {TASKS} tasks, {KEYS} keys: single node {single_rate:.0} \
         admissions/s; 3-master cluster {cluster_rate:.0} admissions/s ({:.2}x)",
        cluster_rate / single_rate
    );
    Ok(())
}

/// Runs the worker processes against `target`; their admissions per second.
fn fleet(target: &str) -> Result<f64, BoxError> {
    let exe = std::env::current_exe()?;
    let children = (0..WORKERS)
        .map(|_| {
            Command::new(&exe)
                .env("TQ_FLEET_WORKER", target)
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut admitted = 0u64;
    for child in children {
        let output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        admitted += stdout
            .lines()
            .find_map(|line| line.strip_prefix("admitted "))
            .ok_or_else(|| format!("a worker did not report: {stdout}"))?
            .trim()
            .parse::<u64>()?;
    }
    Ok(admitted as f64 / DURATION.as_secs_f64())
}

async fn worker(target: &str) -> Result<u64, BoxError> {
    let (kind, urls) = target.split_once(' ').ok_or("a target")?;
    let builder = if kind == "cluster" {
        RedisStore::cluster_builder(urls.split(','))
    } else {
        RedisStore::builder(urls)
    };
    let store = builder.prefix("fleet").build().await?;
    let limits = SlidingWindowLayer::new(1_000_000_000, Duration::from_secs(1))?
        .limits()
        .clone();
    let keys: Vec<Key> = (0..KEYS)
        .map(|index| Key::from(format!("k{index}")))
        .collect();
    // Connections made and scripts loaded before the clock starts.
    for key in &keys {
        store.acquire(key.clone(), 1, &limits).await?;
    }
    let deadline = Instant::now() + DURATION;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (store, limits, keys) = (store.clone(), limits.clone(), keys.clone());
        tasks.spawn(async move {
            let mut admitted = 0u64;
            let mut index = task;
            while Instant::now() < deadline {
                if store
                    .acquire(keys[index % KEYS].clone(), 1, &limits)
                    .await
                    .is_ok()
                {
                    admitted += 1;
                }
                index += TASKS;
            }
            admitted
        });
    }
    let mut admitted = 0;
    while let Some(count) = tasks.join_next().await {
        admitted += count?;
    }
    Ok(admitted)
}
