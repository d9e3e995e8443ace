//! Concurrency slots in Redis: four stores (as four processes would) share
//! five slots against quota-mock's concurrency rule; a lease is renewed
//! while its request is in flight and removed when it ends; the slots of a
//! process killed while holding them free within the lease time.
//!
//! The kill test re-runs its own binary with `TQ_LEASE_WORKER` set: in that
//! process, `lease_worker_process` takes the slots and waits to be killed;
//! in the parent it returns at once.
// A killed process is measured on the wall clock and Redis's own: std's
// clock is right here, as in the other multi-process tests.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use redis::Commands;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::Key;
use tower_quota::concurrency::{ConcurrencyLayer, LeaseStore};
use tower_quota::sliding_window::Overloaded;
use tower_quota_redis::{RedisLeases, RedisStore};

const SLOTS: u32 = 5;

async fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .build()
        .await
        .unwrap()
}

async fn leases(url: &str, prefix: &str) -> RedisLeases {
    store(url, prefix).await.leases()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_stores_share_five_slots_at_the_provider() {
    let Some(redis) = support::shared() else {
        return;
    };
    let server = MockServer::builder()
        .rule(Rule::concurrency(u64::from(SLOTS)))
        .processing(Duration::from_millis(20), Duration::from_millis(80))
        .start()
        .await
        .unwrap();
    let prefix = support::unique_key("tq");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..4 {
        // A store of its own: its own connection, as another process has.
        let store = leases(&redis.url(), &prefix).await;
        let service = ServiceBuilder::new()
            .layer(ConcurrencyLayer::new(SLOTS).unwrap().store(store))
            .service(client.clone());
        for n in 0..25 {
            let service = service.clone();
            let url = format!("{}/items/{worker}-{n}", server.url());
            calls.spawn(async move {
                let request = http::Request::get(url).body(Empty::new()).unwrap();
                let response = service.oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                status
            });
        }
    }
    let mut statuses = Vec::new();
    while let Some(status) = calls.join_next().await {
        statuses.push(status.unwrap());
    }
    let stats = server.stats();
    server.shutdown().await;
    let peak = stats.rules[0].max_accepted_in_any_window;
    println!(
        "100 callers over 4 stores, {SLOTS} slots: server {:?}, most in flight at once {peak}",
        stats.by_status
    );
    assert_eq!(statuses.len(), 100);
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(stats.total, 100, "every request arrived once");
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert!(peak <= u64::from(SLOTS), "{peak} in flight at once");
    // The slots were used, not wasted.
    assert!(peak >= 3, "{peak}");
}

/// A lease given back is removed by a spawned call, which the store's
/// `flush` waits for: a process that flushes before it exits leaves no
/// slot taken until its lease time. On one thread, where the call runs
/// only once the test awaits.
#[tokio::test(flavor = "current_thread")]
async fn flush_waits_until_the_leases_given_back_are_removed() {
    let Some(redis) = support::shared() else {
        return;
    };
    let store = store(&redis.url(), &support::unique_key("tq")).await;
    let leases = store.leases().lease_time(Duration::from_secs(60));
    let key = Key::from("given-back");
    let held = leases.acquire(key.clone(), SLOTS, None).await.unwrap();
    let mut connection = redis.connection();
    let count: u64 = connection.zcard(leases.redis_key(&key)).unwrap();
    assert_eq!(count, 1);
    drop(held);
    store.flush().await;
    let count: u64 = connection.zcard(leases.redis_key(&key)).unwrap();
    assert_eq!(count, 0, "the lease given back is still in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_renewed_while_held_and_removed_when_dropped() {
    let Some(redis) = support::shared() else {
        return;
    };
    let prefix = support::unique_key("tq");
    let store = leases(&redis.url(), &prefix)
        .await
        .lease_time(Duration::from_millis(300));
    let key = Key::from("renewed");
    let held = store.acquire(key.clone(), 1, None).await.unwrap();
    // Held for more than three lease times: renewed, so the slot is still
    // taken.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut connection = redis.connection();
    let count: u64 = connection.zcard(store.redis_key(&key)).unwrap();
    assert_eq!(count, 1);
    let error = store
        .acquire(key.clone(), 1, Some(Duration::from_millis(400)))
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<Overloaded>().is_some(), "{error}");
    // Dropped: removed at once, and a waiter of this process takes it
    // without waiting for the lease to expire.
    let waiter = tokio::spawn({
        let store = store.clone();
        let key = key.clone();
        async move {
            let started = Instant::now();
            let lease = store.acquire(key, 1, None).await.unwrap();
            (started, Instant::now(), lease)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dropped = Instant::now();
    drop(held);
    let (_, taken, lease) = waiter.await.unwrap();
    let after = taken.duration_since(dropped);
    println!("slot taken {after:?} after the holder dropped its lease");
    assert!(after < Duration::from_millis(100), "{after:?}");
    drop(lease);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_a_killed_process_free_within_the_lease_time() {
    let Some(redis) = support::shared() else {
        return;
    };
    const LEASE: Duration = Duration::from_secs(1);
    let prefix = support::unique_key("tq");
    let mut worker = Command::new(std::env::current_exe().unwrap())
        .args([
            "lease_worker_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TQ_LEASE_WORKER", "1")
        .env("TQ_REDIS_URL", redis.url())
        .env("TQ_PREFIX", &prefix)
        .env("TQ_LEASE_MS", LEASE.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker process starts");
    let stdout = worker.stdout.take().unwrap();
    let held = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("worker holds its slots"))
    })
    .await
    .unwrap();
    assert!(held, "the worker took its slots");
    let store = leases(&redis.url(), &prefix).await.lease_time(LEASE);
    let key = Key::from("shared");
    let mut connection = redis.connection();
    let count: u64 = connection.zcard(store.redis_key(&key)).unwrap();
    assert_eq!(count, u64::from(SLOTS));
    // Held past one lease time: the worker renews them while alive.
    tokio::time::sleep(LEASE + LEASE / 2).await;
    let count: u64 = connection.zcard(store.redis_key(&key)).unwrap();
    assert_eq!(count, u64::from(SLOTS), "renewed while the worker lives");
    worker.kill().unwrap();
    let killed = Instant::now();
    worker.wait().unwrap();
    let mut taken = Vec::new();
    for _ in 0..SLOTS {
        taken.push(
            store
                .acquire(key.clone(), SLOTS, Some(LEASE * 3))
                .await
                .unwrap(),
        );
    }
    let freed = killed.elapsed();
    println!("a killed worker's {SLOTS} slots freed {freed:?} after the kill (lease {LEASE:?})");
    assert!(
        freed <= LEASE + Duration::from_millis(150),
        "{freed:?} past the lease time"
    );
    // Not freed by the kill itself: renewed a third of a lease ago at most.
    assert!(freed >= LEASE / 2, "{freed:?}");
}

/// The worker of the kill test; does nothing unless `TQ_LEASE_WORKER` is set.
#[test]
fn lease_worker_process() {
    if std::env::var_os("TQ_LEASE_WORKER").is_none() {
        return;
    }
    let env = |name: &str| std::env::var(name).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let lease = Duration::from_millis(env("TQ_LEASE_MS").parse().unwrap());
        let store = leases(&env("TQ_REDIS_URL"), &env("TQ_PREFIX"))
            .await
            .lease_time(lease);
        let mut held = Vec::new();
        for _ in 0..SLOTS {
            held.push(
                store
                    .acquire(Key::from("shared"), SLOTS, None)
                    .await
                    .unwrap(),
            );
        }
        println!("worker holds its slots");
        // Killed while it waits.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(held);
    });
}
