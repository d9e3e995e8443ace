use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};

use super::*;
use crate::sliding_window::{OverloadReason, Overloaded};
use crate::{BoxError, Key};

/// What the fake provider saw: the most requests in flight at once, and
/// the order requests arrived in (by their `x-n` header).
#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    order: Mutex<Vec<u32>>,
}

/// A provider that takes `latency` to answer each request with `body`, and
/// counts what is in flight until the answer (not the body: the layer is
/// what holds the body's slot).
#[allow(clippy::type_complexity)]
fn provider(
    latency: Duration,
    body: &'static str,
) -> (
    impl Service<
        Request<Empty<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send,
    Arc<Seen>,
) {
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    let service = service_fn(move |request: Request<Empty<Bytes>>| {
        let seen = record.clone();
        async move {
            let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if let Some(n) = request.headers().get("x-n") {
                let n = n.to_str().unwrap().parse().unwrap();
                seen.order.lock().unwrap().push(n);
            }
            tokio::time::sleep(latency).await;
            seen.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(
                body.as_bytes(),
            ))))
        }
    });
    (service, seen)
}

fn request(n: u32) -> Request<Empty<Bytes>> {
    Request::get("http://api.test/")
        .header("x-n", n)
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn at_most_max_in_flight_reach_the_provider() {
    let (provider, seen) = provider(Duration::from_millis(100), "ok");
    let layer = ConcurrencyLayer::new(5).unwrap();
    let store = layer.get_store().clone();
    let service = tower::ServiceBuilder::new().layer(layer).service(provider);
    let start = Instant::now();
    let calls: Vec<_> = (0..100)
        .map(|n| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = service.oneshot(request(n)).await?;
                response.into_body().collect().await?;
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 5);
    // 100 requests, 5 at a time, 100 ms each.
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    // Waiters took their slots in the order they came.
    let order = seen.order.lock().unwrap().clone();
    assert_eq!(order, (0..100).collect::<Vec<_>>());
    assert!(store.is_empty(), "every slot was given back");
}

#[tokio::test(start_paused = true)]
async fn a_slot_is_held_until_the_body_ends() {
    let (provider, seen) = provider(Duration::from_millis(10), "a body");
    let layer = ConcurrencyLayer::new(1).unwrap();
    let store = layer.get_store().clone();
    let mut service = tower::ServiceBuilder::new().layer(layer).service(provider);
    let first = service
        .ready()
        .await
        .unwrap()
        .call(request(0))
        .await
        .unwrap();
    assert!(first.body().holds_slot());
    assert_eq!(store.in_flight(&Key::GLOBAL), 1);
    // The second request waits while the first body is unread.
    let second = service.ready().await.unwrap().call(request(1));
    let second = tokio::spawn(second);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!second.is_finished());
    assert_eq!(seen.order.lock().unwrap().len(), 1);
    // Reading the first body to its end gives the slot to the second.
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "a body");
    let second = second.await.unwrap().unwrap();
    assert_eq!(seen.order.lock().unwrap().clone(), [0, 1]);
    drop(second);
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_empty_body_gives_its_slot_back_at_once() {
    let service = service_fn(|_: Request<Empty<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new()))
    });
    let layer = ConcurrencyLayer::new(1).unwrap();
    let store = layer.get_store().clone();
    let mut service = tower::ServiceBuilder::new().layer(layer).service(service);
    let mut kept = Vec::new();
    for n in 0..3 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(request(n))
            .await
            .unwrap();
        assert!(!response.body().holds_slot());
        kept.push(response);
    }
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropped_responses_failed_calls_and_dropped_waiters_take_nothing() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = service_fn(move |_: Request<Empty<Bytes>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if n == 1 {
                return Err::<Response<Full<Bytes>>, BoxError>("connection reset".into());
            }
            Ok(Response::new(Full::new(Bytes::from_static(b"x"))))
        }
    });
    let layer = ConcurrencyLayer::new(1).unwrap();
    let store = layer.get_store().clone();
    let mut service = tower::ServiceBuilder::new().layer(layer).service(service);
    // A response dropped unread gives its slot back.
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(0))
        .await
        .unwrap();
    assert_eq!(store.in_flight(&Key::GLOBAL), 1);
    drop(response);
    assert!(store.is_empty());
    // A failed call gives it back.
    let error = service
        .ready()
        .await
        .unwrap()
        .call(request(1))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
    assert!(store.is_empty());
    // A waiter dropped before its turn takes nothing; one dropped in flight
    // gives its slot back.
    let held = service
        .ready()
        .await
        .unwrap()
        .call(request(2))
        .await
        .unwrap();
    let mut waiting = tokio_test::task::spawn(service.ready().await.unwrap().call(request(3)));
    assert!(waiting.poll().is_pending());
    drop(waiting);
    drop(held);
    assert!(store.is_empty());
    let mut in_flight = tokio_test::task::spawn(service.ready().await.unwrap().call(request(4)));
    assert!(in_flight.poll().is_pending());
    assert_eq!(store.in_flight(&Key::GLOBAL), 1);
    drop(in_flight);
    assert!(store.is_empty());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the dropped waiter was never sent"
    );
}

#[tokio::test(start_paused = true)]
async fn keys_have_slots_of_their_own() {
    let (provider, seen) = provider(Duration::from_millis(100), "ok");
    let layer = ConcurrencyLayer::new(2)
        .unwrap()
        .key_fn(|request: &Request<Empty<Bytes>>| {
            Key::from(request.headers()["x-n"].to_str().unwrap().to_owned())
        });
    let service = tower::ServiceBuilder::new().layer(layer).service(provider);
    let start = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|n| tokio::spawn(service.clone().oneshot(request(n))))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 10);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_request_that_waits_past_max_wait_is_refused() {
    let (provider, _seen) = provider(Duration::from_secs(10), "ok");
    let layer = ConcurrencyLayer::new(1)
        .unwrap()
        .max_wait(Duration::from_secs(1));
    let service = tower::ServiceBuilder::new().layer(layer).service(provider);
    let first = tokio::spawn(service.clone().oneshot(request(0)));
    tokio::task::yield_now().await;
    let start = Instant::now();
    let error = service.clone().oneshot(request(1)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let overloaded = error
        .downcast_ref::<Overloaded>()
        .expect("an Overloaded error");
    assert_eq!(
        overloaded.reason(),
        OverloadReason::MaxWait(Duration::from_secs(1))
    );
    assert_eq!(overloaded.queued(), 1);
    first.await.unwrap().unwrap();
}

#[test]
fn zero_slots_are_refused() {
    assert!(ConcurrencyLayer::new(0).is_err());
}

#[tokio::test(start_paused = true)]
async fn idle_keys_give_their_memory_back() {
    let store = MemoryLeases::new();
    let mut leases = Vec::new();
    for n in 0..10_000 {
        let key = Key::from(format!("tenant-{n}"));
        leases.push(store.acquire(key, 3, None).await.unwrap());
    }
    assert_eq!(store.len(), 10_000);
    let grown = store.capacity();
    drop(leases);
    assert!(store.is_empty());
    assert!(
        store.capacity() < grown / 8,
        "{} of {grown}",
        store.capacity()
    );
}
