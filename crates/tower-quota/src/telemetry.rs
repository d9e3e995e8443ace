//! Event and field names, in one place.
//!
//! Every event is emitted through [`tracing`] with target [`TARGET`]. Names
//! and fields are stable: dashboards and alerts can rely on them. Fields use
//! OpenTelemetry's HTTP names where one exists and plain names otherwise.
//! Secrets (authorization, cookies, API keys, query strings) are never
//! recorded; keys come from the user's key function, which should not put
//! secrets in them.
//!
//! | event | level | fields | when |
//! |---|---|---|---|
//! | `rate_pacing_active` | DEBUG | `key`, `wait_ms`, `queued`, `cost` | a request waited for room in a sliding window |
//! | `rate_limit_queue_overloaded` | WARN | `key`, `wait_ms`, `queued`, `reason` | a request was refused because its wait would exceed `max_wait` or the queue is full |

/// The `tracing` target of every event of this crate.
pub const TARGET: &str = "tower_quota";

/// A request waited for room in a sliding window before it was sent.
pub const RATE_PACING_ACTIVE: &str = "rate_pacing_active";

/// A request was refused by the limiter because the wait it needs exceeds
/// `max_wait`, or its key's queue is full.
pub const RATE_LIMIT_QUEUE_OVERLOADED: &str = "rate_limit_queue_overloaded";

/// Field names.
pub mod field {
    /// The quota key of the request.
    pub const KEY: &str = "key";
    /// How long the request waited, in milliseconds.
    pub const WAIT_MS: &str = "wait_ms";
    /// How many requests were waiting on the key, this one included, when it arrived.
    pub const QUEUED: &str = "queued";
    /// The cost the request spends from its quotas.
    pub const COST: &str = "cost";
    /// Why a request was refused.
    pub const REASON: &str = "reason";
}
