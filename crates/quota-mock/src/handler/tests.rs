//! The whole request path without a socket, on tokio's paused clock, so
//! every instant and every header value is exact.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::{Instant, advance};

use super::{NoResponse, Shared, handle};
use crate::fault::{Fault, Latency, Scripted};
use crate::headers::{HeaderConfig, HeaderDialect};
use crate::key::KeyBy;
use crate::rule::Rule;
use crate::stats::{Outcome, Stats, fnv1a64};

fn server(rules: Vec<Rule>, faults: Vec<Fault>) -> Arc<Shared> {
    server_with(rules, faults, HeaderDialect::XRateLimit, 7)
}

fn server_with(
    rules: Vec<Rule>,
    faults: Vec<Fault>,
    dialect: HeaderDialect,
    seed: u64,
) -> Arc<Shared> {
    Arc::new(Shared::new(
        Instant::now(),
        rules,
        KeyBy::Global,
        HeaderConfig {
            dialect,
            ..HeaderConfig::default()
        },
        faults,
        Vec::new(),
        StdRng::seed_from_u64(seed),
    ))
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

async fn send(shared: &Arc<Shared>, request: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    handle(Arc::clone(shared), request)
        .await
        .expect("a response, not a reset")
}

async fn status(shared: &Arc<Shared>, path: &str) -> u16 {
    send(shared, get(path)).await.status().as_u16()
}

fn header<'a>(response: &'a Response<Full<Bytes>>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
}

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

#[tokio::test(start_paused = true)]
async fn sliding_log_refuses_with_retry_after_rounded_up_then_recovers() {
    let shared = server(vec![Rule::sliding_log(5, secs(10.0))], Vec::new());
    for remaining in (0..5).rev() {
        let response = send(&shared, get("/a")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-limit"), Some("5"));
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
    }
    advance(secs(2.5)).await;
    let refused = send(&shared, get("/a")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 7.5s until the oldest admission leaves, rounded up.
    assert_eq!(header(&refused, "retry-after"), Some("8"));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("0"));

    advance(secs(7.5) - Duration::from_nanos(1)).await;
    assert_eq!(status(&shared, "/a").await, 429);
    advance(Duration::from_nanos(1)).await;
    // All five admissions were at t=0, so all five slots free at once.
    for _ in 0..5 {
        assert_eq!(status(&shared, "/a").await, 200);
    }
    assert_eq!(status(&shared, "/a").await, 429);

    let stats = shared.stats();
    assert_eq!(stats.count(200), 10);
    assert_eq!(stats.count(429), 3);
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 5);
}

