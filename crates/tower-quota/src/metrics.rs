//! Counters and histograms through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`).
//!
//! Every layer records its metrics where it emits its [`telemetry`](crate::telemetry)
//! events; the names below are stable. Without the `metrics` feature the
//! names remain, and recording compiles to nothing. With it, install any
//! `metrics` recorder (for example `metrics-exporter-prometheus`) and the
//! series appear; with no recorder installed, recording costs a few
//! nanoseconds. Call [`describe`] once after installing the recorder to give
//! each series its unit and help text.
//!
//! | name | kind | labels | recorded when |
//! |---|---|---|---|
//! | `tower_quota_rate_limiting_request_time_in_queue_seconds` | histogram | `key`, `class` | a request is admitted by a sliding window: how long it waited (0 for most) |
//! | `tower_quota_rate_limiting_requests_total` | counter | `key`, `result`, `class` | a sliding window decided a request of priority class `class`: `acquired` (admitted) or `rejected` (refused: see `tower_quota_refused_total` for why) |
//! | `tower_quota_http_client_request_resends` | histogram | | a logical request through `JitterBackoffLayer` ended: how many times it was re-sent (0 for most) |
//! | `tower_quota_refused_total` | counter | `key`, `reason` | a request fails without being sent: `max_wait`, `queue_full`, `deadline`, `cost_too_large`, `store_error`, `gate_closed` or `circuit_open` |
//! | `tower_quota_throttled_total` | counter | `key`, `status`, `outcome` | the server throttled a request (`rate_limit_hit`); `outcome` as in the event |
//! | `tower_quota_gate_closed_total` | counter | `key`, `reason` | a response closed its key's gate (`gate_closed`): `throttled` or `quota_exhausted` |
//! | `tower_quota_gate_wait_seconds` | histogram | `key` | an attempt passes its key's gate: how long it waited there (0 for most) |
//! | `tower_quota_retries_total` | counter | `reason` | `JitterBackoffLayer` schedules a retry: `throttled` or `transient` |
//! | `tower_quota_backoff_seconds` | histogram | `reason` | as `tower_quota_retries_total`: the wait before the retry |
//! | `tower_quota_retries_exhausted_total` | counter | `reason` | a retryable failure goes back to the caller: `max_attempts`, `max_elapsed`, `max_wait`, `body_not_replayable`, `not_idempotent` or `budget_exhausted` |
//! | `tower_quota_circuit_transitions_total` | counter | `key`, `state` | a breaker changes state: to `open`, `half_open` or `closed` |
//! | `tower_quota_pacing_drift_total` | counter | `key` | the provider refused a request the sliding window had room for, and the key's margin widened (`pacing_drift`) |
//! | `tower_quota_pacing_lagging_total` | counter | | the client's tasks ran too late for `sent_within`: for a window, admissions are held until answered (through Redis: a window unless answered) (`pacing_lagging`) |
//! | `tower_quota_quota_mismatch_total` | counter | `key` | a response announced another size for a configured quota (`quota_mismatch`) |
//! | `tower_quota_pacing_burst` | gauge | `key` | a key's learned burst changed (`rate_adapted`): requests it sends back to back, 0 when spacing is off |
//! | `tower_quota_pacing_rate` | gauge | `key` | a key's learned rate changed (`rate_adapted`): requests per second it spaces its requests at, 0 when spacing is off |
//! | `tower_quota_batch_items` | histogram | `reason` | a `BatchLayer` sent a batch: how many items it held; `reason` as in `batch_sent` |
//! | `tower_quota_batch_failures_total` | counter | `outcome` | a batch failed (`batch_failed`): `failed` or `resplit` |
//! | `tower_quota_coalesced_total` | counter | | a request joined an identical call in flight (`request_coalesced`) |
//! | `tower_quota_connections_opened_total` | counter | | a tracked connector opened a connection (`connection_opened`); its rate is the new connections per second |
//! | `tower_quota_connections_open` | gauge | | connections a tracked connector opened and the client has not dropped |
//! | `tower_quota_connection_setup_seconds` | histogram | | a tracked connector opened a connection: how long it took |
//! | `tower_quota_connection_failures_total` | counter | | a tracked connector failed to open a connection |
//! | `tower_quota_store_errors_total` | counter | `key`, `kind` | a shared store (Redis) failed; recorded by the store through [`store_error`] |
//!
//! # Names
//!
//! Where OpenTelemetry's semantic conventions name the same measure, the
//! name follows them, under the `tower_quota` prefix and in Prometheus form
//! (dots as underscores, the unit and `_total` as suffixes): the time in
//! queue and the requests by result of its rate-limiting conventions
//! (`*.rate_limiting.request.time_in_queue`, `*.rate_limiting.requests`
//! with its `result` attribute), and the resend count of its HTTP client
//! conventions (`http.request.resend_count`, as `…_request_resends`: a
//! Prometheus name does not end in `_count`, which its summaries and
//! histograms append). The others have no convention to follow. The
//! `axum_proxy` example serves them all at `GET /metrics` with
//! `metrics-exporter-prometheus`.
//!
//! # Label values
//!
//! `key` is the quota key of the request, as in the telemetry events: every
//! distinct key is a distinct series. Keep key functions to a bounded set
//! (providers, hosts, tenants), never request ids, and never secrets (keys
//! derived from API keys by the `config` module are hashed). The other
//! labels take the few values listed above.
//!
//! # Example
//!
//! ```
//! // After installing a recorder, once:
//! tower_quota::metrics::describe();
//! assert_eq!(
//!     tower_quota::metrics::REQUEST_TIME_IN_QUEUE_SECONDS,
//!     "tower_quota_rate_limiting_request_time_in_queue_seconds"
//! );
//! ```

