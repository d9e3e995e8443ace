use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::*;
use crate::{BoxError, Key};

const MS: Duration = Duration::from_millis(1);

/// A limiter with no safety margin, so admission instants are exact.
fn exact(max_calls: u64, window: Duration) -> SlidingWindowLayer {
    SlidingWindowLayer::new(max_calls, window)
        .unwrap()
        .safety_margin(Duration::ZERO)
        .unwrap()
}

/// The most `times` in any window of length `window`: `a` and `b` share a
/// window when `b - a < window`.
fn max_in_any_window<T>(times: &mut [T], window: T) -> usize
where
    T: Copy + Ord + std::ops::Add<Output = T>,
{
    times.sort_unstable();
    let mut best = 0;
    let mut first = 0;
    for last in 0..times.len() {
        while times[first] + window <= times[last] {
            first += 1;
        }
        best = best.max(last - first + 1);
    }
    best
}

/// A service that answers each request with the instant it was called.
fn clock() -> impl Service<u32, Response = Instant, Error = Infallible, Future: Send> + Clone + Send
{
    service_fn(|_request: u32| async { Ok::<_, Infallible>(Instant::now()) })
}

#[test]
fn invalid_settings_are_rejected_at_construction() {
    assert_eq!(
        SlidingWindowLayer::new(0, Duration::from_secs(1)).unwrap_err(),
        InvalidQuota::ZeroMaxCalls
    );
    assert_eq!(
        SlidingWindowLayer::new(1, Duration::ZERO).unwrap_err(),
        InvalidQuota::ZeroWindow
    );
    assert!(matches!(
        SlidingWindowLayer::new(1, Duration::MAX).unwrap_err(),
        InvalidQuota::WindowTooLong(_)
    ));
    assert_eq!(
        SlidingWindowLayer::with_quotas([]).unwrap_err(),
        InvalidQuota::NoQuota
    );
    let layer = SlidingWindowLayer::new(1, Duration::from_secs(1)).unwrap();
    assert!(matches!(
        layer
            .clone()
            .safety_margin(Duration::from_secs(7200))
            .unwrap_err(),
        InvalidQuota::SafetyMarginTooLong(_)
    ));
    assert!(matches!(
        layer.and_quota(0, Duration::from_secs(60)).unwrap_err(),
        InvalidQuota::ZeroMaxCalls
    ));
    let message = InvalidQuota::ZeroMaxCalls.to_string();
    assert!(message.contains("max_calls"), "{message}");
}

#[test]
fn default_safety_margin_is_a_hundred_ppm_of_the_shortest_window_within_bounds() {
    let margin = |windows: &[u64]| {
        let quotas: Vec<_> = windows
            .iter()
            .map(|ms| Quota::new(1, Duration::from_millis(*ms)).unwrap())
            .collect();
        default_safety_margin(&quotas)
    };
    assert_eq!(margin(&[1_000]), Duration::from_millis(1));
    assert_eq!(margin(&[60_000, 1_000]), Duration::from_millis(1));
    assert_eq!(margin(&[60_000]), Duration::from_millis(6));
    assert_eq!(margin(&[10]), Duration::from_millis(1));
    assert_eq!(margin(&[3_600_000]), Duration::from_millis(25));
}

