//! A request's deadline across processes: the Redis store keeps it as
//! `max_wait`, so a request that cannot be admitted in time is refused at
//! once and none is admitted after its deadline.

mod support;

use std::time::Duration;

use tokio::time::Instant;
use tower_quota::sliding_window::{Overloaded, Place, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_is_kept_as_max_wait_across_processes() {
    let Some(server) = support::shared() else {
        return;
    };
    // Two stores, two connections: two processes as far as Redis knows.
    let first = RedisStore::builder(server.url()).build().await.unwrap();
    let second = RedisStore::builder(server.url()).build().await.unwrap();
    let layer = SlidingWindowLayer::new(2, Duration::from_secs(2)).unwrap();
    let limits = layer.limits();
    let key = Key::from(support::unique_key("deadline"));
    for _ in 0..2 {
        first.acquire(key.clone(), 1, limits).await.unwrap();
    }
    let asked = Instant::now();
    let late = Place::new().deadline(asked + Duration::from_millis(300));
    let error = second
        .acquire_placed(key.clone(), 1, limits, late)
        .await
        .unwrap_err();
    let overloaded = error.downcast_ref::<Overloaded>().expect("Overloaded");
    assert!(
        overloaded.wait() > Duration::from_millis(300),
        "{overloaded}"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "refused at once"
    );

    let deadline = asked + Duration::from_secs(5);
    let patient = Place::new().deadline(deadline);
    second
        .acquire_placed(key.clone(), 1, limits, patient)
        .await
        .unwrap();
    let admitted = Instant::now();
    assert!(admitted <= deadline);
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        asked.elapsed()
    );
}
