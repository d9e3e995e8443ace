//! The events each layer emits, with their stable names and fields, and the
//! layers stacked: a gate that opens still releases its waiters through the
//! pacing below.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::config::{KeyConfig, ProviderKey};
use tower_quota::replay::ReplayBody;
use tower_quota::{
    BoxError, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer, telemetry,
};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// One captured event: its name, target and fields as strings.
#[derive(Debug, Clone)]
struct Event {
    name: String,
    target: String,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Event>>>);

impl Capture {
    fn named(&self, name: &str) -> Vec<Event> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.name == name)
            .cloned()
            .collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    /// A span is captured as an event named `span:<name>` with the fields
    /// it was created with.
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Event {
            name: format!("span:{}", attrs.metadata().name()),
            target: attrs.metadata().target().to_owned(),
            fields,
        });
    }

    /// Fields recorded later are captured as `record:<field names>`.
    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        values.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Event {
            name: "record".to_owned(),
            target: String::new(),
            fields,
        });
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Event {
            name: event.metadata().name().to_owned(),
            target: event.metadata().target().to_owned(),
            fields,
        });
    }
}

/// A provider below the two retrying layers whose `n`-th call (from 1) is
/// answered by `answer(n)`.
fn scripted(
    answer: fn(u32) -> http::Response<()>,
) -> impl tower::Service<
    http::Request<ReplayBody<ReplayBody<Empty<Bytes>>>>,
    Response = http::Response<()>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send {
    let calls = Arc::new(Mutex::new(0));
    service_fn(
        move |_: http::Request<ReplayBody<ReplayBody<Empty<Bytes>>>>| {
            let calls = calls.clone();
            async move {
                let call = {
                    let mut calls = calls.lock().unwrap();
                    *calls += 1;
                    *calls
                };
                Ok::<_, BoxError>(answer(call))
            }
        },
    )
}

/// A response with `status` and, if given, `Retry-After: seconds`.
fn answer(status: u16, retry_after: Option<&'static str>) -> http::Response<()> {
    let mut builder = http::Response::builder().status(status);
    if let Some(seconds) = retry_after {
        builder = builder.header("retry-after", seconds);
    }
    builder.body(()).unwrap()
}

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    (capture, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(start_paused = true)]
async fn pacing_emits_rate_pacing_active_only_for_requests_that_waited() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    let service = ServiceBuilder::new()
        .layer(
            SlidingWindowLayer::new(2, Duration::from_secs(1))
                .unwrap()
                .key_fn(|_: &u32| "provider-a"),
        )
        .service(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    for i in 0..3 {
        service.clone().oneshot(i).await.unwrap();
    }
    let paced = events.named(telemetry::RATE_PACING_ACTIVE);
    assert_eq!(paced.len(), 1, "only the third request waited: {paced:?}");
    let event = &paced[0];
    assert_eq!(event.target, telemetry::TARGET);
    assert_eq!(event.fields["key"], "provider-a");
    assert_eq!(event.fields["wait_ms"], "1001");
    assert_eq!(event.fields["queued"], "1");
    assert_eq!(event.fields["cost"], "1");
    assert_eq!(event.fields["quota"], "2/1s", "the quota that made it wait");
}

