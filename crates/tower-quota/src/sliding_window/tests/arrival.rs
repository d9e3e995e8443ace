//! The provider counts a request when it arrives, anywhere between its
//! admission and its answer: these tests draw the two delays at random and
//! count at a simulated provider, refused arrivals included.

use super::*;
use proptest::prelude::*;

/// One request's trip: how long after admission it reaches the provider,
/// how long after that its answer comes back, and whether the caller drops
/// it first (after `drop_after` from admission).
#[derive(Debug, Clone, Copy)]
struct Trip {
    gap: u64,
    send: u64,
    answer: u64,
    drop_after: Option<u64>,
}

/// A provider that answers `answer` ms after it is called, with the time
/// from `start` at which it was called.
fn answering_after(
    start: Instant,
) -> impl Service<u64, Response = Duration, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(move |answer: u64| async move {
        let called = Instant::now() - start;
        tokio::time::sleep(MS * answer as u32).await;
        Ok::<_, Infallible>(called)
    })
}

/// Runs `trips` through `layer` on a paused clock and returns the arrival
/// instants (ms) the provider saw.
fn provider_arrivals(layer: SlidingWindowLayer, trips: &[Trip]) -> Vec<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let start = Instant::now();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let provider = {
            let arrivals = arrivals.clone();
            service_fn(move |trip: Trip| {
                let arrivals = arrivals.clone();
                async move {
                    tokio::time::sleep(MS * trip.send as u32).await;
                    let at = (Instant::now() - start).as_millis() as u64;
                    arrivals.lock().unwrap().push(at);
                    tokio::time::sleep(MS * trip.answer as u32).await;
                    Ok::<_, Infallible>(())
                }
            })
        };
        let service = layer.layer(provider);
        let mut tasks = Vec::new();
        for trip in trips.iter().copied() {
            tokio::time::sleep(MS * trip.gap as u32).await;
            let call = service.clone().oneshot(trip);
            tasks.push(tokio::spawn(async move {
                match trip.drop_after {
                    // Dropped some time after it was sent on its way: the
                    // admission wait comes first, so drop relative to the
                    // call's own start plus that much.
                    Some(after) => {
                        let _ = tokio::time::timeout(MS * after as u32, call).await;
                    }
                    None => {
                        call.await.unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        arrivals.lock().unwrap().clone()
    })
}

fn trips(max_send: u64, max_answer: u64) -> impl Strategy<Value = Vec<Trip>> {
    prop::collection::vec(
        (
            0u64..40,
            0..=max_send,
            0..=max_answer,
            prop::option::weighted(0.2, 0u64..2_000),
        )
            .prop_map(|(gap, send, answer, drop_after)| Trip {
                gap,
                send,
                answer,
                drop_after,
            }),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Strict mode assumes nothing: whatever the delays, the provider never
    /// sees more than `max_calls` arrivals in any window.
    #[test]
    fn strict_mode_never_lets_the_provider_count_more_than_max_calls(
        max_calls in 1u64..6,
        window in 50u64..400,
        trips in trips(1_000, 1_000),
    ) {
        let layer = exact(max_calls, MS * window as u32).strict();
        let mut arrivals = provider_arrivals(layer, &trips);
        let most = max_in_any_window(&mut arrivals, window);
        prop_assert!(most <= max_calls as usize, "{most} arrivals in {window} ms, quota {max_calls}");
    }

    /// The default mode assumes only that a request reaches the provider
    /// within `sent_within` of its admission; answers may take any time.
    #[test]
    fn requests_sent_within_the_bound_never_exceed_max_calls_at_the_provider(
        max_calls in 1u64..6,
        window in 50u64..400,
        sent_within in 1u64..50,
        trips in trips(0, 1_000),
        sends in prop::collection::vec(0u64..=1_000, 80),
    ) {
        let trips: Vec<Trip> = trips
            .iter()
            .zip(&sends)
            .map(|(trip, send)| Trip { send: send % (sent_within + 1), ..*trip })
            .collect();
        let layer = exact(max_calls, MS * window as u32)
            .sent_within(MS * sent_within as u32)
            .unwrap();
        let mut arrivals = provider_arrivals(layer, &trips);
        let most = max_in_any_window(&mut arrivals, window);
        prop_assert!(most <= max_calls as usize, "{most} arrivals in {window} ms, quota {max_calls}");
    }
}

/// A slot is released a window after the answer: a request whose answer
/// came back after 30 ms frees its slot at 1,030 ms, not at 1,000 ms, and
/// one still in flight at its `sent_within` bound frees it a window after
/// that bound.
#[tokio::test(start_paused = true)]
async fn a_slot_is_released_a_window_after_the_answer_or_the_bound() {
    let start = Instant::now();
    let provider = answering_after(start);
    let service = exact(1, Duration::from_secs(1))
        .sent_within(100 * MS)
        .unwrap()
        .layer(provider);
    // Answered after 30 ms: the next goes at 1,030 ms.
    assert_eq!(service.clone().oneshot(30).await.unwrap(), Duration::ZERO);
    assert_eq!(
        service.clone().oneshot(500).await.unwrap(),
        Duration::from_millis(1_030)
    );
    // That one took 500 ms to answer, past its 100 ms bound: the next goes a
    // window after the bound, 2,130 ms.
    assert_eq!(
        service.clone().oneshot(0).await.unwrap(),
        Duration::from_millis(2_130)
    );
}

/// Strict mode: a slot whose answer never comes back within the window is
/// held until it does.
#[tokio::test(start_paused = true)]
async fn strict_mode_holds_a_slot_until_the_answer() {
    let start = Instant::now();
    let provider = answering_after(start);
    let service = exact(1, Duration::from_secs(1)).strict().layer(provider);
    let slow = tokio::spawn(service.clone().oneshot(3_000));
    tokio::task::yield_now().await;
    let next = service.clone().oneshot(0).await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), Duration::ZERO);
    assert_eq!(next, Duration::from_secs(4));
}

/// A request dropped after its admission may still be on its way: by
/// default it keeps its slot until a window after its bound, three times
/// `sent_within` on a cold key (its first window).
#[tokio::test(start_paused = true)]
async fn a_dropped_request_keeps_its_slot_until_its_bound() {
    let start = Instant::now();
    let provider = answering_after(start);
    let service = exact(1, Duration::from_secs(1))
        .sent_within(100 * MS)
        .unwrap()
        .layer(provider);
    // Cold: admitted at 0, dropped at 10 ms, held to its bound of 300 ms.
    let dropped = tokio::time::timeout(10 * MS, service.clone().oneshot(1_000)).await;
    assert!(dropped.is_err());
    let warm = tokio::spawn(tokio::time::timeout(
        Duration::from_millis(1_310),
        service.clone().oneshot(1_000),
    ));
    assert!(
        warm.await.unwrap().is_err(),
        "admitted at 1,300 ms, dropped 10 ms later"
    );
    // Warm: the drop at 1,310 ms keeps the bound of its admission at 1,300 ms.
    assert_eq!(
        service.clone().oneshot(0).await.unwrap(),
        Duration::from_millis(2_400)
    );
}

/// A client whose tasks wait too long to run cannot promise its
/// `sent_within` bound: once a probe measured such a wait, admissions in
/// flight are held until answered, like strict mode, and a window later
/// the bound is trusted again.
#[tokio::test(start_paused = true)]
async fn a_lagging_client_holds_admissions_until_answered() {
    use crate::sliding_window::Store;

    let start = Instant::now();
    let provider = answering_after(start);
    let service = exact(1, Duration::from_secs(1))
        .sent_within(100 * MS)
        .unwrap()
        .layer(provider);
    let (store, limits) = (service.store().clone(), service.limits().clone());
    assert_eq!(service.clone().oneshot(30).await.unwrap(), Duration::ZERO);
    // Admitted at 1,030 ms, answered at 1,530 ms: past its bound.
    let slow = tokio::spawn(service.clone().oneshot(500));
    tokio::time::sleep_until(start + Duration::from_millis(1_030)).await;
    tokio::task::yield_now().await;
    // A wait under half the bound changes nothing; 60 ms does.
    store.probed(Some(40 * MS), &limits);
    store.probed(None, &limits);
    store.probed(Some(60 * MS), &limits);
    assert_eq!(slow.await.unwrap().unwrap(), Duration::from_millis(1_030));
    // Held until a window after its answer, not after its bound (2,130).
    assert_eq!(
        service.clone().oneshot(500).await.unwrap(),
        Duration::from_millis(2_530)
    );
    // No lag for a window: that admission kept its bound (2,630), though
    // its answer came at 3,030.
    assert_eq!(
        service.clone().oneshot(0).await.unwrap(),
        Duration::from_millis(3_630)
    );
}

/// One admission in sixteen measures its task's wait, one at a time.
#[tokio::test(start_paused = true)]
async fn lag_probes_are_spaced_and_one_at_a_time() {
    use crate::sliding_window::{Admission, MemoryStore, Store};

    let store = MemoryStore::new();
    let limits = exact(100, Duration::from_secs(1))
        .limits()
        .clone()
        .reporting_answers();
    let admission = |id| Admission::new(crate::Key::from("k"), id, 1, Duration::ZERO, 0);
    assert!(store.probes_lag(&admission(0)));
    assert!(!store.probes_lag(&admission(16)), "one at a time");
    store.probed(None, &limits);
    assert!(!store.probes_lag(&admission(17)), "one in sixteen");
    assert!(store.probes_lag(&admission(32)));
}
