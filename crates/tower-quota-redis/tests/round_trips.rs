//! One admission is one round trip to Redis, counted by Redis itself
//! (`INFO commandstats`); and a measurement of admissions per second.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tower_quota::sliding_window::{Quota, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

/// Calls per command since the server started.
fn command_calls(server: &support::RedisServer) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_admission_is_one_round_trip() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::builder(server.url()).build().await.unwrap();
    let limiter = SlidingWindowLayer::with_quotas([
        Quota::per_request(100_000, Duration::from_secs(1)).unwrap(),
        Quota::new(1_000_000, Duration::from_secs(60)).unwrap(),
    ])
    .unwrap();
    let key = Key::from("round-trips");
    // The first call loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    store
        .acquire(key.clone(), 3, limiter.limits())
        .await
        .unwrap();

    let before = command_calls(server);
    let admissions = 500;
    for _ in 0..admissions {
        store
            .acquire(key.clone(), 3, limiter.limits())
            .await
            .unwrap();
    }
    let after = command_calls(server);
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    let total: u64 = after
        .keys()
        .filter(|name| !name.starts_with("info") && !name.starts_with("hello"))
        .map(|name| delta(name))
        .sum();
    // The commands the script runs inside Redis are counted too, but not as
    // round trips: only EVALSHA comes from the client.
    let from_client: u64 = ["evalsha", "eval", "script|load", "ping", "client|setinfo"]
        .iter()
        .map(|name| delta(name))
        .sum();
    println!(
        "admissions: {admissions}, client commands: {from_client} (evalsha {}), \
         commands run by the script: {}",
        delta("evalsha"),
        total - from_client
    );
    assert_eq!(delta("evalsha"), admissions);
    assert_eq!(from_client, admissions, "one round trip per admission");
}

/// Admissions per second through the store, and `redis-benchmark -t set`
/// against the same server in the same run. Run with
/// `cargo test -p tower-quota-redis --release --test round_trips -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run by hand"]
async fn measure_admissions_per_second() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::builder(server.url()).build().await.unwrap();
    let limiter =
        SlidingWindowLayer::with_quotas([
            Quota::new(1_000_000_000, Duration::from_secs(1)).unwrap()
        ])
        .unwrap();
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
                    store.acquire(key.clone(), 1, &limits).await.unwrap();
                    admitted += 1;
                }
                admitted
            });
        }
        let admitted: u64 = tasks.join_all().await.into_iter().sum();
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
        .output()
        .expect("redis-benchmark runs");
    println!(
        "redis-benchmark -t set -q -n 100000: {}",
        // Progress lines end in `\r`; the summary comes last.
        String::from_utf8_lossy(&output.stdout)
            .rsplit('\r')
            .next()
            .unwrap_or_default()
            .trim()
    );
}
