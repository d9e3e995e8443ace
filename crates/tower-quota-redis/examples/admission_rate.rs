//! Admissions per second through the Redis store, and `redis-benchmark -t
//! set` against the same server in the same run, for comparison.
//!
//! ```text
//! cargo run --release -p tower-quota-redis --example admission_rate
//! ```
//!
//! Starts its own `redis-server` (from PATH) on a free loopback port.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use tokio::time::Instant;
use tower_quota::sliding_window::{Quota, Store};
use tower_quota::{BoxError, Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let Some(server) = support::shared() else {
        return Err("redis-server is not on PATH".into());
    };
    let store = RedisStore::builder(server.url()).build().await?;
    let limiter =
        SlidingWindowLayer::with_quotas([Quota::new(1_000_000_000, Duration::from_secs(1))?])?;
    let duration = Duration::from_secs(3);
    for concurrency in [1, 16, 64] {
        let key = Key::from(format!("bench-{concurrency}"));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (store, key, limits) = (store.clone(), key.clone(), limiter.limits().clone());
            tasks.spawn(async move {
                let mut admitted = 0u64;
                while started.elapsed() < duration {
                    store.acquire(key.clone(), 1, &limits).await?;
                    admitted += 1;
                }
                Ok::<_, BoxError>(admitted)
            });
        }
        let mut admitted = 0;
        for count in tasks.join_all().await {
            admitted += count?;
        }
        println!(
            "concurrency {concurrency}: {admitted} admissions in {:?}: {:.0} admissions/s",
            started.elapsed(),
            admitted as f64 / started.elapsed().as_secs_f64()
        );
    }
    let output = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &server.port().to_string(),
            "-t",
            "set",
            "-q",
            "-n",
            "100000",
        ])
        .output()?;
    println!(
        "redis-benchmark -t set -q -n 100000: {}",
        // Progress lines end in `\r`; the summary comes last.
        String::from_utf8_lossy(&output.stdout)
            .rsplit('\r')
            .next()
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}