#[tokio::test(start_paused = true)]
async fn fixed_window_allows_a_double_burst_at_the_boundary() {
    let shared = server(vec![Rule::fixed_window(3, secs(10.0))], Vec::new());
    advance(secs(9.5)).await;
    for _ in 0..3 {
        assert_eq!(status(&shared, "/").await, 200);
    }
    let refused = send(&shared, get("/")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    advance(secs(0.5)).await;
    for _ in 0..3 {
        assert_eq!(status(&shared, "/").await, 200);
    }
    assert_eq!(status(&shared, "/").await, 429);
    // Six admissions within half a second: what fixed windows permit.
    assert_eq!(shared.stats().rules[0].max_accepted_in_any_window, 6);
}

#[tokio::test(start_paused = true)]
async fn token_bucket_refills_at_its_rate() {
    // Two tokens, one more every 500ms.
    let shared = server(vec![Rule::token_bucket(2, secs(1.0))], Vec::new());
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(status(&shared, "/").await, 200);
    let refused = send(&shared, get("/")).await;
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    advance(secs(0.499)).await;
    assert_eq!(status(&shared, "/").await, 429);
    advance(secs(0.001)).await;
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(status(&shared, "/").await, 429);
    advance(secs(5.0)).await;
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(status(&shared, "/").await, 429);
}

#[tokio::test(start_paused = true)]
async fn scripted_responses_come_first_and_consume_no_quota() {
    let shared = server(vec![Rule::sliding_log(1, secs(3600.0))], Vec::new());
    shared.script(Scripted::new(2, StatusCode::SERVICE_UNAVAILABLE).retry_after(secs(1.5)));
    for _ in 0..2 {
        let response = send(&shared, get("/")).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&response, "retry-after"), Some("2"));
        assert_eq!(header(&response, "x-ratelimit-remaining"), None);
    }
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(status(&shared, "/").await, 429);
    let outcomes: Vec<Outcome> = shared.stats().arrivals.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Scripted,
            Outcome::Scripted,
            Outcome::Admitted,
            Outcome::Refused
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn latency_delays_the_response_but_not_the_arrival_time() {
    let faults = vec![Fault::Latency(Latency::Fixed(secs(2.0)))];
    let shared = server(Vec::new(), faults);
    let before = Instant::now();
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(before.elapsed(), secs(2.0));
    assert_eq!(shared.stats().arrivals[0].at, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn uniform_latency_stays_within_bounds() {
    let faults = vec![Fault::Latency(Latency::Uniform {
        min: secs(1.0),
        max: secs(3.0),
    })];
    let shared = server(Vec::new(), faults);
    let mut delays = Vec::new();
    for _ in 0..20 {
        let before = Instant::now();
        status(&shared, "/").await;
        delays.push(before.elapsed());
    }
    assert!(
        delays.iter().all(|d| (secs(1.0)..=secs(3.0)).contains(d)),
        "{delays:?}"
    );
    assert!(
        delays.iter().any(|d| *d != delays[0]),
        "all delays equal: {delays:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn processing_time_delays_only_admitted_responses() {
    let processing = Some(Latency::Uniform {
        min: secs(1.0),
        max: secs(3.0),
    });
    let shared = Arc::new(
        Shared::new(
            Instant::now(),
            vec![Rule::sliding_log(3, secs(3600.0))],
            KeyBy::Global,
            HeaderConfig::default(),
            Vec::new(),
            vec![Scripted::new(1, StatusCode::SERVICE_UNAVAILABLE)],
            StdRng::seed_from_u64(5),
        )
        .with_processing(processing),
    );
    let start = Instant::now();
    let mut delays = Vec::new();
    for _ in 0..5 {
        let before = Instant::now();
        let status = status(&shared, "/").await;
        delays.push((status, before.elapsed()));
    }
    // The scripted 503 and the 429 are answered at once.
    assert_eq!(delays[0], (503, Duration::ZERO));
    assert_eq!(delays[4], (429, Duration::ZERO));
    for &(status, delay) in &delays[1..4] {
        assert_eq!(status, 200);
        assert!((secs(1.0)..=secs(3.0)).contains(&delay), "{delays:?}");
    }
    // Each arrival is recorded when its head arrived, before processing.
    let stats = shared.stats();
    let mut at = Duration::ZERO;
    for (arrival, &(_, delay)) in stats.arrivals.iter().zip(&delays) {
        assert_eq!(arrival.at, at);
        at += delay;
    }
    assert_eq!(start.elapsed(), at);
}

#[tokio::test(start_paused = true)]
async fn processing_time_adds_to_latency_faults() {
    let faults = vec![Fault::Latency(Latency::Fixed(secs(2.0)))];
    let shared = Arc::new(
        Shared::new(
            Instant::now(),
            vec![Rule::sliding_log(1, secs(3600.0))],
            KeyBy::Global,
            HeaderConfig::default(),
            faults,
            Vec::new(),
            StdRng::seed_from_u64(5),
        )
        .with_processing(Some(Latency::Fixed(secs(0.5)))),
    );
    let before = Instant::now();
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(before.elapsed(), secs(2.5));
    let before = Instant::now();
    assert_eq!(status(&shared, "/").await, 429);
    assert_eq!(before.elapsed(), secs(2.0));
}

fn concurrency_server(max_in_flight: u64, processing: Duration) -> Arc<Shared> {
    Arc::new(
        Shared::new(
            Instant::now(),
            vec![Rule::concurrency(max_in_flight)],
            KeyBy::Global,
            HeaderConfig::default(),
            Vec::new(),
            Vec::new(),
            StdRng::seed_from_u64(5),
        )
        .with_processing(Some(Latency::Fixed(processing))),
    )
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_rule_refuses_while_its_slots_are_processing() {
    let shared = concurrency_server(2, secs(1.0));
    let (first, second, third) = tokio::join!(
        send(&shared, get("/")),
        send(&shared, get("/")),
        send(&shared, get("/")),
    );
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    assert_eq!(third.status(), 429);
    assert_eq!(header(&third, "retry-after"), None);
    let body = third.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "too_many_in_flight");
    // Both slots were handed back with their responses.
    assert_eq!(status(&shared, "/").await, 200);
    let stats = shared.stats();
    assert_eq!(stats.rules[0].rule, "2:concurrency");
    assert_eq!(stats.rules[0].max_accepted_in_any_window, 2);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_hangs_up_ends_its_request_in_flight() {
    let shared = concurrency_server(1, secs(10.0));
    let abandoned = tokio::time::timeout(secs(1.0), send(&shared, get("/"))).await;
    assert!(abandoned.is_err(), "the request was still processing");
    let before = Instant::now();
    assert_eq!(status(&shared, "/").await, 200);
    assert_eq!(before.elapsed(), secs(10.0));
}

#[tokio::test(start_paused = true)]
async fn arrival_records_request_details() {
    let shared = server(Vec::new(), Vec::new());
    let request = Request::post("/orders/42?secret=1")
        .header("x-retry-attempt", "3")
        .body(Full::new(Bytes::from_static(b"foobar")))
        .unwrap();
    send(&shared, request).await;
    let request = Request::get("/")
        .header("x-retry-attempt", "three")
        .body(Full::default())
        .unwrap();
    send(&shared, request).await;

    let stats = shared.stats();
    let first = &stats.arrivals[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/orders/42");
    assert_eq!(first.key, "global");
    assert_eq!(first.attempt, Some(3));
    assert_eq!(first.body_len, 6);
    assert_eq!(first.body_hash, fnv1a64(b"foobar"));
    assert_eq!(stats.arrivals[1].attempt, None);
}

#[tokio::test(start_paused = true)]
async fn connection_reset_sends_nothing_but_is_recorded_and_counted() {
    let shared = server(
        vec![Rule::sliding_log(1, secs(60.0))],
        vec![Fault::ConnectionReset { fraction: 1.0 }],
    );
    assert!(matches!(
        handle(Arc::clone(&shared), get("/")).await,
        Err(NoResponse)
    ));
    // The reset request consumed the quota.
    assert_eq!(status(&shared, "/").await, 429);
    let stats = shared.stats();
    assert_eq!(stats.count(0), 1);
    assert_eq!(stats.arrivals[0].outcome, Outcome::Admitted);
}

#[tokio::test(start_paused = true)]
async fn error_rate_is_respected_and_repeatable_with_a_seed() {
    let statuses = vec![StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY];
    let faults = vec![Fault::ErrorRate {
        fraction: 0.25,
        statuses,
    }];
    let run = |seed| {
        let shared = server_with(Vec::new(), faults.clone(), HeaderDialect::XRateLimit, seed);
        async move {
            let mut seen = Vec::new();
            for _ in 0..2000 {
                seen.push(status(&shared, "/").await);
            }
            seen
        }
    };
    let first = run(11).await;
    let errors = first.iter().filter(|&&s| s != 200).count();
    assert!(
        (400..=600).contains(&errors),
        "{errors} errors in 2000 at 25%"
    );
    assert!(first.contains(&500) && first.contains(&502));
    assert!(first.iter().all(|s| [200, 500, 502].contains(s)));
    assert_eq!(run(11).await, first);
    assert_ne!(run(12).await, first);
}

#[tokio::test(start_paused = true)]
async fn unavailable_fault_carries_retry_after_and_quota_headers() {
    let faults = vec![Fault::ServiceUnavailableRetryAfter {
        fraction: 1.0,
        retry_after: secs(30.0),
    }];
    let shared = server(vec![Rule::sliding_log(10, secs(60.0))], faults);
    let response = send(&shared, get("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&response, "retry-after"), Some("30"));
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("9"));
}

#[tokio::test(start_paused = true)]
async fn header_dialect_none_omits_quota_headers_but_keeps_retry_after() {
    let shared = server_with(
        vec![Rule::sliding_log(1, secs(60.0))],
        Vec::new(),
        HeaderDialect::None,
        0,
    );
    let accepted = send(&shared, get("/")).await;
    assert_eq!(header(&accepted, "x-ratelimit-limit"), None);
    let refused = send(&shared, get("/")).await;
    assert_eq!(header(&refused, "x-ratelimit-limit"), None);
    assert_eq!(header(&refused, "retry-after"), Some("60"));
}

#[tokio::test(start_paused = true)]
async fn control_paths_are_neither_limited_nor_recorded() {
    let shared = server(vec![Rule::sliding_log(1, secs(60.0))], Vec::new());
    assert_eq!(status(&shared, "/").await, 200);
    for _ in 0..3 {
        let response = send(&shared, get("/__quota/stats")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let stats: Stats = serde_json::from_slice(&body).unwrap();
        assert_eq!(stats, shared.stats());
        assert_eq!(stats.total, 1);
    }
    assert_eq!(status(&shared, "/__quota/nope").await, 404);
    assert_eq!(status(&shared, "/__quota/reset").await, 405);
    let reset = Request::post("/__quota/reset")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&shared, reset).await.status(), StatusCode::OK);
    assert_eq!(shared.stats().total, 0);
    // The quota was cleared too.
    assert_eq!(status(&shared, "/").await, 200);
}

/// A body whose stream fails, like a client that hangs up mid-upload.
struct BrokenBody;

impl Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other("client went away"))))
    }
}