#[tokio::test(start_paused = true)]
async fn overload_emits_rate_limit_queue_overloaded() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    let service = ServiceBuilder::new()
        .layer(
            SlidingWindowLayer::new(1, Duration::from_secs(10))
                .unwrap()
                .max_wait(Duration::from_secs(1)),
        )
        .service(service_fn(|_: u32| async { Ok::<_, BoxError>(()) }));
    service.clone().oneshot(0).await.unwrap();
    service.oneshot(1).await.unwrap_err();
    let overloaded = events.named(telemetry::RATE_LIMIT_QUEUE_OVERLOADED);
    assert_eq!(overloaded.len(), 1);
    assert_eq!(overloaded[0].fields["key"], "global");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_response_emits_rate_limit_hit_and_gate_closed() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    let calls = Arc::new(Mutex::new(0));
    let provider = service_fn(move |_: http::Request<ReplayBody<Empty<Bytes>>>| {
        let calls = calls.clone();
        async move {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            let response = if *calls == 1 {
                http::Response::builder()
                    .status(429)
                    .header("retry-after", "3")
                    .header("x-ratelimit-remaining", "0")
                    .header("authorization", "Bearer secret-token")
                    .body(())?
            } else {
                http::Response::new(())
            };
            Ok::<_, BoxError>(response)
        }
    });
    let service = ServiceBuilder::new()
        .layer(RetryAfterLayer::new().spread(Duration::ZERO))
        .service(provider);
    let request = http::Request::get("https://api.example.com/v1/items?api_key=secret-key")
        .header("authorization", "Bearer secret-token")
        .body(Empty::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);

    let hits = events.named(telemetry::RATE_LIMIT_HIT);
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0].fields;
    assert_eq!(hit["http.response.status_code"], "429");
    assert_eq!(hit["retry_after_ms"], "3000");
    assert_eq!(hit["attempt"], "1");
    assert_eq!(hit["outcome"], "resend");
    let closed = events.named(telemetry::GATE_CLOSED);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].fields["until_ms"], "3000");
    assert_eq!(closed[0].fields["reason"], "throttled");
    assert_eq!(
        closed[0].fields["key"], "api.example.com",
        "a gate per host by default"
    );

    // No secret reaches the logs.
    let all = format!("{:?}", events.0.lock().unwrap());
    assert!(!all.contains("secret"), "{all}");
}

#[tokio::test(start_paused = true)]
async fn waiters_released_by_a_gate_are_still_paced_below_it() {
    let _turn = crate::support::alone().await;
    let start = Instant::now();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let record = arrivals.clone();
    let provider = service_fn(move |_: http::Request<ReplayBody<Empty<Bytes>>>| {
        let record = record.clone();
        async move {
            let mut arrivals = record.lock().unwrap();
            arrivals.push(Instant::now() - start);
            let response = if arrivals.len() == 1 {
                http::Response::builder()
                    .status(429)
                    .header("retry-after", "2")
                    .body(())?
            } else {
                http::Response::new(())
            };
            Ok::<_, BoxError>(response)
        }
    });
    let service = ServiceBuilder::new()
        .layer(RetryAfterLayer::new().spread(Duration::from_millis(50)))
        .layer(
            SlidingWindowLayer::new(5, Duration::from_secs(1))
                .unwrap()
                .safety_margin(Duration::ZERO)
                .unwrap(),
        )
        .service(provider);
    let first = tokio::spawn(
        service
            .clone()
            .oneshot(http::Request::get("/").body(Empty::new()).unwrap()),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut handles = vec![first];
    for _ in 0..14 {
        handles.push(tokio::spawn(
            service
                .clone()
                .oneshot(http::Request::get("/").body(Empty::new()).unwrap()),
        ));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap().unwrap().status(), 200);
    }
    let mut times = arrivals.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 16);
    // The gate held everyone for 2 s, then the sliding window let at most 5
    // through in any second.
    assert!(
        times[1..].iter().all(|t| *t >= Duration::from_secs(2)),
        "{times:?}"
    );
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 5,
            "{in_window} in the second after {t:?}: {times:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_hit_names_the_attempt_of_the_whole_stack() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    // A bare 503: the backoff layer above retries it; its retry is
    // throttled: the gate below re-sends it.
    let provider = scripted(|call| match call {
        1 => answer(503, None),
        2 => answer(429, Some("1")),
        _ => answer(200, None),
    });
    let service = ServiceBuilder::new()
        .layer(tower_quota::JitterBackoffLayer::new())
        .layer(RetryAfterLayer::new().spread(Duration::ZERO))
        .service(provider);
    let response = service
        .oneshot(http::Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let hits = events.named(telemetry::RATE_LIMIT_HIT);
    assert_eq!(hits.len(), 1, "{hits:?}");
    // The throttled request was the stack's second attempt, though the
    // first that RetryAfterLayer itself sent.
    assert_eq!(hits[0].fields["attempt"], "2");
}

