//! Responses the benchmarks answer with, for `benches/admission.rs` and
//! `examples/instructions.rs`, which include this file by its path.

use http::{HeaderMap, HeaderName, HeaderValue};

/// An OpenAI-style 200: content headers, a request id, processing time and
/// the five `x-ratelimit-*` fields for requests and tokens.
pub(crate) fn openai_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("openai-processing-ms", "412"),
        ("x-request-id", "req_5f1c8e0a3b2d4c6e9f7a1b3c5d7e9f1a"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "2000000"),
        ("x-ratelimit-remaining-tokens", "1999000"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}
