//! Regressions: settings, corrections and key crowds that once over-admitted,
//! panicked or kept memory.

use super::*;

/// Two layers sharing a store gave one key different quotas (2/s and
/// 3/s): each replaced the other's log on every arrival, so alternating
/// callers were all admitted at once. A busy key now refuses the layer with
/// other quotas, and takes them once idle.
#[tokio::test(start_paused = true)]
async fn layers_with_other_quotas_on_a_busy_key_are_refused_not_swapped() {
    let first = exact(2, Duration::from_secs(1));
    let store = first.get_store().clone();
    let second = exact(3, Duration::from_secs(1)).store(store.clone());
    let first = first.layer(clock());
    let second = second.layer(clock());
    first.clone().oneshot(0).await.unwrap();
    let refused = second.clone().oneshot(1).await.unwrap_err();
    let conflict = refused
        .downcast_ref::<ConflictingQuotas>()
        .expect("a ConflictingQuotas error");
    assert_eq!(conflict.key(), &Key::GLOBAL);
    assert!(refused.to_string().contains("same quotas"), "{refused}");
    first.clone().oneshot(2).await.unwrap();
    let start = Instant::now();
    // The first layer's quota holds: the third waits a window.
    assert_eq!(
        first.clone().oneshot(3).await.unwrap() - start,
        Duration::from_secs(1)
    );
    // Idle again: the other quotas take the key over.
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..3 {
        second.clone().oneshot(4).await.unwrap();
    }
}

/// `in_window + cost` wrapped with `max_calls` above 2^63: two requests
/// costing 2^63 each were admitted at once.
#[tokio::test(start_paused = true)]
async fn costs_near_u64_max_never_admit_two_at_once() {
    let half = 1u64 << 63;
    let service = exact(half + 10, Duration::from_secs(1))
        .cost_fn(move |_: &u32| half)
        .layer(clock());
    let start = Instant::now();
    assert_eq!(
        service.clone().oneshot(0).await.unwrap() - start,
        Duration::ZERO
    );
    assert_eq!(
        service.clone().oneshot(1).await.unwrap() - start,
        Duration::from_secs(1)
    );
}

/// A usage correction of `u64::MAX` panicked under the shard lock in debug
/// builds and wrapped into a refund in release: it saturates, so the window
/// is full until the admission leaves it.
#[tokio::test(start_paused = true)]
async fn a_correction_of_u64_max_saturates_instead_of_wrapping() {
    let layer = exact(100, Duration::from_secs(1)).cost_fn(|cost: &u64| *cost);
    let store = layer.get_store().clone();
    let service = layer.layer(service_fn(|_: u64| async {
        Ok::<_, Infallible>(Instant::now())
    }));
    let start = Instant::now();
    let first = store
        .acquire(Key::GLOBAL, 10, service.limits())
        .await
        .unwrap();
    // Answered at once, as the service's would be.
    store.complete(&first, Completion::Answered, service.limits());
    store.correct(&first, u64::MAX);
    assert_eq!(
        service.clone().oneshot(1).await.unwrap() - start,
        Duration::from_secs(1),
        "the corrected admission fills the window until it leaves"
    );
}

/// Idle keys were swept only when their own shard saw traffic, and shard
/// maps never shrank: traffic to one hot key now sweeps every shard.
#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept_by_traffic_to_any_key() {
    let layer = exact(1_000_000, 10 * MS).key_fn(|request: &u32| request.to_string());
    let store = layer.get_store().clone();
    let service = layer.layer(clock());
    for i in 1..=50_000 {
        service.clone().oneshot(i).await.unwrap();
    }
    assert_eq!(store.key_count(), 50_000);
    tokio::time::advance(20 * MS).await;
    // One hot key, in one shard.
    for _ in 0..100_000 {
        service.clone().oneshot(0).await.unwrap();
    }
    assert!(
        store.key_count() <= 1,
        "{} idle keys left after traffic to one key",
        store.key_count()
    );
}

