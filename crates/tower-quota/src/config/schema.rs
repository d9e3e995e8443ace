//! The provider table, as serde reads and writes it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// Every provider's table, and what to do with requests to other hosts.
///
/// Read it with [`ProvidersConfig::from_toml`], or deserialize it with serde
/// from any format and check it with [`ProvidersConfig::validate`]. Then
/// [`layer`](ProvidersConfig::layer) builds the stacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProvidersConfig {
    /// Requests to a host no provider lists: sent on unlimited
    /// (`"pass_through"`, the default) or refused with
    /// [`UnknownHost`](super::UnknownHost) (`"reject"`).
    #[serde(default)]
    pub unknown_hosts: UnknownHosts,
    /// The providers, by name. The name prefixes every quota key of the
    /// provider, so providers never share a quota even in a shared store.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// The environment variable holding the secret that `header:NAME` keys
    /// are hashed with, so that processes sharing a store agree on them;
    /// unset: a random secret per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_env: Option<String>,
}

/// What happens to a request whose host no provider lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnknownHosts {
    /// Sent to the inner service as it is: no pacing, no retries.
    #[default]
    PassThrough,
    /// Refused with [`UnknownHost`](super::UnknownHost), unsent.
    Reject,
}

/// One provider: the hosts it serves, its quotas, its retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// The hosts whose requests go to this provider's stack: `api.example.com`,
    /// or `127.0.0.1:8080` to tell apart servers on one host by port. A
    /// host without a port matches every port. Case does not matter.
    pub hosts: Vec<String>,
    /// Which quota each request draws on; see [`KeyConfig`].
    #[serde(default)]
    pub key: KeyConfig,
    /// The longest a request waits for its quota, in the pacing queue or at
    /// a gate closed by the server, before it fails. Unset: pacing waits as
    /// long as it takes, and a server's pause is waited up to 60 s.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_wait: Option<Duration>,
    /// The most requests that may wait for one key's quota; unset: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<usize>,
    /// How long past its window each admission is held, to absorb the
    /// delay before the server sees it; unset: 0.01% of the shortest window,
    /// between 1 ms and 25 ms.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub safety_margin: Option<Duration>,
    /// How long after its admission a request still in flight is assumed
    /// to have reached the provider; unset: a tenth of the shortest window,
    /// between 1 ms and 100 ms.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub sent_within: Option<Duration>,
    /// Hold each admission until a window after its answer, however long
    /// the request takes, instead of assuming `sent_within`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Hold each key to the smaller quota its provider announces, within
    /// the configured ones (see
    /// [`SlidingWindowLayer::follow_announced_quotas`](crate::SlidingWindowLayer::follow_announced_quotas)).
    /// A difference is reported with a `quota_mismatch` event either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_announced_quotas: bool,
    /// The request header naming each request's priority class:
    /// `critical`, `interactive` or `batch` (a request's
    /// [`Priority`](crate::sliding_window::Priority) extension comes
    /// first; any other value, or none, is `interactive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_header: Option<String>,
    /// The share (0 up to 1) of every quota reserved for a class and the
    /// classes above it: `{ critical = 0.1 }` keeps a tenth of each quota
    /// free of interactive and batch requests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reserve: BTreeMap<String, Share>,
    /// How long the front of a lower class waits before it goes before
    /// every class but `critical`; unset: the shortest quota's window.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub promote_after: Option<Duration>,
    /// The request header naming each request's tenant: tenants of one
    /// class share its admissions by weight (a request's
    /// [`Tenant`](crate::sliding_window::Tenant) extension comes first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_header: Option<String>,
    /// Tenant weights by header value; a tenant not named here weighs 1,
    /// and its value is replaced by a keyed digest in telemetry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_weights: BTreeMap<String, u32>,
    /// The quotas, all respected: at least one.
    pub quotas: Vec<QuotaConfig>,
    /// Retries of failed and throttled requests.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// A share of a quota, from 0 up to (not including) 1, kept in parts per
/// million so that configurations compare exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Share(u32);

impl Share {
    /// The share as a fraction of 1.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1e6
    }
}

impl TryFrom<f64> for Share {
    type Error = String;

    fn try_from(share: f64) -> Result<Self, Self::Error> {
        if (0.0..1.0).contains(&share) {
            Ok(Share((share * 1e6).round() as u32))
        } else {
            Err(format!(
                "{share} is invalid: a share is from 0 up to (not including) 1"
            ))
        }
    }
}

