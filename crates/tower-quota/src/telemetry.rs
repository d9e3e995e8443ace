//! Event and field names, in one place.
//!
//! Every event is emitted through [`tracing`] with target [`TARGET`], and
//! carries its name as the field `event` too, so a JSON log (which prints
//! fields, not metadata names) can be searched for it: `grep
//! '"event":"rate_limit_hit"'`. Names and fields are stable: dashboards and
//! alerts can rely on them. Fields use
//! OpenTelemetry's HTTP names where one exists and plain names otherwise.
//! Secrets (authorization, cookies, API keys, query strings, raw paths) are
//! never recorded: a path is recorded as its [`path_template`], where every
//! segment that could carry a token or an id is `{}`. Keys come from the
//! user's key function, which should not put secrets in them.
//!
//! | event | level | fields | when |
//! |---|---|---|---|
//! | `rate_pacing_active` | DEBUG | `key`, `wait_ms`, `queued`, `cost`, `quota`, `class`, `tenant` | a request waited for room in a sliding window; `class` is its priority class (`critical`, `interactive`, `batch`), `tenant` its tenant if it named one |
//! | `deadline_unreachable` | INFO | `key`, `class`, `deadline_ms`, `earliest_ms`, `queued` | a request was refused because it could not be admitted before its deadline: at once when its earliest slot (`earliest_ms` from now) lies past it, or at the deadline |
//! | `rate_limit_queue_overloaded` | WARN | `key`, `wait_ms`, `queued`, `reason` | a request was refused because its wait would exceed `max_wait` or the queue is full (a window's or a concurrency slot's) |
//! | `concurrency_limited` | DEBUG | `key`, `wait_ms`, `max_in_flight` | a request waited for a concurrency slot of its key |
//! | `rate_limit_hit` | WARN | `key`, `http.response.status_code`, `retry_after_ms`, `remaining`, `attempt`, `outcome` | the server throttled a request; `outcome` says whether it is re-sent (`resend`) or returned, and why (`returned_no_delay`, `returned_delay_over_max_wait`, `returned_max_attempts`, `returned_not_idempotent` (a 503 to a request that is not idempotent), `returned_body_not_replayable`, `returned_server_said_do_not_retry`) |
//! | `gate_closed` | INFO | `key`, `until_ms`, `reason` | a response closed (or extended) its key's gate: `throttled` or `quota_exhausted` |
//! | `gate_reopened` | INFO | `key`, `reason` | a gate a refusal closed opened before its time (`accepted`): the provider accepted a request that a `SlidingWindowLayer` below held in its queue and let go after the refusal came back, so it has room again by its own count |
//! | `retry_scheduled` | INFO | `attempt`, `backoff_ms`, `reason`, `http.response.status_code` or `error.kind` | a failed attempt (connect error, timeout, 408, 429, gRPC status) will be retried after `backoff_ms`; `reason` is `throttled` or `transient` |
//! | `server_error_retry` | INFO | `attempt`, `backoff_ms`, `reason`, `http.response.status_code` | as `retry_scheduled`, for a 5xx response |
//! | `retries_exhausted` | WARN | `attempt`, `reason`, `http.response.status_code` or `error.kind` | a retryable failure goes back to the caller: its attempts are spent (`max_attempts`) or `max_elapsed` would pass |
//! | `retry_skipped` | WARN | `attempt`, `reason`, `http.response.status_code` or `error.kind`, `retry_after_ms` | a retryable failure goes back to the caller with attempts left: `not_idempotent` (a method that is not idempotent, without an `Idempotency-Key`), `body_not_replayable` (larger than `max_replay_bytes`), `budget_exhausted` (the shared retry budget is spent) or `max_wait` (the wait it needs is longer than the wait left) |
//! |  *span* `jitter_backoff` | DEBUG | `request_id`, `attempt`, `http.request.method`, `url.template`, `http.request.resend_count` | one logical request through `JitterBackoffLayer`, numbered by `request_id` (unique in the process); the events of its attempts in the layers below are inside it, and `attempt` is the attempt under way (re-recorded as each begins, whichever layer sends it); `http.request.resend_count` is recorded when it ends |
//! | `circuit_opened` | WARN | `key`, `failure_rate`, `open_ms` | a breaker opened: calls of the key fail fast for `open_ms` |
//! | `circuit_half_open` | INFO | `key` | an open breaker lets its probes through |
//! | `circuit_closed` | INFO | `key` | every probe succeeded: calls pass again |
//! | `rate_adapted` | INFO | `key`, `burst`, `interval_ms`, `reason` | the provider refused a burst the window allowed or evenly spaced requests (`refused`: the burst halves, down to even spacing, or the rate is cut: `interval_ms` widens), or windows passed without refusals (`recovered`: a larger burst, 0 = spacing off, or a probe or growth of the rate: `interval_ms` narrows), or a fresh key's first answer said the provider has less than a quota's room at once (`announced`: spaced before any refusal) |
//! | `quota_mismatch` | WARN | `key`, `quota`, `announced`, `held_to` | a response announced another size for a configured quota's window than configured (once per change); with `follow_announced_quotas` the key is held to it |
//! | `store_error` | WARN | `key`, `error.kind`, `policy` | a shared store (Redis) failed or timed out; `policy` says what the limiter did instead |
//! | `layer_order` | WARN | `below` | a `RetryAfterLayer` is below a `SlidingWindowLayer`: its re-sent requests skip the pacing (logged once per process) |
//! | `batch_sent` | DEBUG | `items`, `cost`, `reason` | a `BatchLayer` sent a batch of `items` items costing `cost`; `reason` says what closed it: `max_items`, `max_bytes`, `max_delay`, `shutdown` or `resplit` (a half of a failed batch) |
//! | `batch_failed` | WARN | `items`, `error.kind`, `outcome` | a batch failed (`error.kind`: `failed` or `split`); `outcome` is `failed` (every item gets the error) or `resplit` (its halves are sent again) |
//! | `request_coalesced` | DEBUG | `http.request.method`, `url.template` | a request joined an identical call in flight (`CoalesceLayer`) instead of calling upstream |
//! | `connection_opened` | DEBUG | `server.address`, `setup_ms`, `open` | a tracked connector (`connect::TrackConnections`, feature `hyper-util`) opened a connection to the host in `setup_ms`; `open` connections are open now |
//! | `connection_closed` | DEBUG | `lifetime_ms`, `open` | the client dropped a tracked connection |
//! | `connection_failed` | WARN | `server.address`, `setup_ms` | a tracked connector failed to open a connection |
//! | `pacing_lagging` | WARN | `lag_ms`, `sent_within_ms` | a task of the client waited half of `sent_within` or more to run: for a window, admissions are held until answered (through Redis: a window unless answered) |

