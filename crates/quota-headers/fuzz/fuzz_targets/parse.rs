//! Feeds arbitrary bytes to `quota_headers::parse` and every leaf parser.
//!
//! Input layout: 2 bytes of status, 5 bytes of `now` (seconds since the
//! epoch), then records separated by `\n`; a record's first byte picks a
//! header name from `HEADER_NAMES`, the rest is its value (skipped when
//! `HeaderValue` rejects it). Run with
//! `cargo +nightly fuzz run parse -- -max_total_time=60`.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use quota_headers::HEADER_NAMES;

fuzz_target!(|data: &[u8]| {
    let Some((head, records)) = data.split_at_checked(7) else {
        return;
    };
    let code = u16::from_be_bytes([head[0], head[1]]) % 900 + 100;
    let Ok(status) = StatusCode::from_u16(code) else {
        return;
    };
    let now_secs = head[2..7]
        .iter()
        .fold(0u64, |total, byte| (total << 8) | u64::from(*byte));
    let now = UNIX_EPOCH + Duration::from_secs(now_secs);

    let mut headers = HeaderMap::new();
    for record in records.split(|byte| *byte == b'\n') {
        let Some((selector, bytes)) = record.split_first() else {
            continue;
        };
        let name = HEADER_NAMES[usize::from(*selector) % HEADER_NAMES.len()];
        let Ok(value) = HeaderValue::from_bytes(bytes) else {
            continue;
        };
        leaf_parsers(&value, now);
        headers.append(HeaderName::from_static(name), value);
    }

    let signal = quota_headers::parse(status, &headers, now);
    assert_eq!(
        signal.retry_after.is_some(),
        signal.retry_after_source.is_some()
    );
    let _ = (
        signal.is_exhausted(),
        signal.min_remaining(),
        signal.exhausted_until(),
    );
});

fn leaf_parsers(value: &HeaderValue, now: std::time::SystemTime) {
    let _ = quota_headers::retry_after(value, now);
    let _ = quota_headers::retry_after_ms(value);
    let _ = quota_headers::grpc_pushback(value);
    let _ = quota_headers::grpc_status(value);
    let _ = quota_headers::reset_seconds(value, now);
    let _ = quota_headers::decimal_seconds(value);
    let _ = quota_headers::shopify_call_limit(value);
    let _ = quota_headers::rate_limit_policy(value.as_bytes());
    let _ = quota_headers::rate_limit(value.as_bytes(), now);
    if let Ok(text) = std::str::from_utf8(value.as_bytes()) {
        let _ = quota_headers::go_duration(text);
        let _ = quota_headers::rfc3339(text);
    }
}
