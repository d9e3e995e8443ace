//! Coalescing: concurrent exact admissions of one key that arrive while a
//! call for the key is in flight go together in one script call, admitted
//! in arrival order and exactly; a request dropped before or during its
//! batch's call leaves nothing in Redis.
//!
//! `CLIENT PAUSE WRITE` holds the store's calls in Redis, so that requests
//! arrive while a call is in flight; each test owns its server, since the
//! pause stops every client. The requests are polled once each, in order,
//! before they are spawned: that is their arrival order.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use redis::Commands;
use tower_quota::sliding_window::{Admission, Limits, Quota, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::{Acquire, RedisStore};

async fn store(server: &support::RedisServer, coalesce: bool) -> RedisStore {
    RedisStore::builder(server.url())
        // Calls wait in Redis while it is paused.
        .timeout(Duration::from_secs(10))
        .coalesce(coalesce)
        .build()
        .await
        .expect("store connects")
}

fn pause(server: &support::RedisServer) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query(&mut server.connection())
        .unwrap();
}

fn unpause(server: &support::RedisServer) {
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut server.connection())
        .unwrap();
}

fn reset_stats(server: &support::RedisServer) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut server.connection())
        .unwrap();
}

fn evalsha_calls(server: &support::RedisServer) -> u64 {
    support::command_calls(server)
        .get("evalsha")
        .copied()
        .unwrap_or(0)
}

/// Starts each acquire, in order: each has joined its key's lane (or sent
/// its call) when the next one starts.
async fn start_in_order(
    store: &RedisStore,
    key: &Key,
    costs: &[u64],
    limits: &Limits,
) -> Vec<Acquire> {
    let mut acquires: Vec<Acquire> = costs
        .iter()
        .map(|cost| store.acquire(key.clone(), *cost, limits))
        .collect();
    std::future::poll_fn(|cx| {
        for acquire in &mut acquires {
            assert!(
                Pin::new(acquire).poll(cx).is_pending(),
                "decided while Redis is paused"
            );
        }
        Poll::Ready(())
    })
    .await;
    acquires
}

/// The log's entries: id -> score (µs), without the signature the anchor
/// log holds (scored `+inf`).
fn log_scores(server: &support::RedisServer, log: &str) -> HashMap<u64, u64> {
    let entries: Vec<(String, f64)> = server
        .connection()
        .zrangebyscore_withscores(log, "-inf", "(+inf")
        .unwrap();
    entries
        .into_iter()
        .map(|(id, score)| (id.parse().unwrap(), score as u64))
        .collect()
}

/// Starts one acquire of `key` per cost, in order, while Redis is paused
/// (the first one's call waits in Redis, the others arrive meanwhile), then
/// lets Redis go: the script calls made until every request is recorded
/// (later, a reservation may ask again to move up, a window later at the
/// earliest), the log's scores then (later calls prune what has left) and
/// the admissions, in arrival order.
async fn during_a_paused_call(
    server: &support::RedisServer,
    store: &RedisStore,
    key: &Key,
    costs: &[u64],
    limits: &Limits,
) -> (u64, HashMap<u64, u64>, Vec<Admission>) {
    // Loads the script.
    store
        .acquire(Key::from("warm-up"), 1, limits)
        .await
        .unwrap();
    reset_stats(server);
    pause(server);
    let acquires = start_in_order(store, key, costs, limits).await;
    let tasks: Vec<_> = acquires.into_iter().map(tokio::spawn).collect();
    unpause(server);
    let log = &store.redis_keys(key, limits)[0];
    server.wait_for_members(log, costs.len()).await;
    let calls = evalsha_calls(server);
    let scores = log_scores(server, log);
    let mut admissions = Vec::new();
    for task in tasks {
        admissions.push(task.await.unwrap().expect("admitted"));
    }
    (calls, scores, admissions)
}

