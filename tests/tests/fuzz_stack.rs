//! Fuzzes the README's whole stack (JitterBackoffLayer → CircuitBreakerLayer
//! → RetryAfterLayer → SlidingWindowLayer → per-attempt timeout), built as
//! the README builds it with its default settings, against an in-process
//! fake provider that answers every attempt with a status, headers and a
//! latency drawn by proptest: well-formed and hostile values of every header
//! quota-headers reads (`Retry-After`, `retry-after-ms`, `X-RateLimit-*`,
//! IETF `RateLimit`/`RateLimit-Policy`, gRPC, OpenAI, Anthropic, Shopify,
//! Discord), and arbitrary bytes. Several callers send GETs and POSTs with
//! small bodies to a few hosts at once, on tokio's paused clock.
//!
//! Checked in every case:
//!
//! - nothing panics;
//! - every call ends, with a response or one of the stack's typed errors,
//!   within the bound the stack's settings give (see [`call_bound`]);
//! - once the provider answers plain `200`s, a new request succeeds within
//!   [`recovery_bound`];
//! - the provider never sees more arrivals of a host in any window than the
//!   quota, counting every arrival (refused and timed out ones included);
//! - a logical request makes at most `max_attempts` attempts, re-sends carry
//!   the same body bytes, and a POST without an `Idempotency-Key` is sent
//!   again only after a refusal the server did not process (a 429, gRPC).
//!
//! `PROPTEST_CASES` sets the number of cases (proptest's default, 256, when
//! unset); `scripts/fuzz` runs 100,000 in release.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_quota::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};
use tower_quota::replay::ReplayBody;
use tower_quota::retry_after::{GateClosed, ServerSignal};
use tower_quota::sliding_window::Overloaded;
use tower_quota::{
    BoxError, HostKey, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer,
};

// The README stack's settings.

/// The pacing quota per host: 20 in any second and 1000 in any hour.
const QUOTAS: [(usize, Duration); 2] = [
    (20, Duration::from_secs(1)),
    (1000, Duration::from_secs(3600)),
];
/// `JitterBackoffLayer::max_attempts(4)`: the attempts of one logical
/// request, whichever layer sends them.
const MAX_ATTEMPTS: usize = 4;
/// `SlidingWindowLayer::max_wait(30 s)`: the longest one attempt waits for
/// room in its window.
const PACING_MAX_WAIT: Duration = Duration::from_secs(30);
/// The per-attempt `timeout(10 s)`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

// Defaults the README stack leaves as they are.

/// `RetryAfterLayer`'s default `max_wait`: the sleeping (at the gate, and
/// the backoff layer's) one logical request may do, shared through its
/// `WaitBudget`.
const STACK_MAX_WAIT: Duration = Duration::from_secs(60);
/// `RetryAfterLayer`'s default `max_pause`: no gate stays closed longer.
const MAX_PAUSE: Duration = Duration::from_secs(5 * 60);
/// `RetryAfterLayer`'s default `spread`: waiters leave within it once a
/// gate opens.
const SPREAD: Duration = Duration::from_millis(100);
/// `CircuitBreakerLayer`'s default open period, 30 s, plus its 10% jitter.
const LONGEST_OPEN: Duration = Duration::from_secs(33);

/// Slack for tokio's timer, which rounds every sleep up to the next
/// millisecond: a call sleeps a few dozen times at most.
const TOLERANCE: Duration = Duration::from_millis(100);

/// The hosts requests go to: one key each for pacing, for the gate and for
/// the breaker. The last one only takes floods, which may spend its hourly
/// quota.
const HOSTS: [&str; 4] = ["a.example", "b.example", "c.example", "bulk.example"];

/// The hosts of ordinary requests, and of the request after recovery.
const ORDINARY_HOSTS: usize = 3;

/// The longest a call may take, given the time its attempts spent at the
/// provider (each cut at the attempt timeout): the stack's sleeping budget,
/// plus the pacing wait of every attempt, plus the provider's time.
///
/// The stack does not pace or time out anywhere else: the circuit breaker
/// fails at once, and the backoff and gate sleeps are spent from the one
/// `WaitBudget`.
fn call_bound(provider_time: Duration) -> Duration {
    STACK_MAX_WAIT + PACING_MAX_WAIT * MAX_ATTEMPTS as u32 + provider_time + TOLERANCE
}