#[tokio::test(start_paused = true)]
async fn broken_body_is_recorded_without_a_response() {
    let shared = server(Vec::new(), Vec::new());
    let request = Request::post("/upload").body(BrokenBody).unwrap();
    assert!(handle(Arc::clone(&shared), request).await.is_err());
    let stats = shared.stats();
    assert_eq!(stats.total, 1);
    assert_eq!(stats.arrivals[0].status, 0);
}

/// A server with one sliding log of 5 per 10 s in `dialect`, refused 2.5 s
/// after five admissions: the oldest admission leaves in exactly 7.5 s.
async fn refused_in(dialect: HeaderDialect) -> Response<Full<Bytes>> {
    let shared = server_with(
        vec![Rule::sliding_log(5, secs(10.0))],
        Vec::new(),
        dialect,
        0,
    );
    for _ in 0..5 {
        assert_eq!(status(&shared, "/").await, 200);
    }
    advance(secs(2.5)).await;
    let refused = send(&shared, get("/")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), Some("8"));
    assert!(header(&refused, "date").is_some());
    refused
}

#[tokio::test(start_paused = true)]
async fn delay_dialects_state_the_reset_rounded_up() {
    let refused = refused_in(HeaderDialect::XRateLimitDelta).await;
    assert_eq!(header(&refused, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&refused, "x-ratelimit-used"), Some("5"));
    assert_eq!(header(&refused, "x-ratelimit-reset"), Some("8"));

    let refused = refused_in(HeaderDialect::IetfStructured).await;
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        Some(r#""default";q=5;w=10"#)
    );
    assert_eq!(header(&refused, "ratelimit"), Some(r#""default";r=0;t=8"#));

    let refused = refused_in(HeaderDialect::IetfLegacy).await;
    assert_eq!(header(&refused, "ratelimit-limit"), Some("5"));
    assert_eq!(header(&refused, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&refused, "ratelimit-reset"), Some("8"));

    let refused = refused_in(HeaderDialect::Discord).await;
    assert_eq!(header(&refused, "x-ratelimit-reset-after"), Some("7.500"));
    assert_eq!(
        header(&refused, "x-ratelimit-bucket"),
        Some(format!("{:016x}", fnv1a64(b"global")).as_str())
    );
    let epoch = header(&refused, "x-ratelimit-reset").unwrap();
    assert!(epoch.split_once('.').unwrap().1.len() == 3, "{epoch}");

    let refused = refused_in(HeaderDialect::OpenAi).await;
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), Some("5"));
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert_eq!(header(&refused, "x-ratelimit-reset-requests"), Some("7.5s"));

    let refused = refused_in(HeaderDialect::Shopify).await;
    assert_eq!(
        header(&refused, "x-shopify-shop-api-call-limit"),
        Some("5/5")
    );
}

