//! The cost of `quota_headers::parse` on one response, which runs on every
//! response of every request.
//!
//! ```text
//! cargo bench -p quota-bench --bench headers -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Group `parse`, one row per response shape:
//!
//! - `no quota headers`: eight ordinary headers (date, content-type,
//!   content-length, server, cache-control, vary, x-request-id, etag);
//! - `openai`: those plus OpenAI's six `x-ratelimit-*-{requests,tokens}`
//!   and `openai-processing-ms`;
//! - `github`: `X-RateLimit-Limit`/`-Remaining`/`-Used`/`-Reset` (epoch) /
//!   `-Resource` and `Date`;
//! - `ietf`: `RateLimit` and `RateLimit-Policy` structured fields;
//! - `429 retry-after`: status 429 with `Retry-After: 30`.
//!
//! After the timings, the allocations and allocated bytes of one parse of
//! each row (the `Signal` dropped included), counted with `stats_alloc`,
//! are printed and written to `allocations.json` beside each row's
//! criterion estimates.
// Benchmarks measure wall time, which is what std's clock is for.
#![allow(clippy::disallowed_types, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

mod support;

/// 2026-11-30T12:00:00Z, the receive time of every response.
const NOW_SECS: u64 = 1_796_040_000;
const DATE: &str = "Mon, 30 Nov 2026 12:00:00 GMT";

const ORDINARY: [(&str, &str); 8] = [
    ("date", DATE),
    ("content-type", "application/json; charset=utf-8"),
    ("content-length", "1832"),
    ("server", "nginx"),
    ("cache-control", "no-cache, no-store, must-revalidate"),
    ("vary", "Accept-Encoding"),
    ("x-request-id", "req_8f14e45fceea167a5a36dedd4bea2543"),
    ("etag", "W/\"33a64df551425fcc55e4d42a148795d9f25f89d4\""),
];

const OPENAI: [(&str, &str); 7] = [
    ("openai-processing-ms", "412"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-reset-requests", "6m0s"),
    ("x-ratelimit-limit-tokens", "2000000"),
    ("x-ratelimit-remaining-tokens", "1999412"),
    ("x-ratelimit-reset-tokens", "17ms"),
];

const GITHUB: [(&str, &str); 6] = [
    ("date", DATE),
    ("x-ratelimit-limit", "5000"),
    ("x-ratelimit-remaining", "4987"),
    ("x-ratelimit-reset", "1796042400"),
    ("x-ratelimit-used", "13"),
    ("x-ratelimit-resource", "core"),
];

const IETF: [(&str, &str); 2] = [
    (
        "ratelimit-policy",
        r#""burst";q=100;w=60, "daily";q=1000;w=86400"#,
    ),
    ("ratelimit", r#""burst";r=42;t=17, "daily";r=600;t=3200"#),
];

const RETRY_AFTER: [(&str, &str); 1] = [("retry-after", "30")];

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

/// The rows of the `parse` group: name, status and headers.
fn rows() -> Vec<(&'static str, StatusCode, HeaderMap)> {
    let openai: Vec<_> = ORDINARY.iter().chain(&OPENAI).copied().collect();
    vec![
        ("no quota headers", StatusCode::OK, headers(&ORDINARY)),
        ("openai", StatusCode::OK, headers(&openai)),
        ("github", StatusCode::OK, headers(&GITHUB)),
        ("ietf", StatusCode::OK, headers(&IETF)),
        (
            "429 retry-after",
            StatusCode::TOO_MANY_REQUESTS,
            headers(&RETRY_AFTER),
        ),
    ]
}

fn parse(c: &mut Criterion) {
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let rows = rows();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    for (name, status, headers) in &rows {
        group.bench_function(*name, |b| {
            b.iter(|| quota_headers::parse(black_box(*status), black_box(headers), black_box(now)))
        });
    }
    group.finish();
    for (name, status, headers) in &rows {
        support::count_allocations("parse", name, || {
            quota_headers::parse(black_box(*status), black_box(headers), black_box(now))
        });
    }
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = parse
}
criterion_main!(benches);
