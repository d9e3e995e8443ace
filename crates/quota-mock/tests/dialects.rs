//! Every header dialect end to end: the mock writes it, a real socket
//! carries it, and `quota_headers::parse` must read back the quota the
//! server enforces. Windows are long so results depend on counts, not on
//! timing.

use crate::common;

use std::time::{Duration, SystemTime};

use common::{HttpClient, Reply, client, get, get_with};
use http::HeaderName;
use quota_headers::{Signal, Source};
use quota_mock::{HeaderDialect, KeyBy, MockServer, RetryAfterFormat, Rule};

const LIMIT: u64 = 3;
const WINDOW: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Absolute resets are measured from `Date`, which is truncated to the
/// second, so they may read up to one second past the delay.
const DATE_SLACK: Duration = Duration::from_secs(1);
/// Generous: the requests of one test take milliseconds, not seconds.
const EARLIEST_RESET: Duration = Duration::from_secs(50);

fn signal(reply: &Reply) -> Signal {
    signal_at(reply, SystemTime::now())
}

fn signal_at(reply: &Reply, now: SystemTime) -> Signal {
    quota_headers::parse(reply.status, &reply.headers, now)
}

/// The `Source` each dialect is parsed as (`None` for no quota headers).
fn expected_source(dialect: HeaderDialect) -> Option<Source> {
    match dialect {
        HeaderDialect::XRateLimit | HeaderDialect::XRateLimitDelta => Some(Source::XRateLimit),
        HeaderDialect::IetfStructured => Some(Source::IetfRateLimit),
        HeaderDialect::IetfLegacy => Some(Source::IetfLegacy),
        HeaderDialect::Discord => Some(Source::Discord),
        HeaderDialect::OpenAi => Some(Source::OpenAi),
        HeaderDialect::Anthropic => Some(Source::Anthropic),
        HeaderDialect::Shopify => Some(Source::Shopify),
        _ => None,
    }
}

/// The latest reset a dialect may announce for `delay`.
fn latest_reset(dialect: HeaderDialect, delay: Duration) -> Duration {
    match dialect {
        // Epoch seconds and RFC 3339 instants, measured from `Date`.
        HeaderDialect::XRateLimit | HeaderDialect::Anthropic => delay + DATE_SLACK,
        _ => delay,
    }
}

/// Whether a dialect states when the quota resets.
fn states_reset(dialect: HeaderDialect) -> bool {
    !matches!(dialect, HeaderDialect::Shopify | HeaderDialect::None)
}

async fn server(dialect: HeaderDialect) -> MockServer {
    MockServer::builder()
        .rule(Rule::sliding_log(LIMIT, WINDOW))
        .headers(dialect)
        .start()
        .await
        .unwrap()
}

