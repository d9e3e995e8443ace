//! Slots released relative to answers, on the Redis clock: an admission
//! answered early leaves a window after its answer, an unanswered one a
//! window after its `sent_within` bound, a strict one only once answered;
//! a refusal widens the key's margin; `flush` waits until the answers
//! reported have reached Redis.
//!
//! The store reads Redis `TIME`, so these tests run on the real clock: they
//! are short, and their tolerances hold on a loaded two-core machine.

mod support;

use std::time::Duration;

use redis::Commands;
use tokio::time::Instant;
use tower_quota::sliding_window::{
    Admission, Completion, Limits, OverloadReason, Overloaded, Quota, Store,
};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

const WINDOW: Duration = Duration::from_secs(1);
const SENT_WITHIN: Duration = Duration::from_millis(500);
/// How much later than its ideal instant an admission may come back on a
/// loaded machine (a Redis round trip, a timer, the scheduler).
const LATE: Duration = Duration::from_millis(150);
/// How much earlier: the worker's clock and Redis's may disagree by a
/// millisecond or two.
const EARLY: Duration = Duration::from_millis(10);

async fn store(server: &support::RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix(support::unique_key("tq"))
        .build()
        .await
        .expect("store connects")
}

/// One request per second, no margin, the given `sent_within`.
fn layer(sent_within: Duration) -> SlidingWindowLayer {
    layer_of(1, sent_within)
}

/// `max_calls` per second, no margin, the given `sent_within`.
fn layer_of(max_calls: u64, sent_within: Duration) -> SlidingWindowLayer {
    SlidingWindowLayer::with_quotas([Quota::new(max_calls, WINDOW).unwrap()])
        .unwrap()
        .safety_margin(Duration::ZERO)
        .unwrap()
        .sent_within(sent_within)
        .unwrap()
}

fn assert_near(elapsed: Duration, expected: Duration, what: &str) {
    assert!(
        elapsed + EARLY >= expected && elapsed <= expected + LATE,
        "{what}: admitted after {elapsed:?}, expected {expected:?}"
    );
}

/// The score of `admission` in the log of the first quota of `limits` (µs
/// of the Redis clock).
fn score(
    server: &support::RedisServer,
    store: &RedisStore,
    admission: &Admission,
    limits: &Limits,
) -> Option<f64> {
    let log = &store.redis_keys(admission.key(), limits)[0];
    server
        .connection()
        .zscore(log, store.log_member(admission).expect("in the log"))
        .unwrap()
}

/// Admits one request on `key` at once; returns it and how long its entry
/// holds the slot past its admission instant (the log's score less the
/// Redis clock read before and after the call: a range of µs).
async fn admit_and_hold(
    server: &support::RedisServer,
    store: &RedisStore,
    key: &Key,
    limits: &Limits,
) -> (Admission, std::ops::RangeInclusive<f64>) {
    let mut connection = server.connection();
    let redis_now = |connection: &mut redis::Connection| -> f64 {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(connection).unwrap();
        (seconds * 1_000_000 + micros) as f64
    };
    let before = redis_now(&mut connection);
    let admission = store.acquire(key.clone(), 1, limits).await.unwrap();
    let after = redis_now(&mut connection);
    assert_eq!(admission.waited(), Duration::ZERO, "{key} had room");
    let held = score(server, store, &admission, limits).expect("recorded");
    (admission, held - after..=held - before)
}

/// Asserts that an entry holds its slot `expected` past its admission.
fn assert_held(held: std::ops::RangeInclusive<f64>, expected: Duration, what: &str) {
    let expected = expected.as_micros() as f64;
    assert!(
        held.contains(&expected),
        "{what}: held {held:?} µs past the admission, expected {expected}"
    );
}

