use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::replay::ReplayBody;
use crate::{BoxError, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer};

/// Everything recorded: a snapshot drains what it reads, so take one per test.
type Recorded = Vec<(
    CompositeKey,
    Option<::metrics::Unit>,
    Option<::metrics::SharedString>,
    DebugValue,
)>;

/// The value of series `name` with exactly `labels`, if recorded.
fn value<'a>(
    recorded: &'a Recorded,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    recorded
        .iter()
        .find(|(key, _, _, _)| {
            let key = key.key();
            let mut found: Vec<(String, String)> = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            let mut wanted: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            found.sort();
            wanted.sort();
            key.name() == name && found == wanted
        })
        .map(|(_, _, _, value)| value)
}

fn counter(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(recorded, name, labels) {
        Some(DebugValue::Counter(count)) => *count,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn histogram(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match value(recorded, name, labels) {
        Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_paced_request_records_its_wait() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = ::metrics::set_default_local_recorder(&recorder);

    let service = ServiceBuilder::new()
        .layer(
            SlidingWindowLayer::new(1, Duration::from_secs(1))
                .unwrap()
                .safety_margin(Duration::ZERO)
                .unwrap(),
        )
        .service(service_fn(|_request: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        }));
    service
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    service.oneshot(http::Request::new(())).await.unwrap();

    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        histogram(
            &recorded,
            REQUEST_TIME_IN_QUEUE_SECONDS,
            &[("key", "global"), ("class", "interactive")]
        ),
        [0.0, 1.0]
    );
    assert_eq!(
        counter(
            &recorded,
            RATE_LIMITING_REQUESTS_TOTAL,
            &[
                ("key", "global"),
                ("result", "acquired"),
                ("class", "interactive")
            ]
        ),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_is_counted_with_its_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = ::metrics::set_default_local_recorder(&recorder);

    let service = ServiceBuilder::new()
        .layer(
            SlidingWindowLayer::new(1, Duration::from_secs(1))
                .unwrap()
                .max_wait(Duration::from_millis(100)),
        )
        .service(service_fn(|_request: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        }));
    service
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert!(service.oneshot(http::Request::new(())).await.is_err());

    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter(
            &recorded,
            REFUSED_TOTAL,
            &[("key", "global"), ("reason", "max_wait")]
        ),
        1
    );
    for (result, count) in [("acquired", 1), ("rejected", 1)] {
        assert_eq!(
            counter(
                &recorded,
                RATE_LIMITING_REQUESTS_TOTAL,
                &[
                    ("key", "global"),
                    ("result", result),
                    ("class", "interactive")
                ]
            ),
            count,
            "{result}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_response_records_throttle_gate_and_gate_wait() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = ::metrics::set_default_local_recorder(&recorder);

    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(RetryAfterLayer::new().spread(Duration::ZERO))
        .service(service_fn(
            move |_request: http::Request<ReplayBody<Empty<Bytes>>>| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let response = if call == 0 {
                        http::Response::builder()
                            .status(429)
                            .header("retry-after", "2")
                            .body(())?
                    } else {
                        http::Response::new(())
                    };
                    Ok::<_, BoxError>(response)
                }
            },
        ));
    let response = service
        .oneshot(http::Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter(
            &recorded,
            THROTTLED_TOTAL,
            &[("key", "global"), ("status", "429"), ("outcome", "resend")]
        ),
        1
    );
    assert_eq!(
        counter(
            &recorded,
            GATE_CLOSED_TOTAL,
            &[("key", "global"), ("reason", "throttled")]
        ),
        1
    );
    assert_eq!(
        histogram(&recorded, GATE_WAIT_SECONDS, &[("key", "global")]),
        [0.0, 2.0]
    );
}