#[tokio::test(start_paused = true)]
async fn anthropic_reset_is_an_rfc3339_instant_after_date() {
    let refused = refused_in(HeaderDialect::Anthropic).await;
    assert_eq!(
        header(&refused, "anthropic-ratelimit-requests-limit"),
        Some("5")
    );
    let reset = header(&refused, "anthropic-ratelimit-requests-reset").unwrap();
    let reset = quota_headers::rfc3339(reset).expect("RFC 3339");
    let date = httpdate::parse_http_date(header(&refused, "date").unwrap()).unwrap();
    // 7.5 s from an instant inside Date's second, rounded up.
    let ahead = reset.duration_since(date).unwrap();
    assert!(ahead >= secs(8.0) && ahead <= secs(9.0), "{ahead:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_off_drops_it_from_quota_refusals_only() {
    let shared = Arc::new(Shared::new(
        Instant::now(),
        vec![Rule::sliding_log(1, secs(60.0))],
        KeyBy::Global,
        HeaderConfig {
            omit_retry_after_on_429: true,
            ..HeaderConfig::default()
        },
        Vec::new(),
        vec![Scripted::new(1, StatusCode::SERVICE_UNAVAILABLE).retry_after(secs(2.0))],
        StdRng::seed_from_u64(0),
    ));
    let scripted = send(&shared, get("/")).await;
    assert_eq!(header(&scripted, "retry-after"), Some("2"));
    assert_eq!(status(&shared, "/").await, 200);
    let refused = send(&shared, get("/")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), None);
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("0"));
}