/// The longest any call may take: every attempt timed out.
fn longest_call() -> Duration {
    call_bound(ATTEMPT_TIMEOUT * MAX_ATTEMPTS as u32)
}

/// The interval between requests once the provider has recovered, until one
/// succeeds.
const RECOVERY_STEP: Duration = Duration::from_secs(5);

/// How soon a request succeeds once the provider answers plain `200`s,
/// measured from the switch (when every earlier call has ended). Every hold
/// the stack keeps on a host was set before the switch, and ends at the
/// latest this long after it: the gate's, `max_pause` (then its waiters
/// leave within the spread); the breaker's, `LONGEST_OPEN` (plain `200`s
/// give it no failure to open again on); the pacing's, a window plus the
/// widest drift margin (a quarter of the window). Once the last has ended,
/// the next request goes within `RECOVERY_STEP`.
fn recovery_bound() -> Duration {
    let (_, window) = QUOTAS[0];
    (MAX_PAUSE + SPREAD)
        .max(LONGEST_OPEN)
        .max(window + window / 4)
        + RECOVERY_STEP
        + TOLERANCE
}

/// A backstop for a whole case, in virtual time: the hostile phase (every
/// call of a caller one after the other) and the recovery.
fn case_budget(callers: &[Caller]) -> Duration {
    let longest_caller = callers
        .iter()
        .map(|caller| {
            let round = if caller.at_once {
                longest_call()
            } else {
                caller
                    .requests
                    .iter()
                    .map(|request| longest_call() + request.gap_after)
                    .sum()
            };
            caller.start + round * caller.rounds as u32
        })
        .max()
        .unwrap_or_default();
    longest_caller + recovery_bound() + longest_call() + Duration::from_secs(60)
}

// What the provider answers.

/// A header value, rendered when the provider answers: times relative to
/// the wall clock are written then, as a server would.
#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Bytes(Vec<u8>),
    /// An IMF-fixdate this many seconds from now.
    HttpDate(i64),
    /// Unix epoch seconds, this many seconds from now.
    EpochSeconds(i64),
    /// Unix epoch milliseconds, this many seconds from now.
    EpochMillis(i64),
    /// An RFC 3339 instant, this many seconds from now.
    Rfc3339(i64),
}

impl Value {
    fn render(&self) -> Option<HeaderValue> {
        let now = unix_seconds(SystemTime::now());
        let text = match self {
            Value::Text(text) => text.clone(),
            Value::Bytes(bytes) => return HeaderValue::from_bytes(bytes).ok(),
            Value::HttpDate(offset) => http_date(now.saturating_add(*offset)),
            Value::EpochSeconds(offset) => now.saturating_add(*offset).to_string(),
            Value::EpochMillis(offset) => {
                now.saturating_add(*offset).saturating_mul(1000).to_string()
            }
            Value::Rfc3339(offset) => rfc3339(now.saturating_add(*offset)),
        };
        HeaderValue::from_str(&text).ok()
    }
}

#[derive(Debug, Clone)]
enum Reply {
    Status {
        status: u16,
        headers: Vec<(&'static str, Value)>,
    },
    /// The connection failed: refused, or reset mid-request.
    Error(io::ErrorKind),
}

/// One answer of the provider: what, and after how long.
#[derive(Debug, Clone)]
struct Answer {
    reply: Reply,
    latency: Duration,
}

impl Answer {
    fn plain() -> Self {
        Answer {
            reply: Reply::Status {
                status: 200,
                headers: Vec::new(),
            },
            latency: Duration::ZERO,
        }
    }

    fn response(&self) -> Result<Response<()>, BoxError> {
        match &self.reply {
            Reply::Status { status, headers } => {
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::from_u16(*status)?;
                for (name, value) in headers {
                    if let Some(value) = value.render() {
                        response
                            .headers_mut()
                            .append(HeaderName::from_static(name), value);
                    }
                }
                Ok(response)
            }
            Reply::Error(kind) => Err(io::Error::from(*kind).into()),
        }
    }

