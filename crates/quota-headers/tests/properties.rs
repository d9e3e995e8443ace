//! Property tests: every parser is total, and well-formed values round-trip.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;
use quota_headers::HEADER_NAMES;

/// A byte `HeaderValue::from_bytes` accepts: visible ASCII, space, tab and
/// obs-text (0x80..=0xFF), not control bytes nor DEL.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff]
}

/// The bytes of a valid header value, by construction: values that
/// `HeaderValue` refuses never reach a parser, and rejecting them made
/// proptest give up past some ten thousand cases.
fn header_value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(header_byte(), 0..48);
    // Mostly characters the dialects actually use, so the parsers get past
    // their first byte.
    let alphabet: Vec<u8> =
        b"0123456789.-+:;=,/\" \tTZzsmhnu\xb5()?*:abcdefgqrtwlkp@%SunMonNovGMT\xff".to_vec();
    let shaped = proptest::collection::vec(proptest::sample::select(alphabet), 0..48);
    prop_oneof![raw, shaped]
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    header_value_bytes().prop_map(|bytes| {
        HeaderValue::from_bytes(&bytes).expect("valid header bytes by construction")
    })
}

fn system_time() -> impl Strategy<Value = SystemTime> {
    (0u64..(1 << 40)).prop_map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    let pair = (0..HEADER_NAMES.len(), header_value());
    proptest::collection::vec(pair, 0..16).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (index, value) in pairs {
            map.append(HeaderName::from_static(HEADER_NAMES[index]), value);
        }
        map
    })
}

fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        proptest::sample::select(vec![200u16, 429, 503, 500]),
        100u16..1000,
    ]
    .prop_map(|code| StatusCode::from_u16(code).expect("100..1000 is valid"))
}