/// The `tracing` target of every event of this crate.
pub const TARGET: &str = "tower_quota";

/// A request waited for room in a sliding window before it was sent.
pub const RATE_PACING_ACTIVE: &str = "rate_pacing_active";

/// A request was refused because it could not be admitted before its
/// deadline (fields `key`, `class`, `deadline_ms`, `earliest_ms`, `queued`).
pub const DEADLINE_UNREACHABLE: &str = "deadline_unreachable";

/// A request waited for a concurrency slot of its key before it was sent
/// (fields `key`, `wait_ms`, `max_in_flight`).
pub const CONCURRENCY_LIMITED: &str = "concurrency_limited";

/// A request was refused by the limiter because the wait it needs exceeds
/// `max_wait`, or its key's queue is full.
pub const RATE_LIMIT_QUEUE_OVERLOADED: &str = "rate_limit_queue_overloaded";

/// The server throttled a request (429, 503 with a delay, gRPC
/// RESOURCE_EXHAUSTED or UNAVAILABLE).
pub const RATE_LIMIT_HIT: &str = "rate_limit_hit";

/// A response closed its key's gate: requests of the key wait until it opens.
pub const GATE_CLOSED: &str = "gate_closed";

/// A gate a refusal closed opened before its time: the provider accepted a
/// request that the pacing layer below sent after the refusal (fields
/// `key`, `reason`).
pub const GATE_REOPENED: &str = "gate_reopened";

