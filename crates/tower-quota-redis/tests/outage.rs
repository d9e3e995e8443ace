//! Redis failing under the store: killed and restarted empty, or slower
//! than the timeout. Each test owns its server, since it kills or blocks it.

mod support;

use std::time::Duration;

use tokio::time::Instant;
use tower_quota::sliding_window::{Quota, Store};
use tower_quota::{Key, SlidingWindowLayer};
use tower_quota_redis::{FailurePolicy, RedisStore, RedisStoreError, RedisStoreErrorKind};
use tracing_subscriber::layer::SubscriberExt;

const TIMEOUT: Duration = Duration::from_millis(200);
/// What a request may take past the timeout before it counts as a hang.
const SLACK: Duration = Duration::from_millis(150);

async fn store(server: &support::RedisServer, policy: FailurePolicy) -> RedisStore {
    RedisStore::builder(server.url())
        .timeout(TIMEOUT)
        .failure_policy(policy)
        .build()
        .await
        .expect("store connects")
}

fn layer(max_calls: u64, window: Duration) -> SlidingWindowLayer {
    SlidingWindowLayer::with_quotas([Quota::new(max_calls, window).unwrap()])
        .unwrap()
        .safety_margin(Duration::ZERO)
        .unwrap()
}

/// Blocks the server for `seconds` with `DEBUG SLEEP`, from another thread.
async fn block_server(server: &support::RedisServer, seconds: f64) -> std::thread::JoinHandle<()> {
    let mut connection = server.connection();
    let handle = std::thread::spawn(move || {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .query(&mut connection);
    });
    // Let the command reach the server first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_outage_gives_typed_errors_without_hanging_then_recovers() {
    let Some(mut server) = support::RedisServer::start() else {
        return;
    };
    let store = store(&server, FailurePolicy::FailClosed).await;
    let limiter = layer(1_000, Duration::from_secs(1));
    let key = Key::from("outage");
    store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .unwrap();

    server.kill();
    for _ in 0..20 {
        let started = Instant::now();
        let error = store
            .acquire(key.clone(), 1, limiter.limits())
            .await
            .expect_err("refused while Redis is down");
        assert!(
            started.elapsed() < TIMEOUT + SLACK,
            "{:?}",
            started.elapsed()
        );
        let error = error
            .downcast_ref::<RedisStoreError>()
            .expect("typed error");
        assert!(matches!(
            error.kind(),
            RedisStoreErrorKind::Connection | RedisStoreErrorKind::Timeout
        ));
        assert!(!error.to_string().contains("127.0.0.1"), "{error}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Restarted empty: no data, no scripts. Requests flow again by themselves.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut admitted = 0;
    while admitted < 20 {
        assert!(Instant::now() < deadline, "requests did not flow again");
        let started = Instant::now();
        match store.acquire(key.clone(), 1, limiter.limits()).await {
            Ok(_) => admitted += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(started.elapsed() < TIMEOUT + SLACK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fallback_keeps_requests_flowing_at_the_configured_share() {
    let Some(mut server) = support::RedisServer::start() else {
        return;
    };
    let store = store(&server, FailurePolicy::LocalFallback { share: 0.25 }).await;
    // 20 per 600 ms through Redis; 5 per 600 ms locally.
    let limiter = layer(20, Duration::from_millis(600));
    let key = Key::from("fallback");
    store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .unwrap();

    server.kill();
    let started = Instant::now();
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let acquire = store.acquire(key.clone(), 1, limiter.limits());
            tokio::spawn(async move {
                acquire.await.expect("admitted by the local fallback");
                started.elapsed()
            })
        })
        .collect();
    let mut done_at = Vec::new();
    for task in tasks {
        done_at.push(task.await.unwrap());
    }
    done_at.sort();
    // 5 in the first window, 5 in the next, 2 in the third: the share,
    // neither more nor less.
    let in_first = done_at
        .iter()
        .filter(|t| **t < Duration::from_millis(550))
        .count();
    let in_second = done_at
        .iter()
        .filter(|t| (Duration::from_millis(550)..Duration::from_millis(1150)).contains(t))
        .count();
    assert_eq!((in_first, in_second), (5, 5), "{done_at:?}");
    assert!(done_at[11] >= Duration::from_millis(1200), "{done_at:?}");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "Redis was not used again");
        let admission = store
            .acquire(key.clone(), 1, limiter.limits())
            .await
            .unwrap();
        // Admitted by Redis: its log holds the admission.
        let log = store.redis_keys(&key, limiter.limits());
        let card: usize =
            redis::Commands::zcount(&mut server.connection(), &log[0], "-inf", "(+inf").unwrap();
        if card > 0 {
            assert_ne!(admission.id(), 0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slower_than_the_timeout_fails_closed_without_hanging() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let store = store(&server, FailurePolicy::FailClosed).await;
    let limiter = layer(1_000, Duration::from_secs(1));
    let key = Key::from("slow");
    store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .unwrap();

    let blocker = block_server(&server, 1.0).await;
    let started = Instant::now();
    let error = store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .expect_err("refused");
    assert!(
        started.elapsed() < TIMEOUT + SLACK,
        "{:?}",
        started.elapsed()
    );
    let error = error
        .downcast_ref::<RedisStoreError>()
        .expect("typed error");
    assert_eq!(error.kind(), RedisStoreErrorKind::Timeout);
    blocker.join().unwrap();
    // The blocked call may run late; what it recorded is removed again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no recovery after the sleep");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_move_up_times_out_fails_closed_and_leaves_nothing() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let store = store(&server, FailurePolicy::FailClosed).await;
    // One per second, sent within 100 ms (the default): a reservation
    // behind an unanswered admission waits 1.1 s and asks to move up at 1 s.
    let limiter = layer(1, Duration::from_secs(1));
    let key = Key::from("moving-up");
    let started = Instant::now();
    store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .unwrap();
    let reserved = tokio::spawn({
        let (store, key, limits) = (store.clone(), key.clone(), limiter.limits().clone());
        async move { store.acquire(key, 1, &limits).await }
    });
    let log = &store.redis_keys(&key, limiter.limits())[0];
    server.wait_for_members(log, 2).await;
    // Redis stalls over the move up: its call times out, and may still run
    // once Redis is back, moving the reservation to a slot the worker does
    // not know. So the request fails as the policy says, at once.
    tokio::time::sleep_until(started + Duration::from_millis(900)).await;
    let blocker = block_server(&server, 1.0).await;
    let error = reserved.await.unwrap().expect_err("refused");
    let failed_after = started.elapsed();
    assert!(
        failed_after < Duration::from_secs(1) + TIMEOUT + SLACK,
        "{failed_after:?}"
    );
    let error = error
        .downcast_ref::<RedisStoreError>()
        .expect("typed error");
    assert_eq!(error.kind(), RedisStoreErrorKind::Timeout);
    blocker.join().unwrap();
    // What the late call recorded is removed with the reservation.
    server.wait_for_members(log, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slower_than_the_timeout_fails_open_or_falls_back_as_configured() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let open = store(&server, FailurePolicy::FailOpen).await;
    let fallback = store(&server, FailurePolicy::LocalFallback { share: 0.5 }).await;
    let limiter = layer(1_000, Duration::from_secs(1));
    let key = Key::from("slow");
    open.acquire(key.clone(), 1, limiter.limits())
        .await
        .unwrap();
    fallback
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .unwrap();

    let blocker = block_server(&server, 1.0).await;
    let started = Instant::now();
    let (opened, fell_back) = tokio::join!(
        open.acquire(key.clone(), 1, limiter.limits()),
        fallback.acquire(key.clone(), 1, limiter.limits()),
    );
    assert!(
        started.elapsed() < TIMEOUT + SLACK,
        "{:?}",
        started.elapsed()
    );
    // Fail open admits without a record (id 0); the fallback admits locally.
    assert_eq!(opened.expect("admitted").id(), 0);
    fell_back.expect("admitted by the local limiter");
    blocker.join().unwrap();
}

/// Records the names of events.
#[derive(Clone, Default)]
struct EventNames(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventNames {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0
            .lock()
            .unwrap()
            .push(event.metadata().name().to_owned());
    }
}

/// Collects what a fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn store_errors_are_reported_with_key_and_kind_but_no_url() {
    let Some(mut server) = support::RedisServer::start() else {
        return;
    };
    let captured = Captured::default();
    let writer = captured.clone();
    let names = EventNames::default();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || writer.clone()),
        )
        .with(names.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = RedisStore::builder(format!(
        "redis://default:hunter2@127.0.0.1:{}",
        server.port()
    ))
    .timeout(TIMEOUT)
    .build()
    .await;
    // A server without a password refuses this AUTH: the error must not
    // quote the password either. Then connect without one.
    let store = match store {
        Ok(store) => store,
        Err(error) => {
            assert!(!error.to_string().contains("hunter2"), "{error}");
            RedisStore::builder(server.url())
                .timeout(TIMEOUT)
                .build()
                .await
                .unwrap()
        }
    };
    let limiter = layer(10, Duration::from_secs(1));
    server.kill();
    let _ = store
        .acquire(Key::from("tenant-3"), 1, limiter.limits())
        .await;
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        names
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|name| name == "store_error"),
        "no store_error event: {output}"
    );
    let event = output
        .lines()
        .find(|line| line.contains("could not decide"))
        .unwrap_or_else(|| panic!("no store_error event: {output}"));
    assert!(event.contains(r#""target":"tower_quota""#), "{event}");
    assert!(event.contains(r#""key":"tenant-3""#), "{event}");
    assert!(event.contains(r#""error.kind":"#), "{event}");
    assert!(
        !output.contains("hunter2") && !output.contains("redis://"),
        "{output}"
    );
}

#[tokio::test]
async fn a_store_that_serves_without_redis_starts_while_redis_is_down() {
    let Some(mut server) = support::RedisServer::start() else {
        return;
    };
    server.kill();
    // Fail-closed refuses to start: nothing could be served.
    assert!(
        RedisStore::builder(server.url())
            .timeout(TIMEOUT)
            .build()
            .await
            .is_err()
    );
    // The local fallback starts, serves its share, and uses Redis once it is up.
    let store = RedisStore::builder(server.url())
        .timeout(TIMEOUT)
        .failure_policy(FailurePolicy::LocalFallback { share: 0.5 })
        .build()
        .await
        .expect("starts without Redis");
    let limiter = layer(1_000, Duration::from_secs(1));
    let key = Key::from("late-redis");
    store
        .acquire(key.clone(), 1, limiter.limits())
        .await
        .expect("served by the local fallback");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        store
            .acquire(key.clone(), 1, limiter.limits())
            .await
            .unwrap();
        let mut connection = server.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*late-redis*")
            .query(&mut connection)
            .unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis was never used after it came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A timeout too long for the clock (`Duration::MAX`: calls never time
/// out) still suspends Redis for one timeout period after a failure, and
/// the request meets the failure policy instead of a panic.
#[tokio::test]
async fn a_timeout_too_long_for_the_clock_suspends_redis_without_a_panic() {
    let Some(mut server) = support::RedisServer::start() else {
        return;
    };
    server.kill();
    let store = RedisStore::builder(server.url())
        .timeout(Duration::MAX)
        .failure_policy(FailurePolicy::LocalFallback { share: 0.5 })
        .build()
        .await
        .expect("starts without Redis");
    let limiter = layer(1_000, Duration::from_secs(1));
    for _ in 0..2 {
        store
            .acquire(Key::from("far"), 1, limiter.limits())
            .await
            .expect("served by the local fallback");
    }
}