/// Checks that `admissions`, in arrival order, were admitted in that order
/// (each no earlier than the one before it, so none overtook a larger one
/// ahead of it), and exactly: no window of `quota` (scores are the
/// instants entries start holding their slot) holds more than its
/// `max_calls` units.
fn check_in_order_and_exact(
    store: &RedisStore,
    admissions: &[Admission],
    scores: &HashMap<u64, u64>,
    quota: Quota,
) {
    let in_order: Vec<u64> = admissions
        .iter()
        .map(|admission| scores[&store.log_member(admission).expect("in the log")])
        .collect();
    assert!(in_order.is_sorted(), "{in_order:?}");
    let mut held: Vec<(u64, u64)> = admissions
        .iter()
        .map(|admission| {
            (
                scores[&store.log_member(admission).expect("in the log")],
                admission.cost(),
            )
        })
        .collect();
    held.sort_unstable();
    let span = quota.window().as_micros() as u64;
    for (start, (from, _)) in held.iter().enumerate() {
        let in_window: u64 = held[start..]
            .iter()
            .take_while(|(at, _)| *at < from + span)
            .map(|(_, units)| units)
            .sum();
        assert!(
            in_window <= quota.max_calls(),
            "{in_window} units from {from}: {held:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_during_a_call_share_the_next_call_in_order_and_exactly() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let max_calls = 10;
    let quota = Quota::new(max_calls, Duration::from_millis(600)).unwrap();
    let layer = SlidingWindowLayer::with_quotas([quota])
        .unwrap()
        .safety_margin(Duration::ZERO)
        .unwrap();
    // The first request finds the key idle; the eight others arrive while
    // its call is in flight. 27 units in all: three windows.
    let costs = [4, 1, 6, 2, 3, 5, 1, 1, 4];
    for coalesce in [true, false] {
        let store = store(&server, coalesce).await;
        let key = Key::from(format!("coalesced-{coalesce}"));
        let (calls, scores, admissions) =
            during_a_paused_call(&server, &store, &key, &costs, layer.limits()).await;
        println!(
            "coalesce {coalesce}: {} requests, {calls} script calls",
            costs.len()
        );
        if coalesce {
            assert_eq!(
                calls, 2,
                "the first request's call, then one for the eight others"
            );
        } else {
            assert_eq!(calls, costs.len() as u64, "one call per request");
        }

        check_in_order_and_exact(&store, &admissions, &scores, quota);
        // And the quota is used: 27 units need three windows, not more.
        let last_wait = admissions.last().unwrap().waited();
        assert!(
            last_wait >= Duration::from_millis(1_200) && last_wait < Duration::from_millis(2_000),
            "{last_wait:?}"
        );
    }
}

/// While the first call of a key is in Redis, a batch worth a call of its
/// own goes at once as a second call, behind it on the connection; what
/// arrives while both are in flight goes when the first is back. Every
/// request is still decided in arrival order, and exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_call_goes_while_the_first_is_in_flight_in_order_and_exactly() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let quota = Quota::new(10, Duration::from_millis(300)).unwrap();
    let layer = SlidingWindowLayer::with_quotas([quota])
        .unwrap()
        .safety_margin(Duration::ZERO)
        .unwrap();
    let store = store(&server, true).await;
    // The first request's call, then 16 more arrivals (the second call),
    // then 23 (sent once the first call is back): 40 units, four windows.
    let costs = [1; 40];
    let (calls, scores, admissions) = during_a_paused_call(
        &server,
        &store,
        &Key::from("two-in-flight"),
        &costs,
        layer.limits(),
    )
    .await;
    assert_eq!(calls, 3, "the first request's call, then 16, then 23");
    check_in_order_and_exact(&store, &admissions, &scores, quota);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_dropped_before_or_during_their_batch_leave_nothing() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let store = store(&server, true).await;
    let quota = Quota::new(100, Duration::from_secs(10)).unwrap();
    let layer = SlidingWindowLayer::with_quotas([quota]).unwrap();
    let key = Key::from("dropped");
    store
        .acquire(Key::from("warm-up"), 1, layer.limits())
        .await
        .unwrap();
    pause(&server);
    // A first request, in flight, and six that wait for it; each costs 2,
    // so the log keeps its costs and their sum.
    let mut acquires = start_in_order(&store, &key, &[2; 7], layer.limits()).await;
    let mut survivors = Vec::new();
    let mut waiting = acquires.drain(1..);
    // Dropped while waiting for the first call: never sent.
    survivors.push(waiting.next().unwrap());
    drop(waiting.next());
    let rest: Vec<Acquire> = waiting.collect();
    // The first request, dropped in flight: its call still runs and its
    // cancellation removes what it records. The others' batch goes now,
    // and waits in Redis.
    drop(acquires);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut rest = rest.into_iter();
    survivors.push(rest.next().unwrap());
    // Dropped while their batch is in flight.
    drop(rest.next());
    drop(rest.next());
    survivors.extend(rest);
    let tasks: Vec<_> = survivors.into_iter().map(tokio::spawn).collect();
    unpause(&server);
    let mut admitted = Vec::new();
    for task in tasks {
        let admission = task.await.unwrap().expect("admitted");
        admitted.push(store.log_member(&admission).expect("in the log"));
    }
    assert_eq!(admitted.len(), 3);

    // Only the three survivors stay: in the log, its costs and its sum.
    let keys = store.redis_keys(&key, layer.limits());
    let mut connection = server.connection();
    let mut logged = Vec::new();
    for _ in 0..500 {
        logged = log_scores(&server, &keys[0]).into_keys().collect();
        if logged.len() == admitted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    logged.sort_unstable();
    admitted.sort_unstable();
    assert_eq!(
        logged, admitted,
        "the dropped requests' entries are removed"
    );
    let costs: HashMap<String, u64> = connection.hgetall(&keys[1]).unwrap();
    assert_eq!(costs.get("s"), Some(&6), "{costs:?}");
    assert_eq!(
        costs.len(),
        4,
        "the sum and the survivors' costs: {costs:?}"
    );
    let queued: Vec<String> = connection.zrange(&keys[2], 0, -1).unwrap();
    assert!(
        queued
            .iter()
            .all(|id| admitted.contains(&id.parse().unwrap())),
        "{queued:?}"
    );
}

/// At concurrency 1 nothing waits for a batch: the request of an idle key
/// is on its way to Redis once first polled, and recorded without being
/// polled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_of_an_idle_key_is_sent_when_first_polled() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::builder(server.url())
        .prefix(support::unique_key("tq"))
        .build()
        .await
        .unwrap();
    assert!(store.coalesces());
    let quota = Quota::new(10, Duration::from_secs(10)).unwrap();
    let layer = SlidingWindowLayer::with_quotas([quota]).unwrap();
    // Loads the script (a first EVALSHA meets NOSCRIPT and goes again).
    store
        .acquire(Key::from("warm-up"), 1, layer.limits())
        .await
        .unwrap();
    let key = Key::from("idle");
    let mut acquire = store.acquire(key.clone(), 1, layer.limits());
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut acquire).poll(cx))).await;
    if let Poll::Ready(result) = first {
        // Sent and answered within the first poll (the polling thread was
        // preempted while Redis answered, on a loaded machine): polling the
        // finished future again would panic.
        result.expect("admitted");
        return;
    }
    let log = &store.redis_keys(&key, layer.limits())[0];
    for _ in 0..500 {
        if !log_scores(server, log).is_empty() {
            // Decided: the future completes without another call.
            let before = evalsha_calls(server);
            acquire.await.expect("admitted");
            assert_eq!(evalsha_calls(server), before);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the request was not sent before it was polled again");
}