/// A failed attempt (connect error, timeout, 408, 429, retryable gRPC
/// status) will be retried after a backoff.
pub const RETRY_SCHEDULED: &str = "retry_scheduled";

/// A 5xx response will be retried after a backoff.
pub const SERVER_ERROR_RETRY: &str = "server_error_retry";

/// A retryable failure goes back to the caller: its attempts or its
/// `max_elapsed` are spent.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// A retryable failure goes back to the caller although it had attempts
/// left: `reason` is `not_idempotent`, `body_not_replayable`,
/// `budget_exhausted` or `max_wait`.
pub const RETRY_SKIPPED: &str = "retry_skipped";

/// The span of one logical request through `JitterBackoffLayer`.
pub const JITTER_BACKOFF_SPAN: &str = "jitter_backoff";

/// A circuit breaker opened: calls of its key fail fast until the next probe.
pub const CIRCUIT_OPENED: &str = "circuit_opened";

/// An open circuit breaker lets its probe calls through.
pub const CIRCUIT_HALF_OPEN: &str = "circuit_half_open";

/// A circuit breaker closed after its probes succeeded.
pub const CIRCUIT_CLOSED: &str = "circuit_closed";

/// The provider refused (429) a request the sliding window had room for:
/// its window runs later than the client's, and the key's margin widened.
/// Fields: `key`, `gap_ms` (how much the margin widened), `margin_ms` (the
/// margin the key adds now).
pub const PACING_DRIFT: &str = "pacing_drift";

/// The client's tasks waited half the sliding window's `sent_within`
/// bound or more to run: requests may leave later than the
/// bound assumes, so admissions in flight are held until answered (as in
/// strict mode) until a window passes without such a wait. Logged when it
/// starts. Fields: `lag_ms` (the wait measured), `sent_within_ms`.
pub const PACING_LAGGING: &str = "pacing_lagging";

/// A key's provider refused a burst the sliding window allowed, or a
/// window passed without refusals: the requests the key sends back to back
/// changed. Fields: `key`, `burst` (requests back to back; 0: spacing off,
/// as many as the quota allows), `interval_ms` (the spacing of requests
/// past the burst), `reason` (`refused`, `recovered` or `announced`).
pub const RATE_ADAPTED: &str = "rate_adapted";

/// A response announced a size for one of a key's configured quotas (the
/// same window) other than the configured one, or other than the last one
/// it announced. Fields: `key`, `quota` (the configured one, e.g. `50/1s`),
/// `announced`, `held_to` (the size the key is held to now: the announced
/// one, within the configured, with `follow_announced_quotas`; else the
/// configured one).
pub const QUOTA_MISMATCH: &str = "quota_mismatch";

/// A layer that re-sends requests sits below a sliding window, so that
/// its re-sent requests skip the pacing; logged once per process, naming
/// the fix. Fields: `below` (the layer found below).
pub const LAYER_ORDER: &str = "layer_order";

/// A `BatchLayer` sent a batch. Fields: `items`, `cost` (the sum of its
/// items' costs), `reason` (what closed it).
pub const BATCH_SENT: &str = "batch_sent";

/// A batch failed. Fields: `items`, `error.kind`, `outcome` (`failed` or
/// `resplit`).
pub const BATCH_FAILED: &str = "batch_failed";

/// A request joined an identical call in flight instead of calling
/// upstream. Fields: `http.request.method`, `url.template`.
pub const REQUEST_COALESCED: &str = "request_coalesced";

/// A tracked connector opened a connection. Fields: `server.address`
/// (the host, never the path or query), `setup_ms`, `open` (connections
/// open now).
pub const CONNECTION_OPENED: &str = "connection_opened";

