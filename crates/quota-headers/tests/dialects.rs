//! Table-driven tests over real-looking header samples for every dialect.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use quota_headers::{Pushback, QuotaState, Signal, Source};

/// 1994-11-06T08:49:37Z, the RFC 9110 example date.
const RFC_EXAMPLE_EPOCH: u64 = 784_111_777;

fn at(epoch_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(epoch_secs)
}

fn secs(secs: u64) -> Option<Duration> {
    Some(Duration::from_secs(secs))
}

fn millis(millis: u64) -> Option<Duration> {
    Some(Duration::from_millis(millis))
}

fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("test values are valid header bytes")
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, text) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test names are valid"),
            value(text.as_bytes()),
        );
    }
    map
}

fn parse(status: u16, pairs: &[(&str, &str)], now: SystemTime) -> Signal {
    let status = StatusCode::from_u16(status).expect("valid status");
    quota_headers::parse(status, &headers(pairs), now)
}

/// Header pairs for one case.
type Pairs = &'static [(&'static str, &'static str)];

/// One precedence case: the delay and source `parse` must pick.
struct PrecedenceCase {
    name: &'static str,
    status: u16,
    headers: Pairs,
    delay: Option<Duration>,
    source: Option<Source>,
}

/// One `throttled` case.
struct ThrottleCase {
    name: &'static str,
    status: u16,
    headers: Pairs,
    throttled: bool,
}

/// `Some((limit, remaining))`.
type LimitRemaining = Option<(u64, u64)>;

