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
    service.clone().oneshot(10).await.unwrap();
    store.correct(
        &Admission::new(Key::GLOBAL, 0, 10, Duration::ZERO, 0),
        u64::MAX,
    );
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
