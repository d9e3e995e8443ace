//! The store on a real Redis Cluster (3 masters, one replica each, started
//! by the test support): keys spread over every master with each key's
//! state in one slot, four processes sharing quotas with zero 429s at
//! quota-mock, and a master killed mid-run.
//!
//! `four_processes_share_quotas_through_a_cluster` re-runs its own binary
//! four times with `TQ_WORKER` set: in a worker process, `worker_process`
//! sends requests for a few windows; in the parent it returns at once.
#![cfg(feature = "cluster")]

#[path = "failover/mod.rs"]
mod failover;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quota_mock::{KeyBy, MockServer, Rule};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::sliding_window::{Limits, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::{FailurePolicy, RedisStore, RedisStoreError, RedisStoreErrorKind};

const MAX_CALLS: u64 = 50;
const WINDOW: Duration = Duration::from_secs(1);
const WORKERS: usize = 4;
/// Quota keys: 100, spread by their hash tags over the masters.
const KEYS: usize = 100;
/// Keys every worker keeps at their quota; the others see a request now
/// and then.
const HOT_KEYS: usize = 6;
/// How long each worker sends: a burst, then a couple of windows.
const RUN: Duration = Duration::from_millis(2_500);

/// The quota of `SlidingWindowLayer::new(MAX_CALLS, WINDOW)`.
fn quota_limits() -> Limits {
    SlidingWindowLayer::new(MAX_CALLS, WINDOW)
        .unwrap()
        .limits()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_spreads_keys_over_every_master_one_slot_per_key() {
    let Some(cluster) = support::RedisCluster::start() else {
        return;
    };
    let prefix = support::unique_key("tq");
    let store = RedisStore::cluster_builder(cluster.urls())
        .prefix(&prefix)
        .build()
        .await
        .unwrap();
    let limits = SlidingWindowLayer::new(MAX_CALLS, WINDOW)
        .unwrap()
        .limits()
        .clone();
    let mut masters = BTreeMap::<u16, usize>::new();
    for index in 0..KEYS {
        let key = Key::from(format!("k{index}"));
        store.acquire(key.clone(), 1, &limits).await.unwrap();
        // Every Redis key of the quota key is in one slot: one script call.
        let slots: BTreeSet<u16> = store
            .redis_keys(&key, &limits)
            .iter()
            .map(|redis_key| cluster.slot_of(redis_key))
            .collect();
        assert_eq!(slots.len(), 1, "{key}: {slots:?}");
        let slot = *slots.first().unwrap();
        let master = cluster.master_of_slot(slot).unwrap();
        *masters.entry(master).or_default() += 1;
        // The log is on that master.
        let log = &store.redis_keys(&key, &limits)[0];
        let size: u64 = support::query(
            master,
            redis::cmd("ZCOUNT").arg(log).arg("-inf").arg("(+inf"),
        )
        .expect("ZCOUNT on the master");
        assert_eq!(size, 1, "{key} logged on the master of slot {slot}");
    }
    println!("keys per master: {masters:?}");
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(masters.values().all(|keys| *keys >= 15), "{masters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_quotas_through_a_cluster_with_zero_429s() {
    let Some(cluster) = support::RedisCluster::start() else {
        return;
    };
    // One quota per key, as the provider counts: 50 per second for each
    // first path segment.
    let server = MockServer::builder()
        .rule(Rule::sliding_log(MAX_CALLS, WINDOW))
        .key_by(KeyBy::PathSegment)
        .start()
        .await
        .unwrap();
    let prefix = support::unique_key("tq");
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            Command::new(&exe)
                .args([
                    "worker_process",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("TQ_WORKER", worker.to_string())
                .env("TQ_CLUSTER_URLS", cluster.urls().join(","))
                .env("TQ_PREFIX", &prefix)
                .env("TQ_MOCK_URL", format!("http://{}", server.addr()))
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
        let count: u64 = stdout
            .lines()
            .find_map(|line| line.split_once("worker sent ").map(|(_, count)| count))
            .unwrap_or_else(|| panic!("worker did not report: {stdout}"))
            .trim()
            .parse()
            .unwrap();
        assert!(count > 0, "every worker got some of the quota");
        sent += count;
    }

    let stats = server.stats();
    // Every arrival counts, refused ones included: the provider saw them.
    let mut by_key = BTreeMap::<String, Vec<Duration>>::new();
    for arrival in &stats.arrivals {
        by_key
            .entry(arrival.key.clone())
            .or_default()
            .push(arrival.at);
    }
    let busiest = |arrivals: &mut Vec<Duration>| {
        arrivals.sort_unstable();
        (0..arrivals.len())
            .map(|start| {
                arrivals[start..]
                    .iter()
                    .take_while(|at| **at < arrivals[start] + WINDOW)
                    .count() as u64
            })
            .max()
            .unwrap_or(0)
    };
    let mut busiest_by_key: BTreeMap<String, u64> = by_key
        .iter_mut()
        .map(|(key, arrivals)| (key.clone(), busiest(arrivals)))
        .collect();
    // A key over its quota: when each of its requests arrived (ms since the
    // server started), to tell a late straggler from an early burst.
    for (key, count) in &busiest_by_key {
        if *count > MAX_CALLS {
            let ms: Vec<u128> = by_key[key].iter().map(Duration::as_millis).collect();
            eprintln!("{key} had {count} arrivals in one window; arrivals (ms): {ms:?}");
        }
    }
    let hot: Vec<(String, u64)> = (0..HOT_KEYS)
        .map(|index| {
            let key = format!("k{index}");
            let count = by_key.get(&key).map_or(0, Vec::len) as u64;
            (key, count)
        })
        .collect();
    // The masters the keys live on, as the cluster computes slots.
    let masters: BTreeSet<u16> = by_key
        .keys()
        .filter_map(|key| {
            let redis_key = format!("{prefix}:{{{key}}}:x");
            cluster.master_of_slot(cluster.slot_of(&redis_key))
        })
        .collect();
    let max = busiest_by_key.values().copied().max().unwrap_or(0);
    println!(
        "{WORKERS} processes sent {sent} through a 3-master cluster; server: {:?}; \
         keys seen {}, on {} masters; hot keys' arrivals {hot:?}; \
         max arrivals of one key in any {WINDOW:?}: {max}",
        stats.by_status,
        by_key.len(),
        masters.len(),
    );
    assert_eq!(stats.count(429), 0, "{:?}", stats.by_status);
    assert_eq!(stats.total, sent, "{:?}", stats.by_status);
    assert_eq!(by_key.len(), KEYS, "every key was used");
    assert_eq!(masters.len(), 3, "the keys live on every master");
    busiest_by_key.retain(|_, busiest| *busiest > MAX_CALLS);
    assert!(busiest_by_key.is_empty(), "over quota: {busiest_by_key:?}");
    // The hot keys' quotas were used, not wasted: a burst, then 50 per
    // window, over the run.
    for (key, count) in &hot {
        assert!(*count >= MAX_CALLS * 2, "{key}: {count}");
    }
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
        let store = RedisStore::cluster_builder(env("TQ_CLUSTER_URLS").split(','))
            .prefix(env("TQ_PREFIX"))
            .build()
            .await
            .unwrap();
        // Called once a request is admitted: marks it as sent.
        let send = support::marking_client();
        let service = ServiceBuilder::new()
            .layer(
                SlidingWindowLayer::new(MAX_CALLS, WINDOW)
                    .unwrap()
                    .key_fn(|request: &http::Request<Empty<Bytes>>| {
                        let path = request.uri().path().trim_start_matches('/');
                        path.split('/').next().unwrap_or("").to_owned()
                    })
                    .store(store),
            )
            .service(send);
        let base = env("TQ_MOCK_URL");
        let worker: usize = env("TQ_WORKER").parse().unwrap();
        let deadline = tokio::time::Instant::now() + RUN;
        // Hot keys, round robin, with up to 24 requests waiting for their
        // slots; the other keys one after another (each worker from its own
        // place), 4 at a time, so that they keep flowing beside.
        let hot = send_until(
            deadline,
            24,
            |i| format!("{base}/k{}/{i}", i % HOT_KEYS),
            &service,
        );
        let cold = send_until(
            deadline,
            4,
            |i| {
                format!(
                    "{base}/k{}/{i}",
                    HOT_KEYS + (worker * 24 + i) % (KEYS - HOT_KEYS)
                )
            },
            &service,
        );
        let (hot, cold) = tokio::join!(hot, cold);
        hot + cold
    });
    println!("worker sent {sent}");
}

/// Sends requests to the URLs `url(i)` through `service`, `in_flight` at a
/// time, until `deadline`: a request still waiting for its slot then is
/// dropped (never sent); one sent is awaited. The count of requests sent.
async fn send_until<S>(
    deadline: tokio::time::Instant,
    in_flight: usize,
    url: impl Fn(usize) -> String,
    service: &S,
) -> u64
where
    S: tower::Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0.. {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.unwrap(),
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let sent = support::Sent::default();
        let mut request = http::Request::get(url(i)).body(Empty::new()).unwrap();
        request.extensions_mut().insert(sent.clone());
        let service = service.clone();
        tasks.spawn(async move {
            let mut call = pin!(service.oneshot(request));
            let mut stopped = pin!(tokio::time::sleep_until(deadline));
            let response = loop {
                tokio::select! {
                    biased;
                    response = &mut call => break response.unwrap(),
                    _ = &mut stopped, if !stopped.is_elapsed() => {
                        // Still waiting for its slot: dropped, its
                        // reservation removed, never sent. Sent: its
                        // answer is awaited.
                        if !sent.is_sent() {
                            return None;
                        }
                    }
                }
            };
            response.into_body().collect().await.unwrap();
            drop(permit);
            Some(())
        });
    }
    let mut sent = 0;
    while let Some(result) = tasks.join_next().await {
        if result.unwrap().is_some() {
            sent += 1;
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_fails_closed_within_the_timeout_and_service_resumes_after_promotion() {
    let Some(cluster) = support::RedisCluster::start() else {
        return;
    };
    let prefix = support::unique_key("tq");
    let timeout = Duration::from_millis(250);
    let store = RedisStore::cluster_builder(cluster.urls())
        .prefix(&prefix)
        .timeout(timeout)
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .await
        .unwrap();
    let key = Key::from("failover");
    let slot = cluster.slot_of(&store.redis_keys(&key, &quota_limits())[0]);
    let master = cluster.master_of_slot(slot).unwrap();
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let run = failover::drive(
        store.clone(),
        key.clone(),
        MAX_CALLS,
        WINDOW,
        Duration::from_millis(1_500),
        {
            // Shared: the cluster must outlive the kill.
            let cluster = cluster.clone();
            move || cluster.lock().unwrap().kill(master)
        },
    )
    .await;
    let (failed_from, failed_until) = run.outage().expect("the kill was noticed");
    let excess = run
        .busiest(WINDOW, false)
        .saturating_sub(MAX_CALLS as usize);
    println!(
        "cluster failover (fail closed, timeout {timeout:?}): killed at {:?}, failures from {:?} \
         to {:?} ({} refusals), service resumed at {:?}; slowest decision {:?}; \
         {} admissions, max in any window {} (over quota by {excess})",
        run.kill_at,
        failed_from,
        failed_until,
        run.errors.len(),
        run.resumed_at,
        run.slowest_decision,
        run.admissions.len(),
        run.busiest(WINDOW, false),
    );
    println!("store errors: {:?}", run.error_kinds);
    assert!(run.other_errors.is_empty(), "{:?}", run.other_errors);
    // No request waited on Redis past the timeout (twice for one that
    // joined a call in flight; plus scheduling on a loaded machine).
    assert!(
        run.slowest_decision <= timeout * 2 + Duration::from_millis(250),
        "{:?}",
        run.slowest_decision
    );
    // Failing closed: Redis admitted everything; nothing came from a fallback.
    assert!(run.admissions.iter().all(|(_, by_redis)| *by_redis));
    assert!(!run.errors.is_empty(), "the outage refused requests");
    let resumed = run.resumed_at.expect("service resumed without a restart");
    assert!(resumed > failed_from);
    // After promotion the key is served at its quota again.
    let after = run
        .admissions
        .iter()
        .filter(|(at, _)| *at > resumed)
        .count();
    assert!(after >= 40, "{after} admissions after service resumed");
    // The documented bound: failing closed, only the admissions the old
    // master acknowledged but had not replicated can be counted twice;
    // on loopback the replica is well under 10 admissions (200 ms) behind.
    assert!(excess <= 10, "over quota by {excess}");
    // A store error of the failover is a connection error (or a timeout).
    let error = store
        .acquire(
            Key::from("after"),
            1,
            &SlidingWindowLayer::new(1, WINDOW).unwrap().limits().clone(),
        )
        .await
        .err()
        .map(|error| {
            error
                .downcast_ref::<RedisStoreError>()
                .map(RedisStoreError::kind)
        });
    assert!(
        !matches!(
            error,
            Some(Some(
                RedisStoreErrorKind::Response | RedisStoreErrorKind::Config
            ))
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn empty_cluster_node_list_is_a_config_error() {
    let error = RedisStore::cluster_builder(Vec::<String>::new())
        .build()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RedisStoreErrorKind::Config);
    assert!(error.to_string().contains("at least one node"), "{error}");
    let error = RedisStore::cluster_builder(["redis://user:hunter2@127.0.0.1:1:bad"])
        .build()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RedisStoreErrorKind::Config);
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_a_keys_slot_mid_run_follows_the_redirections_and_stays_exact() {
    let Some(cluster) = support::RedisCluster::start() else {
        return;
    };
    let timeout = Duration::from_millis(250);
    let store = RedisStore::cluster_builder(cluster.urls())
        .prefix(support::unique_key("tq"))
        .timeout(timeout)
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .await
        .unwrap();
    let key = Key::from("resharded");
    let log = store.redis_keys(&key, &quota_limits())[0].clone();
    let slot = cluster.slot_of(&log);
    let from = cluster.master_of_slot(slot).unwrap();
    let to = *cluster
        .masters()
        .iter()
        .find(|port| **port != from)
        .unwrap();
    let cluster = Arc::new(cluster);
    let run = failover::drive(
        store,
        key,
        MAX_CALLS,
        WINDOW,
        Duration::from_millis(1_500),
        {
            let cluster = cluster.clone();
            move || cluster.migrate_slot(slot, from, to, Duration::from_millis(100))
        },
    )
    .await;
    let excess = run
        .busiest(WINDOW, false)
        .saturating_sub(MAX_CALLS as usize);
    println!(
        "resharding slot {slot} from {from} to {to} at {:?}: failures {:?} ({} refusals), \
         resumed at {:?}; slowest decision {:?}; {} admissions, max in any window {} \
         (over quota by {excess}); store errors: {:?}",
        run.kill_at,
        run.outage(),
        run.errors.len(),
        run.resumed_at,
        run.slowest_decision,
        run.admissions.len(),
        run.busiest(WINDOW, false),
        run.error_kinds,
    );
    assert!(run.other_errors.is_empty(), "{:?}", run.other_errors);
    assert_eq!(cluster.master_of_slot(slot), Some(to), "the slot moved");
    // The key's log moved with its slot, and the new master serves it.
    let size: u64 =
        support::query(to, redis::cmd("ZCOUNT").arg(&log).arg("-inf").arg("(+inf")).unwrap();
    assert!(size > 0, "the log is on the new master");
    assert!(
        run.slowest_decision <= timeout * 2 + Duration::from_millis(250),
        "{:?}",
        run.slowest_decision
    );
    // The keys moved with their entries: nothing is admitted twice.
    assert_eq!(excess, 0, "over quota by {excess}");
    // Service after the move: 50 per window through the new master.
    let moved = run.kill_at + Duration::from_secs(1);
    let after = run.admissions.iter().filter(|(at, _)| *at > moved).count();
    assert!(after >= 40, "{after} admissions after the slot moved");
}