    /// Whether any request may be sent again after this answer: a 429, or a
    /// gRPC status (read leniently: any `grpc-status` header, which covers
    /// RESOURCE_EXHAUSTED however it is spelled), answered before the
    /// attempt timed out.
    fn may_resend_any_method(&self) -> bool {
        let Reply::Status { status, headers } = &self.reply else {
            return false;
        };
        self.latency < ATTEMPT_TIMEOUT
            && (*status == 429 || headers.iter().any(|(name, _)| *name == "grpc-status"))
    }
}

// Strategies.

/// Numbers as servers send them, and as they should not.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..=5).prop_map(|n| n.to_string()),
        3 => (0u64..=400).prop_map(|n| n.to_string()),
        1 => (-400i64..0).prop_map(|n| n.to_string()),
        3 => proptest::sample::select(vec![
            "60",
            "299",
            "300",
            "301",
            "3600",
            "86400",
            "99999999999",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "1.5",
            "0.001",
            "-0.5",
            "1e3",
            "NaN",
            "",
            " 7 ",
            "+3",
            "0x10",
            "٣",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Seconds from now for the absolute times: near, past, beyond `max_pause`.
fn offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => -120i64..=120,
        2 => -7200i64..=7200,
        1 => proptest::sample::select(vec![
            0i64,
            1,
            299,
            300,
            301,
            -1_000_000_000,
            100 * 365 * 86_400,
            i64::from(i32::MAX),
        ]),
    ]
}

fn text(strategy: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    strategy.prop_map(Value::Text)
}

fn fixed(values: &[&'static str]) -> impl Strategy<Value = Value> + use<> {
    proptest::sample::select(values.to_vec()).prop_map(|value| Value::Text(value.to_owned()))
}

fn go_duration() -> impl Strategy<Value = Value> {
    prop_oneof![
        fixed(&[
            "6m0s", "1.5s", "20ms", "1h2m3.5s", "999999h", "-1s", "0s", "1", "s", "",
        ]),
        text((0u64..=400).prop_map(|n| format!("{n}ms"))),
        text((0u64..=400).prop_map(|n| format!("{n}s"))),
    ]
}

/// A header quota-headers reads, with a well-formed or hostile value.
fn known_header() -> impl Strategy<Value = (&'static str, Value)> {
    let retry_after = prop_oneof![
        3 => text(number()),
        2 => offset().prop_map(Value::HttpDate),
        1 => fixed(&[
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Thu, 01 Jan 2099 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 32 Foo 2024 25:61:61 GMT",
            "tomorrow",
        ]),
    ];
    let reset = prop_oneof![
        3 => text(number()),
        1 => offset().prop_map(Value::EpochSeconds),
        1 => offset().prop_map(Value::EpochMillis),
        1 => fixed(&["1700000060", "4070908800", "1470173023.123", "1700000060000"]),
    ];
    let policy_name = proptest::sample::select(vec!["default", "burst", "daily"]);
    let ratelimit = prop_oneof![
        3 => (policy_name.clone(), number(), number())
            .prop_map(|(name, r, t)| Value::Text(format!("\"{name}\";r={r};t={t}"))),
        1 => (number(), number(), number()).prop_map(|(limit, remaining, reset)| {
            Value::Text(format!("limit={limit}, remaining={remaining}, reset={reset}"))
        }),
        2 => fixed(&[
            r#""default";r=0;t=4294967296"#,
            r#""default";r=0;t=2"#,
            r#""burst";r=0;t=1, "daily";r=100;t=86400"#,
            r#""default";r=18446744073709551615;t=0"#,
            r#""default";r=-1;t=-1"#,
            r#""default";t=4294967296"#,
            r#""default";r=0;t=1.5"#,
            r#""unterminated"#,
            ";;;",
            "default",
            "limit=10, remaining=0, reset=99999999999",
        ]),
    ];
    let policy = prop_oneof![
        2 => (policy_name, number(), number())
            .prop_map(|(name, q, w)| Value::Text(format!("\"{name}\";q={q};w={w}"))),
        1 => fixed(&[
            r#""default";q=20;w=1"#,
            r#""default";q=0;w=0"#,
            r#""burst";q=100;w=60, "daily";q=1000;w=86400"#,
            r#""default";q=10;w=1;qu="requests";pk=:YWJj:"#,
            r#""default";q=-1"#,
            "garbage(",
        ]),
    ];
    let anthropic_reset = prop_oneof![
        2 => offset().prop_map(Value::Rfc3339),
        1 => fixed(&[
            "2099-01-01T00:00:00Z",
            "1994-11-06T08:49:37Z",
            "2024-02-30T25:00:00+99:00",
            "garbage",
        ]),
    ];
    prop_oneof![
        6 => retry_after.prop_map(|value| ("retry-after", value)),
        2 => text(number()).prop_map(|value| ("retry-after-ms", value)),
        1 => text(number()).prop_map(|value| ("x-ratelimit-limit", value)),
        2 => text(number()).prop_map(|value| ("x-ratelimit-remaining", value)),
        2 => reset.clone().prop_map(|value| ("x-ratelimit-reset", value)),
        1 => text(number()).prop_map(|value| ("x-ratelimit-used", value)),
        1 => text(number()).prop_map(|value| ("x-ratelimit-reset-after", value)),
        1 => fixed(&["core", "search"]).prop_map(|value| ("x-ratelimit-resource", value)),
        1 => fixed(&["abcd1234", ""]).prop_map(|value| ("x-ratelimit-bucket", value)),
        1 => fixed(&["user", "global", "shared"]).prop_map(|value| ("x-ratelimit-scope", value)),
        1 => text(number()).prop_map(|value| ("ratelimit-limit", value)),
        1 => text(number()).prop_map(|value| ("ratelimit-remaining", value)),
        1 => reset.prop_map(|value| ("ratelimit-reset", value)),
        3 => ratelimit.prop_map(|value| ("ratelimit", value)),
        2 => policy.prop_map(|value| ("ratelimit-policy", value)),
        2 => prop_oneof![fixed(&["8", "14", "0", "2"]), text(number())]
            .prop_map(|value| ("grpc-status", value)),
        2 => text(number()).prop_map(|value| ("grpc-retry-pushback-ms", value)),
        1 => fixed(&["application/grpc", "application/grpc+proto"])
            .prop_map(|value| ("content-type", value)),
        1 => text(number()).prop_map(|value| ("x-ratelimit-limit-requests", value)),
        1 => text(number()).prop_map(|value| ("x-ratelimit-remaining-requests", value)),
        1 => go_duration().prop_map(|value| ("x-ratelimit-reset-requests", value)),
        1 => text(number()).prop_map(|value| ("x-ratelimit-remaining-tokens", value)),
        1 => go_duration().prop_map(|value| ("x-ratelimit-reset-tokens", value)),
        1 => text(number()).prop_map(|value| ("anthropic-ratelimit-requests-limit", value)),
        1 => text(number()).prop_map(|value| ("anthropic-ratelimit-requests-remaining", value)),
        1 => anthropic_reset.clone()
            .prop_map(|value| ("anthropic-ratelimit-requests-reset", value)),
        1 => text(number()).prop_map(|value| ("anthropic-ratelimit-tokens-remaining", value)),
        1 => anthropic_reset.prop_map(|value| ("anthropic-ratelimit-tokens-reset", value)),
        1 => (number(), number()).prop_map(|(used, limit)| {
            ("x-shopify-shop-api-call-limit", Value::Text(format!("{used}/{limit}")))
        }),
        1 => prop_oneof![
            offset().prop_map(Value::HttpDate),
            fixed(&["Tue, 14 Nov 2023 22:13:20 GMT", "Thu, 01 Jan 2099 00:00:00 GMT", "now"]),
        ]
        .prop_map(|value| ("date", value)),
    ]
}

/// The header names quota-headers reads (`quota_headers::HEADER_NAMES`).
const HEADER_NAMES: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "date",
    "grpc-status",
    "grpc-retry-pushback-ms",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-resource",
    "x-ratelimit-reset-after",
    "x-ratelimit-bucket",
    "x-ratelimit-scope",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "x-shopify-shop-api-call-limit",
];

/// Arbitrary bytes under a name quota-headers reads: any byte
/// `HeaderValue` accepts (visible ASCII, space, tab, and 0x80 to 0xFF).
fn arbitrary_header() -> impl Strategy<Value = (&'static str, Value)> {
    let byte = prop_oneof![
        1 => Just(b'\t'),
        6 => 0x20u8..=0x7e,
        2 => 0x80u8..=0xff,
    ];
    (
        proptest::sample::select(HEADER_NAMES),
        proptest::collection::vec(byte, 0..24),
    )
        .prop_map(|(name, bytes)| (name, Value::Bytes(bytes)))
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        4 => proptest::sample::select(vec![
            200u16, 201, 204, 400, 404, 408, 425, 429, 500, 502, 503, 504,
        ]),
        3 => Just(429u16),
        2 => Just(503u16),
    ];
    let header = prop_oneof![3 => known_header(), 1 => arbitrary_header()];
    let extra_headers = proptest::collection::vec(header.clone(), 0..3);
    // A trailers-only gRPC response: HTTP 200, the status in the headers.
    let grpc = (
        prop_oneof![fixed(&["8", "14", "0", "4"]), text(number())],
        proptest::option::of(text(number())),
        extra_headers,
    )
        .prop_map(|(code, pushback, extra)| {
            let mut headers = vec![
                ("content-type", Value::Text("application/grpc".to_owned())),
                ("grpc-status", code),
            ];
            headers.extend(pushback.map(|pushback| ("grpc-retry-pushback-ms", pushback)));
            headers.extend(extra);
            Reply::Status {
                status: 200,
                headers,
            }
        });
    let reply = prop_oneof![
        20 => (status, proptest::collection::vec(header, 0..5))
            .prop_map(|(status, headers)| Reply::Status { status, headers }),
        3 => grpc,
        1 => proptest::sample::select(vec![
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
        ])
        .prop_map(Reply::Error),
    ];
    let latency = prop_oneof![
        8 => Just(0u64),
        3 => 1u64..50,
        2 => 50u64..2_000,
        // Past the attempt timeout.
        1 => Just(11_000u64),
    ];
    (reply, latency).prop_map(|(reply, latency)| Answer {
        reply,
        latency: Duration::from_millis(latency),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Post,
    KeyedPost,
}

#[derive(Debug, Clone)]
struct Call {
    host: usize,
    kind: Kind,
    body: Bytes,
    gap_after: Duration,
}

/// A caller: starts at `start`, then sends its requests one after the
/// other, or all at once; `rounds` times.
#[derive(Debug, Clone)]
struct Caller {
    start: Duration,
    at_once: bool,
    requests: Vec<Call>,
    rounds: usize,
}

fn call() -> impl Strategy<Value = Call> {
    (
        0..ORDINARY_HOSTS,
        prop_oneof![Just(Kind::Get), Just(Kind::Post), Just(Kind::KeyedPost)],
        proptest::collection::vec(any::<u8>(), 0..32),
        prop_oneof![Just(0u64), 0u64..3_000],
    )
        .prop_map(|(host, kind, body, gap)| Call {
            host,
            kind,
            body: Bytes::from(body),
            gap_after: Duration::from_millis(gap),
        })
}

/// A caller sending up to 8 requests one after the other; or a burst of up
/// to 25 at once (more than a window's quota of a host); or, now and then, a
/// flood of the bulk host: 30 rounds of 40 at once, more than its hourly
/// quota if the stack let them all through.
///
/// The ordinary hosts never reach their hourly quota: 8 callers of 25
/// requests of 4 attempts are 800 arrivals, and the recovery adds one per
/// `RECOVERY_STEP`.
fn caller() -> impl Strategy<Value = Caller> {
    let flood = call().prop_map(|call| {
        let call = Call {
            host: HOSTS.len() - 1,
            ..call
        };
        (true, vec![call; 40], 30)
    });
    let requests = prop_oneof![
        12 => proptest::collection::vec(call(), 1..=8).prop_map(|calls| (false, calls, 1)),
        4 => proptest::collection::vec(call(), 1..=25).prop_map(|calls| (true, calls, 1)),
        1 => flood,
    ];
    (prop_oneof![Just(0u64), 0u64..5_000], requests).prop_map(
        |(start, (at_once, requests, rounds))| Caller {
            start: Duration::from_millis(start),
            at_once,
            requests,
            rounds,
        },
    )
}

// The fake provider.

/// One attempt as the provider saw it.
#[derive(Debug, Clone)]
struct Arrival {
    at: Instant,
    host: usize,
    call: usize,
    answer: Answer,
    same_body: Option<bool>,
}

#[derive(Debug, Default)]
struct ProviderState {
    script: Vec<Answer>,
    answered: usize,
    recovered: bool,
    arrivals: Vec<Arrival>,
    /// The body and the kind of each call, by call number.
    bodies: Vec<Bytes>,
    kinds: Vec<Kind>,
}

type Provider = Arc<Mutex<ProviderState>>;

type Body = ReplayBody<ReplayBody<Full<Bytes>>>;

/// Answers each attempt with the next scripted answer, in turn and round
/// again, until it recovers: then with a plain `200`. Every arrival is
/// logged with its virtual instant as the request reaches it.
fn provider(
    state: Provider,
) -> impl Service<Request<Body>, Response = Response<()>, Error = BoxError> + Clone {
    service_fn(move |request: Request<Body>| {
        let state = state.clone();
        let host = request
            .uri()
            .host()
            .and_then(|host| HOSTS.iter().position(|known| *known == host))
            .expect("a known host");
        let call: usize = request
            .headers()
            .get("x-call")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("a numbered call");
        let (answer, index) = {
            let mut state = state.lock().expect("provider lock");
            let answer = if state.recovered || state.script.is_empty() {
                Answer::plain()
            } else {
                let answer = state.script[state.answered % state.script.len()].clone();
                state.answered += 1;
                answer
            };
            state.arrivals.push(Arrival {
                at: Instant::now(),
                host,
                call,
                answer: answer.clone(),
                same_body: None,
            });
            (answer, state.arrivals.len() - 1)
        };
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            {
                let mut state = state.lock().expect("provider lock");
                let same = state.bodies[call] == body;
                state.arrivals[index].same_body = Some(same);
            }
            tokio::time::sleep(answer.latency).await;
            answer.response()
        }
    })
}

// Driving the stack.

/// What a call returned: a response's status, or the name of one of the
/// stack's typed errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Status(u16),
    Refused(&'static str),
}

/// How one call ended.
#[derive(Debug)]
struct Ended {
    call: usize,
    elapsed: Duration,
    /// What it returned, or what is wrong with it; `None` when it did not
    /// end in time.
    result: Option<Result<Outcome, String>>,
}

fn request(call: usize, spec: &Call) -> Request<Full<Bytes>> {
    let host = HOSTS[spec.host];
    let builder = match spec.kind {
        Kind::Get => Request::get(format!("http://{host}/v1/items")),
        Kind::Post => Request::post(format!("http://{host}/v1/orders")),
        Kind::KeyedPost => Request::post(format!("http://{host}/v1/orders"))
            .header("idempotency-key", format!("order-{call}")),
    };
    builder
        .header("x-call", call)
        .body(Full::new(spec.body.clone()))
        .expect("a request")
}

/// The name of one of the stack's typed errors, carrying what the stack
/// documents; any other error is a bug.
fn typed_error(error: &BoxError) -> Result<Outcome, String> {
    if let Some(closed) = error.downcast_ref::<GateClosed>() {
        return if closed.wait() <= MAX_PAUSE {
            Ok(Outcome::Refused("gate_closed"))
        } else {
            Err(format!("a gate closed past max_pause: {closed}"))
        };
    }
    if let Some(open) = error.downcast_ref::<CircuitOpen>() {
        return if open.retry_in() <= LONGEST_OPEN {
            Ok(Outcome::Refused("circuit_open"))
        } else {
            Err(format!("a breaker open past its period: {open}"))
        };
    }
    if error.is::<Overloaded>() {
        return Ok(Outcome::Refused("overloaded"));
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return Ok(Outcome::Refused("timeout"));
    }
    if error.is::<io::Error>() {
        return Ok(Outcome::Refused("connection"));
    }
    Err(format!("an untyped error: {error}"))
}

/// Sends one call through `service`, cut off (as a hang) past the longest
/// any call may take.
async fn send<S>(service: S, provider: &Provider, spec: &Call) -> Ended
where
    S: Service<Request<Full<Bytes>>, Response = Response<()>, Error = BoxError>,
{
    let call = {
        let mut state = provider.lock().expect("provider lock");
        state.bodies.push(spec.body.clone());
        state.kinds.push(spec.kind);
        state.bodies.len() - 1
    };
    let start = Instant::now();
    let result = tokio::time::timeout(longest_call(), service.oneshot(request(call, spec))).await;
    let elapsed = start.elapsed();
    let result = result.ok().map(|result| match result {
        Ok(response) => {
            let waited = response
                .extensions()
                .get::<ServerSignal>()
                .map(ServerSignal::waited);
            match waited {
                Some(waited) if waited > STACK_MAX_WAIT + TOLERANCE => {
                    Err(format!("waited {waited:?} at the gate"))
                }
                _ => Ok(Outcome::Status(response.status().as_u16())),
            }
        }
        Err(error) => typed_error(&error),
    });
    Ended {
        call,
        elapsed,
        result,
    }
}

async fn run_caller<S>(service: S, provider: Provider, caller: Caller) -> Vec<Ended>
where
    S: Service<Request<Full<Bytes>>, Response = Response<()>, Error = BoxError> + Clone,
{
    tokio::time::sleep(caller.start).await;
    let mut ended = Vec::new();
    for _ in 0..caller.rounds {
        if caller.at_once {
            let calls = caller
                .requests
                .iter()
                .map(|spec| send(service.clone(), &provider, spec));
            ended.extend(join_all(calls).await);
            continue;
        }
        for spec in &caller.requests {
            ended.push(send(service.clone(), &provider, spec).await);
            tokio::time::sleep(spec.gap_after).await;
        }
    }
    ended
}

/// The most arrivals of one host within any span shorter than `window`,
/// as a sliding-log provider counts them.
fn most_in_any_window(arrivals: &[&Arrival], window: Duration) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (last, arrival) in arrivals.iter().enumerate() {
        while arrival.at.duration_since(arrivals[first].at) >= window {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

async fn stack_case(
    script: Vec<Answer>,
    callers: Vec<Caller>,
    recovery_host: usize,
) -> Result<(), TestCaseError> {
    let state = Provider::default();
    state.lock().expect("provider lock").script = script;

    // The README's stack, as the README builds it.
    let [(per_second, second), (per_hour, hour)] = QUOTAS;
    let service = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .max_attempts(MAX_ATTEMPTS as u32)
                .expect("attempts"),
        )
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
        .layer(
            SlidingWindowLayer::new(per_second as u64, second)
                .expect("a quota")
                .and_quota(per_hour as u64, hour)
                .expect("a quota")
                .key_fn(HostKey)
                .usage_fn(HttpFeedback)
                .max_wait(PACING_MAX_WAIT),
        )
        .timeout(ATTEMPT_TIMEOUT)
        .service(provider(state.clone()));

    // The hostile phase: every caller at once.
    let ended: Vec<Ended> = join_all(
        callers
            .into_iter()
            .map(|caller| run_caller(service.clone(), state.clone(), caller)),
    )
    .await
    .into_iter()
    .flatten()
    .collect();

    let arrivals = state.lock().expect("provider lock").arrivals.clone();
    within_quotas(&arrivals)?;
    let mut by_call: HashMap<usize, Vec<&Arrival>> = HashMap::new();
    for arrival in &arrivals {
        by_call.entry(arrival.call).or_default().push(arrival);
    }
    for end in &ended {
        let attempts = by_call.get(&end.call).map(Vec::as_slice).unwrap_or(&[]);
        let provider_time: Duration = attempts
            .iter()
            .map(|arrival| arrival.answer.latency.min(ATTEMPT_TIMEOUT))
            .sum();
        let Some(result) = &end.result else {
            return Err(TestCaseError::fail(format!(
                "call {} did not end within {:?}; its attempts: {attempts:#?}",
                end.call,
                longest_call()
            )));
        };
        prop_assert!(result.is_ok(), "call {}: {:?}", end.call, result);
        prop_assert!(
            end.elapsed <= call_bound(provider_time),
            "call {} took {:?}, over {:?}, ending {:?}; its attempts: {attempts:#?}",
            end.call,
            end.elapsed,
            call_bound(provider_time),
            result
        );
        prop_assert!(
            attempts.len() <= MAX_ATTEMPTS,
            "call {} made {} attempts",
            end.call,
            attempts.len()
        );
    }
    for (call, attempts) in &by_call {
        prop_assert!(
            attempts
                .iter()
                .all(|arrival| arrival.same_body != Some(false)),
            "call {call} was re-sent with other bytes"
        );
        // A POST without an Idempotency-Key goes again only after a
        // refusal the server did not process.
        if state.lock().expect("provider lock").kinds[*call] == Kind::Post {
            for pair in attempts.windows(2) {
                prop_assert!(
                    pair[0].answer.may_resend_any_method(),
                    "call {call}, a POST, was re-sent after {:?}",
                    pair[0].answer
                );
            }
        }
    }

    // The provider recovers: a request succeeds within the bound.
    state.lock().expect("provider lock").recovered = true;
    let switched = Instant::now();
    let recovery = Call {
        host: recovery_host,
        kind: Kind::Get,
        body: Bytes::new(),
        gap_after: RECOVERY_STEP,
    };
    loop {
        let end = send(service.clone(), &state, &recovery).await;
        let since = switched.elapsed();
        match end.result {
            None => {
                return Err(TestCaseError::fail(format!(
                    "a request after recovery did not end within {:?}",
                    longest_call()
                )));
            }
            Some(Ok(Outcome::Status(200))) => break,
            Some(Ok(Outcome::Refused(_))) => {}
            Some(other) => prop_assert!(false, "after recovery: {other:?}"),
        }
        prop_assert!(
            since <= recovery_bound(),
            "no success {since:?} after the provider recovered"
        );
        tokio::time::sleep(RECOVERY_STEP).await;
    }
    let since = switched.elapsed();
    prop_assert!(
        since <= recovery_bound(),
        "the first success came {since:?} after the provider recovered"
    );

    // Every arrival, hostile or not.
    within_quotas(&state.lock().expect("provider lock").arrivals)
}

/// No host saw more arrivals in any window than its quota.
fn within_quotas(arrivals: &[Arrival]) -> Result<(), TestCaseError> {
    for (host, name) in HOSTS.iter().enumerate() {
        let arrivals: Vec<&Arrival> = arrivals
            .iter()
            .filter(|arrival| arrival.host == host)
            .collect();
        for (max_calls, window) in QUOTAS {
            let most = most_in_any_window(&arrivals, window);
            prop_assert!(
                most <= max_calls,
                "{name}: {most} arrivals within {window:?}, quota {max_calls}"
            );
        }
    }
    Ok(())
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// The README stack, with its defaults, against a provider answering
    /// anything: no panic, no hang, no wait past the bound, no arrival over
    /// the quota, and traffic resumes once the provider does.
    #[test]
    fn the_readme_stack_stays_within_its_bounds_whatever_the_provider_answers(
        script in proptest::collection::vec(answer(), 1..10),
        callers in proptest::collection::vec(caller(), 2..=8),
        recovery_host in 0..ORDINARY_HOSTS,
    ) {
        let budget = case_budget(&callers);
        paused_runtime().block_on(async move {
            tokio::time::timeout(budget, stack_case(script, callers, recovery_host))
                .await
                .unwrap_or_else(|_| {
                    Err(TestCaseError::fail(format!("the case did not end within {budget:?}")))
                })
        })?;
    }
}

// Dates as servers write them.

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The civil date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn split(seconds: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil(days);
    let weekday = (days + 4).rem_euclid(7);
    (
        year,
        month,
        day,
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        weekday,
    )
}

/// An IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(seconds: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, hour, minute, second, weekday) = split(seconds);
    format!(
        "{}, {day:02} {} {year:04} {hour:02}:{minute:02}:{second:02} GMT",
        DAYS[weekday as usize],
        MONTHS[month as usize - 1]
    )
}

/// An RFC 3339 instant in UTC: `1994-11-06T08:49:37Z`.
fn rfc3339(seconds: i64) -> String {
    let (year, month, day, hour, minute, second, _) = split(seconds);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[test]
fn dates_are_written_as_servers_write_them() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(rfc3339(784_111_777), "1994-11-06T08:49:37Z");
    assert_eq!(http_date(4_070_908_800), "Thu, 01 Jan 2099 00:00:00 GMT");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}