// The helpers take what the call sites have at hand; without the feature
// their arguments are unused.
#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

use crate::Key;
use crate::sliding_window::Priority;

/// Histogram: how long an admitted request waited for room in its sliding
/// window, in seconds (OpenTelemetry's `rate_limiting.request.time_in_queue`).
/// Label `key`.
pub const REQUEST_TIME_IN_QUEUE_SECONDS: &str =
    "tower_quota_rate_limiting_request_time_in_queue_seconds";

/// Counter: requests a sliding window decided, by `result`: `acquired` or
/// `rejected` (OpenTelemetry's `rate_limiting.requests`). Labels `key`,
/// `result`.
pub const RATE_LIMITING_REQUESTS_TOTAL: &str = "tower_quota_rate_limiting_requests_total";

/// Histogram: how many times a logical request through `JitterBackoffLayer`
/// was re-sent, recorded when it ends (OpenTelemetry's
/// `http.request.resend_count`). No labels.
pub const REQUEST_RESEND_COUNT: &str = "tower_quota_http_client_request_resends";

/// Counter: requests that failed without being sent. Labels `key`, `reason`.
pub const REFUSED_TOTAL: &str = "tower_quota_refused_total";

/// Counter: responses by which the server throttled a request. Labels `key`,
/// `status`, `outcome`.
pub const THROTTLED_TOTAL: &str = "tower_quota_throttled_total";

/// Counter: gates closed (or extended) by a response. Labels `key`, `reason`.
pub const GATE_CLOSED_TOTAL: &str = "tower_quota_gate_closed_total";

/// Histogram: how long an attempt waited at its key's gate, in seconds.
/// Label `key`.
pub const GATE_WAIT_SECONDS: &str = "tower_quota_gate_wait_seconds";

/// Counter: retries scheduled by `JitterBackoffLayer`. Label `reason`.
pub const RETRIES_TOTAL: &str = "tower_quota_retries_total";

/// Histogram: the wait before each scheduled retry, in seconds. Label `reason`.
pub const BACKOFF_SECONDS: &str = "tower_quota_backoff_seconds";

/// Counter: retryable failures returned to the caller. Label `reason`.
pub const RETRIES_EXHAUSTED_TOTAL: &str = "tower_quota_retries_exhausted_total";

/// Counter: circuit breaker state changes. Labels `key`, `state`.
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "tower_quota_circuit_transitions_total";

/// Counter: errors of a shared store. Labels `key`, `kind`.
pub const STORE_ERRORS_TOTAL: &str = "tower_quota_store_errors_total";

/// Counter: refusals (429) of requests the sliding window had room for,
/// each of which widened its key's margin. Labels: `key`.
pub const PACING_DRIFT_TOTAL: &str = "tower_quota_pacing_drift_total";