/// Waits until the completion reported before has reached Redis
/// ([`RedisStore::flush`]), and checks that it lowered the score.
async fn flush_lowers_score(
    server: &support::RedisServer,
    store: &RedisStore,
    admission: &Admission,
    limits: &Limits,
    before: f64,
) {
    store.flush().await;
    let after = score(server, store, admission, limits).expect("still in the log");
    assert!(
        after < before,
        "the answer of {} left its score at {after} (bound {before})",
        admission.id()
    );
}

/// Reports `admission` answered now, as the layer does, and waits until
/// Redis has lowered its score.
async fn answer(
    server: &support::RedisServer,
    store: &RedisStore,
    admission: &Admission,
    limits: &Limits,
) {
    let bound = score(server, store, admission, limits).expect("recorded");
    store.complete(admission, Completion::Answered, limits);
    flush_lowers_score(server, store, admission, limits, bound).await;
}

/// Admits one request on `key`, ends it after 100 ms as `ending` says
/// (`None`: never), then times the next admission from the first one.
async fn next_admission_after(
    server: &support::RedisServer,
    store: &RedisStore,
    key: &'static str,
    limits: &Limits,
    ending: Option<Completion>,
) -> Duration {
    let key = Key::from(key);
    let started = Instant::now();
    let first = store.acquire(key.clone(), 1, limits).await.unwrap();
    assert_eq!(first.waited(), Duration::ZERO);
    let bound = score(server, store, &first, limits).expect("recorded");
    tokio::time::sleep_until(started + Duration::from_millis(100)).await;
    if let Some(completion) = ending {
        store.complete(&first, completion, limits);
        if completion == Completion::Answered || limits.is_strict() {
            flush_lowers_score(server, store, &first, limits, bound).await;
        } else {
            // Nothing is sent: a call, had one been made, would have run
            // by the end of the flush.
            store.flush().await;
            assert_eq!(score(server, store, &first, limits), Some(bound));
        }
    }
    store.acquire(key, 1, limits).await.unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_frees_the_slot_a_window_after_it_before_the_bound() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = layer(SENT_WITHIN);
    let limits = layer.limits();
    // The three keys run side by side: one window and a half in all.
    let (answered, unanswered, dropped) = tokio::join!(
        next_admission_after(
            server,
            &store,
            "answered",
            limits,
            Some(Completion::Answered)
        ),
        next_admission_after(server, &store, "unanswered", limits, None),
        next_admission_after(server, &store, "dropped", limits, Some(Completion::Dropped)),
    );
    println!("answered: {answered:?}, unanswered: {unanswered:?}, dropped: {dropped:?}");
    // Answered at 100 ms: free at 100 ms + 1 s, not at 500 ms + 1 s.
    assert_near(answered, Duration::from_millis(1_100), "answered at 100 ms");
    // Unanswered: free a window after its sent_within bound.
    assert_near(unanswered, WINDOW + SENT_WITHIN, "unanswered");
    // Dropped while in flight: it may still be on its way, and keeps its bound.
    assert_near(dropped, WINDOW + SENT_WITHIN, "dropped");
}