/// The first quota's name, remaining and reset.
type FirstQuota = Option<(Option<&'static str>, Option<u64>, Option<Duration>)>;

fn quota(source: Source) -> QuotaState {
    QuotaState::new(source)
}

// ---------------------------------------------------------------- Retry-After

#[test]
fn retry_after_delay_seconds_and_http_dates() {
    let now = at(RFC_EXAMPLE_EPOCH - 37);
    let cases: &[(&[u8], Option<Duration>)] = &[
        (b"120", secs(120)),
        (b"0", secs(0)),
        (b"1000000", secs(1_000_000)),
        (b"18446744073709551615", secs(u64::MAX)),
        (b" 7 ", secs(7)),
        (b"-1", None),
        (b"1.5", None),
        (b"+1", None),
        (b"1e3", None),
        (b"", None),
        (b"18446744073709551616", None),
        (b"99999999999999999999999999999999", None),
        (b"\xff\xfe", None),
        (b"\x80", None),
        (b"soon", None),
        // The three formats RFC 9110 requires: IMF-fixdate, RFC 850, asctime.
        (b"Sun, 06 Nov 1994 08:49:37 GMT", secs(37)),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", secs(37)),
        (b"Sun Nov  6 08:49:37 1994", secs(37)),
        // A date in the past is zero.
        (b"Sat, 05 Nov 1994 08:49:37 GMT", secs(0)),
        (b"Thu, 01 Jan 1970 00:00:00 GMT", secs(0)),
        // Wrong weekday, impossible day, wrong zone: absent.
        (b"Mon, 06 Nov 1994 08:49:37 GMT", None),
        (b"Wed, 31 Feb 1994 08:49:37 GMT", None),
        (b"Sun, 06 Nov 1994 08:49:37 UTC", None),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            quota_headers::retry_after(&value(bytes), now),
            *expected,
            "Retry-After: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn retry_after_ms_integer_and_decimal() {
    let cases: &[(&[u8], Option<Duration>)] = &[
        (b"1500", millis(1500)),
        (b"0", millis(0)),
        (b"20.5", Some(Duration::from_micros(20_500))),
        (b"0.001", Some(Duration::from_micros(1))),
        (b"-5", None),
        (b"", None),
        (b"1.", None),
        (b".5", None),
        (b"NaN", None),
        (b"inf", None),
        (b"\xff\xfe", None),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            quota_headers::retry_after_ms(&value(bytes)),
            *expected,
            "retry-after-ms: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn retry_after_date_is_measured_on_the_server_clock() {
    // Our clock runs an hour fast; the server's Date says 30 s before the
    // Retry-After date.
    let server_now = RFC_EXAMPLE_EPOCH - 30;
    let signal = parse(
        503,
        &[
            ("date", "Sun, 06 Nov 1994 08:49:07 GMT"),
            ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ],
        at(server_now + 3600),
    );
    assert_eq!(signal.retry_after, secs(30));
    assert!(signal.throttled);

    let without_date = parse(
        503,
        &[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")],
        at(server_now + 3600),
    );
    assert_eq!(without_date.retry_after, secs(0));
}

// ----------------------------------------------------------------- Precedence

#[test]
fn retry_after_precedence() {
    let now = at(1_700_000_000);
    let cases = [
        PrecedenceCase {
            name: "retry-after-ms beats Retry-After (more precise)",
            status: 429,
            headers: &[("retry-after", "2"), ("retry-after-ms", "1500")],
            delay: millis(1500),
            source: Some(Source::RetryAfterMs),
        },
        PrecedenceCase {
            name: "an invalid retry-after-ms falls back to Retry-After",
            status: 429,
            headers: &[("retry-after", "2"), ("retry-after-ms", "soon")],
            delay: secs(2),
            source: Some(Source::RetryAfter),
        },
        PrecedenceCase {
            name: "Retry-After beats gRPC pushback",
            status: 429,
            headers: &[("retry-after", "2"), ("grpc-retry-pushback-ms", "100")],
            delay: secs(2),
            source: Some(Source::RetryAfter),
        },
        PrecedenceCase {
            name: "Retry-After beats an exhausted quota's reset",
            status: 429,
            headers: &[
                ("retry-after", "2"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "60"),
            ],
            delay: secs(2),
            source: Some(Source::RetryAfter),
        },
        PrecedenceCase {
            name: "gRPC pushback beats an exhausted quota's reset",
            status: 200,
            headers: &[
                ("grpc-status", "8"),
                ("grpc-retry-pushback-ms", "250"),
                ("ratelimit", r#""default";r=0;t=9"#),
            ],
            delay: millis(250),
            source: Some(Source::GrpcPushback),
        },
        PrecedenceCase {
            name: "a 429 without a delay derives one from the exhausted quota",
            status: 429,
            headers: &[
                ("x-ratelimit-limit", "5"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "1.234"),
                ("x-ratelimit-bucket", "abcd1234"),
            ],
            delay: millis(1234),
            source: Some(Source::Discord),
        },
        PrecedenceCase {
            name: "the derived delay is the longest exhausted reset",
            status: 429,
            headers: &[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "6m0s"),
                ("x-ratelimit-remaining", "3"),
                ("x-ratelimit-reset", "7200"),
            ],
            delay: secs(360),
            source: Some(Source::OpenAi),
        },
        PrecedenceCase {
            name: "a successful response with an exhausted quota has no retry delay",
            status: 200,
            headers: &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "60")],
            delay: None,
            source: None,
        },
        PrecedenceCase {
            name: "a 429 with nothing to go on has no delay",
            status: 429,
            headers: &[],
            delay: None,
            source: None,
        },
    ];
    for case in cases {
        let signal = parse(case.status, case.headers, now);
        assert_eq!(signal.retry_after, case.delay, "{}", case.name);
        assert_eq!(signal.retry_after_source, case.source, "{}", case.name);
    }
}

#[test]
fn throttled_rule() {
    let now = at(1_700_000_000);
    let cases = [
        ThrottleCase {
            name: "429 alone",
            status: 429,
            headers: &[],
            throttled: true,
        },
        ThrottleCase {
            name: "429 with a delay",
            status: 429,
            headers: &[("retry-after", "1")],
            throttled: true,
        },
        ThrottleCase {
            name: "503 alone is an outage",
            status: 503,
            headers: &[],
            throttled: false,
        },
        ThrottleCase {
            name: "503 with Retry-After",
            status: 503,
            headers: &[("retry-after", "1")],
            throttled: true,
        },
        ThrottleCase {
            name: "503 with an invalid Retry-After",
            status: 503,
            headers: &[("retry-after", "-1")],
            throttled: false,
        },
        ThrottleCase {
            name: "503 with an exhausted quota and reset",
            status: 503,
            headers: &[("ratelimit", r#""default";r=0;t=5"#)],
            throttled: true,
        },
        ThrottleCase {
            name: "200 with Retry-After",
            status: 200,
            headers: &[("retry-after", "1")],
            throttled: false,
        },
        ThrottleCase {
            name: "500",
            status: 500,
            headers: &[("retry-after", "1")],
            throttled: false,
        },
        ThrottleCase {
            name: "gRPC RESOURCE_EXHAUSTED",
            status: 200,
            headers: &[("grpc-status", "8")],
            throttled: true,
        },
        ThrottleCase {
            name: "gRPC UNAVAILABLE",
            status: 200,
            headers: &[("grpc-status", "14")],
            throttled: true,
        },
        ThrottleCase {
            name: "gRPC OK",
            status: 200,
            headers: &[("grpc-status", "0")],
            throttled: false,
        },
        ThrottleCase {
            name: "gRPC INTERNAL",
            status: 200,
            headers: &[("grpc-status", "13")],
            throttled: false,
        },
        ThrottleCase {
            name: "gRPC garbage status",
            status: 200,
            headers: &[("grpc-status", "eight")],
            throttled: false,
        },
    ];
    for case in cases {
        let throttled = parse(case.status, case.headers, now).throttled;
        assert_eq!(throttled, case.throttled, "{}", case.name);
    }
}

// ----------------------------------------------------------------------- gRPC

#[test]
fn grpc_pushback_values() {
    let cases: &[(&[u8], Pushback)] = &[
        (b"0", Pushback::RetryAfter(Duration::ZERO)),
        (b"250", Pushback::RetryAfter(Duration::from_millis(250))),
        (b"-1", Pushback::DoNotRetry),
        (b"-250", Pushback::DoNotRetry),
        (b"1.5", Pushback::DoNotRetry),
        (b"", Pushback::DoNotRetry),
        (b"later", Pushback::DoNotRetry),
        (b"\xff", Pushback::DoNotRetry),
        (b"99999999999999999999999", Pushback::DoNotRetry),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            quota_headers::grpc_pushback(&value(bytes)),
            *expected,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn grpc_negative_pushback_means_do_not_retry() {
    let signal = parse(
        200,
        &[("grpc-status", "8"), ("grpc-retry-pushback-ms", "-1")],
        at(0),
    );
    assert!(signal.do_not_retry);
    assert!(signal.throttled);
    assert_eq!(signal.grpc_status, Some(8));
    assert_eq!(signal.retry_after, None);
    assert_eq!(signal.retry_after_source, None);

    let unparseable = parse(
        200,
        &[
            ("grpc-status", "14"),
            ("grpc-retry-pushback-ms", "soon"),
            ("ratelimit", r#""default";r=0;t=9"#),
        ],
        at(0),
    );
    assert!(unparseable.do_not_retry);
    assert_eq!(unparseable.grpc_status, Some(14));
    assert_eq!(unparseable.retry_after, None, "no delay is derived either");

    let positive = parse(
        200,
        &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "100")],
        at(0),
    );
    assert!(!positive.do_not_retry);
    assert_eq!(positive.retry_after, millis(100));
    assert_eq!(positive.retry_after_source, Some(Source::GrpcPushback));
}

#[test]
fn grpc_status_values() {
    let cases: &[(&[u8], Option<i32>)] = &[
        (b"0", Some(0)),
        (b"8", Some(8)),
        (b"14", Some(14)),
        (b"2147483647", Some(i32::MAX)),
        (b"2147483648", None),
        (b"-8", None),
        (b"", None),
        (b"\xfe", None),
    ];
    for (bytes, expected) in cases {
        assert_eq!(quota_headers::grpc_status(&value(bytes)), *expected);
    }
}

// ----------------------------------------------------------------------- IETF

#[test]
fn ietf_several_policies_matched_by_name() {
    let signal = parse(
        200,
        &[
            (
                "ratelimit-policy",
                r#""burst";q=100;w=60,"daily";q=1000;w=86400;qu="requests";pk=:dXNlci0x:"#,
            ),
            (
                "ratelimit-policy",
                r#""bytes";q=1048576;qu="content-bytes";w=3600"#,
            ),
            ("ratelimit", r#""daily";r=999;t=3600, "burst";r=0;t=30"#),
        ],
        at(1_700_000_000),
    );

    let mut daily = quota(Source::IetfRateLimit);
    daily.name = Some("daily".into());
    daily.limit = Some(1000);
    daily.remaining = Some(999);
    daily.reset_after = secs(3600);
    daily.window = secs(86_400);
    daily.unit = Some("requests".into());
    daily.partition_key = Some("user-1".into());

    let mut burst = quota(Source::IetfRateLimit);
    burst.name = Some("burst".into());
    burst.limit = Some(100);
    burst.remaining = Some(0);
    burst.reset_after = secs(30);
    burst.window = secs(60);

    // A policy without a RateLimit item is still reported.
    let mut bytes = quota(Source::IetfRateLimit);
    bytes.name = Some("bytes".into());
    bytes.limit = Some(1_048_576);
    bytes.window = secs(3600);
    bytes.unit = Some("content-bytes".into());

    assert_eq!(signal.quotas, vec![daily, burst, bytes]);
    assert!(signal.is_exhausted());
    assert_eq!(signal.min_remaining(), Some(0));
    assert_eq!(signal.exhausted_until(), secs(30));
    assert_eq!(signal.retry_after, None, "200 needs no retry");
}

#[test]
fn ietf_current_syntax_variants() {
    let now = at(1_700_000_000);
    let cases: &[(&str, &[u8], FirstQuota)] = &[
        (
            "string name",
            br#""default";r=50;t=30"#,
            Some((Some("default"), Some(50), secs(30))),
        ),
        (
            "token name (draft-07)",
            b"default;r=50;t=30",
            Some((Some("default"), Some(50), secs(30))),
        ),
        (
            "negative remaining",
            br#""default";r=-1;t=30"#,
            Some((Some("default"), None, secs(30))),
        ),
        (
            "decimal reset",
            br#""default";r=1;t=1.5"#,
            Some((Some("default"), Some(1), millis(1500))),
        ),
        (
            "string remaining",
            br#""default";r="5""#,
            Some((Some("default"), None, None)),
        ),
        ("not a structured field", b"\"unterminated", None),
        ("only integers", b"1, 2, 3", None),
        ("empty", b"", None),
        ("non-UTF-8", b"\xff\xfe", None),
    ];
    for (name, bytes, expected) in cases {
        let first = quota_headers::rate_limit(bytes, now).map(|quotas| {
            let quota = &quotas[0];
            (
                quota.name.as_deref().map(str::to_owned),
                quota.remaining,
                quota.reset_after,
            )
        });
        let expected = expected.map(|(n, r, t)| (n.map(str::to_owned), r, t));
        assert_eq!(first, expected, "{name}");
    }
}

#[test]
fn ietf_legacy_separate_fields() {
    let signal = parse(
        429,
        &[
            ("ratelimit-limit", "100, 100;w=60, 1000;w=3600"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "5"),
        ],
        at(1_700_000_000),
    );
    let mut expected = quota(Source::IetfLegacy);
    expected.limit = Some(100);
    expected.remaining = Some(0);
    expected.reset_after = secs(5);
    expected.window = secs(60);
    assert_eq!(signal.quotas, vec![expected]);
    assert_eq!(signal.retry_after, secs(5));
    assert_eq!(signal.retry_after_source, Some(Source::IetfLegacy));

    // Window from an old-style (integer) RateLimit-Policy.
    let signal = parse(
        200,
        &[
            ("ratelimit-limit", "10"),
            ("ratelimit-policy", "10;w=1, 50;w=60"),
        ],
        at(0),
    );
    assert_eq!(signal.quotas.len(), 1);
    assert_eq!(signal.quotas[0].window, secs(1));

    // An old-style policy alone reports nothing.
    assert!(
        parse(200, &[("ratelimit-policy", "10;w=1")], at(0))
            .quotas
            .is_empty()
    );
}

#[test]
fn ietf_legacy_dictionary_form() {
    let signal = parse(
        200,
        &[("ratelimit", "limit=100, remaining=50, reset=5")],
        at(1_700_000_000),
    );
    let mut expected = quota(Source::IetfLegacy);
    expected.limit = Some(100);
    expected.remaining = Some(50);
    expected.reset_after = secs(5);
    assert_eq!(signal.quotas, vec![expected]);
}

// ---------------------------------------------------------------- X-RateLimit

#[test]
fn x_rate_limit_epoch_reset_is_skew_corrected_with_date() {
    // GitHub: reset is epoch seconds. The server's Date is 1_700_000_000;
    // our clock is 10 minutes behind.
    let pairs = [
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4999"),
        ("x-ratelimit-used", "1"),
        ("x-ratelimit-reset", "1700000060"),
        ("x-ratelimit-resource", "core"),
    ];
    let signal = parse(200, &pairs, at(1_700_000_000 - 600));
    let mut expected = quota(Source::XRateLimit);
    expected.limit = Some(5000);
    expected.remaining = Some(4999);
    expected.reset_after = secs(60);
    expected.name = Some("core".into());
    assert_eq!(signal.quotas, vec![expected]);

    // Without Date the same reset is measured from our (slow) clock.
    let no_date = parse(200, &pairs[1..], at(1_700_000_000 - 600));
    assert_eq!(no_date.quotas[0].reset_after, secs(660));
}

#[test]
fn x_rate_limit_reset_epoch_or_delta() {
    let reference = at(1_700_000_000);
    let cases: &[(&[u8], Option<Duration>)] = &[
        (b"60", secs(60)),
        (b"0", secs(0)),
        (b"999999999", secs(999_999_999)),
        (b"1700000060", secs(60)),
        (b"1699999000", secs(0)),
        (b"1700000001.5", millis(1500)),
        (b"2.5", millis(2500)),
        (b"-60", None),
        (b"", None),
        (b"18446744073709551615", None),
        (b"\xff", None),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            quota_headers::reset_seconds(&value(bytes), reference),
            *expected,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Regression: `X-RateLimit-Reset` in epoch milliseconds was read as epoch
/// seconds, a reset 53,000 years ahead that locked a key out.
#[test]
fn an_epoch_reset_in_milliseconds_is_read_as_milliseconds() {
    // Date is 1_700_000_000; the reset 60 s later, in milliseconds.
    let date = ("date", "Tue, 14 Nov 2023 22:13:20 GMT");
    let far_behind = at(1_700_000_000 - 3600);
    let cases: &[(&str, Pairs)] = &[
        (
            "x-ratelimit",
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000060000"),
            ],
        ),
        (
            "legacy fields",
            &[
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "1700000060000"),
            ],
        ),
        (
            "legacy dictionary",
            &[("ratelimit", "remaining=0, reset=1700000060000")],
        ),
        (
            "current syntax",
            &[("ratelimit", r#""default";r=0;t=1700000060000"#)],
        ),
    ];
    for (name, pairs) in cases {
        let mut with_date = pairs.to_vec();
        with_date.push(date);
        let signal = parse(200, &with_date, far_behind);
        assert_eq!(
            signal.exhausted_until(),
            secs(60),
            "{name}, measured from Date"
        );
        let signal = parse(429, pairs, at(1_700_000_000));
        assert_eq!(signal.retry_after, secs(60), "{name}, measured from now");
    }
    // Epoch seconds far ahead stay what they say: capping is the caller's job.
    let year_2106 = parse(
        200,
        &[("ratelimit", r#""default";r=0;t=4294967296"#)],
        at(0),
    );
    assert_eq!(year_2106.exhausted_until(), secs(4_294_967_296));
}

#[test]
fn x_rate_limit_remaining_from_used() {
    let signal = parse(
        200,
        &[("x-ratelimit-limit", "60"), ("x-ratelimit-used", "45")],
        at(0),
    );
    assert_eq!(signal.quotas[0].remaining, Some(15));

    let overused = parse(
        200,
        &[("x-ratelimit-limit", "60"), ("x-ratelimit-used", "61")],
        at(0),
    );
    assert_eq!(overused.quotas[0].remaining, None);
}

#[test]
fn discord_reset_after_beats_epoch_reset() {
    let signal = parse(
        429,
        &[
            ("date", "Tue, 02 Aug 2016 21:23:42 GMT"),
            ("retry-after", "1"),
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1470173023.123"),
            ("x-ratelimit-reset-after", "1.234"),
            ("x-ratelimit-bucket", "abcd1234"),
            ("x-ratelimit-scope", "user"),
        ],
        at(1_470_173_022),
    );
    let mut expected = quota(Source::Discord);
    expected.limit = Some(5);
    expected.remaining = Some(0);
    expected.reset_after = millis(1234);
    expected.partition_key = Some("abcd1234".into());
    expected.name = Some("user".into());
    assert_eq!(signal.quotas, vec![expected]);
    assert_eq!(signal.retry_after, secs(1));
    assert_eq!(signal.retry_after_source, Some(Source::RetryAfter));

    // Without Reset-After the decimal epoch is used, measured from Date.
    let epoch_only = parse(
        200,
        &[
            ("date", "Tue, 02 Aug 2016 21:23:42 GMT"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1470173023.123"),
            ("x-ratelimit-bucket", "abcd1234"),
        ],
        at(0),
    );
    assert_eq!(epoch_only.quotas[0].reset_after, millis(1123));
    assert_eq!(epoch_only.exhausted_until(), millis(1123));
}

// --------------------------------------------------------------------- OpenAI

#[test]
fn go_durations() {
    let cases: &[(&str, Option<Duration>)] = &[
        ("1s", secs(1)),
        ("6m0s", secs(360)),
        ("20ms", millis(20)),
        ("0.5s", millis(500)),
        ("1h2m3.5s", millis(3_723_500)),
        ("59.929s", millis(59_929)),
        ("0", secs(0)),
        ("0s", secs(0)),
        ("100ns", Some(Duration::from_nanos(100))),
        ("2us", Some(Duration::from_micros(2))),
        ("1.5h", secs(5400)),
        ("", None),
        ("1", None),
        ("s", None),
        ("-1s", None),
        ("1d", None),
        ("1s 2ms", None),
    ];
    for (text, expected) in cases {
        assert_eq!(quota_headers::go_duration(text), *expected, "{text:?}");
    }
}

#[test]
fn openai_requests_and_tokens() {
    let signal = parse(
        200,
        &[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
        at(1_700_000_000),
    );
    let mut requests = quota(Source::OpenAi);
    requests.name = Some("requests".into());
    requests.unit = Some("requests".into());
    requests.limit = Some(60);
    requests.remaining = Some(59);
    requests.reset_after = secs(1);
    let mut tokens = quota(Source::OpenAi);
    tokens.name = Some("tokens".into());
    tokens.unit = Some("tokens".into());
    tokens.limit = Some(150_000);
    tokens.remaining = Some(149_984);
    tokens.reset_after = secs(360);
    assert_eq!(signal.quotas, vec![requests, tokens]);
    assert_eq!(signal.min_remaining(), Some(59));
    assert!(!signal.is_exhausted());
}

#[test]
fn openai_bare_seconds_reset_is_accepted() {
    let signal = parse(
        200,
        &[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "2.5"),
        ],
        at(0),
    );
    assert_eq!(signal.quotas[0].reset_after, millis(2500));
}

// ------------------------------------------------------------------ Anthropic

#[test]
fn anthropic_rfc3339_resets_are_skew_corrected() {
    // Server Date 2024-05-01T12:00:00Z; our clock is 5 s ahead.
    let date = 1_714_564_800;
    let signal = parse(
        429,
        &[
            ("date", "Wed, 01 May 2024 12:00:00 GMT"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:30Z"),
            ("anthropic-ratelimit-tokens-limit", "40000"),
            ("anthropic-ratelimit-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-tokens-reset",
                "2024-05-01T14:00:01.5+02:00",
            ),
            ("anthropic-ratelimit-input-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2024-05-01T12:00:45Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
        ],
        at(date + 5),
    );
    let summary: Vec<_> = signal
        .quotas
        .iter()
        .map(|quota| {
            (
                quota.source,
                quota.name.as_deref(),
                quota.unit.as_deref(),
                quota.limit,
                quota.remaining,
                quota.reset_after,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Source::Anthropic,
                Some("requests"),
                Some("requests"),
                Some(50),
                Some(0),
                secs(30)
            ),
            (
                Source::Anthropic,
                Some("tokens"),
                Some("tokens"),
                Some(40_000),
                Some(39_000),
                millis(1500)
            ),
            (
                Source::Anthropic,
                Some("input-tokens"),
                Some("tokens"),
                None,
                Some(0),
                secs(45)
            ),
            (
                Source::Anthropic,
                Some("output-tokens"),
                Some("tokens"),
                Some(8000),
                None,
                None
            ),
        ]
    );
    // A 429 without retry-after: wait for the last exhausted quota.
    assert_eq!(signal.retry_after, secs(45));
    assert_eq!(signal.retry_after_source, Some(Source::Anthropic));
    assert_eq!(signal.exhausted_until(), secs(45));
}

#[test]
fn anthropic_retry_after_is_plain_retry_after() {
    let signal = parse(
        429,
        &[
            ("retry-after", "12"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:30Z"),
        ],
        at(1_714_564_800),
    );
    assert_eq!(signal.retry_after, secs(12));
    assert_eq!(signal.retry_after_source, Some(Source::RetryAfter));
}

#[test]
fn rfc3339_samples() {
    let cases: &[(&str, Option<SystemTime>)] = &[
        ("2024-05-01T12:00:30Z", Some(at(1_714_564_830))),
        (
            "2024-05-01T12:00:30.250Z",
            Some(at(1_714_564_830) + Duration::from_millis(250)),
        ),
        ("2024-05-01T13:00:30+01:00", Some(at(1_714_564_830))),
        ("2024-05-01 12:00:30z", Some(at(1_714_564_830))),
        ("2024-05-01T12:00:30", None),
        ("2024-02-30T12:00:30Z", None),
        ("May 1 2024", None),
        ("", None),
    ];
    for (text, expected) in cases {
        assert_eq!(quota_headers::rfc3339(text), *expected, "{text:?}");
    }
}

// -------------------------------------------------------------------- Shopify

#[test]
fn shopify_call_limit() {
    // (value, Some((limit, remaining)))
    let cases: &[(&[u8], LimitRemaining)] = &[
        (b"32/40", Some((40, 8))),
        (b"40/40", Some((40, 0))),
        (b"0/80", Some((80, 80))),
        (b" 1 / 40 ", Some((40, 39))),
        (b"41/40", None),
        (b"32", None),
        (b"32/", None),
        (b"/40", None),
        (b"-1/40", None),
        (b"32/40/50", None),
        (b"\xff/40", None),
    ];
    for (bytes, expected) in cases {
        let parsed = quota_headers::shopify_call_limit(&value(bytes)).map(|quota| {
            (
                quota.limit.unwrap_or_default(),
                quota.remaining.unwrap_or_default(),
            )
        });
        assert_eq!(parsed, *expected, "{:?}", String::from_utf8_lossy(bytes));
    }
    let signal = parse(200, &[("x-shopify-shop-api-call-limit", "40/40")], at(0));
    assert_eq!(signal.quotas[0].source, Source::Shopify);
    assert!(signal.is_exhausted());
    assert_eq!(signal.exhausted_until(), None, "Shopify reports no reset");
}

// ---------------------------------------------------------------- Robustness

#[test]
fn non_utf8_everywhere_is_absent() {
    let mut map = HeaderMap::new();
    for name in quota_headers::HEADER_NAMES {
        map.insert(*name, value(b"\xff\xfe"));
    }
    let signal = quota_headers::parse(StatusCode::TOO_MANY_REQUESTS, &map, at(0));
    // The only non-absent reading: a present-but-unparseable pushback.
    let mut expected = Signal::default();
    expected.throttled = true;
    expected.do_not_retry = true;
    assert_eq!(signal, expected);
}

#[test]
fn no_headers_is_the_default_signal() {
    assert_eq!(parse(200, &[], at(0)), Signal::default());
}

#[test]
fn multiple_dialects_are_all_reported() {
    let signal = parse(
        200,
        &[
            ("ratelimit", r#""default";r=5;t=10"#),
            ("x-ratelimit-remaining", "7"),
            ("x-ratelimit-remaining-requests", "9"),
            ("x-shopify-shop-api-call-limit", "1/40"),
        ],
        at(0),
    );
    let sources: Vec<_> = signal.quotas.iter().map(|quota| quota.source).collect();
    assert_eq!(
        sources,
        [
            Source::IetfRateLimit,
            Source::XRateLimit,
            Source::OpenAi,
            Source::Shopify
        ]
    );
    assert_eq!(signal.min_remaining(), Some(5));
}
