//! A fresh key's start, when the caller reports refusals: its first burst
//! goes at the pace of its answers, a provider that says it has no room
//! for a burst is spaced before it refuses any, and the first burst past
//! the first window waits for one request's answer. Providers of each
//! shape answer after a round trip, on the paused clock.

use std::collections::VecDeque;

use super::*;
use crate::Room;

/// The round trip: a request reaches the provider half of it after its
/// admission, and its answer comes back the other half later.
const RTT: Duration = Duration::from_millis(10);

/// A provider: at an arrival's instant since the start, accepts it (with
/// what it says it has left, if it says) or refuses it.
type Provider = Box<dyn FnMut(Duration) -> Result<Option<Room>, ()> + Send>;

/// Sends `requests` through `store` on one key, `concurrency` at a time,
/// as the layer's response future reports them (the verdict, then the
/// answer; an acceptance and its answer in one step). A refused request is
/// not sent again. Returns every arrival at the provider and whether it was
/// accepted, in arrival order.
async fn drive(
    store: &MemoryStore,
    limits: &Limits,
    requests: usize,
    concurrency: usize,
    provider: Provider,
) -> Vec<(Duration, bool)> {
    drive_across(store, limits, requests, concurrency, provider, RTT).await
}

/// [`drive`] with a round trip of `rtt`.
async fn drive_across(
    store: &MemoryStore,
    limits: &Limits,
    requests: usize,
    concurrency: usize,
    provider: Provider,
    rtt: Duration,
) -> Vec<(Duration, bool)> {
    let start = Instant::now();
    let provider = Arc::new(Mutex::new(provider));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (store, limits) = (store.clone(), limits.clone());
        let (provider, arrivals, next) = (provider.clone(), arrivals.clone(), next.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let admission = store.acquire(Key::from("k"), 1, &limits).await.unwrap();
                tokio::time::sleep(rtt / 2).await;
                let at = start.elapsed();
                let verdict = (provider.lock().unwrap())(at);
                arrivals.lock().unwrap().push((at, verdict.is_ok()));
                tokio::time::sleep(rtt / 2).await;
                // As the layer reports them: an acceptance and its answer
                // in one step.
                match verdict {
                    Ok(room) => store.accepted_and_answered(&admission, &|| room, &limits),
                    Err(()) => {
                        store.refused(&admission, &limits);
                        store.complete(&admission, Completion::Answered, &limits);
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let mut arrivals = arrivals.lock().unwrap().clone();
    arrivals.sort_by_key(|(at, _)| *at);
    arrivals
}

fn refusals(arrivals: &[(Duration, bool)]) -> Vec<Duration> {
    arrivals
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(at, _)| *at)
        .collect()
}

/// The most arrivals in any window of one second.
fn busiest_second(arrivals: &[(Duration, bool)]) -> usize {
    arrivals
        .iter()
        .map(|(from, _)| {
            arrivals
                .iter()
                .filter(|(at, _)| *at >= *from && *at < *from + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// GCRA without tolerance, 20/s, that says what it has left after each
/// accepted request (`0 of 20` right after one).
fn no_burst(room: bool) -> Provider {
    let interval = Duration::from_millis(50);
    let mut tat = Duration::ZERO;
    Box::new(move |at| {
        if at < tat {
            return Err(());
        }
        tat = at + interval;
        Ok(room.then_some(Room {
            remaining: 0,
            limit: 20,
        }))
    })
}

/// A sliding log of 20 in any second that says what it has left.
fn sliding_log() -> Provider {
    let mut log: VecDeque<Duration> = VecDeque::new();
    Box::new(move |at| {
        while log
            .front()
            .is_some_and(|t| *t + Duration::from_secs(1) <= at)
        {
            log.pop_front();
        }
        if log.len() >= 20 {
            return Err(());
        }
        log.push_back(at);
        Ok(Some(Room {
            remaining: 20 - log.len() as u64,
            limit: 20,
        }))
    })
}

/// A sliding-window counter of 20 a second: the current period's count
/// plus the previous one's weighted by its overlap, refused requests
/// counted too, periods from the first request; no quota headers.
fn counter() -> Provider {
    counter_stating(20, None)
}

/// The room a provider states on its answers.
#[derive(Debug, Clone, Copy)]
enum Stated {
    /// What its per-second counter has left.
    Own,
    /// What is left of another, larger quota of `limit` (a daily one):
    /// the counter itself goes unannounced.
    Other { limit: u64 },
}

/// A sliding-window counter of `limit` a second, as [`counter`], stating
/// the room `stated` says on each accepted answer.
fn counter_stating(limit: u64, stated: Option<Stated>) -> Provider {
    let period = 1.0;
    let mut taken = 0u64;
    let (mut origin, mut index, mut previous, mut current) = (None, 0u64, 0.0, 0.0);
    Box::new(move |at: Duration| {
        let at = at.as_secs_f64();
        let origin = *origin.get_or_insert(at);
        let now = ((at - origin) / period) as u64;
        if now != index {
            previous = if now == index + 1 { current } else { 0.0 };
            current = 0.0;
            index = now;
        }
        let left = 1.0 - (at - origin - index as f64 * period) / period;
        current += 1.0;
        let estimate = previous * left + current;
        if estimate <= limit as f64 {
            taken += 1;
            Ok(stated.map(|stated| match stated {
                Stated::Own => Room {
                    remaining: (limit as f64 - estimate).floor() as u64,
                    limit,
                },
                Stated::Other { limit } => Room {
                    remaining: limit.saturating_sub(taken),
                    limit,
                },
            }))
        } else {
            Err(())
        }
    })
}

fn reporting() -> Limits {
    exact(20, Duration::from_secs(1))
        .limits()
        .clone()
        .reporting_refusals()
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_says_it_has_no_room_for_a_burst_is_spaced_before_it_refuses_any() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let arrivals = drive(&store, &limits, 60, 32, no_burst(true)).await;
    assert_eq!(refusals(&arrivals), [], "{arrivals:?}");
    assert_eq!(store.learned_burst(&Key::from("k")), Some(1));
    // The first alone, the second an interval after it (not after its
    // answer), then one per interval a little under the rate.
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps.iter().all(|gap| *gap >= 50 * MS), "{gaps:?}");
    let span = arrivals[59].0 - arrivals[0].0;
    assert!(span <= Duration::from_millis(59 * 56), "{span:?}");
}

#[tokio::test(start_paused = true)]
async fn without_what_it_has_left_a_provider_without_burst_refuses_one_request() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let arrivals = drive(&store, &limits, 60, 32, no_burst(false)).await;
    // One alone, then two at once after its answer: both refused (the
    // provider's next slot is an interval after the first), and the key
    // is spaced from then on.
    let refused = refusals(&arrivals);
    assert_eq!(refused, [RTT + RTT / 2; 2], "{arrivals:?}");
    assert_eq!(store.learned_burst(&Key::from("k")), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_sliding_window_counter_refuses_the_probe_past_the_first_window_and_nothing_after() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let arrivals = drive(&store, &limits, 100, 32, counter()).await;
    let refused = refusals(&arrivals);
    assert_eq!(refused.len(), 1, "{arrivals:?}");
    // The probe: the first request past the first window, alone.
    assert!(
        refused[0] >= Duration::from_secs(1) && refused[0] < Duration::from_millis(1100),
        "{refused:?}"
    );
    let after: Vec<_> = arrivals.iter().filter(|(at, _)| *at > refused[0]).collect();
    assert_eq!(after.len(), 100 - 20 - 1, "the others went after it");
    // Spaced a little under the rate from two intervals after the probe.
    assert!(after[0].0 - refused[0] >= 100 * MS, "{:?}", after[0]);
    let span = after[after.len() - 1].0 - after[0].0;
    assert!(span <= Duration::from_millis(78 * 56), "{span:?}");
    assert_eq!(store.learned_burst(&Key::from("k")), Some(1));
}

/// Across a slow network (a 200 ms round trip, more than an eighth of the
/// window): the first window's burst goes a sixteenth of the window after
/// the first request, unanswered, and its slots free a window after the
/// first answer. Past the first window one request probes, and once its
/// answer is no longer awaited the log alone decides: the key is not held
/// to one request per sixteenth of a window (16 a second, with every
/// request becoming the probe in turn), and it bursts once the probe is
/// accepted.
#[tokio::test(start_paused = true)]
async fn across_a_slow_network_one_request_probes_and_the_key_then_bursts() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let rtt = Duration::from_millis(200);
    let arrivals = drive_across(&store, &limits, 100, 32, sliding_log(), rtt).await;
    assert_eq!(refusals(&arrivals), [], "{arrivals:?}");
    assert_eq!(busiest_second(&arrivals), 20, "{arrivals:?}");
    // Five windows of 20, each a window and a round trip after the one
    // before: one request per sixteenth of a window would take until 6.3 s.
    let last = arrivals[99].0;
    assert!(last < Duration::from_secs(5), "{arrivals:?}");
    assert_eq!(store.learned_burst(&Key::from("k")), None);
}

/// Across a network (a 40 ms round trip), a sliding-window counter of 100
/// a second takes the probe past the first window: by then it weighs the
/// first period a little less. The first window's slots, which went and
/// free at the pace of the first answers, then go for a window no faster
/// than the quota's rate and the room the counter states (or, if it states
/// none, at the rate alone). Sent together as the log freed them, about 60
/// were refused. The room of a larger quota (a daily one, stated while the
/// counter goes unannounced) says nothing of the key's one-second quota:
/// taken at its word, the freed slots went at once, and 92 were refused.
#[tokio::test(start_paused = true)]
async fn a_counter_that_takes_the_probe_gets_the_freed_slots_at_its_rate() {
    let daily = Stated::Other { limit: 10_000 };
    for stated in [Some(Stated::Own), None, Some(daily)] {
        let store = MemoryStore::new();
        let limits = exact(100, Duration::from_secs(1))
            .limits()
            .clone()
            .reporting_refusals();
        let rtt = Duration::from_millis(40);
        let counter = counter_stating(100, stated);
        let arrivals = drive_across(&store, &limits, 400, 64, counter, rtt).await;
        let refused = refusals(&arrivals);
        assert!(refused.len() <= 1, "room stated: {stated:?}, {refused:?}");
        // Four windows' worth, at about the quota's rate.
        let last = arrivals[399].0;
        assert!(
            last < Duration::from_millis(4300),
            "room stated: {stated:?}, {last:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_sliding_log_gets_its_bursts_after_one_round_trip_and_one_probe() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let arrivals = drive(&store, &limits, 60, 32, sliding_log()).await;
    assert_eq!(refusals(&arrivals), [], "{arrivals:?}");
    assert_eq!(busiest_second(&arrivals), 20);
    let at: Vec<Duration> = arrivals.iter().map(|(at, _)| *at).collect();
    // The first alone; its answer says 19 left: the other 19 at once.
    assert_eq!(at[0], RTT / 2);
    assert!(at[1..20].iter().all(|t| *t == RTT + RTT / 2), "{at:?}");
    // Past the window, the first freed slot goes alone; once it is
    // accepted, the rest go as their slots free, in bursts.
    let window = Duration::from_secs(1) + limits.safety_margin();
    assert!(
        at[20] >= at[0] + window && at[20] <= at[0] + window + RTT,
        "{at:?}"
    );
    assert!(at[21] >= at[20] + RTT, "the probe's answer first: {at:?}");
    assert!(at[21..40].iter().all(|t| *t <= at[20] + 2 * RTT), "{at:?}");
    assert!(
        at[40..60].iter().all(|t| *t <= at[20] + window + 2 * RTT),
        "{at:?}"
    );
    assert_eq!(store.learned_burst(&Key::from("k")), None);
}

#[tokio::test(start_paused = true)]
async fn without_refusals_reported_a_fresh_key_bursts_at_once() {
    let store = MemoryStore::new();
    let limits = exact(20, Duration::from_secs(1))
        .limits()
        .clone()
        .reporting_answers();
    let arrivals = drive(&store, &limits, 20, 32, sliding_log()).await;
    assert!(
        arrivals.iter().all(|(at, _)| *at == RTT / 2),
        "{arrivals:?}"
    );
}

/// A sliding log of 5 in any second, under a key configured for 20: its
/// first answer says 4 of 5 left, and the key takes no more than that at
/// once; refusals still teach it the provider's rate.
#[tokio::test(start_paused = true)]
async fn a_provider_that_says_its_quota_is_smaller_is_sent_no_more_than_it_has_left() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let key = Key::from("k");
    let first = store.acquire(key.clone(), 1, &limits).await.unwrap();
    let room = Some(Room {
        remaining: 4,
        limit: 5,
    });
    store.accepted(&first, &|| room, &limits);
    store.complete(&first, Completion::Answered, &limits);
    assert_eq!(store.learned_burst(&key), Some(5));
}

/// Regression: the refusal of a fresh key's first request ended its start
/// without waking the requests that waited for that answer; when the
/// answer came after the admission's `sent_within` bound (so that it freed
/// nothing in the log), they waited for ever.
#[tokio::test(start_paused = true)]
async fn the_first_request_refused_late_lets_the_others_go() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let key = Key::from("k");
    let first = store.acquire(key.clone(), 1, &limits).await.unwrap();
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (store, limits, key) = (store.clone(), limits.clone(), key.clone());
        waiters.spawn(async move { store.acquire(key, 1, &limits).await.map(|_| ()) });
    }
    tokio::time::sleep(limits.sent_within() + Duration::from_secs(1)).await;
    store.refused(&first, &limits);
    store.complete(&first, Completion::Answered, &limits);
    let all = async {
        while let Some(done) = waiters.join_next().await {
            done.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every waiter was admitted");
}

/// A provider slow to answer holds a fresh key's burst a sixteenth of the
/// window at most: then the log alone decides.
#[tokio::test(start_paused = true)]
async fn a_slow_first_answer_holds_the_burst_a_sixteenth_of_the_window() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let key = Key::from("k");
    let start = Instant::now();
    let _first = store.acquire(key.clone(), 1, &limits).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..19 {
        store.acquire(key.clone(), 1, &limits).await.unwrap();
        rest.push(start.elapsed());
    }
    let patience = Duration::from_secs(1) / 16;
    // Timers fire on millisecond ticks.
    assert!(
        rest.iter()
            .all(|at| *at >= patience && *at <= patience + MS),
        "{rest:?}"
    );
}

/// Spaced one at a time to a provider that may have no tolerance, a
/// request that came after its instant (late to the key, or woken late by
/// the timer) moves the next one on: two requests never go closer than the
/// key's own interval, a little under the quota's rate, so that the
/// network has room to bring them together.
#[tokio::test(start_paused = true)]
async fn spaced_one_at_a_time_a_late_request_moves_the_next_one_on() {
    let (store, limits) = (MemoryStore::new(), reporting());
    let key = Key::from("k");
    let room = Some(Room {
        remaining: 0,
        limit: 20,
    });
    let send = || async {
        let admission = store.acquire(key.clone(), 1, &limits).await.unwrap();
        let at = Instant::now();
        store.accepted(&admission, &|| room, &limits);
        store.complete(&admission, Completion::Answered, &limits);
        at
    };
    // The first answer says there is no room for a burst: spaced from the
    // second request on.
    let first = send().await;
    assert_eq!(store.learned_burst(&key), Some(1));
    // The key sends at 98 % of the quota's rate at 20/s: a millisecond of
    // room.
    let quota_interval = (Duration::from_secs(1) + limits.safety_margin()) / 20;
    let key_interval = quota_interval * 1000 / 980;
    let second = send().await;
    assert!(second - first >= key_interval, "{:?}", second - first);
    // The third comes 60 ms after the second: after its instant.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let third = send().await;
    assert_eq!(third - second, Duration::from_millis(60));
    // The fourth, at once: the schedule had it sooner, but not closer to
    // the third than the key's interval.
    let fourth = send().await;
    assert!(
        fourth - third >= key_interval - Duration::from_micros(1),
        "{:?} against {key_interval:?}",
        fourth - third
    );
    assert!(fourth - third <= key_interval + MS, "{:?}", fourth - third);
}
