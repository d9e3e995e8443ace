//! Property tests: RetryAfterLayer (alone, and under JitterBackoffLayer)
//! against a provider that answers with arbitrary, often hostile, headers,
//! on a paused clock.
//!
//! The model is the promise of the module docs: no request waits longer
//! than the stack's `max_wait`; no gate holds requests for longer than
//! `max_pause` from any moment on; once the provider answers normally,
//! traffic resumes within `max_pause` (plus the spread and the caller's own
//! pace); a request is re-sent only when that is safe; nothing panics.
//!
//! `PROPTEST_CASES` sets the number of cases (the fuzz job runs 100,000).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

use super::super::{GateClosed, RetryAfterLayer, ServerSignal};
use crate::backoff::Jitter;
use crate::replay::ReplayBody;
use crate::{BoxError, JitterBackoffLayer};

/// Timer wheels round each sleep up to the next millisecond.
const TOLERANCE: Duration = Duration::from_millis(10);

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// One answer of the provider.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Answer {
    fn response(&self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(self.status).expect("valid status");
        for (name, value) in &self.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        response
    }

    /// A 429 or gRPC RESOURCE_EXHAUSTED: refused without being processed.
    fn refused_unprocessed(&self) -> bool {
        self.status == 429
            || self
                .headers
                .iter()
                .any(|(name, value)| name == "grpc-status" && value == "8")
    }
}