/// With many live keys, each admission examined about as many keys in
/// sweeps as there are shards (a shard visited in turn was swept once as
/// many operations on *all* shards had passed as it had keys): 4 µs an
/// admission at 100,000 keys. Then about one key an operation in all
/// (66,529 here); now keys that stay busy within their window are examined
/// a quarter as often (25,841).
#[tokio::test(start_paused = true)]
async fn sweeps_examine_under_one_key_per_operation_however_many_keys_live() {
    let layer =
        exact(1_000_000, Duration::from_secs(3_600)).key_fn(|request: &u32| request.to_string());
    let store = layer.get_store().clone();
    let service = layer.layer(clock());
    let (keys, operations) = (16_000, 64_000);
    for i in 0..operations {
        service.clone().oneshot(i % keys).await.unwrap();
    }
    assert_eq!(store.key_count(), keys as usize);
    let examined = store.examined_by_sweeps();
    assert!(
        examined <= operations as usize / 2,
        "{examined} keys examined in {operations} operations"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Call {
        gap_ms: u64,
        layer: usize,
        cost: u64,
        /// Charge the admission this much more afterwards (saturating).
        charge: Option<u64>,
    }

    fn quota() -> impl Strategy<Value = (u64, u64)> {
        (
            prop_oneof![1u64..8, Just(u64::MAX), (1u64 << 63)..u64::MAX],
            10u64..200,
        )
    }

    fn cost() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..4, Just(u64::MAX), (1u64 << 62)..u64::MAX]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Layers sharing one store with different quota lists, costs up to
        /// `u64::MAX`, charges of any size, `max_wait` and `max_queue`: no
        /// panic, every call ends (admitted or refused with a typed error),
        /// and no layer ever admits more than a quota's capacity in any
        /// window of that quota.
        #[test]
        fn shared_stores_huge_costs_and_charges_never_overfill_a_window(
            layers in prop::collection::vec(
                (prop::collection::vec(quota(), 1..3), 0u64..500, 1usize..20),
                1..4,
            ),
            calls in prop::collection::vec(
                (0u64..30, 0usize..4, cost(), prop::option::weighted(0.3, any::<u64>()))
                    .prop_map(|(gap_ms, layer, cost, charge)| Call { gap_ms, layer, cost, charge }),
                1..60,
            ),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let admitted: Vec<Vec<(u64, u64)>> = runtime.block_on(async {
                let store = MemoryStore::new();
                let mut services = Vec::new();
                for (quotas, max_wait_ms, max_queue) in &layers {
                    let quotas = quotas
                        .iter()
                        .map(|(max, window)| Quota::new(*max, MS * *window as u32).unwrap());
                    let layer = SlidingWindowLayer::with_quotas(quotas)
                        .unwrap()
                        .safety_margin(Duration::ZERO)
                        .unwrap()
                        .store(store.clone())
                        .cost_fn(|call: &(u64, Option<u64>)| call.0)
                        // The provider says what the request really cost.
                        .usage_fn(|answer: &(Instant, Option<u64>)| answer.1)
                        .max_wait(MS * *max_wait_ms as u32)
                        .max_queue(*max_queue);
                    services.push(layer.layer(service_fn(|call: (u64, Option<u64>)| async move {
                        Ok::<_, Infallible>((Instant::now(), call.1))
                    })));
                }
                let start = Instant::now();
                let mut tasks = Vec::new();
                for call in calls.clone() {
                    tokio::time::sleep(MS * call.gap_ms as u32).await;
                    let layer = call.layer % services.len();
                    let service = services[layer].clone();
                    let actual = call.charge.map(|charge| call.cost.saturating_add(charge));
                    tasks.push(tokio::spawn(async move {
                        match service.oneshot((call.cost, actual)).await {
                            Ok((at, _)) => Some((layer, (at - start).as_millis() as u64, call.cost)),
                            Err(error) => {
                                assert!(
                                    error.is::<Overloaded>()
                                        || error.is::<CostTooLarge>()
                                        || error.is::<ConflictingQuotas>(),
                                    "unexpected error: {error}"
                                );
                                None
                            }
                        }
                    }));
                }
                let mut admitted = vec![Vec::new(); services.len()];
                for task in tasks {
                    if let Some((layer, at, cost)) = task.await.unwrap() {
                        admitted[layer].push((at, cost));
                    }
                }
                admitted
            });
            for (layer, (quotas, _, _)) in layers.iter().enumerate() {
                let mut times = admitted[layer].clone();
                times.sort_unstable();
                for (max_calls, window) in quotas {
                    for (i, (start, _)) in times.iter().enumerate() {
                        let units: u128 = times[i..]
                            .iter()
                            .take_while(|(at, _)| *at < start + window)
                            .map(|(_, cost)| u128::from(*cost))
                            .sum();
                        prop_assert!(
                            units <= u128::from(*max_calls),
                            "layer {layer}: {units} units in {window} ms from {start} ms, quota {max_calls}"
                        );
                    }
                }
            }
        }
    }
}
