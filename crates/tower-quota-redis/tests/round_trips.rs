//! One admission is one round trip to Redis, counted by Redis itself
//! (`INFO commandstats`). Admissions per second are measured by the
//! `admission_rate` example, not by a test.

mod support;

use std::time::Duration;

use tower_quota::sliding_window::{Quota, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

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

    let before = support::command_calls(server);
    let admissions = 500;
    for _ in 0..admissions {
        store
            .acquire(key.clone(), 3, limiter.limits())
            .await
            .unwrap();
    }
    let after = support::command_calls(server);
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
