//! RedisStore against a real redis-server: exactness across connections,
//! several quotas and costs, corrections, cancellation, bounds, expiry,
//! `SCRIPT FLUSH`, and the approximate mode's error bound.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis::Commands;
use tokio::task::JoinHandle;
use tower_quota::sliding_window::{Admission, Limits, OverloadReason, Quota, Store};
use tower_quota::sliding_window::{ConflictingQuotas, CostTooLarge, Overloaded};
use tower_quota::{BoxError, Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

async fn store(server: &support::RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix(support::unique_key("tq"))
        .build()
        .await
        .expect("store connects")
}

/// A store of its own, exact or approximate.
async fn store_in_mode(server: &support::RedisServer, approximate: bool) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix(support::unique_key("tq"))
        .approximate(approximate)
        .build()
        .await
        .expect("store connects")
}

fn limits(quotas: impl IntoIterator<Item = Quota>) -> SlidingWindowLayer {
    SlidingWindowLayer::with_quotas(quotas)
        .unwrap()
        .safety_margin(Duration::ZERO)
        .unwrap()
}

/// The entries of a log: (score in µs, units). Without the signature the
/// anchor log holds, scored `+inf`.
fn read_log(server: &support::RedisServer, keys: &[String]) -> Vec<(u64, u64)> {
    let mut connection = server.connection();
    let entries: Vec<(String, f64)> = connection
        .zrangebyscore_withscores(&keys[0], "-inf", "(+inf")
        .unwrap();
    let costs: HashMap<String, String> = connection.hgetall(&keys[1]).unwrap();
    entries
        .into_iter()
        .map(|(id, score)| {
            let units = costs.get(&id).map_or(1, |cost| cost.parse().unwrap());
            (score as u64, units)
        })
        .collect()
}

/// The most units in any window `[t, t + span)`.
fn max_in_any_window(entries: &[(u64, u64)], span: Duration) -> u64 {
    let span = span.as_micros() as u64;
    let mut sorted = entries.to_vec();
    sorted.sort_unstable();
    (0..sorted.len())
        .map(|start| {
            sorted[start..]
                .iter()
                .take_while(|(at, _)| *at < sorted[start].0 + span)
                .map(|(_, units)| units)
                .sum()
        })
        .max()
        .unwrap_or(0)
}