/// The client dropped a tracked connection. Fields: `lifetime_ms`, `open`.
pub const CONNECTION_CLOSED: &str = "connection_closed";

/// A tracked connector failed to open a connection. Fields:
/// `server.address`, `setup_ms` (how long it tried).
pub const CONNECTION_FAILED: &str = "connection_failed";

/// A shared store (Redis) failed or timed out; the configured failure
/// policy decided what happened to the request.
pub const STORE_ERROR: &str = "store_error";

/// The longest path segment [`path_template`] keeps as it is.
const MAX_WORD: usize = 16;

/// The path of a request as telemetry records it: segments that are plain
/// words (ASCII letters, with `-`, `_` or `.` between them, at most 16
/// characters) or API versions (`v` and one to three digits) are kept, and
/// every other segment becomes `{}`. Ids, tokens, hashes and signatures
/// contain digits, percent-escapes or other punctuation, or are longer than
/// a word, so they never reach a log line or a metric label:
///
/// ```
/// use tower_quota::telemetry::path_template;
///
/// assert_eq!(path_template("/v1/chat/completions"), "/v1/chat/completions");
/// assert_eq!(path_template("/v2/users/12345/repos"), "/v2/users/{}/repos");
/// assert_eq!(
///     path_template("/bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage"),
///     "/{}/sendMessage"
/// );
/// assert_eq!(path_template("/files/eyJhbGciOiJIUzI1NiJ9"), "/files/{}");
/// ```
pub fn path_template(path: &str) -> std::borrow::Cow<'_, str> {
    if path.split('/').all(is_plain_segment) {
        return std::borrow::Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if is_plain_segment(segment) {
                segment
            } else {
                "{}"
            }
        })
        .collect();
    std::borrow::Cow::Owned(segments.join("/"))
}

/// Whether a path segment is kept by [`path_template`].
fn is_plain_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return true;
    }
    if bytes.len() > MAX_WORD {
        return false;
    }
    if let [b'v', digits @ ..] = bytes
        && (1..=3).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
    {
        return true;
    }
    let separator = |byte: &u8| matches!(byte, b'-' | b'_' | b'.');
    bytes
        .iter()
        .all(|byte| byte.is_ascii_alphabetic() || separator(byte))
        && !bytes.first().is_some_and(separator)
        && !bytes.last().is_some_and(separator)
        && !bytes
            .windows(2)
            .any(|pair| separator(&pair[0]) && separator(&pair[1]))
}

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
    /// Why a request was refused, or why a gate closed.
    pub const REASON: &str = "reason";
    /// The HTTP status of a response (OpenTelemetry's name).
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// The delay the server asked for, in milliseconds.
    pub const RETRY_AFTER_MS: &str = "retry_after_ms";
    /// The smallest remaining quota the server reported.
    pub const REMAINING: &str = "remaining";
    /// The attempt number of a request, the first being 1.
    pub const ATTEMPT: &str = "attempt";
    /// What a layer did with a response.
    pub const OUTCOME: &str = "outcome";
    /// How long until a gate opens, in milliseconds.
    pub const UNTIL_MS: &str = "until_ms";
    /// The number of a logical request, unique in the process.
    pub const REQUEST_ID: &str = "request_id";
    /// How many times a logical request was re-sent (OpenTelemetry's name).
    pub const HTTP_REQUEST_RESEND_COUNT: &str = "http.request.resend_count";
    /// The method of a request (OpenTelemetry's name).
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// The [`path_template`](super::path_template) of a request: its path
    /// with every segment that could carry a token or an id replaced by
    /// `{}` (OpenTelemetry's name for a low-cardinality path).
    pub const URL_TEMPLATE: &str = "url.template";
    /// How long a retry waits before it is sent, in milliseconds.
    pub const BACKOFF_MS: &str = "backoff_ms";
    /// The kind of error an attempt failed with: `connect`, `timeout`,
    /// `connection_reset` or `other` (OpenTelemetry's name).
    pub const ERROR_KIND: &str = "error.kind";
}