impl Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.get())
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Share::try_from(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// One quota: at most `max_calls` in any window of `window`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct QuotaConfig {
    /// The most units in any window: at least 1.
    pub max_calls: u64,
    /// The window's length, such as `"1s"`, `"1m"` or `"1h"`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Every request spends 1 of this quota, whatever its cost: the
    /// "500 requests per minute" beside "200,000 tokens per minute". Only
    /// differs from a plain quota when the stack has a cost function
    /// ([`ProvidersLayer::cost_fn`](super::ProvidersLayer::cost_fn)).
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_request: bool,
}

impl QuotaConfig {
    /// A quota of `max_calls` per `window`.
    pub fn new(max_calls: u64, window: Duration) -> Self {
        QuotaConfig {
            max_calls,
            window,
            per_request: false,
        }
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Retries of one provider: [`JitterBackoffLayer`](crate::JitterBackoffLayer)
/// for failures, [`RetryAfterLayer`](crate::RetryAfterLayer) for throttled
/// requests, one attempt limit for both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Retries after the first attempt, by every layer together: 0 to 100.
    /// The default is 2 (3 attempts).
    pub max_retries: u32,
    /// The delay before the first retry, before jitter; doubles each retry.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The cap on every backoff delay: at least `base`.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// How the delay is randomized.
    pub strategy: Strategy,
    /// No retry is sent later than this after the first attempt.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
    /// Retry requests of every method. By default only idempotent methods
    /// (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and requests with an
    /// `Idempotency-Key` header are retried after a failure or re-sent after
    /// a `503` with a delay (a proxy may send one after the server processed
    /// the request); a `429`, which the server did not process, is re-sent
    /// whatever the method. `true` turns on both
    /// [`JitterBackoffLayer::retry_all_methods`](crate::JitterBackoffLayer::retry_all_methods)
    /// and [`RetryAfterLayer::resend_all_methods`](crate::RetryAfterLayer::resend_all_methods).
    #[serde(skip_serializing_if = "is_false")]
    pub all_methods: bool,
    /// The longest a key's gate stays closed on a server's word before one
    /// request probes whether it recovered: see
    /// [`RetryAfterLayer::max_pause`](crate::RetryAfterLayer::max_pause).
    /// Above zero; 5 minutes when not set.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_pause: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            strategy: Strategy::Full,
            max_elapsed: Duration::from_secs(60),
            all_methods: false,
            max_pause: None,
        }
    }
}

/// The jitter strategy of the backoff; see [`Jitter`](crate::backoff::Jitter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// Uniform in `[0, t]`.
    #[default]
    Full,
    /// `t/2` plus uniform in `[0, t/2]`.
    Equal,
    /// Uniform in `[base, 3 × previous]`, capped.
    Decorrelated,
    /// Exactly `t`: for comparison only.
    None,
}

/// Which quota a request of a provider draws on, written as a string.
///
/// | value | key | one quota per |
/// |---|---|---|
/// | `"global"` (default) | `openai` | provider: the quota is the account's, whatever the host |
/// | `"host"` | `openai:api.openai.com` | host of the request, with its port unless the scheme's default ([`HostKey`](crate::HostKey)) |
/// | `"path"` | `openai:/v1/chat/completions` | path of the request, without the query; a path with ids or tokens is keyed `openai:/v1/files/{}:9c0e…`, its [template](crate::telemetry::path_template) and a keyed digest of the path |
/// | `"header:NAME"` | `openai:x-api-key:5f1c…` | value of header `NAME`, hashed |
///
/// Keys appear in telemetry events and metric labels. A header's value
/// (typically an API key) and a path segment that could carry a token never
/// do: they are hashed with a keyed SipHash,
/// a random secret per process unless `key_secret_env` names one that the
/// processes sharing a store share. Without the secret nobody can confirm a
/// guessed value from a log line or build values that share a quota on
/// purpose. A request without the header uses the key `openai:x-api-key:none`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyConfig {
    /// One quota for the provider.
    #[default]
    Global,
    /// One quota per host.
    Host,
    /// One quota per path.
    Path,
    /// One quota per value of a request header, hashed.
    Header(HeaderName),
}

impl FromStr for KeyConfig {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "global" => Ok(KeyConfig::Global),
            "host" => Ok(KeyConfig::Host),
            "path" => Ok(KeyConfig::Path),
            _ => match value.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(KeyConfig::Header)
                    .map_err(|_| format!("{value:?} is invalid: {name:?} is not a header name")),
                None => Err(format!(
                    "{value:?} is invalid: expected \"global\", \"host\", \"path\" or \"header:NAME\""
                )),
            },
        }
    }
}

impl fmt::Display for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyConfig::Global => f.write_str("global"),
            KeyConfig::Host => f.write_str("host"),
            KeyConfig::Path => f.write_str("path"),
            KeyConfig::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl Serialize for KeyConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}