#[tokio::test(start_paused = true)]
async fn burst_goes_at_once_then_each_waits_for_the_oldest_to_leave() {
    let service = exact(3, Duration::from_secs(1)).layer(clock());
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..7 {
        handles.push(tokio::spawn(service.clone().oneshot(i)));
        tokio::time::sleep(100 * MS).await;
    }
    let mut sent = Vec::new();
    for handle in handles {
        sent.push(handle.await.unwrap().unwrap() - start);
    }
    let ms = |v: u64| Duration::from_millis(v);
    // Arrivals at 0..600 ms every 100 ms; three fit at once, then each waits
    // until the admission three places earlier is a full second old.
    assert_eq!(
        sent,
        [
            ms(0),
            ms(100),
            ms(200),
            ms(1000),
            ms(1100),
            ms(1200),
            ms(2000)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn clones_of_the_service_share_one_quota() {
    let layer = exact(2, Duration::from_secs(1));
    let first = layer.layer(clock());
    let second = layer.layer(clock());
    let start = Instant::now();
    let a = first.clone().oneshot(1).await.unwrap();
    let b = second.clone().oneshot(2).await.unwrap();
    let c = first.oneshot(3).await.unwrap();
    let d = second.oneshot(4).await.unwrap();
    assert_eq!(
        [a - start, b - start, c - start, d - start],
        [
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn every_quota_of_a_key_is_respected() {
    // 2 per 100 ms and 3 per second.
    let layer = exact(2, 100 * MS)
        .and_quota(3, Duration::from_secs(1))
        .unwrap();
    let service = layer.layer(clock());
    let start = Instant::now();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(service.clone().oneshot(i).await.unwrap() - start);
    }
    let ms = |v: u64| Duration::from_millis(v);
    assert_eq!(sent, [ms(0), ms(0), ms(100), ms(1000), ms(1000)]);
}

#[tokio::test(start_paused = true)]
async fn keys_have_separate_quotas() {
    let layer = exact(1, Duration::from_secs(1)).key_fn(|request: &u32| {
        if request.is_multiple_of(2) {
            Key::from_static("even")
        } else {
            Key::from_static("odd")
        }
    });
    let service = layer.layer(clock());
    let start = Instant::now();
    let even = service.clone().oneshot(0).await.unwrap() - start;
    let odd = service.clone().oneshot(1).await.unwrap() - start;
    let even_again = service.oneshot(2).await.unwrap() - start;
    assert_eq!(even, Duration::ZERO);
    assert_eq!(odd, Duration::ZERO);
    assert_eq!(even_again, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn safety_margin_holds_admissions_past_the_window() {
    let layer = SlidingWindowLayer::new(1, Duration::from_secs(1))
        .unwrap()
        .safety_margin(10 * MS)
        .unwrap();
    let service = layer.layer(clock());
    let start = Instant::now();
    service.clone().oneshot(0).await.unwrap();
    let second = service.oneshot(1).await.unwrap() - start;
    assert_eq!(second, Duration::from_millis(1010));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_before_admission_consumes_nothing() {
    let service = exact(1, Duration::from_secs(1)).layer(clock());
    let start = Instant::now();
    service.clone().oneshot(0).await.unwrap();
    // Waits behind the first admission, then gives up half-way.
    let gave_up = tokio::time::timeout(500 * MS, service.clone().oneshot(1)).await;
    assert!(gave_up.is_err());
    // The next request takes the slot the dropped one would have had.
    let next = service.clone().oneshot(2).await.unwrap() - start;
    assert_eq!(next, Duration::from_secs(1));
    // And the one after that waits a full window after it, not two.
    let after = service.oneshot(3).await.unwrap() - start;
    assert_eq!(after, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn max_wait_refuses_with_the_key_and_the_wait_needed() {
    let layer = exact(2, Duration::from_secs(1))
        .max_wait(1500 * MS)
        .key_fn(|_: &u32| Key::from_static("provider-a"));
    let service = layer.layer(clock());
    // Two admitted, two more within 1 s, the fifth would wait 2 s.
    let mut waiting = Vec::new();
    for i in 0..4 {
        waiting.push(tokio::spawn(service.clone().oneshot(i)));
    }
    tokio::task::yield_now().await;
    let error = service.clone().oneshot(4).await.unwrap_err();
    let overloaded = error
        .downcast_ref::<Overloaded>()
        .expect("an Overloaded error");
    assert_eq!(overloaded.key().as_str(), "provider-a");
    assert_eq!(overloaded.wait(), Duration::from_secs(2));
    assert_eq!(overloaded.reason(), OverloadReason::MaxWait(1500 * MS));
    assert!(error.to_string().contains("provider-a"), "{error}");
    for handle in waiting {
        handle.await.unwrap().unwrap();
    }
}

/// `max_wait` bounds the wait wherever a request stands, also when the
/// wait grows after it queued. Under `strict` a slot frees only when its
/// answer comes back; here the first answer never comes, so the head and
/// the request behind it, each projected within `max_wait` at arrival,
/// would wait for ever.
#[tokio::test(start_paused = true)]
async fn no_queued_request_waits_past_max_wait_when_its_wait_grows() {
    let max_wait = Duration::from_secs(3);
    let service = exact(1, Duration::from_secs(1))
        .strict()
        .max_wait(max_wait)
        .layer(service_fn(|request: u32| async move {
            if request == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(Instant::now())
        }));
    let start = Instant::now();
    let _unanswered = tokio::spawn(service.clone().oneshot(0));
    tokio::task::yield_now().await;
    let head = tokio::spawn(service.clone().oneshot(1));
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let behind = tokio::spawn(service.clone().oneshot(2));
    for (waiter, queued_at) in [(head, start), (behind, start + Duration::from_secs(1))] {
        let error = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("refused within max_wait, not parked for ever")
            .unwrap()
            .unwrap_err();
        let overloaded = error
            .downcast_ref::<Overloaded>()
            .expect("an Overloaded error");
        assert_eq!(overloaded.reason(), OverloadReason::MaxWait(max_wait));
        // Refused once it has waited `max_wait`, on the timer's tick.
        let waited = Instant::now() - queued_at;
        assert!(
            waited >= max_wait && waited <= max_wait + MS,
            "refused after {waited:?}"
        );
        assert!(overloaded.wait() >= max_wait, "{overloaded:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn max_queue_refuses_when_the_queue_is_full() {
    let service = exact(1, Duration::from_secs(1)).max_queue(2).layer(clock());
    service.clone().oneshot(0).await.unwrap();
    let first = tokio::spawn(service.clone().oneshot(1));
    let second = tokio::spawn(service.clone().oneshot(2));
    tokio::task::yield_now().await;
    let error = service.clone().oneshot(3).await.unwrap_err();
    let overloaded = error
        .downcast_ref::<Overloaded>()
        .expect("an Overloaded error");
    assert_eq!(overloaded.reason(), OverloadReason::QueueFull(2));
    assert_eq!(overloaded.queued(), 3);
    assert_eq!(overloaded.wait(), Duration::from_secs(3));
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cost_above_the_capacity_is_refused_at_once() {
    let service = exact(10, Duration::from_secs(1))
        .cost_fn(|request: &u32| u64::from(*request))
        .layer(clock());
    let start = Instant::now();
    let error = service.clone().oneshot(11).await.unwrap_err();
    let too_large = error
        .downcast_ref::<CostTooLarge>()
        .expect("a CostTooLarge error");
    assert_eq!((too_large.cost(), too_large.max_calls()), (11, 10));
    assert_eq!(Instant::now(), start, "refused without waiting");
    // Costs add up: 6 + 4 fill the window, 1 more waits for both to leave.
    service.clone().oneshot(6).await.unwrap();
    service.clone().oneshot(4).await.unwrap();
    let third = service.clone().oneshot(1).await.unwrap() - start;
    assert_eq!(third, Duration::from_secs(1));
    // Zero cost never waits.
    let free = service.oneshot(0).await.unwrap() - start;
    assert_eq!(free, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted() {
    let layer = exact(5, Duration::from_secs(1)).key_fn(|request: &u32| request.to_string());
    let store = layer.get_store().clone();
    let service = layer.layer(clock());
    for i in 0..100 {
        service.clone().oneshot(i).await.unwrap();
    }
    assert_eq!(store.key_count(), 100);
    store.evict_idle();
    assert_eq!(store.key_count(), 100, "keys inside their window stay");
    tokio::time::advance(Duration::from_secs(1)).await;
    store.evict_idle();
    assert_eq!(store.key_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept_without_being_asked() {
    let layer = exact(1, 10 * MS).key_fn(|request: &u32| request.to_string());
    let store = layer.get_store().clone();
    let service = layer.layer(clock());
    for i in 0..20_000 {
        service.clone().oneshot(i).await.unwrap();
        if i % 100 == 99 {
            tokio::time::advance(20 * MS).await;
        }
    }
    // Each shard sweeps after a bounded number of operations, so the keys
    // held are a bounded multiple of the keys active in one window.
    let held = store.key_count();
    store.evict_idle();
    assert!(
        held < 5_000,
        "{held} keys held, {} after evict_idle",
        store.key_count()
    );
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_the_inner_services_and_the_readied_service_is_called() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let mut service = tower_test::mock::Spawn::new(exact(1, Duration::from_secs(1)).layer(mock));

    handle.allow(0);
    assert_pending!(service.poll_ready());
    handle.allow(2);
    assert_ready_ok!(service.poll_ready());
    let first = tokio::spawn(service.call(1));
    tokio::task::yield_now().await;
    assert_ready_ok!(service.poll_ready());
    // The mock panics if a service is called without being readied, so the
    // second call reaching it shows the readied instance went with it.
    let second = tokio::spawn(service.call(2));

    let request = handle.next_request().await.unwrap();
    assert_eq!(request.0, 1);
    request.1.send_response(10);
    assert_eq!(first.await.unwrap().unwrap(), 10);

    let start = Instant::now();
    let request = handle.next_request().await.unwrap();
    assert_eq!(request.0, 2);
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    request.1.send_response(20);
    assert_eq!(second.await.unwrap().unwrap(), 20);
}

#[derive(Debug)]
struct InnerFailure;

impl std::fmt::Display for InnerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("inner failure")
    }
}

impl std::error::Error for InnerFailure {}

#[tokio::test(start_paused = true)]
async fn inner_errors_reach_the_caller_unchanged_in_kind() {
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let service = exact(1, Duration::from_secs(1)).layer(mock);
    handle.allow(1);
    let call = tokio::spawn(service.oneshot(1));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error(InnerFailure);
    let error: BoxError = call.await.unwrap().unwrap_err();
    assert!(error.downcast_ref::<InnerFailure>().is_some(), "{error:?}");

    // Readiness errors too.
    let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
    let mut service = tower_test::mock::Spawn::new(exact(1, Duration::from_secs(1)).layer(mock));
    handle.send_error(InnerFailure);
    let error = match service.poll_ready() {
        Poll::Ready(Err(error)) => error,
        other => panic!("expected a readiness error, got {other:?}"),
    };
    assert!(error.downcast_ref::<InnerFailure>().is_some(), "{error:?}");
}

/// Counts how often the futures it wraps are polled.
struct CountPolls<F> {
    future: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.future.as_mut().poll(cx)
    }
}

/// `waiters` tasks queue on one key through clones of one service; returns
/// polls per admission, after checking FIFO order and exact instants.
async fn queue_on_one_key(waiters: u32) -> f64 {
    let max_calls = 10;
    let window = 100 * MS;
    let admitted = Arc::new(Mutex::new(Vec::with_capacity(waiters as usize)));
    let record = admitted.clone();
    let inner = service_fn(move |request: u32| {
        record.lock().unwrap().push((request, Instant::now()));
        async { Ok::<_, Infallible>(()) }
    });
    let service = exact(max_calls, window).layer(inner);
    let polls = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(waiters as usize);
    for i in 0..waiters {
        tasks.push(tokio::spawn(CountPolls {
            future: Box::pin(service.clone().oneshot(i)),
            polls: polls.clone(),
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let admitted = admitted.lock().unwrap();
    assert_eq!(admitted.len(), waiters as usize);
    for (position, (request, at)) in admitted.iter().enumerate() {
        assert_eq!(*request as usize, position, "FIFO order");
        let slot = (position as u64 / max_calls) as u32;
        assert_eq!(
            *at - start,
            window * slot,
            "request {request} admitted at its exact instant"
        );
    }
    polls.load(Ordering::Relaxed) as f64 / f64::from(waiters)
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_waiters_are_admitted_in_fifo_order_with_constant_wakeups() {
    let few = queue_on_one_key(100).await;
    let many = queue_on_one_key(10_000).await;
    // Each waiter is polled when it arrives, when it becomes the head, and
    // when its timer fires: a constant, not a number that grows with the
    // queue (a thundering herd would poll every waiter on every admission).
    assert!(
        many <= 3.0,
        "{many} polls per admission with 10,000 waiters"
    );
    assert!(
        many <= few * 1.05 + 0.05,
        "{many} polls per admission with 10,000 waiters vs {few} with 100"
    );
}

#[tokio::test(start_paused = true)]
async fn half_the_waiters_cancelled_leaves_the_rest_as_if_they_never_came() {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    let max_calls = 4u64;
    let window = 100 * MS;
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let record = admitted.clone();
    let inner = service_fn(move |request: u32| {
        record.lock().unwrap().push((request, Instant::now()));
        async { Ok::<_, Infallible>(()) }
    });
    let service = exact(max_calls, window).layer(inner);
    let start = Instant::now();
    // Fill the first window so that every waiter below has to queue.
    for _ in 0..max_calls {
        service.clone().oneshot(u32::MAX).await.unwrap();
    }
    let mut rng = StdRng::seed_from_u64(7);
    let mut tasks = Vec::new();
    let mut expected = Vec::new();
    let mut kept = 0u64;
    for i in 0..400u32 {
        let cancel = rng.random_bool(0.5);
        let call = service.clone().oneshot(i);
        if cancel {
            // Any point before the instant this waiter would be admitted if
            // it stayed, which is when the next kept waiter is admitted;
            // offset by 5 ms from the admission grid so no instant ties.
            let slot = kept / max_calls + 1;
            let cancel_at = start + window * slot as u32 - 5 * MS;
            let cancel_at = start + (cancel_at - start).mul_f64(rng.random_range(0.0..1.0));
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(cancel_at) => {}
                    _ = call => panic!("waiter {i} admitted before its cancellation"),
                }
            }));
        } else {
            expected.push((i, window * (kept / max_calls + 1) as u32));
            kept += 1;
            tasks.push(tokio::spawn(async move {
                call.await.unwrap();
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let admitted: Vec<_> = admitted
        .lock()
        .unwrap()
        .iter()
        .filter(|(request, _)| *request != u32::MAX)
        .map(|(request, at)| (*request, *at - start))
        .collect();
    assert_eq!(admitted, expected);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// 10 ms: arrivals and windows sit on this grid, cancellations 5 ms off
    /// it, so no cancellation ties with an admission.
    const UNIT: Duration = Duration::from_millis(10);

    #[derive(Debug, Clone)]
    struct Arrival {
        gap: u32,
        cancel_after: Option<u32>,
    }

    fn arrivals() -> impl Strategy<Value = Vec<Arrival>> {
        prop::collection::vec(
            (0u32..6, prop::option::weighted(0.3, 0u32..40))
                .prop_map(|(gap, cancel_after)| Arrival { gap, cancel_after }),
            1..60,
        )
    }

    /// The reference: a greedy FIFO sliding log on the same grid.
    fn model(max_calls: usize, window: u32, arrivals: &[(u32, Option<u32>)]) -> Vec<Option<u32>> {
        // Times in half-units so cancellations (x.5) can be represented.
        let mut admitted: Vec<Option<u32>> = vec![None; arrivals.len()];
        let mut log: Vec<u32> = Vec::new();
        let mut queue: std::collections::VecDeque<usize> = Default::default();
        let mut next_arrival = 0;
        let mut now = 0u32;
        loop {
            while next_arrival < arrivals.len() && arrivals[next_arrival].0 * 2 <= now {
                queue.push_back(next_arrival);
                next_arrival += 1;
            }
            queue.retain(|i| arrivals[*i].1.is_none_or(|cancel| cancel > now));
            while let Some(&head) = queue.front() {
                let in_window = log.iter().filter(|t| **t + window * 2 > now).count();
                if in_window >= max_calls {
                    break;
                }
                log.push(now);
                admitted[head] = Some(now / 2);
                queue.pop_front();
            }
            let mut next = Vec::new();
            if next_arrival < arrivals.len() {
                next.push(arrivals[next_arrival].0 * 2);
            }
            next.extend(queue.iter().filter_map(|i| arrivals[*i].1));
            if !queue.is_empty() {
                next.push(log[log.len() - max_calls] + window * 2);
            }
            match next.into_iter().filter(|t| *t > now).min() {
                Some(t) => now = t,
                None => return admitted,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn no_window_exceeds_max_calls_and_no_waiter_idles(
            max_calls in 1u64..6,
            window in 1u32..30,
            arrivals in arrivals(),
        ) {
            let mut at = 0;
            let plan: Vec<(u32, Option<u32>)> = arrivals
                .iter()
                .map(|a| {
                    at += a.gap;
                    // A cancellation lands 5 ms after a grid point.
                    (at, a.cancel_after.map(|after| (at + after) * 2 + 1))
                })
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let observed: Vec<Option<u32>> = runtime.block_on(async {
                let service = exact(max_calls, UNIT * window).layer(clock());
                let start = Instant::now();
                let mut tasks = Vec::new();
                for (i, (arrive, cancel)) in plan.iter().copied().enumerate() {
                    tokio::time::sleep_until(start + UNIT * arrive).await;
                    let call = service.clone().oneshot(i as u32);
                    tasks.push(tokio::spawn(async move {
                        let cancel_at = start + (UNIT / 2) * cancel.unwrap_or(u32::MAX / 4);
                        tokio::select! {
                            biased;
                            result = call => {
                                let at = result.unwrap() - start;
                                assert_eq!(at.as_nanos() % UNIT.as_nanos(), 0, "admission off the grid");
                                Some((at.as_nanos() / UNIT.as_nanos()) as u32)
                            }
                            _ = tokio::time::sleep_until(cancel_at) => None,
                        }
                    }));
                }
                let mut observed = Vec::new();
                for task in tasks {
                    observed.push(task.await.unwrap());
                }
                observed
            });
            let mut times: Vec<u32> = observed.iter().flatten().copied().collect();
            prop_assert!(max_in_any_window(&mut times, window) <= max_calls as usize);
            prop_assert_eq!(observed, model(max_calls as usize, window, &plan));
        }
    }
}

mod weighted {
    use super::*;
    use crate::{Usage, UsageFromExtension};
    use proptest::prelude::*;

    /// A request of the weighted tests: its cost, and the usage its response
    /// reports.
    #[derive(Debug, Clone, Copy)]
    struct Call {
        cost: u64,
        used: Option<u64>,
    }

    fn weighted_clock()
    -> impl Service<Call, Response = http::Response<Instant>, Error = Infallible, Future: Send>
    + Clone
    + Send {
        service_fn(|call: Call| async move {
            let mut response = http::Response::new(Instant::now());
            if let Some(used) = call.used {
                response.extensions_mut().insert(Usage(used));
            }
            Ok::<_, Infallible>(response)
        })
    }

    fn tokens_and_requests(
        tokens: u64,
        requests: u64,
        window: Duration,
    ) -> SlidingWindowLayer<GlobalKey, impl Fn(&Call) -> u64 + Clone> {
        exact(tokens, window)
            .and_request_quota(requests, window)
            .unwrap()
            .cost_fn(|call: &Call| call.cost)
    }

    use crate::GlobalKey;

    #[tokio::test(start_paused = true)]
    async fn a_cost_above_a_weighted_quota_is_refused_but_per_request_quotas_count_one() {
        let service = tokens_and_requests(100, 3, Duration::from_secs(1)).layer(weighted_clock());
        let start = Instant::now();
        let error = service
            .clone()
            .oneshot(Call {
                cost: 101,
                used: None,
            })
            .await
            .unwrap_err();
        let too_large = error
            .downcast_ref::<CostTooLarge>()
            .expect("a CostTooLarge error");
        assert_eq!((too_large.cost(), too_large.max_calls()), (101, 100));
        // 50 tokens each: the request quota of 3 is not what binds, tokens are.
        let mut sent = Vec::new();
        for _ in 0..3 {
            sent.push(
                service
                    .clone()
                    .oneshot(Call {
                        cost: 50,
                        used: None,
                    })
                    .await
                    .unwrap()
                    .into_body()
                    - start,
            );
        }
        assert_eq!(
            sent,
            [Duration::ZERO, Duration::ZERO, Duration::from_secs(1)]
        );
        // 1 token each: now the request quota binds.
        tokio::time::advance(Duration::from_secs(5)).await;
        let restart = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..4 {
            sent.push(
                service
                    .clone()
                    .oneshot(Call {
                        cost: 1,
                        used: None,
                    })
                    .await
                    .unwrap()
                    .into_body()
                    - restart,
            );
        }
        assert_eq!(
            sent,
            [
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(1)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_lets_the_next_request_go_earlier_and_never_overfills_the_window() {
        let layer = exact(100, Duration::from_secs(1))
            .cost_fn(|call: &Call| call.cost)
            .usage_fn(UsageFromExtension);
        let service = layer.layer(weighted_clock());
        let start = Instant::now();
        // Estimated 80, really used 30: the refund frees 50.
        service
            .clone()
            .oneshot(Call {
                cost: 80,
                used: Some(30),
            })
            .await
            .unwrap();
        // 60 fits beside the corrected 30 at once (it would have waited a
        // full window beside the estimated 80).
        let second = service
            .clone()
            .oneshot(Call {
                cost: 60,
                used: None,
            })
            .await
            .unwrap()
            .into_body()
            - start;
        assert_eq!(second, Duration::ZERO);
        // The window now holds 90: 20 more must wait for the first to leave.
        let third = service
            .clone()
            .oneshot(Call {
                cost: 20,
                used: None,
            })
            .await
            .unwrap()
            .into_body()
            - start;
        assert_eq!(third, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_wakes_the_waiting_head() {
        let service = exact(100, Duration::from_secs(10))
            .cost_fn(|call: &Call| call.cost)
            .layer(weighted_clock());
        let store = service.store().clone();
        let start = Instant::now();
        let first = store
            .acquire(Key::GLOBAL, 90, service.limits())
            .await
            .unwrap();
        // Answered at once, as the service's would be.
        store.complete(&first, Completion::Answered, service.limits());
        // Waits for the 90 to leave the window, 10 s away...
        let waiting = tokio::spawn(service.clone().oneshot(Call {
            cost: 50,
            used: None,
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        // ...until the first admission is corrected to 10.
        store.correct(&first, 10);
        let admitted = waiting.await.unwrap().unwrap().into_body() - start;
        assert_eq!(admitted, Duration::from_secs(1));
    }

    /// Reference: a greedy FIFO log over a per-request quota and a weighted one.
    fn model(requests: (u64, u32), tokens: (u64, u32), arrivals: &[(u32, u64)]) -> Vec<u32> {
        let mut log: Vec<(u32, u64)> = Vec::new();
        let mut admitted = Vec::new();
        let mut next = 0;
        let mut now = 0;
        let mut queue = std::collections::VecDeque::new();
        loop {
            while next < arrivals.len() && arrivals[next].0 <= now {
                queue.push_back(arrivals[next].1);
                next += 1;
            }
            while let Some(&cost) = queue.front() {
                let used_requests = log.iter().filter(|(t, _)| t + requests.1 > now).count() as u64;
                let used_tokens: u64 = log
                    .iter()
                    .filter(|(t, _)| t + tokens.1 > now)
                    .map(|(_, c)| c)
                    .sum();
                if used_requests + 1 > requests.0 || used_tokens + cost > tokens.0 {
                    break;
                }
                log.push((now, cost));
                admitted.push(now);
                queue.pop_front();
            }
            let mut candidates: Vec<u32> = log
                .iter()
                .flat_map(|(t, _)| [t + requests.1, t + tokens.1])
                .filter(|t| *t > now)
                .collect();
            if next < arrivals.len() {
                candidates.push(arrivals[next].0);
            }
            match candidates.into_iter().min() {
                Some(t) if !queue.is_empty() || next < arrivals.len() => now = t,
                _ => return admitted,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn two_quotas_with_random_costs_hold_and_admit_fifo_at_the_earliest_instant(
            max_requests in 1u64..6,
            request_window in 1u32..20,
            max_tokens in 5u64..40,
            token_window in 1u32..20,
            calls in prop::collection::vec((0u32..5, 1u64..40), 1..40),
        ) {
            let unit = Duration::from_millis(10);
            let mut at = 0;
            let plan: Vec<(u32, u64)> = calls
                .iter()
                .map(|(gap, cost)| {
                    at += gap;
                    (at, (*cost).min(max_tokens))
                })
                .collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let observed: Vec<u32> = runtime.block_on(async {
                let layer = SlidingWindowLayer::with_quotas([
                    Quota::per_request(max_requests, unit * request_window).unwrap(),
                    Quota::new(max_tokens, unit * token_window).unwrap(),
                ])
                .unwrap()
                .safety_margin(Duration::ZERO)
                .unwrap()
                .cost_fn(|call: &Call| call.cost);
                let service = layer.layer(weighted_clock());
                let start = Instant::now();
                let mut tasks = Vec::new();
                for (arrive, cost) in plan.iter().copied() {
                    tokio::time::sleep_until(start + unit * arrive).await;
                    tasks.push(tokio::spawn(service.clone().oneshot(Call { cost, used: None })));
                }
                let mut observed = Vec::new();
                for task in tasks {
                    let at = task.await.unwrap().unwrap().into_body() - start;
                    observed.push((at.as_nanos() / unit.as_nanos()) as u32);
                }
                observed
            });
            // Windows hold, in both units.
            for (i, t) in observed.iter().enumerate() {
                let requests = observed.iter().filter(|u| **u >= *t && **u < t + request_window).count() as u64;
                prop_assert!(requests <= max_requests);
                let tokens: u64 = observed
                    .iter()
                    .zip(&plan)
                    .filter(|(u, _)| **u >= *t && **u < t + token_window)
                    .map(|(_, (_, cost))| cost)
                    .sum();
                prop_assert!(tokens <= max_tokens, "{tokens} tokens in the window from request {i}");
            }
            // FIFO at the earliest instant both quotas allow.
            let expected = model((max_requests, request_window), (max_tokens, token_window), &plan);
            prop_assert_eq!(observed, expected);
        }
    }
}

mod arrival;

mod hardening;

mod schedule;

mod start;

// ----- the burst learned from refusals -----

/// Admits `count` requests of `key` one after another; returns their
/// admissions and the instants they were made, since `start`.
async fn admit_in_turn(
    store: &MemoryStore,
    limits: &Limits,
    count: usize,
    start: Instant,
) -> Vec<(Admission, Duration)> {
    let mut admitted = Vec::new();
    for _ in 0..count {
        let admission = store.acquire(Key::from("k"), 1, limits).await.unwrap();
        admitted.push((admission, start.elapsed()));
    }
    admitted
}

/// A store whose key sent a burst of 10 that the provider refused: the
/// burst is down to one. Returns it and the instant the burst went.
async fn refused_burst(limits: &Limits) -> (MemoryStore, Instant) {
    let store = MemoryStore::new();
    let start = Instant::now();
    let first = admit_in_turn(&store, limits, 10, start).await;
    for (admission, _) in &first {
        store.refused(admission, limits);
    }
    (store, start)
}

#[tokio::test(start_paused = true)]
async fn refusals_halve_the_burst_down_to_even_spacing_and_the_log_still_bounds() {
    let layer = exact(10, Duration::from_secs(1));
    let limits = layer.limits().clone();
    let store = MemoryStore::new();
    let start = Instant::now();
    // No refusal yet: the whole quota goes at once, as the log allows.
    let first = admit_in_turn(&store, &limits, 10, start).await;
    assert!(first.iter().all(|(_, at)| at.is_zero()));
    // The provider refuses four of them: 10 → 5 → 2 → 1.
    for (admission, _) in &first[..4] {
        store.refused(admission, &limits);
    }
    let spaced = admit_in_turn(&store, &limits, 10, start).await;
    let times: Vec<Duration> = spaced.iter().map(|(_, at)| *at).collect();
    // The log frees the first slot a window (plus the drift margin the
    // refusals added) after the first burst; then one per interval.
    assert!(times[0] >= Duration::from_secs(1), "{times:?}");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 100 * MS,
            "spaced by the interval: {times:?}"
        );
    }
    let mut all: Vec<Duration> = first.iter().chain(&spaced).map(|(_, at)| *at).collect();
    assert!(max_in_any_window(&mut all, Duration::from_secs(1)) <= 10);
}

#[tokio::test(start_paused = true)]
async fn the_burst_is_probed_after_a_quiet_spell_and_a_failed_probe_waits_longer() {
    let layer = exact(10, Duration::from_secs(1));
    let limits = layer.limits().clone();
    let key = Key::from("k");
    let (store, start) = refused_burst(&limits).await;
    let refused_at = start.elapsed();
    assert_eq!(store.learned_burst(&key), Some(1));
    // Steady traffic for the first spell of 8 windows: still one at a time.
    let mut last = admit_in_turn(&store, &limits, 1, start).await;
    while store.learned_burst(&key) == Some(1) {
        last = admit_in_turn(&store, &limits, 1, start).await;
    }
    let probed_at = last[0].1;
    assert!(
        probed_at - refused_at >= Duration::from_secs(8),
        "{probed_at:?}"
    );
    assert_eq!(store.learned_burst(&key), Some(2));
    // The probe is refused at once: back to one, and the next probe waits
    // twice as long.
    store.refused(&last[0].0, &limits);
    let refused_at = start.elapsed();
    assert_eq!(store.learned_burst(&key), Some(1));
    while store.learned_burst(&key) == Some(1) {
        last = admit_in_turn(&store, &limits, 1, start).await;
    }
    assert!(
        last[0].1 - refused_at >= Duration::from_secs(16),
        "refused at {refused_at:?}, probed again at {:?}",
        last[0].1
    );
    // After an idle spell, a burst of two goes back to back, then spacing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst = admit_in_turn(&store, &limits, 3, start).await;
    assert_eq!(burst[0].1, burst[1].1, "two at once");
    assert!(burst[2].1 - burst[1].1 >= 100 * MS, "then spaced");
}

/// Regression: spacing followed the slowest quota, so after one refusal a
/// key with 10/1 s and 1000/1 h went one request per 3.6 s.
#[tokio::test(start_paused = true)]
async fn spacing_follows_the_shortest_window_not_an_hourly_quota() {
    let layer = SlidingWindowLayer::new(10, Duration::from_secs(1))
        .unwrap()
        .and_quota(1000, Duration::from_secs(3600))
        .unwrap()
        .safety_margin(Duration::ZERO)
        .unwrap();
    let limits = layer.limits().clone();
    let (store, start) = refused_burst(&limits).await;
    let spaced = admit_in_turn(&store, &limits, 20, start).await;
    let took = spaced[19].1 - spaced[0].1;
    assert!(
        took < Duration::from_secs(3),
        "20 spaced by the 1 s quota: {took:?}"
    );
}

/// Evenly spaced requests refused window after window: the provider's rate
/// is below the configured one, and the spacing widens to what it accepted.
#[tokio::test(start_paused = true)]
async fn spaced_requests_refused_window_after_window_cut_the_rate() {
    let layer = exact(10, Duration::from_secs(1));
    let limits = layer.limits().clone();
    let (store, start) = refused_burst(&limits).await;
    // Spaced one per ~100 ms; from the second window on, every other
    // request is refused (the provider takes 5 a second).
    let mut spacing = Vec::new();
    for round in 0..40 {
        let admitted = admit_in_turn(&store, &limits, 1, start).await;
        spacing.push(admitted[0].1);
        if round >= 10 && round % 2 == 0 {
            store.refused(&admitted[0].0, &limits);
        }
    }
    let before = spacing[9] - spacing[8];
    let after = spacing[39] - spacing[38];
    assert!(before < Duration::from_millis(150), "{before:?}");
    assert!(
        after >= Duration::from_millis(180),
        "half refused: the spacing about doubles ({before:?} -> {after:?})"
    );
}

/// Drives a key configured for `limits` with a backlog until `until`: each
/// admission goes to `provider` at its instant, which accepts it or refuses
/// it with a `Retry-After`; a refusal is reported to the store and pauses
/// the key for that delay, as the retry-after layer does. Returns every
/// arrival's instant and whether it was accepted.
async fn drive(
    limits: &Limits,
    until: Duration,
    mut provider: impl FnMut(Duration) -> Result<(), Duration>,
) -> Vec<(Duration, bool)> {
    let store = MemoryStore::new();
    let start = Instant::now();
    let mut outcomes = Vec::new();
    loop {
        let admission = store.acquire(Key::from("k"), 1, limits).await.unwrap();
        let at = start.elapsed();
        if at >= until {
            return outcomes;
        }
        let answer = provider(at);
        outcomes.push((at, answer.is_ok()));
        store.complete(&admission, Completion::Answered, limits);
        if let Err(retry_after) = answer {
            store.refused(&admission, limits);
            tokio::time::sleep(retry_after).await;
        }
    }
}

/// The share of arrivals refused in `[from, to)`, and the accepted rate
/// over `limit` per second.
fn refused_and_goodput(
    outcomes: &[(Duration, bool)],
    from: Duration,
    to: Duration,
    limit: f64,
) -> (f64, f64) {
    let inside: Vec<bool> = outcomes
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, ok)| *ok)
        .collect();
    let refused = inside.iter().filter(|ok| !**ok).count();
    let share = refused as f64 / inside.len().max(1) as f64;
    let goodput = (inside.len() - refused) as f64 / (to - from).as_secs_f64() / limit;
    (share, goodput)
}

/// A `Retry-After` in whole seconds, at least one, as most providers send.
fn whole_seconds(delay: Duration) -> Duration {
    Duration::from_secs_f64(delay.as_secs_f64().ceil().max(1.0))
}

/// A provider with a sliding log whose size changes unannounced, 30 → 15
/// → 45 a second, 30 s each, under a key configured for 50 a second with
/// the default layer. Over the second half of each phase: at most 1 %
/// refused, at least 0.85 of the provider's rate accepted. Measured: 0.24 %
/// and 0.92 at 30/s, 0.50 % and 0.88 at 15/s, 0.17 % and 0.90 at 45/s;
/// each refusal costs its pause, about a second of the provider's rate.
#[tokio::test(start_paused = true)]
async fn an_unannounced_rate_change_is_followed_with_rare_refusals() {
    let layer = SlidingWindowLayer::new(50, Duration::from_secs(1)).unwrap();
    let window = Duration::from_secs(1);
    let phase = Duration::from_secs(30);
    let sizes = [30usize, 15, 45];
    let mut accepted: std::collections::VecDeque<Duration> = Default::default();
    let outcomes = drive(layer.limits(), phase * 3, |at| {
        let limit = sizes[(at.as_secs() / phase.as_secs()) as usize];
        while accepted.front().is_some_and(|first| *first + window <= at) {
            accepted.pop_front();
        }
        if accepted.len() < limit {
            accepted.push_back(at);
            Ok(())
        } else {
            Err(whole_seconds(
                accepted[accepted.len() - limit] + window - at,
            ))
        }
    })
    .await;
    let mut results = Vec::new();
    for (index, limit) in sizes.into_iter().enumerate() {
        let from = phase * index as u32 + phase / 2;
        let to = phase * (index as u32 + 1);
        let (share, goodput) = refused_and_goodput(&outcomes, from, to, limit as f64);
        println!(
            "{limit}/s: {:.2} % refused, goodput {goodput:.3}",
            share * 100.0
        );
        results.push((limit, share, goodput));
    }
    for (limit, share, goodput) in results {
        assert!(share <= 0.01, "{limit}/s: {:.2} % refused", share * 100.0);
        assert!(goodput >= 0.85, "{limit}/s: goodput {goodput:.3}");
    }
}

/// A sliding-window counter (the current period's count plus the previous
/// one's weighted by its overlap, refused requests counted too, periods
/// from the first request) of 20 a second, under a key configured for 20 a
/// second. From the tenth second on: no refusal, goodput 0.87 (the goal is
/// 0.9): the key settles a little under the provider's rate, and probes
/// near the quota's rate only every 32 windows or more.
#[tokio::test(start_paused = true)]
async fn a_sliding_window_counter_is_followed_with_rare_refusals() {
    let layer = SlidingWindowLayer::new(20, Duration::from_secs(1)).unwrap();
    let period = Duration::from_secs(1);
    let limit = 20.0;
    let (mut origin, mut index, mut previous, mut current) = (None, 0u32, 0.0, 0.0);
    let outcomes = drive(layer.limits(), Duration::from_secs(40), |at| {
        let origin = *origin.get_or_insert(at);
        let now = ((at - origin).as_secs_f64() / period.as_secs_f64()) as u32;
        if now != index {
            previous = if now == index + 1 { current } else { 0.0 };
            current = 0.0;
            index = now;
        }
        let elapsed = (at - origin).as_secs_f64() - f64::from(index) * period.as_secs_f64();
        let left = 1.0 - elapsed / period.as_secs_f64();
        current += 1.0;
        if previous * left + current <= limit {
            Ok(())
        } else {
            Err(whole_seconds(period.mul_f64(1.0 - left)))
        }
    })
    .await;
    let (share, goodput) = refused_and_goodput(
        &outcomes,
        Duration::from_secs(10),
        Duration::from_secs(40),
        limit,
    );
    println!(
        "counter: {:.2} % refused, goodput {goodput:.3}",
        share * 100.0
    );
    assert!(share <= 0.02, "{:.2} % refused", share * 100.0);
    assert!(goodput >= 0.85, "goodput {goodput:.3}");
}

#[tokio::test(start_paused = true)]
async fn without_refusals_the_pacer_stays_off() {
    let layer = exact(5, Duration::from_secs(1));
    let limits = layer.limits().clone();
    let store = MemoryStore::new();
    let start = Instant::now();
    let admitted = admit_in_turn(&store, &limits, 15, start).await;
    let times: Vec<Duration> = admitted.iter().map(|(_, at)| *at).collect();
    // Three bursts of five, a window apart: the exact log alone.
    assert_eq!(&times[..5], &[Duration::ZERO; 5]);
    assert!(times[5..10].iter().all(|at| *at == times[5]), "{times:?}");
    assert!(times[10..].iter().all(|at| *at == times[10]), "{times:?}");
}

// ----- announced quotas -----

#[tokio::test(start_paused = true)]
async fn announced_requests_and_tokens_go_to_the_per_request_and_the_weighted_quota() {
    let minute = Duration::from_secs(60);
    let layer = SlidingWindowLayer::with_quotas([
        Quota::per_request(500, minute).unwrap(),
        Quota::new(200_000, minute).unwrap(),
    ])
    .unwrap();
    let limits = layer.limits().clone();
    let store = MemoryStore::new();
    let admission = store.acquire(Key::from("k"), 10, &limits).await.unwrap();
    let announced = [
        crate::Announced::new(400, minute),
        crate::Announced::new(100_000, minute).weighted(),
    ];
    let changes = store.announced(&admission, &announced, &limits);
    let pairs: Vec<(u64, u64)> = changes
        .iter()
        .map(|change| (change.configured.max_calls(), change.announced))
        .collect();
    assert_eq!(pairs, [(500, 400), (200_000, 100_000)]);
}

#[tokio::test(start_paused = true)]
async fn an_announced_quota_is_reported_once_per_change_and_followed_within_the_configured() {
    let follow = exact(50, Duration::from_secs(1)).follow_announced_quotas();
    let limits = follow.limits().clone();
    let store = MemoryStore::new();
    let start = Instant::now();
    let first = admit_in_turn(&store, &limits, 1, start).await;
    let admission = &first[0].0;
    let twenty = [crate::Announced::new(20, Duration::from_secs(1))];
    let changes = store.announced(admission, &twenty, &limits);
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].announced, changes[0].held_to), (20, 20));
    assert!(
        store.announced(admission, &twenty, &limits).is_empty(),
        "once per change"
    );
    // Held to 20 from the next admission: 19 more now, the next when the
    // first leaves (a window after its `sent_within` bound).
    let more = admit_in_turn(&store, &limits, 20, start).await;
    assert!(more[..19].iter().all(|(_, at)| at.is_zero()));
    assert_eq!(more[19].1, Duration::from_secs(1) + limits.sent_within());
    // Raised above the configured quota: held to the configured 50.
    let changes = store.announced(
        admission,
        &[crate::Announced::new(80, Duration::from_secs(1))],
        &limits,
    );
    assert_eq!((changes[0].announced, changes[0].held_to), (80, 50));
    // Another window matches nothing; requests and tokens announced for
    // the one window of a single quota are ambiguous and match nothing.
    let other = [
        crate::Announced::new(5, Duration::from_secs(60)),
        crate::Announced::new(30, Duration::from_secs(1)),
        crate::Announced::new(5_000, Duration::from_secs(1)).weighted(),
    ];
    assert!(store.announced(admission, &other, &limits).is_empty());

    // Without following, the difference is reported and the key keeps 50.
    let report_only = exact(50, Duration::from_secs(1));
    let limits = report_only.limits().clone();
    let store = MemoryStore::new();
    let first = admit_in_turn(&store, &limits, 1, start).await;
    let changes = store.announced(&first[0].0, &twenty, &limits);
    assert_eq!((changes[0].announced, changes[0].held_to), (20, 50));
    let more = admit_in_turn(&store, &limits, 49, Instant::now()).await;
    assert!(more.iter().all(|(_, at)| at.is_zero()));
}

#[tokio::test(start_paused = true)]
async fn http_feedback_marks_the_answer_of_a_request_that_waited_with_when_it_left() {
    use crate::{HttpFeedback, Released};
    let layer = SlidingWindowLayer::new(1, Duration::from_secs(1))
        .unwrap()
        .usage_fn(HttpFeedback);
    let service = layer.layer(service_fn(|_: http::Request<()>| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, Infallible>(http::Response::new(()))
    }));
    let start = Instant::now();
    let first = service
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    // Sent at once: nothing to say.
    assert_eq!(first.extensions().get::<Released>(), None);
    let second = service
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    // Held until the first left the window (and its margin): marked with
    // that instant, not with its answer's.
    let released = second
        .extensions()
        .get::<Released>()
        .expect("a request that waited is marked")
        .at();
    let left = released - start;
    assert!(
        left >= Duration::from_secs(1) && left < Duration::from_millis(1_050),
        "{left:?}"
    );
    assert!(Instant::now() - released >= Duration::from_millis(10));
}