/// Sends requests until the first 429: the admitted replies, then the 429.
async fn exhaust(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (Vec<Reply>, Reply) {
    let mut admitted = Vec::new();
    for _ in 0..=LIMIT {
        let reply = get_with(client, url, headers).await;
        if reply.status == 429 {
            return (admitted, reply);
        }
        assert_eq!(reply.status, 200);
        admitted.push(reply);
    }
    panic!("no 429 after {} requests", LIMIT + 1);
}

/// Checks one dialect's admitted replies and its 429, as a client sees them.
fn check_dialect(dialect: HeaderDialect, admitted: &[Reply], refused: &Reply) {
    assert_eq!(admitted.len() as u64, LIMIT, "{dialect}");
    for (index, reply) in admitted.iter().enumerate() {
        let signal = signal(reply);
        assert!(!signal.throttled, "{dialect}: a 200 is not a throttle");
        assert_eq!(signal.retry_after, None, "{dialect}");
        let Some(source) = expected_source(dialect) else {
            assert!(signal.quotas.is_empty(), "{dialect}: {signal:?}");
            continue;
        };
        assert_eq!(signal.quotas.len(), 1, "{dialect}: {signal:?}");
        let quota = &signal.quotas[0];
        assert_eq!(quota.source, source, "{dialect}");
        assert_eq!(quota.limit, Some(LIMIT), "{dialect}");
        assert_eq!(quota.remaining, Some(LIMIT - 1 - index as u64), "{dialect}");
        if states_reset(dialect) {
            // The oldest admission leaves the sliding log a window after it
            // arrived.
            let reset = quota.reset_after.expect("a reset");
            assert!(reset >= EARLIEST_RESET, "{dialect}: {reset:?}");
            assert!(
                reset <= latest_reset(dialect, WINDOW),
                "{dialect}: {reset:?}"
            );
        } else {
            assert_eq!(quota.reset_after, None, "{dialect}");
        }
    }

    assert_eq!(refused.status, 429);
    let signal = signal(refused);
    assert!(signal.throttled, "{dialect}");
    // Retry-After is sent for every dialect by default.
    assert_eq!(
        signal.retry_after_source,
        Some(Source::RetryAfter),
        "{dialect}"
    );
    let retry_after = signal.retry_after.expect("a retry delay");
    assert!(retry_after >= EARLIEST_RESET, "{dialect}: {retry_after:?}");
    assert!(retry_after <= WINDOW, "{dialect}: {retry_after:?}");
    if expected_source(dialect).is_some() {
        assert!(signal.is_exhausted(), "{dialect}: {signal:?}");
        assert_eq!(signal.min_remaining(), Some(0), "{dialect}");
    }
    if states_reset(dialect) {
        let until = signal.exhausted_until().expect("an exhausted reset");
        assert!(until >= EARLIEST_RESET, "{dialect}: {until:?}");
        assert!(
            until <= latest_reset(dialect, WINDOW),
            "{dialect}: {until:?}"
        );
    }
}

#[tokio::test]
async fn every_dialect_parses_back_to_the_enforced_quota() {
    let client = client();
    for dialect in HeaderDialect::ALL {
        let server = server(dialect).await;
        let (admitted, refused) = exhaust(&client, &server.url(), &[]).await;
        check_dialect(dialect, &admitted, &refused);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn every_dialect_with_only_quota_headers_still_gives_a_retry_delay() {
    let client = client();
    for dialect in HeaderDialect::ALL {
        let server = MockServer::builder()
            .rule(Rule::sliding_log(LIMIT, WINDOW))
            .headers(dialect)
            .retry_after(false)
            .start()
            .await
            .unwrap();
        let (admitted, refused) = exhaust(&client, &server.url(), &[]).await;
        assert_eq!(admitted.len() as u64, LIMIT);
        assert_eq!(refused.header("retry-after"), None, "{dialect}");
        let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
        assert_eq!(body.get("retry_after"), None, "{dialect}: {body}");

        let signal = signal(&refused);
        assert!(signal.throttled, "{dialect}");
        if states_reset(dialect) {
            // Derived from the exhausted quota's reset.
            assert_eq!(signal.retry_after_source, expected_source(dialect));
            let delay = signal.retry_after.expect("a derived retry delay");
            assert!(delay >= EARLIEST_RESET, "{dialect}: {delay:?}");
            assert!(
                delay <= latest_reset(dialect, WINDOW),
                "{dialect}: {delay:?}"
            );
        } else {
            assert_eq!(signal.retry_after, None, "{dialect}");
        }
        server.shutdown().await;
    }
}

/// Issue acceptance: "a provider that sends only X-RateLimit-Remaining/Reset
/// (refusing only when exceeded)" and "the same with IETF RateLimit fields".
#[tokio::test]
async fn quota_headers_alone_tell_when_to_retry() {
    let client = client();
    for (dialect, source) in [
        (HeaderDialect::XRateLimit, Source::XRateLimit),
        (HeaderDialect::XRateLimitDelta, Source::XRateLimit),
        (HeaderDialect::IetfStructured, Source::IetfRateLimit),
        (HeaderDialect::IetfLegacy, Source::IetfLegacy),
    ] {
        let server = MockServer::builder()
            .rule(Rule::fixed_window(LIMIT, HOUR))
            .headers(dialect)
            .retry_after(false)
            .start()
            .await
            .unwrap();
        let (admitted, refused) = exhaust(&client, &server.url(), &[]).await;
        // Refused only when exceeded: the third request still got a 200
        // with nothing left.
        assert_eq!(signal(&admitted[2]).min_remaining(), Some(0));
        assert_eq!(refused.header("retry-after"), None);
        let signal = signal(&refused);
        assert_eq!(signal.retry_after_source, Some(source), "{dialect}");
        let delay = signal.retry_after.expect("a derived delay");
        assert!(
            delay > HOUR - Duration::from_secs(60),
            "{dialect}: {delay:?}"
        );
        assert!(delay <= latest_reset(dialect, HOUR), "{dialect}: {delay:?}");
        let stats = server.stats();
        assert_eq!((stats.accepted(), stats.count(429)), (LIMIT, 1));
        server.shutdown().await;
    }
}

#[tokio::test]
async fn per_key_dialects_override_the_default() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(LIMIT, WINDOW))
        .key_by(KeyBy::Header(HeaderName::from_static("x-api-key")))
        .headers(HeaderDialect::XRateLimit)
        .headers_for_key("openai", HeaderDialect::OpenAi)
        .headers_for_key("claude", HeaderDialect::Anthropic)
        .headers_for_key("quiet", HeaderDialect::None)
        .start()
        .await
        .unwrap();
    let client = client();
    let url = server.url();
    for (key, dialect) in [
        ("someone", HeaderDialect::XRateLimit),
        ("openai", HeaderDialect::OpenAi),
        ("claude", HeaderDialect::Anthropic),
        ("quiet", HeaderDialect::None),
    ] {
        let (admitted, refused) = exhaust(&client, &url, &[("x-api-key", key)]).await;
        check_dialect(dialect, &admitted, &refused);
        let x_ratelimit = refused.header("x-ratelimit-limit").is_some();
        assert_eq!(x_ratelimit, dialect == HeaderDialect::XRateLimit, "{key}");
    }
    // Keys without an override, including the missing header, use the default.
    let reply = get(&client, &url).await;
    assert_eq!(reply.header_u64("x-ratelimit-limit"), Some(LIMIT));
}

#[tokio::test]
async fn ietf_structured_reports_every_rule_by_name() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(LIMIT, WINDOW))
        .rule(Rule::fixed_window(10, HOUR))
        .headers(HeaderDialect::IetfStructured)
        .start()
        .await
        .unwrap();
    let client = client();
    let (_, refused) = exhaust(&client, &server.url(), &[]).await;
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some(r#""3-per-1m";q=3;w=60, "10-per-1h";q=10;w=3600"#)
    );
    let signal = signal(&refused);
    let summary: Vec<_> = signal
        .quotas
        .iter()
        .map(|quota| {
            (
                quota.name.as_deref(),
                quota.limit,
                quota.remaining,
                quota.window,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("3-per-1m"), Some(3), Some(0), Some(WINDOW)),
            (Some("10-per-1h"), Some(10), Some(7), Some(HOUR)),
        ]
    );
    let reset = signal.quotas[0].reset_after.unwrap();
    assert!(reset >= EARLIEST_RESET && reset <= WINDOW, "{reset:?}");
    // The hourly rule frees its next unit at the fixed-window boundary.
    let reset = signal.quotas[1].reset_after.unwrap();
    assert!(
        reset > HOUR - Duration::from_secs(60) && reset <= HOUR,
        "{reset:?}"
    );
}