proptest! {
    #[test]
    fn every_leaf_parser_is_total(value in header_value(), reference in system_time()) {
        let _ = quota_headers::retry_after(&value, reference);
        let _ = quota_headers::retry_after_ms(&value);
        let _ = quota_headers::grpc_pushback(&value);
        let _ = quota_headers::grpc_status(&value);
        let _ = quota_headers::reset_seconds(&value, reference);
        let _ = quota_headers::decimal_seconds(&value);
        let _ = quota_headers::shopify_call_limit(&value);
        let _ = quota_headers::rate_limit_policy(value.as_bytes());
        let _ = quota_headers::rate_limit(value.as_bytes(), reference);
        let text = String::from_utf8_lossy(value.as_bytes());
        let _ = quota_headers::go_duration(&text);
        let _ = quota_headers::rfc3339(&text);
    }

    #[test]
    fn str_parsers_are_total_on_any_string(text in ".{0,40}") {
        let _ = quota_headers::go_duration(&text);
        let _ = quota_headers::rfc3339(&text);
        let _ = quota_headers::rate_limit(text.as_bytes(), UNIX_EPOCH);
        let _ = quota_headers::rate_limit_policy(text.as_bytes());
    }

    #[test]
    fn a_window_comes_only_from_the_fields_states_windows_looks_for(
        status in status(),
        headers in header_map(),
        now in system_time(),
    ) {
        if !quota_headers::states_windows(&headers) {
            let signal = quota_headers::parse(status, &headers, now);
            prop_assert!(signal.quotas.iter().all(|quota| quota.window.is_none()), "{signal:?}");
        }
    }

    #[test]
    fn parse_is_total_and_consistent(
        status in status(),
        headers in header_map(),
        now in system_time(),
    ) {
        let signal = quota_headers::parse(status, &headers, now);
        prop_assert_eq!(signal.retry_after.is_some(), signal.retry_after_source.is_some());
        if status == StatusCode::TOO_MANY_REQUESTS {
            prop_assert!(signal.throttled);
        }
        if signal.exhausted_until().is_some() {
            prop_assert!(signal.is_exhausted());
        }
        if signal.is_exhausted() {
            prop_assert_eq!(signal.min_remaining(), Some(0));
        }
    }

    #[test]
    fn delay_seconds_round_trip(seconds in any::<u64>(), now in system_time()) {
        let value = HeaderValue::from(seconds);
        prop_assert_eq!(
            quota_headers::retry_after(&value, now),
            Some(Duration::from_secs(seconds))
        );
    }

    #[test]
    fn http_dates_round_trip(date_secs in 0u64..253_402_300_800, reference_secs in 0u64..253_402_300_800) {
        let date = UNIX_EPOCH + Duration::from_secs(date_secs);
        let reference = UNIX_EPOCH + Duration::from_secs(reference_secs);
        let value = HeaderValue::from_str(&httpdate::fmt_http_date(date)).expect("ASCII");
        prop_assert_eq!(
            quota_headers::retry_after(&value, reference),
            Some(Duration::from_secs(date_secs.saturating_sub(reference_secs)))
        );
    }

    #[test]
    fn rfc3339_agrees_with_httpdate(date_secs in 0u64..253_402_300_800, millis in 0u32..1000) {
        // Rewrite httpdate's IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT")
        // as RFC 3339, an independent check of the calendar arithmetic.
        let imf = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(date_secs));
        let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .iter()
            .position(|name| *name == &imf[8..11])
            .expect("month name")
            + 1;
        let text = format!(
            "{}-{month:02}-{}T{}.{millis:03}Z",
            &imf[12..16],
            &imf[5..7],
            &imf[17..25]
        );
        let expected = UNIX_EPOCH + Duration::from_secs(date_secs) + Duration::from_millis(millis.into());
        prop_assert_eq!(quota_headers::rfc3339(&text), Some(expected));
    }

    #[test]
    fn go_durations_round_trip(
        hours in proptest::option::of(0u64..100_000),
        minutes in proptest::option::of(0u64..60),
        seconds in proptest::option::of(0u64..60),
        millis in 0u64..1000,
        as_millis in any::<bool>(),
    ) {
        let mut text = String::new();
        let mut expected = Duration::ZERO;
        if let Some(hours) = hours {
            text.push_str(&format!("{hours}h"));
            expected += Duration::from_secs(hours * 3600);
        }
        if let Some(minutes) = minutes {
            text.push_str(&format!("{minutes}m"));
            expected += Duration::from_secs(minutes * 60);
        }
        if let Some(seconds) = seconds {
            text.push_str(&format!("{seconds}.{millis:03}s"));
            expected += Duration::from_secs(seconds) + Duration::from_millis(millis);
        }
        if as_millis {
            text.push_str(&format!("{millis}ms"));
            expected += Duration::from_millis(millis);
        }
        if text.is_empty() {
            text.push('0');
        }
        prop_assert_eq!(quota_headers::go_duration(&text), Some(expected), "{}", text);
    }

    #[test]
    fn retry_after_ms_round_trip(whole in any::<u32>(), micros in 0u32..1000) {
        let value = HeaderValue::from_str(&format!("{whole}.{micros:03}")).expect("ASCII");
        let expected = Duration::from_millis(whole.into()) + Duration::from_micros(micros.into());
        prop_assert_eq!(quota_headers::retry_after_ms(&value), Some(expected));
    }

    #[test]
    fn reset_seconds_delta_or_epoch(seconds in any::<u32>(), reference_secs in 0u64..(1 << 34)) {
        let reference = UNIX_EPOCH + Duration::from_secs(reference_secs);
        let seconds = u64::from(seconds);
        let expected = if seconds < 1_000_000_000 {
            seconds
        } else {
            seconds.saturating_sub(reference_secs)
        };
        prop_assert_eq!(
            quota_headers::reset_seconds(&HeaderValue::from(seconds), reference),
            Some(Duration::from_secs(expected))
        );
    }

    #[test]
    fn shopify_round_trip(limit in any::<u64>(), used_fraction in 0.0f64..=1.0) {
        // Truncation toward zero keeps used within 0..=limit.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let used = ((limit as f64) * used_fraction) as u64;
        let used = used.min(limit);
        let value = HeaderValue::from_str(&format!("{used}/{limit}")).expect("ASCII");
        let quota = quota_headers::shopify_call_limit(&value).expect("well-formed");
        prop_assert_eq!(quota.limit, Some(limit));
        prop_assert_eq!(quota.remaining, Some(limit - used));
    }
}