/// Counter: episodes in which the client's tasks waited too long to run for
/// requests to leave within the sliding window's `sent_within` bound (see
/// the `pacing_lagging` event). No labels.
pub const PACING_LAGGING_TOTAL: &str = "tower_quota_pacing_lagging_total";

/// Counter: announcements of a quota size other than the configured one
/// (`quota_mismatch`), once per change. Labels: `key`.
pub const QUOTA_MISMATCH_TOTAL: &str = "tower_quota_quota_mismatch_total";

/// Gauge: the requests a key's sliding window sends back to back, learned
/// from its provider's refusals (`rate_adapted`); 0 when spacing is off
/// (as many as the quota allows). Labels: `key`.
pub const PACING_BURST: &str = "tower_quota_pacing_burst";

/// Gauge: the requests per second a key's sliding window spaces its
/// requests at, learned from its provider's refusals (`rate_adapted`); 0
/// when spacing is off (the quota alone decides). Labels: `key`.
pub const PACING_RATE: &str = "tower_quota_pacing_rate";

/// Histogram: items per batch sent by a `BatchLayer`. Label `reason`.
pub const BATCH_ITEMS: &str = "tower_quota_batch_items";

/// Counter: batches that failed. Label `outcome`: `failed` or `resplit`.
pub const BATCH_FAILURES_TOTAL: &str = "tower_quota_batch_failures_total";

/// Counter: requests that joined an identical call in flight. No labels.
pub const COALESCED_TOTAL: &str = "tower_quota_coalesced_total";

/// Counter: connections opened by a tracked connector; its rate is the new
/// connections per second. No labels.
pub const CONNECTIONS_OPENED_TOTAL: &str = "tower_quota_connections_opened_total";

/// Gauge: connections open now (opened by a tracked connector, not yet
/// dropped). No labels.
pub const CONNECTIONS_OPEN: &str = "tower_quota_connections_open";

/// Histogram: how long each connection took to open, in seconds. No labels.
pub const CONNECTION_SETUP_SECONDS: &str = "tower_quota_connection_setup_seconds";

/// Counter: connections a tracked connector failed to open. No labels.
pub const CONNECTION_FAILURES_TOTAL: &str = "tower_quota_connection_failures_total";

/// Registers the unit and help text of every series with the installed
/// recorder. Call it once, after installing the recorder; without it the
/// series still record, without descriptions. Does nothing without the
/// `metrics` feature.
pub fn describe() {
    #[cfg(feature = "metrics")]
    describe_all();
}