/// A worker that flushes its store after its last answers, before it
/// exits, leaves each of them a window after its answer, not at its
/// bound: `flush` waits for every call spawned to report them. On one
/// thread, where none of those calls runs before the test awaits.
#[tokio::test(flavor = "current_thread")]
async fn flush_waits_until_every_answer_reported_reached_redis() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    // Nothing under way: at once.
    store.flush().await;
    let layer = layer_of(64, SENT_WITHIN);
    let limits = layer.limits();
    let key = Key::from("flushed");
    let mut admitted = Vec::new();
    for _ in 0..64 {
        let admission = store.acquire(key.clone(), 1, limits).await.unwrap();
        let bound = score(server, &store, &admission, limits).expect("recorded");
        admitted.push((admission, bound));
    }
    // As a worker's last responses come back: 64 calls spawned at once.
    for (admission, _) in &admitted {
        store.complete(admission, Completion::Answered, limits);
    }
    store.flush().await;
    for (admission, bound) in &admitted {
        let after = score(server, &store, admission, limits).expect("still in the log");
        assert!(
            after < bound - 100_000.0,
            "flushed, yet {} holds its slot until {after} µs, its bound {bound} µs",
            admission.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_made_before_the_answers_move_up_to_a_window_after_them() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = layer(SENT_WITHIN);
    let limits = layer.limits();
    let key = Key::from("moving-up");
    let started = Instant::now();
    let first = store.acquire(key.clone(), 1, limits).await.unwrap();
    // Reserved while the first is unanswered: the second a window after the
    // first's sent-by bound (1.5 s), the third a window after the second's
    // (3 s).
    let reserve = || {
        let (store, key, limits) = (store.clone(), key.clone(), limits.clone());
        tokio::spawn(async move {
            let admission = store.acquire(key, 1, &limits).await.unwrap();
            (admission, started.elapsed())
        })
    };
    let second = reserve();
    let log = &store.redis_keys(&key, limits)[0];
    server.wait_for_members(log, 2).await;
    let third = reserve();
    server.wait_for_members(log, 3).await;
    // The floors expire with the log: an idle key gives them back.
    let keys = store.redis_keys(&key, limits);
    let mut connection = server.connection();
    let log_ttl: i64 = connection.pttl(&keys[0]).unwrap();
    let floors_ttl: i64 = connection.pttl(&keys[3]).unwrap();
    assert!(
        floors_ttl > 0 && floors_ttl <= log_ttl + 10,
        "floors pttl {floors_ttl}, log {log_ttl}"
    );
    // The first is answered at 100 ms, the second as soon as it is admitted.
    tokio::time::sleep_until(started + Duration::from_millis(100)).await;
    answer(server, &store, &first, limits).await;
    let (second, second_at) = second.await.unwrap();
    answer(server, &store, &second, limits).await;
    let (third, third_at) = third.await.unwrap();
    println!("moved up: second after {second_at:?}, third after {third_at:?}");
    // Each goes a window after the answer it waited for, not a window
    // after that admission's bound.
    assert_near(second_at, Duration::from_millis(1_100), "second");
    assert_near(third_at, second_at + WINDOW, "third");
    // Their admissions report the waits they were given in the end.
    assert!(
        second.waited() < WINDOW + SENT_WITHIN,
        "{:?}",
        second.waited()
    );
    assert!(third.waited() < third_at, "{:?}", third.waited());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_with_a_cost_moves_up_too() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = layer_of(4, SENT_WITHIN);
    let limits = layer.limits();
    let key = Key::from("moving-up-costs");
    let started = Instant::now();
    // Three units now; two more need the three to leave: reserved a window
    // after their bound (1.5 s) while they are unanswered.
    let first = store.acquire(key.clone(), 3, limits).await.unwrap();
    let second = tokio::spawn({
        let (store, key, limits) = (store.clone(), key.clone(), limits.clone());
        async move {
            store.acquire(key, 2, &limits).await.unwrap();
            started.elapsed()
        }
    });
    server
        .wait_for_members(&store.redis_keys(&key, limits)[0], 2)
        .await;
    tokio::time::sleep_until(started + Duration::from_millis(100)).await;
    answer(server, &store, &first, limits).await;
    let second = second.await.unwrap();
    println!("moved up with costs: second after {second:?}");
    assert_near(second, Duration::from_millis(1_100), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_behind_a_large_log_moves_up_too() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    // More entries than the script sweeps: it decides the move as a new
    // request, without the reservations behind.
    const MAX: u64 = 1_100;
    let layer = layer_of(MAX, SENT_WITHIN);
    let limits = layer.limits();
    let key = Key::from("moving-up-large");
    let started = Instant::now();
    let admitted: Vec<Admission> =
        join_all((0..MAX).map(|_| store.acquire(key.clone(), 1, limits))).await;
    // Two reserved behind them: each goes a window after the answers.
    let reserve = || {
        let (store, key, limits) = (store.clone(), key.clone(), limits.clone());
        tokio::spawn(async move {
            store.acquire(key, 1, &limits).await.unwrap();
            started.elapsed()
        })
    };
    let (second, third) = (reserve(), reserve());
    let log = &store.redis_keys(&key, limits)[0];
    server.wait_for_members(log, MAX as usize + 2).await;
    tokio::time::sleep_until(started + Duration::from_millis(100)).await;
    let (last, others) = admitted.split_last().unwrap();
    for admission in others {
        store.complete(admission, Completion::Answered, limits);
    }
    answer(server, &store, last, limits).await;
    let (second, third) = (second.await.unwrap(), third.await.unwrap());
    println!("moved up behind a large log: {second:?}, {third:?}");
    let answered = Duration::from_millis(100) + WINDOW;
    assert!(
        second < WINDOW + SENT_WITHIN - LATE && third < WINDOW + SENT_WITHIN - LATE,
        "{second:?}, {third:?}: expected about {answered:?}"
    );
}

/// Awaits every future, concurrently; their outputs in order.
async fn join_all<F, T, E>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Debug + Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.unwrap().unwrap());
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_holds_an_unanswered_slot_until_its_answer() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = layer(Duration::from_millis(100)).strict();
    // This test reports the answers itself, as the layer's services do.
    let limits = &layer.limits().clone().reporting_answers();
    let key = Key::from("strict");
    let started = Instant::now();
    let first = store.acquire(key.clone(), 1, limits).await.unwrap();
    // Unanswered, the entry is held with no time bound.
    let pending = score(server, &store, &first, limits).unwrap();
    assert!(pending > 2f64.powi(52), "{pending}");
    let next = tokio::spawn({
        let (store, key, limits) = (store.clone(), key.clone(), limits.clone());
        async move {
            store.acquire(key, 1, &limits).await.unwrap();
            started.elapsed()
        }
    });
    // A slot a window after an answer still to come is further away than
    // a max_wait under a window allows: refused at once.
    let bounded = layer.clone().max_wait(Duration::from_millis(500));
    let error = store
        .acquire(key.clone(), 1, bounded.limits())
        .await
        .unwrap_err();
    let overloaded = error.downcast_ref::<Overloaded>().expect("typed error");
    assert!(matches!(overloaded.reason(), OverloadReason::MaxWait(_)));
    // Well past window + sent_within (1.1 s): still waiting for the answer.
    tokio::time::sleep_until(started + Duration::from_millis(1_400)).await;
    assert!(!next.is_finished(), "admitted before the answer");
    store.complete(&first, Completion::Answered, limits);
    flush_lowers_score(server, &store, &first, limits, pending).await;
    let admitted = next.await.unwrap();
    println!("strict: admitted after {admitted:?}, answer at 1.4 s");
    // A window after the answer; the waiter asks again every 250 ms, well
    // before the slot frees, so the answer's window is all it waits.
    assert_near(admitted, Duration::from_millis(2_400), "answered at 1.4 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_treats_a_dropped_request_as_answered_when_dropped() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = layer(SENT_WITHIN).strict();
    let elapsed = next_admission_after(
        server,
        &store,
        "strict-dropped",
        &layer.limits().clone().reporting_answers(),
        Some(Completion::Dropped),
    )
    .await;
    assert_near(elapsed, Duration::from_millis(1_100), "dropped at 100 ms");
}

#[tokio::test]
async fn a_refusal_widens_the_key_margin_of_later_admissions() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let layer = SlidingWindowLayer::with_quotas([Quota::new(100, WINDOW).unwrap()])
        .unwrap()
        .safety_margin(Duration::from_millis(10))
        .unwrap()
        .sent_within(Duration::from_millis(100))
        .unwrap();
    let limits = layer.limits();
    let key = Key::from("refused");
    let first = store.acquire(key.clone(), 1, limits).await.unwrap();
    let ms = Duration::from_millis;
    // Widened by a step (the safety margin) on a first refusal; more
    // refusals within a window are the same episode (the rules are
    // `DriftMargin`'s, shared with the in-process store and tested there).
    assert_eq!(store.refused(&first, limits), Some((ms(0), ms(10))));
    assert_eq!(store.refused(&first, limits), None);
    assert_eq!(store.extra_margin(&key, limits), ms(10));
    // Later admissions of the key hold their slot that much longer: the
    // log's score is the admission instant (on the Redis clock, read around
    // it) plus sent_within plus the extra margin.
    let (_, held) = admit_and_hold(server, &store, &key, limits).await;
    assert_held(held, ms(110), "after a refusal");
    // Other keys are not affected.
    assert_eq!(store.extra_margin(&Key::from("other"), limits), ms(0));
}

