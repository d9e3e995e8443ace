//! Header names this crate reads, lowercase as `HeaderMap` stores them.

pub(crate) const RETRY_AFTER: &str = "retry-after";
pub(crate) const RETRY_AFTER_MS: &str = "retry-after-ms";
pub(crate) const DATE: &str = "date";
pub(crate) const GRPC_STATUS: &str = "grpc-status";
pub(crate) const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

pub(crate) const RATELIMIT: &str = "ratelimit";
pub(crate) const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub(crate) const RATELIMIT_LIMIT: &str = "ratelimit-limit";
pub(crate) const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
pub(crate) const RATELIMIT_RESET: &str = "ratelimit-reset";

pub(crate) const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
pub(crate) const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
pub(crate) const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";
pub(crate) const X_RATELIMIT_USED: &str = "x-ratelimit-used";
pub(crate) const X_RATELIMIT_RESOURCE: &str = "x-ratelimit-resource";
pub(crate) const X_RATELIMIT_RESET_AFTER: &str = "x-ratelimit-reset-after";
pub(crate) const X_RATELIMIT_BUCKET: &str = "x-ratelimit-bucket";
pub(crate) const X_RATELIMIT_SCOPE: &str = "x-ratelimit-scope";

/// OpenAI: `(name, [limit, remaining, reset])` per quota.
pub(crate) const OPENAI: [(&str, [&str; 3]); 2] = [
    (
        "requests",
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
    ),
    (
        "tokens",
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ),
];

/// Anthropic: `(name, unit, [limit, remaining, reset])` per quota.
pub(crate) const ANTHROPIC: [(&str, &str, [&str; 3]); 4] = [
    (
        "requests",
        "requests",
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ],
    ),
    (
        "tokens",
        "tokens",
        [
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ],
    ),
    (
        "input-tokens",
        "tokens",
        [
            "anthropic-ratelimit-input-tokens-limit",
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset",
        ],
    ),
    (
        "output-tokens",
        "tokens",
        [
            "anthropic-ratelimit-output-tokens-limit",
            "anthropic-ratelimit-output-tokens-remaining",
            "anthropic-ratelimit-output-tokens-reset",
        ],
    ),
];

pub(crate) const SHOPIFY_CALL_LIMIT: &str = "x-shopify-shop-api-call-limit";

/// Every header name [`parse`](crate::parse) reads, lowercase.
///
/// Useful to strip or log exactly the headers that influenced a decision,
/// and to build fuzz and property-test inputs.
pub const HEADER_NAMES: &[&str] = &[
    RETRY_AFTER,
    RETRY_AFTER_MS,
    DATE,
    GRPC_STATUS,
    GRPC_RETRY_PUSHBACK_MS,
    RATELIMIT,
    RATELIMIT_POLICY,
    RATELIMIT_LIMIT,
    RATELIMIT_REMAINING,
    RATELIMIT_RESET,
    X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
    X_RATELIMIT_USED,
    X_RATELIMIT_RESOURCE,
    X_RATELIMIT_RESET_AFTER,
    X_RATELIMIT_BUCKET,
    X_RATELIMIT_SCOPE,
    OPENAI[0].1[0],
    OPENAI[0].1[1],
    OPENAI[0].1[2],
    OPENAI[1].1[0],
    OPENAI[1].1[1],
    OPENAI[1].1[2],
    ANTHROPIC[0].2[0],
    ANTHROPIC[0].2[1],
    ANTHROPIC[0].2[2],
    ANTHROPIC[1].2[0],
    ANTHROPIC[1].2[1],
    ANTHROPIC[1].2[2],
    ANTHROPIC[2].2[0],
    ANTHROPIC[2].2[1],
    ANTHROPIC[2].2[2],
    ANTHROPIC[3].2[0],
    ANTHROPIC[3].2[1],
    ANTHROPIC[3].2[2],
    SHOPIFY_CALL_LIMIT,
];
