//! "Why was request X late?", answered from the JSON log alone: every
//! event of a logical request carries its stable name, the request's id
//! and the attempt under way, and the waits and reasons say the rest.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::replay::ReplayBody;
use tower_quota::{
    BoxError, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer,
};

/// The JSON lines written so far.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

type Body = ReplayBody<ReplayBody<Empty<Bytes>>>;

/// A provider that answers `/v1/items/0` first with a 429 asking for a
/// second, then with a 503, then with a 200, and every other request with
/// a 200.
fn provider() -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<()>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send {
    let calls = Arc::new(Mutex::new(0u32));
    service_fn(move |request: http::Request<Body>| {
        let calls = calls.clone();
        async move {
            let call = if request.uri().path() == "/v1/items/0" {
                let mut calls = calls.lock().unwrap();
                *calls += 1;
                *calls
            } else {
                u32::MAX
            };
            let response = match call {
                1 => http::Response::builder()
                    .status(429)
                    .header("retry-after", "1")
                    .body(())?,
                2 => http::Response::builder().status(503).body(())?,
                _ => http::Response::new(()),
            };
            Ok::<_, BoxError>(response)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn one_requests_waits_and_attempts_are_listed_from_the_json_log() {
    let _turn = crate::support::alone().await;
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let service = ServiceBuilder::new()
        .layer(JitterBackoffLayer::new().max_attempts(4).unwrap())
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
        .layer(
            SlidingWindowLayer::new(2, Duration::from_secs(1))
                .unwrap()
                .usage_fn(HttpFeedback),
        )
        .service(provider());
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..3 {
        let request = http::Request::get(format!("https://api.example.com/v1/items/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        requests.spawn(service.clone().oneshot(request));
    }
    while let Some(response) = requests.join_next().await {
        assert_eq!(response.unwrap().unwrap().status(), 200);
    }

    let lines = log.lines();
    let event = |line: &Value| line["fields"]["event"].as_str().map(str::to_owned);
    // Request X: the one the provider throttled.
    let throttled = lines
        .iter()
        .find(|line| event(line).as_deref() == Some("rate_limit_hit"))
        .expect("a rate_limit_hit event");
    let x = throttled["span"]["request_id"].clone();
    assert!(x.is_u64(), "{throttled}");
    // `jq 'select(.span.request_id == X)'`: request X's events, in order.
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|line| line["span"]["request_id"] == x && event(line).is_some())
        .collect();
    let story: Vec<(String, u64)> = mine
        .iter()
        .map(|line| {
            let attempt = line["span"]["attempt"]
                .as_u64()
                .expect("every event names its attempt");
            (event(line).unwrap(), attempt)
        })
        .collect();
    println!("request {x}: {story:?}");
    // Throttled on its first attempt, which closed the gate; a 503 on
    // the second, retried after a backoff; the third waited for room in
    // the window (the other requests had spent it) and went.
    let has = |name: &str, attempt: u64| {
        story
            .iter()
            .any(|(event, number)| event == name && *number == attempt)
    };
    assert!(has("rate_limit_hit", 1), "{story:?}");
    assert!(has("gate_closed", 1), "{story:?}");
    assert!(has("server_error_retry", 2), "{story:?}");
    assert!(
        story.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "attempts in order: {story:?}"
    );
    assert_eq!(story.last().unwrap().1, 3, "{story:?}");
    // Each wait says how long and why.
    for line in &mine {
        let fields = &line["fields"];
        match event(line).as_deref() {
            Some("rate_limit_hit") => {
                assert_eq!(fields["retry_after_ms"], 1000, "{line}");
                assert_eq!(fields["outcome"], "resend", "{line}");
            }
            Some("gate_closed") => {
                assert!(fields["until_ms"].is_u64(), "{line}");
                assert_eq!(fields["reason"], "throttled", "{line}");
            }
            Some("rate_pacing_active") => assert!(fields["wait_ms"].is_u64(), "{line}"),
            Some("retry_scheduled" | "server_error_retry") => {
                assert!(fields["backoff_ms"].is_u64(), "{line}");
                assert!(fields["reason"].is_string(), "{line}");
            }
            _ => {}
        }
    }
}
