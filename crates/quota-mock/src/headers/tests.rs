//! The value formatters, checked against known values and read back with
//! `quota-headers`' parsers.

use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::rule::Rule;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[test]
fn delay_seconds_round_up() {
    assert_eq!(delay_seconds(Duration::ZERO), 0);
    assert_eq!(delay_seconds(Duration::from_millis(1)), 1);
    assert_eq!(delay_seconds(Duration::from_secs(2)), 2);
    assert_eq!(delay_seconds(Duration::from_millis(2001)), 3);
}

#[test]
fn go_durations_look_like_gos_and_round_up_to_the_millisecond() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(1), "1ms"),
        (ms(20), "20ms"),
        (ms(999), "999ms"),
        (Duration::from_nanos(999_000_001), "1s"),
        (ms(1000), "1s"),
        (ms(1500), "1.5s"),
        (ms(1250), "1.25s"),
        (ms(59_001), "59.001s"),
        (ms(60_000), "1m0s"),
        (ms(360_000), "6m0s"),
        (ms(123_250), "2m3.25s"),
        (ms(3_600_000), "1h0m0s"),
        (ms(3_723_500), "1h2m3.5s"),
    ];
    for (duration, expected) in cases {
        assert_eq!(go_duration(duration), expected, "{duration:?}");
        let parsed = quota_headers::go_duration(expected).unwrap();
        assert!(
            parsed >= duration,
            "{expected} is earlier than {duration:?}"
        );
        assert!(
            parsed - duration < ms(1),
            "{expected} is late by a millisecond"
        );
    }
}

#[test]
fn decimal_seconds_have_three_places_and_round_up() {
    assert_eq!(decimal_seconds(Duration::ZERO), "0.000");
    assert_eq!(decimal_seconds(Duration::from_nanos(1)), "0.001");
    assert_eq!(decimal_seconds(ms(1234)), "1.234");
    assert_eq!(decimal_seconds(Duration::from_secs(60)), "60.000");
    assert_eq!(
        decimal_seconds(Duration::from_nanos(1_470_173_023_122_000_001)),
        "1470173023.123"
    );
}

#[test]
fn rfc3339_matches_known_instants_and_reads_back() {
    let cases = [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_709_251_199, "2024-02-29T23:59:59Z"),
        (1_795_896_711, "2026-11-28T20:11:51Z"),
        (4_102_444_800, "2100-01-01T00:00:00Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),
    ];
    for (epoch_seconds, expected) in cases {
        assert_eq!(rfc3339_utc(epoch_seconds), expected);
        assert_eq!(
            quota_headers::rfc3339(expected),
            Some(UNIX_EPOCH + Duration::from_secs(epoch_seconds))
        );
    }
}

#[test]
fn rfc3339_round_trips_every_day_for_four_centuries() {
    // One instant per day across 400 years covers every leap-year rule.
    for day in 0..146_097u64 {
        let epoch_seconds = day * 86_400 + (day * 7919) % 86_400;
        let text = rfc3339_utc(epoch_seconds);
        assert_eq!(
            quota_headers::rfc3339(&text),
            Some(UNIX_EPOCH + Duration::from_secs(epoch_seconds)),
            "{text}"
        );
    }
}

#[test]
fn absolute_resets_are_never_before_the_delay_measured_from_date() {
    let wall_now = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_999_999_999);
    let delay = ms(60_000);
    let reset = epoch_seconds_after(wall_now, delay);
    let date = httpdate::parse_http_date(&httpdate::fmt_http_date(wall_now)).unwrap();
    let measured = (UNIX_EPOCH + Duration::from_secs(reset))
        .duration_since(date)
        .unwrap();
    assert!(measured >= delay);
    assert!(measured <= delay + Duration::from_secs(1));
}

#[test]
fn policy_names_are_default_alone_and_unique_otherwise() {
    let names = |rules: &[Rule]| -> Vec<String> {
        policies(rules)
            .into_iter()
            .map(|policy| policy.name)
            .collect()
    };
    assert_eq!(
        names(&[Rule::sliding_log(20, Duration::from_secs(1))]),
        ["default"]
    );
    assert_eq!(
        names(&[
            Rule::sliding_log(20, Duration::from_secs(1)),
            Rule::fixed_window(100, Duration::from_secs(60)),
            Rule::fixed_window(20, Duration::from_secs(1)),
            Rule::fixed_window(20, Duration::from_secs(1)),
        ]),
        [
            "20-per-1s",
            "100-per-1m",
            "20-per-1s-fixed",
            "20-per-1s-fixed-4"
        ]
    );
    let windows: Vec<u64> = policies(&[
        Rule::sliding_log(1, ms(500)),
        Rule::sliding_log(1, ms(60_000)),
    ])
    .into_iter()
    .map(|policy| policy.window_seconds)
    .collect();
    assert_eq!(windows, [1, 60]);
}

#[test]
fn dialect_names_round_trip() {
    for dialect in HeaderDialect::ALL {
        assert_eq!(dialect.as_str().parse::<HeaderDialect>(), Ok(dialect));
        assert_eq!(dialect.to_string(), dialect.as_str());
    }
    assert_eq!(
        "IETF".parse::<HeaderDialect>(),
        Ok(HeaderDialect::IetfStructured)
    );
    let error = "github".parse::<HeaderDialect>().unwrap_err();
    assert!(error.to_string().contains("x-ratelimit-delta"), "{error}");
}