fn spawn_acquire(
    store: &RedisStore,
    key: &Key,
    cost: u64,
    limits: &Limits,
) -> JoinHandle<Result<Admission, BoxError>> {
    tokio::spawn(store.acquire(key.clone(), cost, limits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_connections_never_put_more_than_max_calls_in_any_window() {
    let Some(server) = support::shared() else {
        return;
    };
    let prefix = support::unique_key("tq");
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(
            RedisStore::builder(server.url())
                .prefix(prefix.clone())
                .build()
                .await
                .unwrap(),
        );
    }
    let quota = Quota::new(5, Duration::from_secs(2)).unwrap();
    let layer = limits([quota]);
    let key = Key::from("exact");
    let log = stores[0].redis_keys(&key, layer.limits());

    // 18 requests through three connections: 5 admitted now, 13 reserved.
    let tasks: Vec<_> = (0..18)
        .map(|i| spawn_acquire(&stores[i % 3], &key, 1, layer.limits()))
        .collect();
    server.wait_for_members(&log[0], 18).await;
    let entries = read_log(server, &log);
    assert_eq!(max_in_any_window(&entries, quota.window()), 5);
    // Unanswered, an admission holds its slot until a window after its
    // sent_within bound (the score): the reservations follow each other
    // exactly that far apart.
    let sent_within = layer.limits().sent_within().as_micros() as u64;
    let mut times: Vec<u64> = entries.iter().map(|(at, _)| *at).collect();
    times.sort_unstable();
    for i in 5..times.len() {
        assert_eq!(
            times[i],
            times[i - 5] + 2_000_000 + sent_within,
            "slot {i} is exact"
        );
    }
    // The log holds every entry once the script has run; the admitted
    // tasks may still be reading its reply. The reserved ones wait two
    // seconds and more: none of them can finish meanwhile.
    let finished = || tasks.iter().filter(|task| task.is_finished()).count();
    for _ in 0..100_000 {
        if finished() >= 5 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let admitted_now = finished();
    assert_eq!(admitted_now, 5);

    // Dropping the waiters removes their reservations.
    for task in &tasks {
        task.abort();
    }
    server.wait_for_members(&log[0], 5).await;
    // And the instants they reserved: the next request takes the first slot
    // the five admissions free (2.1 s from now at most), not one after the
    // dropped reservations (over 6 s).
    let bounded = layer.clone().max_wait(Duration::from_millis(2_300));
    let next = spawn_acquire(&stores[1], &key, 1, bounded.limits());
    server.wait_for_members(&log[0], 6).await;
    assert!(!next.is_finished(), "reserved, not refused");
    next.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quotas_with_costs_are_both_respected_in_arrival_order() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let requests = Quota::per_request(4, Duration::from_secs(3)).unwrap();
    let tokens = Quota::new(10, Duration::from_secs(3)).unwrap();
    let layer = limits([requests, tokens]);
    let key = Key::from("weighted");
    let keys = store.redis_keys(&key, layer.limits());
    let (request_log, token_log) = keys.split_at(4);

    let costs = [3, 5, 2, 4, 1, 6, 1, 1, 7, 2, 3, 10];
    let mut tasks = Vec::new();
    for (i, cost) in costs.iter().enumerate() {
        tasks.push(spawn_acquire(&store, &key, *cost, layer.limits()));
        // One at a time, so arrival order is known.
        server.wait_for_members(&request_log[0], i + 1).await;
    }
    let request_entries = read_log(server, request_log);
    let token_entries = read_log(server, token_log);
    assert!(max_in_any_window(&request_entries, requests.window()) <= 4);
    assert!(max_in_any_window(&token_entries, tokens.window()) <= 10);
    // Each quota spent its own units: 1 per request, the cost per token.
    assert!(request_entries.iter().all(|(_, units)| *units == 1));
    // Arrival order is admission order (a large request is not overtaken):
    // walking the instants in order, each group of equal instants holds the
    // next requests of the arrival sequence.
    let mut groups: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for (at, units) in &token_entries {
        groups.entry(*at).or_default().push(*units);
    }
    let mut arrivals = costs.iter().copied();
    for (at, mut group) in groups {
        let mut expected: Vec<u64> = arrivals.by_ref().take(group.len()).collect();
        group.sort_unstable();
        expected.sort_unstable();
        assert_eq!(group, expected, "admissions at {at}");
    }
    assert_eq!(arrivals.next(), None, "every cost was recorded");
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn a_cost_over_a_quota_is_refused_at_once() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = limits([
        Quota::per_request(10, Duration::from_secs(1)).unwrap(),
        Quota::new(100, Duration::from_secs(60)).unwrap(),
    ]);
    let error = store
        .acquire(Key::from("big"), 101, layer.limits())
        .await
        .unwrap_err();
    let too_large = error.downcast_ref::<CostTooLarge>().expect("typed error");
    assert_eq!((too_large.cost(), too_large.max_calls()), (101, 100));
    // The per-request quota spends 1 whatever the cost.
    store
        .acquire(Key::from("big"), 100, layer.limits())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_wait_over_max_wait_is_refused_and_records_nothing() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let quota = Quota::new(2, Duration::from_secs(5)).unwrap();
    let layer = limits([quota]).max_wait(Duration::from_secs(1));
    let key = Key::from("max-wait");
    for _ in 0..2 {
        store.acquire(key.clone(), 1, layer.limits()).await.unwrap();
    }
    let error = store
        .acquire(key.clone(), 1, layer.limits())
        .await
        .unwrap_err();
    let overloaded = error.downcast_ref::<Overloaded>().expect("typed error");
    assert!(matches!(overloaded.reason(), OverloadReason::MaxWait(_)));
    assert!(overloaded.wait() > Duration::from_secs(4));
    let log = store.redis_keys(&key, layer.limits());
    let card: usize = server
        .connection()
        .zcount(&log[0], "-inf", "(+inf")
        .unwrap();
    assert_eq!(card, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queue_refuses_past_the_reserved_requests() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let quota = Quota::new(1, Duration::from_secs(5)).unwrap();
    let layer = limits([quota]).max_queue(2);
    let key = Key::from("max-queue");
    store.acquire(key.clone(), 1, layer.limits()).await.unwrap();
    let log = store.redis_keys(&key, layer.limits());
    let first = spawn_acquire(&store, &key, 1, layer.limits());
    server.wait_for_members(&log[0], 2).await;
    let second = spawn_acquire(&store, &key, 1, layer.limits());
    server.wait_for_members(&log[0], 3).await;
    let error = store
        .acquire(key.clone(), 1, layer.limits())
        .await
        .unwrap_err();
    let overloaded = error.downcast_ref::<Overloaded>().expect("typed error");
    assert_eq!(overloaded.reason(), OverloadReason::QueueFull(2));
    first.abort();
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_lets_the_next_request_in_earlier() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let tokens = Quota::new(10, Duration::from_secs(30)).unwrap();
    let layer = limits([tokens]).max_wait(Duration::from_secs(1));
    let key = Key::from("refund");
    let admission = store.acquire(key.clone(), 8, layer.limits()).await.unwrap();
    // 8 + 5 > 10: refused while the estimate stands.
    assert!(store.acquire(key.clone(), 5, layer.limits()).await.is_err());
    store.correct(&admission, 2);
    let log = store.redis_keys(&key, layer.limits());
    let mut connection = server.connection();
    for _ in 0..200 {
        let sum: Option<u64> = connection.hget(&log[1], "s").unwrap();
        if sum == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let next = store.acquire(key.clone(), 5, layer.limits()).await.unwrap();
    assert_eq!(next.waited(), Duration::ZERO);
    // 2 + 5 = 7: a request of 4 would overfill the window, and is refused.
    assert!(store.acquire(key.clone(), 4, layer.limits()).await.is_err());
    let entries = read_log(server, &log);
    assert_eq!(entries.iter().map(|(_, units)| units).sum::<u64>(), 7);
}

#[tokio::test]
async fn keys_carry_the_hash_tag_and_expire_when_idle() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let quota = Quota::new(3, Duration::from_secs(2)).unwrap();
    let layer = limits([quota]);
    let key = Key::from("tenant-7");
    store.acquire(key.clone(), 2, layer.limits()).await.unwrap();
    let mut connection = server.connection();
    let keys = store.redis_keys(&key, layer.limits());
    for redis_key in &keys {
        assert!(redis_key.contains("{tenant-7}"), "{redis_key}");
    }
    // The log and its costs; the queue and the floors exist only while
    // there are reservations.
    let (held, reservations) = keys.split_at(2);
    for redis_key in held {
        let ttl: i64 = connection.pttl(redis_key).unwrap();
        // Window (2 s) and sent_within bound (100 ms) plus one second of slack.
        assert!((2_100..=3_100).contains(&ttl), "{redis_key}: pttl {ttl}");
    }
    for redis_key in reservations {
        let ttl: i64 = connection.pttl(redis_key).unwrap();
        assert_eq!(ttl, -2, "{redis_key}");
    }
}

/// In exact mode the quota list's signature takes no Redis key of its own:
/// after one admission of cost 1, the key's one Redis key is its log (the
/// anchor), which holds the admission and the signature, scored `+inf`,
/// and expires.
#[tokio::test]
async fn one_admission_leaves_one_redis_key_that_holds_the_signature() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = limits([Quota::new(3, Duration::from_secs(2)).unwrap()]);
    let key = Key::from("one-key");
    let admission = store.acquire(key.clone(), 1, layer.limits()).await.unwrap();
    let log = store.redis_keys(&key, layer.limits())[0].clone();
    let prefix = log
        .strip_suffix(":{one-key}:log")
        .expect("the anchor is named after the key alone");
    let mut connection = server.connection();
    let written: Vec<String> = connection
        .scan_match(format!("{prefix}:*"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(written, std::slice::from_ref(&log));
    let members: Vec<(String, f64)> = connection.zrange_withscores(&log, 0, -1).unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(
        members[0].0,
        store
            .log_member(&admission)
            .expect("in the log")
            .to_string()
    );
    assert_eq!(members[1], ("3/2s:w;m=0us".to_owned(), f64::INFINITY));
    let ttl: i64 = connection.pttl(&log).unwrap();
    assert!(ttl > 0, "the anchor expires: {ttl}");
}

/// The anchor, which holds the quota list's signature, expires no earlier
/// than any Redis key of its key, in both modes: here the anchor is the
/// log (or the counters) of a one-second quota, beside a one-minute one.
#[tokio::test]
async fn the_anchor_outlives_every_other_redis_key_of_its_key() {
    let Some(server) = support::shared() else {
        return;
    };
    for approximate in [false, true] {
        let store = store_in_mode(server, approximate).await;
        let second = Quota::new(1, Duration::from_secs(1)).unwrap();
        let minute = Quota::new(5, Duration::from_secs(60)).unwrap();
        let layer = limits([minute, second]);
        let key = Key::from("anchored");
        store.acquire(key.clone(), 1, layer.limits()).await.unwrap();
        let keys = store.redis_keys(&key, layer.limits());
        let anchor = keys
            .iter()
            .find(|name| name.ends_with(":{anchored}:log") || name.ends_with(":{anchored}:counts"))
            .unwrap_or_else(|| panic!("an anchor among {keys:?}"));
        let mut connection = server.connection();
        let anchor_ttl: i64 = connection.pttl(anchor).unwrap();
        for name in &keys {
            let ttl: i64 = connection.pttl(name).unwrap();
            assert!(
                ttl == -2 || (ttl > 0 && ttl <= anchor_ttl),
                "approximate: {approximate}: {name} expires in {ttl} ms, the anchor in {anchor_ttl}"
            );
        }
        // The minute's key is the one that lives long.
        assert!(anchor_ttl > 50_000, "{anchor_ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_is_invisible_to_callers() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = limits([Quota::new(1_000, Duration::from_secs(1)).unwrap()]);
    let key = Key::from("flush");
    let mut connection = server.connection();
    for i in 0..200 {
        if i % 50 == 25 {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query(&mut connection)
                .unwrap();
        }
        store
            .acquire(key.clone(), 1, layer.limits())
            .await
            .expect("admitted through a flush");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approximate_mode_stays_within_its_documented_bound() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::builder(server.url())
        .prefix(support::unique_key("tq"))
        .approximate(true)
        .build()
        .await
        .unwrap();
    assert!(store.is_approximate());
    let max_calls = 10;
    let window = Duration::from_millis(250);
    let quota = Quota::new(max_calls, window).unwrap();
    let layer = limits([quota]);
    let key = Key::from("approx");

    let tasks: Vec<_> = (0..60)
        .map(|_| spawn_acquire(&store, &key, 1, layer.limits()))
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        // In approximate mode the admission id is its Redis time in µs.
        times.push((task.await.unwrap().unwrap().id(), 1));
    }
    let span = window.as_micros() as u64;
    // No fixed window holds more than max_calls.
    let mut per_fixed: HashMap<u64, u64> = HashMap::new();
    for (at, _) in &times {
        *per_fixed.entry(at / span).or_default() += 1;
    }
    assert!(
        per_fixed.values().all(|count| *count <= max_calls),
        "{per_fixed:?}"
    );
    // Any sliding window holds under 2 * max_calls.
    let sliding = max_in_any_window(&times, window);
    assert!(sliding < 2 * max_calls, "{sliding}");
    // And the quota is used: 60 admissions need at least 5 fixed windows
    // and at most 8.
    let first = times.iter().map(|(at, _)| at / span).min().unwrap();
    let last = times.iter().map(|(at, _)| at / span).max().unwrap();
    assert!((5..=8).contains(&(last - first)), "{first}..{last}");
    // O(1) memory: one hash of a few fields per quota, once the backlog of
    // reservations has passed: two windows, the latest admission and the
    // quota list's signature (the quota's hash is the anchor).
    store.acquire(key.clone(), 1, layer.limits()).await.unwrap();
    let keys = store.redis_keys(&key, layer.limits());
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut connection = server.connection();
    let fields: usize = connection.hlen(&keys[0]).unwrap();
    assert!(fields <= 4, "{fields}");
    let signature: String = connection.hget(&keys[0], "q").unwrap();
    assert!(signature.ends_with(";m=0us"), "{signature}");
}

/// Costs and corrections up to `u64::MAX` with quotas up to `u64::MAX`:
/// the scripts saturate, every later call of the key still succeeds, and a
/// key corrected to `u64::MAX` stays full instead of wrapping into a refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_costs_and_corrections_saturate_and_never_break_the_key() {
    let Some(server) = support::shared() else {
        return;
    };
    for approximate in [false, true] {
        let store = store_in_mode(server, approximate).await;
        // A day: approximate mode counts in fixed periods of the window, and
        // right after a period ends the full previous one weighs a little
        // less than all of it, so the next request fits. With a day's
        // window the 100 ms wait below meets a period's end once in ~10^6
        // runs (once in 300 with 30 s).
        let huge = Quota::new(u64::MAX, Duration::from_secs(24 * 3600)).unwrap();
        let small = Quota::new(10, Duration::from_secs(30)).unwrap();
        let mode = if approximate { "approximate" } else { "exact" };

        // A cost of u64::MAX against a quota of u64::MAX: admitted once (it
        // fills what Redis can count), and the next request waits.
        let layer = limits([huge]).max_wait(Duration::from_millis(100));
        let key = Key::from(format!("huge-{mode}"));
        store
            .acquire(key.clone(), u64::MAX, layer.limits())
            .await
            .unwrap_or_else(|error| panic!("{mode}: {error}"));
        let error = store
            .acquire(key.clone(), 1, layer.limits())
            .await
            .expect_err("the quota is full");
        assert!(
            error.downcast_ref::<Overloaded>().is_some(),
            "{mode}: {error}"
        );

        // A correction of u64::MAX on a small quota: the key stays full,
        // and calls go on succeeding or waiting, never failing in Redis.
        let layer = limits([small]).max_wait(Duration::from_millis(100));
        let key = Key::from(format!("corrected-{mode}"));
        for _ in 0..3 {
            // The first is admitted; a later one may meet the correction.
            match store.acquire(key.clone(), 1, layer.limits()).await {
                Ok(admission) => store.correct(&admission, u64::MAX),
                Err(error) => assert!(error.downcast_ref::<Overloaded>().is_some(), "{error}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            let error = store
                .acquire(key.clone(), 1, layer.limits())
                .await
                .expect_err("a correction of u64::MAX keeps the key full");
            assert!(
                error.downcast_ref::<Overloaded>().is_some(),
                "{mode}: a full key, not a Redis error: {error}"
            );
        }
        if !approximate {
            let log = store.redis_keys(&key, layer.limits());
            let mut connection = server.connection();
            let sum: u64 = connection.hget(&log[1], "s").unwrap();
            let entries = read_log(server, &log);
            assert_eq!(sum, entries.iter().map(|(_, units)| units).sum::<u64>());
            assert_eq!(sum, (1 << 53) - 1, "saturated at 2^53 - 1");
        }
    }
}

/// Two layers (or processes) that give one key different quota lists: the
/// second is refused with `ConflictingQuotas` while the first's admissions
/// are in their windows, in both modes, so neither counts only its own
/// quotas; the same quotas in another order are the same list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_with_other_quotas_is_refused_while_busy() {
    let Some(server) = support::shared() else {
        return;
    };
    for approximate in [false, true] {
        let store = store_in_mode(server, approximate).await;
        let second = Quota::new(2, Duration::from_secs(1)).unwrap();
        let minute = Quota::new(10, Duration::from_secs(60)).unwrap();
        let one = limits([second, minute]);
        let reordered = limits([minute, second]);
        let fewer = limits([second]);
        let wider = SlidingWindowLayer::with_quotas([second, minute])
            .unwrap()
            .safety_margin(Duration::from_millis(50))
            .unwrap();
        let key = Key::from("shared-key");
        store.acquire(key.clone(), 1, one.limits()).await.unwrap();
        store
            .acquire(key.clone(), 1, reordered.limits())
            .await
            .expect("the same quotas in another order");
        if !approximate {
            // Counted in the same logs, in either order.
            let mut keys = store.redis_keys(&key, one.limits());
            let mut other = store.redis_keys(&key, reordered.limits());
            keys.sort_unstable();
            other.sort_unstable();
            assert_eq!(keys, other);
            for log in keys.iter().filter(|name| name.ends_with(":log")) {
                let entries: usize = server.connection().zcount(log, "-inf", "(+inf").unwrap();
                assert_eq!(entries, 2, "{log}");
            }
        }
        for other in [&fewer, &wider] {
            let error = store
                .acquire(key.clone(), 1, other.limits())
                .await
                .expect_err("other quotas while the key is busy");
            let conflict = error
                .downcast_ref::<ConflictingQuotas>()
                .unwrap_or_else(|| panic!("approximate: {approximate}: {error}"));
            assert_eq!(conflict.key(), &key);
        }
    }
}

/// A key's Redis keys share an expiry that covers every entry: a call
/// whose entry would outlive it extends them all (and the signature), by a
/// second more than the entry needs, so the calls in between extend nothing.
#[tokio::test]
async fn keys_are_extended_when_an_entry_would_outlive_them() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let quota = Quota::new(10, Duration::from_secs(1)).unwrap();
    let layer = limits([quota]);
    let key = Key::from("extended");
    let mut connection = server.connection();
    let ttls = |connection: &mut redis::Connection| -> Vec<i64> {
        // The log (the anchor, which holds the signature too) and the
        // costs; the queue and the floors exist only while there are
        // reservations.
        let mut keys = store.redis_keys(&key, layer.limits());
        keys.truncate(2);
        keys.iter()
            .map(|redis_key| connection.pttl(redis_key).unwrap())
            .collect()
    };
    // Costs other than 1: the costs hash exists too.
    store.acquire(key.clone(), 2, layer.limits()).await.unwrap();
    let first = ttls(&mut connection);
    // Window (1 s) and sent_within (100 ms) plus a second.
    assert!(
        first.iter().all(|ttl| (1_900..=2_100).contains(ttl)),
        "{first:?}"
    );
    // 300 ms later the keys still cover a new entry: nothing is extended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.acquire(key.clone(), 2, layer.limits()).await.unwrap();
    let second = ttls(&mut connection);
    assert!(
        second.iter().all(|ttl| (1_000..=1_850).contains(ttl)),
        "{second:?}"
    );
    // 1.2 s after the first, they would not: all are extended again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    store.acquire(key.clone(), 2, layer.limits()).await.unwrap();
    let third = ttls(&mut connection);
    assert!(
        third.iter().all(|ttl| (1_900..=2_100).contains(ttl)),
        "{third:?}"
    );
}