/// A provider whose window runs later than the client's (its clock runs 3%
/// slow: its "1 s" lasts 1.03 s) refuses requests the client's log had room
/// for. Each episode of refusals widens the key's margin and logs
/// `pacing_drift` with the gap; after a few, the refusals stop. The first
/// is the fresh key's probe past its first window, which a sliding-window
/// counter would refuse as well: the key also goes evenly spaced, and may
/// need no more than that one widening.
#[tokio::test(start_paused = true)]
async fn a_provider_whose_window_runs_late_makes_the_margin_widen_until_its_429s_stop() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    let start = Instant::now();
    let provider_window = Duration::from_millis(1_030);
    let accepted: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let statuses: Arc<Mutex<Vec<(Duration, u16)>>> = Arc::default();
    let provider = {
        let accepted = accepted.clone();
        let statuses = statuses.clone();
        service_fn(move |_: http::Request<()>| {
            let accepted = accepted.clone();
            let statuses = statuses.clone();
            async move {
                let now = Instant::now();
                let status = {
                    let mut log = accepted.lock().unwrap();
                    log.retain(|at| *at + provider_window > now);
                    if log.len() < 10 {
                        log.push(now);
                        200
                    } else {
                        429
                    }
                };
                statuses.lock().unwrap().push((now - start, status));
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder().status(status).body(()).unwrap(),
                )
            }
        })
    };
    let service = ServiceBuilder::new()
        .layer(
            SlidingWindowLayer::new(10, Duration::from_secs(1))
                .unwrap()
                .usage_fn(tower_quota::HttpFeedback),
        )
        .service(provider);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                let request = http::Request::get("/").body(()).unwrap();
                service.clone().oneshot(request).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let refused: Vec<Duration> = statuses
        .iter()
        .filter(|(_, status)| *status == 429)
        .map(|(at, _)| *at)
        .collect();
    assert!(!refused.is_empty(), "a 3% slower provider refuses at first");
    assert!(
        refused.len() <= 20,
        "the margin adapts after a few refusals: {} of {} refused",
        refused.len(),
        statuses.len()
    );
    let last_refusal = *refused.last().unwrap();
    let after = statuses.iter().filter(|(at, _)| *at > last_refusal).count();
    assert!(
        after >= 150,
        "the refusals stop early: the last at {last_refusal:?}, {after} requests after it"
    );
    let drift = events.named(telemetry::PACING_DRIFT);
    assert!(
        !drift.is_empty() && drift.len() <= 3,
        "one pacing_drift per episode of refusals: {drift:?}"
    );
    assert_eq!(drift[0].fields["key"], "global");
    assert_eq!(drift[0].fields["event"], telemetry::PACING_DRIFT);
    let widened: u64 = drift
        .iter()
        .map(|e| e.fields["gap_ms"].parse::<u64>().unwrap())
        .sum();
    assert!(widened >= 10, "the margin widened: {drift:?}");
}