#[tokio::test(start_paused = true)]
async fn retries_and_exhaustion_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = ::metrics::set_default_local_recorder(&recorder);

    let service = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .backoff(Duration::from_millis(100), Duration::from_millis(100))
                .unwrap()
                .jitter(crate::backoff::Jitter::None)
                .max_attempts(2)
                .unwrap(),
        )
        .service(service_fn(
            |_request: http::Request<ReplayBody<Empty<Bytes>>>| async {
                Ok::<_, BoxError>(http::Response::builder().status(503).body(())?)
            },
        ));
    let response = service
        .oneshot(http::Request::new(Empty::new()))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter(&recorded, RETRIES_TOTAL, &[("reason", "transient")]),
        1
    );
    assert_eq!(
        histogram(&recorded, BACKOFF_SECONDS, &[("reason", "transient")]),
        [0.1]
    );
    assert_eq!(histogram(&recorded, REQUEST_RESEND_COUNT, &[]), [1.0]);
    assert_eq!(
        counter(
            &recorded,
            RETRIES_EXHAUSTED_TOTAL,
            &[("reason", "max_attempts")]
        ),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn circuit_transitions_and_fast_failures_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = ::metrics::set_default_local_recorder(&recorder);

    let service = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new().consecutive_failures(Some(1)))
        .service(service_fn(|_request: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::builder().status(503).body(())?)
        }));
    service
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert!(service.oneshot(http::Request::new(())).await.is_err());

    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter(
            &recorded,
            CIRCUIT_TRANSITIONS_TOTAL,
            &[("key", "global"), ("state", "open")]
        ),
        1
    );
    assert_eq!(
        counter(
            &recorded,
            REFUSED_TOTAL,
            &[("key", "global"), ("reason", "circuit_open")]
        ),
        1
    );
}

#[test]
fn stores_report_their_errors_and_every_series_is_described() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    ::metrics::with_local_recorder(&recorder, || {
        describe();
        store_error(&Key::from_static("openai"), "timeout");
    });
    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter(
            &recorded,
            STORE_ERRORS_TOTAL,
            &[("key", "openai"), ("kind", "timeout")]
        ),
        1
    );
    let described = recorded
        .iter()
        .filter(|(_, _, description, _)| description.is_some())
        .count();
    assert_eq!(described, 1, "descriptions attach to recorded series");
}

fn gauge(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(recorded, name, labels) {
        Some(DebugValue::Gauge(value)) => value.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[test]
fn a_learned_burst_and_rate_are_gauges() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let key = Key::from_static("api");
    ::metrics::with_local_recorder(&recorder, || {
        rate_adapted(&key, Some(1), Duration::from_millis(50));
    });
    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(gauge(&recorded, PACING_BURST, &[("key", "api")]), 1.0);
    assert_eq!(gauge(&recorded, PACING_RATE, &[("key", "api")]), 20.0);
    ::metrics::with_local_recorder(&recorder, || {
        rate_adapted(&key, None, Duration::from_millis(50));
    });
    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        gauge(&recorded, PACING_RATE, &[("key", "api")]),
        0.0,
        "spacing off"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn batches_record_their_items_by_what_closed_them() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = ::metrics::set_default_local_recorder(&recorder);

    let batcher = tower_layer::Layer::layer(
        &crate::batch::BatchLayer::new(
            |items: &[u32]| http::Request::new(items.to_vec()),
            |response: http::Response<Vec<u32>>, _items: usize| {
                std::future::ready(Ok::<_, BoxError>(response.into_body()))
            },
        )
        .max_items(2)
        .unwrap(),
        service_fn(|request: http::Request<Vec<u32>>| async move {
            Ok::<_, BoxError>(http::Response::new(request.into_body()))
        }),
    );
    let (a, b, c) = tokio::join!(
        batcher.clone().oneshot(1),
        batcher.clone().oneshot(2),
        batcher.clone().oneshot(3),
    );
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 2, 3));

    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(
        histogram(&recorded, BATCH_ITEMS, &[("reason", "max_items")]),
        [2.0]
    );
    assert_eq!(
        histogram(&recorded, BATCH_ITEMS, &[("reason", "max_delay")]),
        [1.0]
    );
}

#[cfg(feature = "hyper-util")]
#[tokio::test(flavor = "current_thread")]
async fn connections_record_opened_open_and_setup_time() {
    use hyper_util::client::legacy::connect::HttpConnector;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = ::metrics::set_default_local_recorder(&recorder);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri: http::Uri = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let connector = crate::connect::TrackConnections::new(HttpConnector::new());
    let first = connector.clone().oneshot(uri.clone()).await.unwrap();
    let second = connector.clone().oneshot(uri).await.unwrap();
    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(counter(&recorded, CONNECTIONS_OPENED_TOTAL, &[]), 2);
    assert_eq!(gauge(&recorded, CONNECTIONS_OPEN, &[]), 2.0);
    assert_eq!(histogram(&recorded, CONNECTION_SETUP_SECONDS, &[]).len(), 2);
    drop((first, second));
    let recorded = snapshotter.snapshot().into_vec();
    assert_eq!(gauge(&recorded, CONNECTIONS_OPEN, &[]), 0.0);
    assert_eq!(connector.stats().open(), 0);
    assert_eq!(connector.stats().opened(), 2);
}