#[tokio::test]
async fn single_value_dialects_report_the_most_restrictive_rule() {
    // Both rules count the same requests, so the hourly 3-request rule always
    // has less left than the per-minute 5-request one, and its reset (an
    // hour, not a minute) is the one a client must honour.
    let server = MockServer::builder()
        .rule(Rule::sliding_log(5, WINDOW))
        .rule(Rule::sliding_log(LIMIT, HOUR))
        .headers(HeaderDialect::XRateLimitDelta)
        .retry_after(false)
        .start()
        .await
        .unwrap();
    let client = client();
    let (admitted, refused) = exhaust(&client, &server.url(), &[]).await;
    assert_eq!(admitted[0].header_u64("x-ratelimit-limit"), Some(LIMIT));
    assert_eq!(admitted[0].header_u64("x-ratelimit-remaining"), Some(2));
    for reply in [&admitted[2], &refused] {
        assert_eq!(reply.header_u64("x-ratelimit-limit"), Some(LIMIT));
        assert_eq!(reply.header_u64("x-ratelimit-remaining"), Some(0));
        assert_eq!(reply.header_u64("x-ratelimit-used"), Some(LIMIT));
    }
    let delay = signal(&refused).retry_after.expect("a derived delay");
    assert!(
        delay > HOUR - Duration::from_secs(60) && delay <= HOUR,
        "{delay:?}"
    );
}