/// Tokens in paths (`/bot<token>/…`), query strings, authorization headers
/// and API keys reach no event, no span field and no key, through the whole
/// stack with a path key, a host key and a header key.
#[tokio::test(start_paused = true)]
async fn no_secret_reaches_events_spans_or_keys() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    let provider = scripted(|call| match call {
        1 => answer(429, Some("1")),
        2 => answer(503, Some("1")),
        _ => answer(200, Some("1")),
    });
    let by_path = ProviderKey::new("telegram", KeyConfig::Path);
    let by_api_key = ProviderKey::new("telegram", "header:x-api-key".parse().unwrap());
    let service = ServiceBuilder::new()
        .layer(JitterBackoffLayer::new().max_attempts(4).unwrap())
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new())
        .layer(
            SlidingWindowLayer::new(1, Duration::from_secs(1))
                .unwrap()
                .key_fn(by_path)
                .usage_fn(HttpFeedback),
        )
        .layer(
            SlidingWindowLayer::new(1, Duration::from_secs(1))
                .unwrap()
                .key_fn(by_api_key),
        )
        .service(provider);
    let token = "bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
    for _ in 0..2 {
        let request = http::Request::post(format!(
            "https://api.telegram.org/{token}/sendMessage?api_key=secret-key"
        ))
        .header("authorization", "Bearer secret-token")
        .header("x-api-key", "sk-live-secret")
        .header("idempotency-key", "send-1")
        .body(Empty::new())
        .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }

    let spans = events.named("span:jitter_backoff");
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0].fields["url.template"], "/{}/sendMessage");
    let keys: Vec<String> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|event| event.fields.get("key").cloned())
        .collect();
    assert!(
        keys.iter()
            .any(|key| key.starts_with("telegram:/{}/sendMessage:")),
        "the path key was in events: {keys:?}"
    );
    assert!(
        keys.iter().any(|key| key == "api.telegram.org"),
        "the host key was in events: {keys:?}"
    );
    let all = format!("{:?}", events.0.lock().unwrap());
    for secret in ["secret", "123456", "AAHdq", "sk-live", "Bearer", "api_key"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
}

/// A provider announcing a smaller quota than the configured one: one
/// `quota_mismatch` event per change, with both sizes.
#[tokio::test(start_paused = true)]
async fn a_smaller_announced_quota_is_one_quota_mismatch_event() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    let provider = service_fn(|_: http::Request<()>| async {
        let response = http::Response::builder()
            .header("ratelimit-policy", "\"default\";q=20;w=1")
            .body(())?;
        Ok::<_, BoxError>(response)
    });
    let service = ServiceBuilder::new()
        .layer(
            SlidingWindowLayer::new(50, Duration::from_secs(1))
                .unwrap()
                .usage_fn(HttpFeedback),
        )
        .service(provider);
    for _ in 0..3 {
        let request = http::Request::get("https://api.example.com/v1")
            .body(())
            .unwrap();
        service.clone().oneshot(request).await.unwrap();
    }
    let mismatches = events.named(telemetry::QUOTA_MISMATCH);
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    let fields = &mismatches[0].fields;
    assert_eq!(fields["quota"], "50/1s");
    assert_eq!(fields["announced"], "20");
    assert_eq!(fields["held_to"], "50", "reported, not followed by default");
    assert_eq!(fields["event"], "quota_mismatch");
}

/// Pacing above the layer that re-sends throttled requests lets the
/// re-sent ones skip it: said once, as a `layer_order` WARN naming the
/// fix, as soon as a response carries what the server said (its quota
/// here, a refusal at the latest). The README's order says nothing.
#[tokio::test(start_paused = true)]
async fn pacing_above_retry_after_is_one_layer_order_warning() {
    let _turn = crate::support::alone().await;
    let (events, _guard) = capture();
    let provider = service_fn(|_: http::Request<ReplayBody<Empty<Bytes>>>| async {
        let mut response = answer(200, None);
        response.headers_mut().insert(
            "x-ratelimit-remaining",
            http::HeaderValue::from_static("40"),
        );
        Ok::<_, BoxError>(response)
    });
    let pacing = || {
        SlidingWindowLayer::new(50, Duration::from_secs(1))
            .unwrap()
            .usage_fn(HttpFeedback)
    };
    let request = || {
        http::Request::get("https://api.example.com/v1")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let readme_order = ServiceBuilder::new()
        .layer(RetryAfterLayer::new())
        .layer(pacing())
        .service(provider);
    for _ in 0..2 {
        readme_order.clone().oneshot(request()).await.unwrap();
    }
    assert!(events.named(telemetry::LAYER_ORDER).is_empty());

    let pacing_outermost = ServiceBuilder::new()
        .layer(pacing())
        .layer(RetryAfterLayer::new())
        .service(provider);
    for _ in 0..3 {
        pacing_outermost.clone().oneshot(request()).await.unwrap();
    }
    let warnings = events.named(telemetry::LAYER_ORDER);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].fields["below"], "RetryAfterLayer");
    assert_eq!(warnings[0].fields["event"], "layer_order");
}