#[cfg(feature = "metrics")]
fn describe_all() {
    use ::metrics::{Unit, describe_counter, describe_histogram};

    describe_histogram!(
        REQUEST_TIME_IN_QUEUE_SECONDS,
        Unit::Seconds,
        "Time an admitted request waited for room in its sliding window"
    );
    describe_counter!(
        RATE_LIMITING_REQUESTS_TOTAL,
        Unit::Count,
        "Requests a sliding window admitted (result=acquired) or refused (result=rejected)"
    );
    describe_histogram!(
        REQUEST_RESEND_COUNT,
        Unit::Count,
        "Times a logical request was re-sent"
    );
    describe_counter!(
        PACING_LAGGING_TOTAL,
        Unit::Count,
        "Episodes in which admissions were held until answered because the client's tasks ran late"
    );
    describe_counter!(
        PACING_DRIFT_TOTAL,
        Unit::Count,
        "Refusals of requests the sliding window had room for; each widens the key's margin"
    );
    describe_counter!(
        QUOTA_MISMATCH_TOTAL,
        Unit::Count,
        "Announcements of a quota size other than the configured one, once per change"
    );
    ::metrics::describe_gauge!(
        PACING_RATE,
        "Requests per second a key spaces its requests at, learned from its provider's refusals; 0: spacing off"
    );
    ::metrics::describe_gauge!(
        PACING_BURST,
        Unit::Count,
        "Requests a key sends back to back, learned from its provider's refusals; 0: spacing off"
    );
    describe_counter!(
        REFUSED_TOTAL,
        Unit::Count,
        "Requests that failed without being sent, by reason"
    );
    describe_counter!(
        THROTTLED_TOTAL,
        Unit::Count,
        "Responses by which the server throttled a request"
    );
    describe_counter!(
        GATE_CLOSED_TOTAL,
        Unit::Count,
        "Gates closed by a server's delay or exhausted quota"
    );
    describe_histogram!(
        GATE_WAIT_SECONDS,
        Unit::Seconds,
        "Time an attempt waited at its key's gate"
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Retries scheduled after a throttled or transient failure"
    );
    describe_histogram!(
        BACKOFF_SECONDS,
        Unit::Seconds,
        "Wait before each scheduled retry"
    );
    describe_counter!(
        RETRIES_EXHAUSTED_TOTAL,
        Unit::Count,
        "Retryable failures returned to the caller, by reason"
    );
    describe_counter!(
        CIRCUIT_TRANSITIONS_TOTAL,
        Unit::Count,
        "Circuit breaker state changes, by new state"
    );
    describe_histogram!(BATCH_ITEMS, Unit::Count, "Items per batch sent");
    describe_counter!(
        BATCH_FAILURES_TOTAL,
        Unit::Count,
        "Batches that failed, by what happened to their items"
    );
    describe_counter!(
        COALESCED_TOTAL,
        Unit::Count,
        "Requests that joined an identical call in flight"
    );
    describe_counter!(
        CONNECTIONS_OPENED_TOTAL,
        Unit::Count,
        "Connections opened by a tracked connector"
    );
    ::metrics::describe_gauge!(
        CONNECTIONS_OPEN,
        Unit::Count,
        "Connections open now, opened by a tracked connector"
    );
    describe_histogram!(
        CONNECTION_SETUP_SECONDS,
        Unit::Seconds,
        "Time each connection took to open"
    );
    describe_counter!(
        CONNECTION_FAILURES_TOTAL,
        Unit::Count,
        "Connections a tracked connector failed to open"
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Errors of a shared admission store"
    );
}

/// Records an error of a shared store, for [`Store`](crate::sliding_window::Store)
/// implementations: call it where the store emits its `store_error` event,
/// with the key of the request and a short stable name for the error
/// (`timeout`, `connection`, ...). Errors the store answers with also count
/// in `tower_quota_refused_total` (`reason = "store_error"`); errors it
/// absorbs (failing open) count only here.
pub fn store_error(key: &Key, kind: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(STORE_ERRORS_TOTAL, "key" => key_label(key), "kind" => kind).increment(1);
}

#[cfg(feature = "metrics")]
fn key_label(key: &Key) -> String {
    key.as_str().to_owned()
}

/// A sliding window admitted a request of `class` after `waited`.
pub(crate) fn pacing_admitted(key: &Key, class: Priority, waited: Duration) {
    #[cfg(feature = "metrics")]
    {
        let label = key_label(key);
        let class = class.as_str();
        ::metrics::histogram!(REQUEST_TIME_IN_QUEUE_SECONDS, "key" => label.clone(), "class" => class)
            .record(waited);
        ::metrics::counter!(RATE_LIMITING_REQUESTS_TOTAL, "key" => label, "result" => "acquired", "class" => class)
            .increment(1);
    }
}

/// A logical request ended after `resends` re-sends.
pub(crate) fn resends(resends: u32) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(REQUEST_RESEND_COUNT).record(f64::from(resends));
}

/// The provider refused a request of `key` the sliding window had room for;
/// its key's margin widened.
pub(crate) fn pacing_drift(key: &Key) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(PACING_DRIFT_TOTAL, "key" => key_label(key)).increment(1);
}

/// The client's tasks ran too late for the `sent_within` bound.
pub(crate) fn pacing_lagging() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(PACING_LAGGING_TOTAL).increment(1);
}

/// A response of `key` announced another quota size than configured.
pub(crate) fn quota_mismatch(key: &Key) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(QUOTA_MISMATCH_TOTAL, "key" => key_label(key)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = key;
}