#[tokio::test]
async fn epoch_resets_are_read_from_date_whatever_the_client_clock_says() {
    let client = client();
    for dialect in [HeaderDialect::XRateLimit, HeaderDialect::Anthropic] {
        let server = server(dialect).await;
        let (_, refused) = exhaust(&client, &server.url(), &[]).await;
        let date = refused.header("date").expect("a Date header");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        // A client clock an hour fast would see the reset as long past
        // without `Date`.
        let skewed = SystemTime::now() + HOUR;
        let until = signal_at(&refused, skewed).exhausted_until().unwrap();
        assert!(until >= EARLIEST_RESET, "{dialect}: {until:?}");
        assert!(until <= WINDOW + DATE_SLACK, "{dialect}: {until:?}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn every_response_carries_a_date() {
    let server = server(HeaderDialect::None).await;
    let client = client();
    let url = server.url();
    let (admitted, refused) = exhaust(&client, &url, &[]).await;
    let stats = get(&client, &format!("{url}/__quota/stats")).await;
    for reply in admitted.iter().chain([&refused, &stats]) {
        let date = reply.header("date").expect("a Date header");
        let date = httpdate::parse_http_date(date).unwrap();
        let skew = SystemTime::now()
            .duration_since(date)
            .unwrap_or_else(|error| error.duration());
        assert!(skew < Duration::from_secs(5), "{skew:?}");
    }
}

#[tokio::test]
async fn retry_after_can_be_an_http_date() {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(LIMIT, WINDOW))
        .retry_after_format(RetryAfterFormat::HttpDate)
        .start()
        .await
        .unwrap();
    let client = client();
    let (_, refused) = exhaust(&client, &server.url(), &[]).await;
    let value = refused.header("retry-after").expect("a Retry-After");
    assert!(value.ends_with(" GMT"), "{value}");
    let signal = signal(&refused);
    assert_eq!(signal.retry_after_source, Some(Source::RetryAfter));
    let delay = signal.retry_after.unwrap();
    assert!(delay >= EARLIEST_RESET, "{delay:?}");
    assert!(delay <= WINDOW + DATE_SLACK, "{delay:?}");
}

#[tokio::test]
async fn every_mode_announces_a_reset_no_later_than_its_window() {
    let client = client();
    for rule in [
        Rule::sliding_log(LIMIT, WINDOW),
        Rule::fixed_window(LIMIT, WINDOW),
        Rule::token_bucket(LIMIT, WINDOW),
    ] {
        let server = MockServer::builder()
            .rule(rule)
            .headers(HeaderDialect::OpenAi)
            .retry_after(false)
            .start()
            .await
            .unwrap();
        let (_, refused) = exhaust(&client, &server.url(), &[]).await;
        let signal = signal(&refused);
        let delay = signal.retry_after.expect("a derived delay");
        // A bucket frees a token every window / limit.
        let earliest = match rule.mode() {
            quota_mock::Mode::TokenBucket => WINDOW / 3 - Duration::from_secs(10),
            _ => EARLIEST_RESET,
        };
        assert!(delay >= earliest, "{rule}: {delay:?}");
        assert!(delay <= WINDOW, "{rule}: {delay:?}");
        server.shutdown().await;
    }
}