/// Header values that broke gates and waits, and ordinary ones.
fn header() -> impl Strategy<Value = (HeaderName, HeaderValue)> {
    let known: Vec<(&'static str, &'static str)> = vec![
        ("retry-after", "99999999999"),
        ("retry-after", "18446744073709551615"),
        ("retry-after", "18446744073709551616"),
        ("retry-after", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("retry-after", "0"),
        ("retry-after", "1"),
        ("retry-after", "3"),
        ("retry-after", "-1"),
        ("retry-after", "1.5"),
        ("retry-after-ms", "18446744073709551615"),
        ("retry-after-ms", "1500.5"),
        ("retry-after-ms", "250"),
        ("ratelimit", r#""default";r=0;t=4294967296"#),
        ("ratelimit", r#""default";r=0;t=2"#),
        ("ratelimit", r#""default";r=2;t=1"#),
        ("ratelimit", "limit=10, remaining=0, reset=99999999999"),
        ("ratelimit-policy", r#""default";q=10;w=1"#),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-remaining", "3"),
        ("x-ratelimit-remaining", "18446744073709551615"),
        ("x-ratelimit-reset", "1700000060000"),
        ("x-ratelimit-reset", "4070908800"),
        ("x-ratelimit-reset", "2"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("grpc-status", "8"),
        ("grpc-status", "14"),
        ("grpc-retry-pushback-ms", "18446744073709551615"),
        ("grpc-retry-pushback-ms", "100"),
        ("grpc-retry-pushback-ms", "-1"),
        ("content-type", "application/grpc"),
    ];
    let known = proptest::sample::select(known).prop_map(|(name, value)| {
        (
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    });
    let names = quota_headers::HEADER_NAMES;
    let arbitrary = (0..names.len(), "[ -~]{0,24}").prop_filter_map(
        "a valid header value",
        move |(index, value)| {
            let value = HeaderValue::from_str(&value).ok()?;
            Some((HeaderName::from_static(names[index]), value))
        },
    );
    prop_oneof![3 => known, 1 => arbitrary]
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = proptest::sample::select(vec![200u16, 200, 429, 429, 503, 500, 404]);
    (status, proptest::collection::vec(header(), 0..4))
        .prop_map(|(status, headers)| Answer { status, headers })
}

/// What the provider saw: when, and the answer it gave.
type Log = Arc<Mutex<Vec<(Instant, Answer)>>>;

/// A provider that gives the scripted answers in turn, then (or once told
/// to recover) answers `200` without any header.
fn scripted<B>(
    script: Vec<Answer>,
    recovered: Arc<AtomicBool>,
) -> (
    impl Service<Request<ReplayBody<B>>, Response = Response<()>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static,
    Log,
)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let log: Log = Arc::default();
    let record = log.clone();
    let service = service_fn(move |request: Request<ReplayBody<B>>| {
        let script = script.clone();
        let record = record.clone();
        let recovered = recovered.clone();
        async move {
            let at = Instant::now();
            request.into_body().collect().await?;
            let scripted = if recovered.load(Ordering::SeqCst) {
                None
            } else {
                script.lock().expect("script lock").pop_front()
            };
            let answer = scripted.unwrap_or(Answer {
                status: 200,
                headers: Vec::new(),
            });
            let response = answer.response();
            record.lock().expect("log lock").push((at, answer));
            Ok::<_, BoxError>(response)
        }
    });
    (service, log)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

fn get() -> Request<Full<Bytes>> {
    Request::get("/items")
        .body(Full::default())
        .expect("a request")
}

/// An outcome of one request: a response within the wait budget, or a
/// `GateClosed` refusal naming a hold of `max_pause` at most.
fn check_outcome(
    result: &Result<Response<()>, BoxError>,
    waited: Duration,
    max_wait: Duration,
    max_pause: Duration,
) -> Result<(), TestCaseError> {
    prop_assert!(
        waited <= max_wait + TOLERANCE,
        "waited {waited:?} with max_wait {max_wait:?}"
    );
    match result {
        Ok(response) => {
            if let Some(server) = response.extensions().get::<ServerSignal>() {
                prop_assert!(server.waited() <= max_wait + TOLERANCE, "{server:?}");
            }
        }
        Err(error) => {
            let closed = error.downcast_ref::<GateClosed>();
            prop_assert!(closed.is_some(), "unexpected error {error}");
            let closed = closed.expect("checked");
            prop_assert!(closed.wait() <= max_pause, "{closed}");
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct GateSettings {
    max_wait: Duration,
    max_pause: Duration,
    spread: Duration,
    max_attempts: u32,
    pace_by_quota: bool,
}

fn gate_settings() -> impl Strategy<Value = GateSettings> {
    (
        0u64..=90_000,
        1u64..=120,
        0u64..=2_000,
        1u32..=4,
        any::<bool>(),
    )
        .prop_map(
            |(max_wait, max_pause, spread, max_attempts, pace_by_quota)| GateSettings {
                max_wait: Duration::from_millis(max_wait),
                max_pause: Duration::from_secs(max_pause),
                spread: Duration::from_millis(spread),
                max_attempts,
                pace_by_quota,
            },
        )
}

async fn gate_model(
    settings: GateSettings,
    script: Vec<Answer>,
    gaps: Vec<u64>,
) -> Result<(), TestCaseError> {
    let GateSettings {
        max_wait,
        max_pause,
        spread,
        ..
    } = settings;
    let layer = RetryAfterLayer::new()
        .max_wait(max_wait)
        .max_pause(max_pause)
        .expect("max_pause above zero")
        .spread(spread)
        .max_attempts(settings.max_attempts)
        .expect("max_attempts above zero")
        .pace_by_quota_headers(settings.pace_by_quota);
    let gates = layer.gates.clone();
    let recovered = Arc::new(AtomicBool::new(false));
    let (provider, _log) = scripted(script, recovered.clone());
    let service = layer.layer(provider);

    // The hostile phase: requests at arbitrary instants, some together.
    let mut tasks = Vec::new();
    for gap in gaps {
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let result = service.oneshot(get()).await;
            (start.elapsed(), result)
        }));
        let hold = gates.longest_hold(Instant::now());
        prop_assert!(hold <= max_pause, "a gate holds for {hold:?}");
    }
    for task in tasks {
        let (waited, result) = task.await.expect("no panic");
        check_outcome(&result, waited, max_wait, max_pause)?;
        let hold = gates.longest_hold(Instant::now());
        prop_assert!(hold <= max_pause, "a gate holds for {hold:?}");
    }

    // The provider recovers: traffic resumes within the bound.
    recovered.store(true, Ordering::SeqCst);
    let switched = Instant::now();
    let step = Duration::from_secs(1);
    let resumed_by = switched + max_pause + spread + step + TOLERANCE;
    loop {
        let start = Instant::now();
        let result = service.clone().oneshot(get()).await;
        check_outcome(&result, start.elapsed(), max_wait, max_pause)?;
        let hold = gates.longest_hold(Instant::now());
        prop_assert!(hold <= max_pause, "a gate holds for {hold:?}");
        if result.is_ok_and(|response| response.status() == 200) {
            break;
        }
        prop_assert!(
            Instant::now() <= resumed_by,
            "no answer {:?} after the provider recovered",
            Instant::now() - switched
        );
        tokio::time::sleep(step).await;
    }
    prop_assert!(Instant::now() <= resumed_by);
    Ok(())
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// No request waits past `max_wait`, no gate holds past `max_pause`,
    /// traffic resumes within the bound once the provider recovers, and
    /// nothing panics, whatever the provider answers.
    #[test]
    fn gates_bound_every_wait_and_reopen_after_any_answers(
        settings in gate_settings(),
        script in proptest::collection::vec(answer(), 1..12),
        gaps in proptest::collection::vec(
            prop_oneof![Just(0u64), 0u64..20_000],
            1..10,
        ),
    ) {
        paused_runtime().block_on(gate_model(settings, script, gaps))?;
    }
}

#[derive(Debug, Clone)]
struct StackSettings {
    gate: GateSettings,
    backoff_base: Duration,
    jitter: Jitter,
    max_attempts: u32,
    budget: bool,
}

fn stack_settings() -> impl Strategy<Value = StackSettings> {
    let jitter = proptest::sample::select(vec![
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
        Jitter::None,
    ]);
    (
        gate_settings(),
        1u64..=2_000,
        jitter,
        1u32..=6,
        any::<bool>(),
    )
        .prop_map(|(gate, base, jitter, max_attempts, budget)| StackSettings {
            gate,
            backoff_base: Duration::from_millis(base),
            jitter,
            max_attempts,
            budget,
        })
}

/// GET, POST, or POST with an `Idempotency-Key`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Get,
    Post,
    KeyedPost,
}

fn stack_request(kind: Kind) -> Request<Full<Bytes>> {
    let builder = match kind {
        Kind::Get => Request::get("/items"),
        Kind::Post => Request::post("/orders"),
        Kind::KeyedPost => Request::post("/orders").header("idempotency-key", "order-42"),
    };
    builder
        .body(Full::new(Bytes::from_static(b"{\"item\":42}")))
        .expect("a request")
}

async fn stack_model(
    settings: StackSettings,
    kind: Kind,
    script: Vec<Answer>,
) -> Result<(), TestCaseError> {
    let GateSettings {
        max_wait,
        max_pause,
        spread,
        ..
    } = settings.gate;
    let retry_after = RetryAfterLayer::new()
        .max_wait(max_wait)
        .max_pause(max_pause)
        .expect("max_pause above zero")
        .spread(spread)
        .max_attempts(settings.gate.max_attempts)
        .expect("max_attempts above zero")
        .pace_by_quota_headers(settings.gate.pace_by_quota);
    let mut backoff = JitterBackoffLayer::new()
        .backoff(settings.backoff_base, settings.backoff_base * 8)
        .expect("a valid backoff")
        .jitter(settings.jitter)
        .max_attempts(settings.max_attempts)
        .expect("max_attempts above zero");
    if !settings.budget {
        backoff = backoff.no_budget();
    }
    let recovered = Arc::new(AtomicBool::new(false));
    let (provider, log) = scripted(script, recovered);
    let service = tower::ServiceBuilder::new()
        .layer(backoff)
        .layer(retry_after)
        .service(provider);

    let start = Instant::now();
    let result = service.oneshot(stack_request(kind)).await;
    check_outcome(&result, start.elapsed(), max_wait, max_pause)?;

    let log = log.lock().expect("log lock");
    prop_assert!(
        log.len() <= settings.max_attempts as usize,
        "{} attempts with max_attempts {}",
        log.len(),
        settings.max_attempts
    );
    if matches!(kind, Kind::Post) {
        // Sent again only after a refusal the server did not process.
        for pair in log.windows(2) {
            prop_assert!(
                pair[0].1.refused_unprocessed(),
                "a POST re-sent after {:?}",
                pair[0].1
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(2_000))]

    /// JitterBackoff over RetryAfter, driven by arbitrary answers: one
    /// waiting budget (`max_wait`) for the whole stack, one attempt limit,
    /// no unsafe re-send, no panic.
    #[test]
    fn the_stack_waits_within_max_wait_whatever_the_headers(
        settings in stack_settings(),
        kind in prop_oneof![Just(Kind::Get), Just(Kind::Post), Just(Kind::KeyedPost)],
        script in proptest::collection::vec(answer(), 0..8),
    ) {
        paused_runtime().block_on(stack_model(settings, kind, script))?;
    }
}