/// The requests `key` may send back to back changed to `burst` (`None`:
/// as many as its quota allows).
pub(crate) fn rate_adapted(key: &Key, burst: Option<u64>, interval: std::time::Duration) {
    #[cfg(feature = "metrics")]
    {
        let label = key_label(key);
        ::metrics::gauge!(PACING_BURST, "key" => label.clone())
            .set(burst.map_or(0.0, |burst| burst as f64));
        let rate = match burst {
            Some(_) if !interval.is_zero() => 1.0 / interval.as_secs_f64(),
            _ => 0.0,
        };
        ::metrics::gauge!(PACING_RATE, "key" => label).set(rate);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (key, burst, interval);
}

/// A sliding window refused a request of `key` (`None`: a store's own
/// error, which does not say which key it was for) for `reason`, instead
/// of admitting it.
pub(crate) fn admission_refused(key: Option<&Key>, class: Priority, reason: &'static str) {
    #[cfg(feature = "metrics")]
    {
        let key = key.map_or_else(String::new, key_label);
        ::metrics::counter!(RATE_LIMITING_REQUESTS_TOTAL, "key" => key.clone(), "result" => "rejected", "class" => class.as_str())
            .increment(1);
        ::metrics::counter!(REFUSED_TOTAL, "key" => key, "reason" => reason).increment(1);
    }
}

/// A request failed without being sent, for `reason`.
pub(crate) fn refused(key: &Key, reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(REFUSED_TOTAL, "key" => key_label(key), "reason" => reason).increment(1);
}

/// The server throttled a request of `key`; `outcome` is what the layer did.
pub(crate) fn throttled(key: &Key, status: http::StatusCode, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        THROTTLED_TOTAL,
        "key" => key_label(key),
        "status" => status.as_str().to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

/// A response closed the gate of `key`.
pub(crate) fn gate_closed(key: &Key, reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(GATE_CLOSED_TOTAL, "key" => key_label(key), "reason" => reason)
        .increment(1);
}

/// An attempt of `key` passed its gate after `waited`.
pub(crate) fn gate_passed(key: &Key, waited: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(GATE_WAIT_SECONDS, "key" => key_label(key)).record(waited);
}

/// A retry was scheduled after `wait`.
pub(crate) fn retry_scheduled(reason: &'static str, wait: Duration) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::counter!(RETRIES_TOTAL, "reason" => reason).increment(1);
        ::metrics::histogram!(BACKOFF_SECONDS, "reason" => reason).record(wait);
    }
}

/// A retryable failure went back to the caller.
pub(crate) fn retries_exhausted(reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(RETRIES_EXHAUSTED_TOTAL, "reason" => reason).increment(1);
}

/// The breaker of `key` changed to `state`.
pub(crate) fn circuit_transition(key: &Key, state: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(CIRCUIT_TRANSITIONS_TOTAL, "key" => key_label(key), "state" => state)
        .increment(1);
}

/// A batch of `items` items was sent, closed for `reason`.
pub(crate) fn batch_sent(items: usize, reason: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(BATCH_ITEMS, "reason" => reason).record(items as f64);
}

/// A batch failed; `outcome` is what happened to its items.
pub(crate) fn batch_failed(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(BATCH_FAILURES_TOTAL, "outcome" => outcome).increment(1);
}

/// A request joined an identical call in flight.
pub(crate) fn coalesced() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(COALESCED_TOTAL).increment(1);
}

/// A connection was opened after `setup`; `open` are open now.
#[cfg(feature = "hyper-util")]
pub(crate) fn connection_opened(setup: Duration, open: u64) {
    #[cfg(feature = "metrics")]
    {
        ::metrics::counter!(CONNECTIONS_OPENED_TOTAL).increment(1);
        ::metrics::gauge!(CONNECTIONS_OPEN).set(open as f64);
        ::metrics::histogram!(CONNECTION_SETUP_SECONDS).record(setup);
    }
}

/// A connection was dropped; `open` are open now.
#[cfg(feature = "hyper-util")]
pub(crate) fn connection_closed(open: u64) {
    #[cfg(feature = "metrics")]
    ::metrics::gauge!(CONNECTIONS_OPEN).set(open as f64);
}

/// A connection failed to open.
#[cfg(feature = "hyper-util")]
pub(crate) fn connection_failed() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(CONNECTION_FAILURES_TOTAL).increment(1);
}

#[cfg(all(test, feature = "metrics"))]
mod tests;
