//! The normalized result of reading one response's headers.

use std::borrow::Cow;
use std::time::Duration;

/// What one response said about retrying and about the caller's quota.
///
/// Produced by [`parse`](crate::parse). Every field is optional in spirit: a
/// response that says nothing gives `Signal::default()`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Signal {
    /// Delay before retrying that the server asked for, relative to `now`.
    ///
    /// Taken from `retry-after-ms`, then `Retry-After`, then
    /// `grpc-retry-pushback-ms`; when the response is a throttle (429, 503,
    /// gRPC 8/14) without any of those, derived from the longest reset of an
    /// exhausted quota (for example Discord's `X-RateLimit-Reset-After` with
    /// `X-RateLimit-Remaining: 0`). See the crate docs for the full rules.
    pub retry_after: Option<Duration>,
    /// Which header gave [`retry_after`](Self::retry_after).
    pub retry_after_source: Option<Source>,
    /// The response itself says it was throttled: status 429; status 503 with
    /// a delay; or gRPC `RESOURCE_EXHAUSTED` (8) / `UNAVAILABLE` (14) in a
    /// trailers-only response's headers.
    pub throttled: bool,
    /// gRPC: `grpc-retry-pushback-ms` was present but negative or unparseable,
    /// which means the server says "do not retry".
    pub do_not_retry: bool,
    /// gRPC status code found in the headers (a trailers-only response).
    pub grpc_status: Option<i32>,
    /// Quota state per policy the server reported (requests, tokens,
    /// per-bucket, …), in header order.
    pub quotas: Vec<QuotaState>,
}

impl Signal {
    /// `true` when the response said nothing this crate reads: no delay,
    /// not throttled, no gRPC status, no quota.
    pub fn is_empty(&self) -> bool {
        self.retry_after.is_none()
            && !self.throttled
            && !self.do_not_retry
            && self.grpc_status.is_none()
            && self.quotas.is_empty()
    }

    /// `true` when some quota reports `remaining == Some(0)`.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted().next().is_some()
    }

    /// The smallest `remaining` over all quotas that report one.
    pub fn min_remaining(&self) -> Option<u64> {
        self.quotas.iter().filter_map(|quota| quota.remaining).min()
    }

    /// The longest `reset_after` among exhausted quotas: how long until every
    /// exhausted quota has reset. `None` when no exhausted quota says when.
    pub fn exhausted_until(&self) -> Option<Duration> {
        self.exhausted().filter_map(|quota| quota.reset_after).max()
    }

    fn exhausted(&self) -> impl Iterator<Item = &QuotaState> {
        self.quotas
            .iter()
            .filter(|quota| quota.remaining == Some(0))
    }
}

/// One quota policy as the server reported it.
///
/// Dialects fill what they know and leave the rest `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaState {
    /// Quota size per window (IETF `q`, `X-RateLimit-Limit`, …).
    pub limit: Option<u64>,
    /// Quota units left in the current window.
    pub remaining: Option<u64>,
    /// Time until the quota resets, relative to `now`. Resets given as an
    /// absolute epoch or date are measured from the response's `Date` header
    /// (the server's own clock) when present, which corrects for clock skew.
    pub reset_after: Option<Duration>,
    /// Length of the quota window (IETF `w`).
    pub window: Option<Duration>,
    /// Partition key: IETF `pk`, Discord `X-RateLimit-Bucket`.
    pub partition_key: Option<String>,
    /// Policy name: IETF policy item, `"requests"`/`"tokens"` for OpenAI and
    /// Anthropic, GitHub's `X-RateLimit-Resource`, Discord's
    /// `X-RateLimit-Scope`. Borrowed when the dialect fixes the name, so
    /// that reading it allocates nothing.
    pub name: Option<Cow<'static, str>>,
    /// Quota unit: IETF `qu` (`"requests"`, `"content-bytes"`,
    /// `"concurrent-requests"`), `"tokens"`. Borrowed when the dialect
    /// fixes the unit.
    pub unit: Option<Cow<'static, str>>,
    /// Which dialect reported it.
    pub source: Source,
}

impl QuotaState {
    /// An empty state reported by `source`; set the fields that are known.
    pub fn new(source: Source) -> Self {
        Self {
            limit: None,
            remaining: None,
            reset_after: None,
            window: None,
            partition_key: None,
            name: None,
            unit: None,
            source,
        }
    }

    /// Adds to `quotas` the quota `source` reports with the counts
    /// `counted`, when they say anything, with the labels `labels` gives
    /// then. It is built where it is kept: a quota is 144 bytes, which each
    /// move copies.
    pub(crate) fn push_counted(
        quotas: &mut Vec<QuotaState>,
        source: Source,
        Counted {
            limit,
            remaining,
            reset_after,
        }: Counted,
        labels: impl FnOnce() -> Labels,
    ) {
        if limit.is_none() && remaining.is_none() && reset_after.is_none() {
            return;
        }
        let Labels {
            name,
            unit,
            partition_key,
        } = labels();
        quotas.push(QuotaState {
            limit,
            remaining,
            reset_after,
            window: None,
            partition_key,
            name,
            unit,
            source,
        });
    }

    /// `true` when no field besides `source` (and labels) carries a number.
    pub(crate) fn is_empty(&self) -> bool {
        self.limit.is_none()
            && self.remaining.is_none()
            && self.reset_after.is_none()
            && self.window.is_none()
    }
}

/// What a dialect's headers count of one quota.
pub(crate) struct Counted {
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
    pub(crate) reset_after: Option<Duration>,
}

/// What names one quota.
pub(crate) struct Labels {
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) unit: Option<Cow<'static, str>>,
    pub(crate) partition_key: Option<String>,
}

/// The header or header family a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// `Retry-After` (RFC 9110), delay-seconds or HTTP-date.
    RetryAfter,
    /// `retry-after-ms` (milliseconds; sent by Azure OpenAI and others).
    RetryAfterMs,
    /// `RateLimit` / `RateLimit-Policy`, structured fields
    /// (draft-ietf-httpapi-ratelimit-headers-08 and later).
    IetfRateLimit,
    /// Older IETF drafts: `RateLimit-Limit`/`-Remaining`/`-Reset`, or the
    /// dictionary `RateLimit: limit=100, remaining=50, reset=5`.
    IetfLegacy,
    /// `X-RateLimit-Limit`/`-Remaining`/`-Reset`/`-Used` (GitHub, X, many
    /// others).
    XRateLimit,
    /// Discord: `X-RateLimit-*` plus `-Reset-After`, `-Bucket`, `-Scope`.
    Discord,
    /// OpenAI: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
    OpenAi,
    /// Anthropic: `anthropic-ratelimit-*`.
    Anthropic,
    /// Shopify: `X-Shopify-Shop-Api-Call-Limit: used/limit`.
    Shopify,
    /// gRPC: `grpc-retry-pushback-ms`.
    GrpcPushback,
}