#[tokio::test]
async fn the_approximate_mode_neither_releases_early_nor_widens() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = RedisStore::builder(server.url())
        .prefix(support::unique_key("tq"))
        .approximate(true)
        .build()
        .await
        .unwrap();
    let layer = layer(SENT_WITHIN);
    let limits = layer.limits();
    let admission = store.acquire(Key::from("approx"), 1, limits).await.unwrap();
    store.complete(&admission, Completion::Answered, limits);
    assert_eq!(store.refused(&admission, limits), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_holds_unanswered_admissions_longer_in_its_first_window_and_beyond_its_peak() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let ms = Duration::from_millis;
    let limits = layer_of(10, ms(100)).limits().clone().reporting_answers();
    let key = Key::from("cold");
    // The key's first window in this process: connections may still be
    // opening, so an unanswered admission holds three times the bound.
    let (first, held) = admit_and_hold(server, &store, &key, &limits).await;
    assert_held(held, limits.cold_sent_within(), "first window");
    assert_eq!(limits.cold_sent_within(), ms(300));
    answer(server, &store, &first, &limits).await;
    // A window later, one request at a time (as many as were in flight
    // at once before): the bound itself.
    tokio::time::sleep(WINDOW).await;
    let (_second, held) = admit_and_hold(server, &store, &key, &limits).await;
    assert_held(held, ms(100), "warm");
    // One more while that one is in flight: more than this process ever
    // had in flight at once, so it may open a connection.
    let (_third, held) = admit_and_hold(server, &store, &key, &limits).await;
    assert_held(held, ms(300), "beyond the most in flight");
    // A caller that does not report answers always gets the bound: its
    // entries are never lowered to an answer.
    let unreported = layer_of(10, ms(100));
    let (_, held) = admit_and_hold(
        server,
        &store,
        &Key::from("unreported"),
        unreported.limits(),
    )
    .await;
    assert_held(held, ms(100), "answers not reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_holds_unanswered_admissions_for_a_window() {
    let Some(server) = support::shared() else {
        return;
    };
    let store = store(server).await;
    let ms = Duration::from_millis;
    let limits = layer_of(1_000, ms(100))
        .limits()
        .clone()
        .reporting_answers();
    let key = Key::from("lagging");
    // One admission in sixteen measures its task's wait, one at a time:
    // admit until the store asks for a measurement.
    let mut admitted = 0;
    let probe = loop {
        let (admission, _) = admit_and_hold(server, &store, &key, &limits).await;
        admitted += 1;
        assert!(admitted < 500, "the store never asked for a measurement");
        if store.probes_lag(&admission) {
            break admission;
        }
    };
    // One at a time: no other measurement until this one ends.
    assert!(!store.probes_lag(&probe));
    // A wait under half the bound: the client keeps up.
    store.probed(Some(ms(40)), &limits);
    assert!(store.probes_lag(&probe));
    // Half the bound or more: admissions from now on are held a window
    // unless answered (the in-process store holds them until answered).
    store.probed(Some(ms(60)), &limits);
    let (_, held) = admit_and_hold(server, &store, &key, &limits).await;
    assert_held(held, WINDOW, "lagging");
}
