//! Building a [`RedisStore`]: URL, prefix, timeout, failure policy, mode.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::RedisStoreError;
use crate::store::RedisStore;

/// The default per-call timeout: well under a request's budget, well over
/// a Redis round trip on a LAN (a fraction of a millisecond).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// The default prefix of every key the store writes.
pub const DEFAULT_PREFIX: &str = "tq";

/// What an admission does when Redis cannot decide it: the connection is
/// down, Redis answers an error, or no answer comes within the timeout.
///
/// Every failure is reported as a `store_error` event (target `tower_quota`,
/// fields `key` and `error.kind`) whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Refuse the request with a [`RedisStoreError`]: the quota is never
    /// exceeded, and nothing is sent while Redis is away. The default.
    FailClosed,
    /// Admit the request without a limit: availability over the quota.
    FailOpen,
    /// Admit the request through an in-process limiter of this process,
    /// with `share` (0 < share <= 1) of each quota: with `n` processes, a
    /// share of `1/n` keeps the total within the quota. Admissions made
    /// locally are not known to Redis once it is back.
    LocalFallback {
        /// The fraction of each quota's `max_calls` this process may use
        /// while Redis is away (at least 1 call per window).
        share: f64,
    },
}

impl FailurePolicy {
    /// The policy as telemetry names it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "fail_closed",
            FailurePolicy::FailOpen => "fail_open",
            FailurePolicy::LocalFallback { .. } => "local_fallback",
        }
    }
}

/// Configures and connects a [`RedisStore`]; made by [`RedisStore::builder`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    approximate: bool,
    coalesce: bool,
}

impl RedisStoreBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            policy: FailurePolicy::FailClosed,
            approximate: false,
            coalesce: true,
        }
    }

    /// The prefix of every key the store writes (`tq` by default): keys are
    /// `{prefix}:{{key}}:...`, so stores with different prefixes never share
    /// a quota.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest one call to Redis may take before the failure policy
    /// decides ([`DEFAULT_TIMEOUT`] by default). A reservation made by a
    /// call that timed out is removed when Redis answers again.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis cannot decide an admission;
    /// [`FailurePolicy::FailClosed`] by default.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Uses the approximate sliding-window counter instead of exact logs:
    /// O(1) memory per key and quota, for quotas too large to log every
    /// admission. See the [crate docs](crate#approximate-mode) for its
    /// error bound.
    pub fn approximate(mut self, approximate: bool) -> Self {
        self.approximate = approximate;
        self
    }

    /// Whether concurrent exact admissions of one key share script calls
    /// (on by default). The first admission of an idle key is sent at once;
    /// those that arrive while a call for the key is in flight go together
    /// in the next call, which admits them one after another in arrival
    /// order, exactly as separate calls would. A request that joins a call
    /// in flight may wait for it and its own call: up to two timeouts when
    /// Redis stops answering. Off, every admission is one call of its own.
    /// The approximate mode makes one call per admission either way.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Connects to Redis.
    ///
    /// # Errors
    ///
    /// [`RedisStoreError`] of kind `Config` for an invalid URL, a zero
    /// timeout or a share outside `(0, 1]`; of kind `Connection` or
    /// `Timeout` when Redis cannot be reached within the timeout (at least
    /// one second is allowed for the first connection).
    pub async fn build(self) -> Result<RedisStore, RedisStoreError> {
        if self.timeout.is_zero() {
            return Err(RedisStoreError::config("timeout must be longer than zero"));
        }
        if let FailurePolicy::LocalFallback { share } = self.policy
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(RedisStoreError::config(
                "local fallback share must be in (0, 1]",
            ));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(RedisStoreError::config(
                "prefix must not contain `{` or `}`: they delimit the hash tag",
            ));
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|_| {
            // redis-rs's message may quote the URL, password included.
            RedisStoreError::config("invalid Redis URL")
        })?;
        let connect_timeout = self.timeout.max(Duration::from_secs(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            // The store applies its own timeout around each call.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connection = match self.policy {
            // Failing closed, a store that cannot reach Redis serves nobody:
            // say so now, at start-up.
            FailurePolicy::FailClosed => tokio::time::timeout(
                connect_timeout,
                ConnectionManager::new_with_config(client, config),
            )
            .await
            .map_err(|_| RedisStoreError::timeout(None, connect_timeout))?
            .map_err(|error| RedisStoreError::redis(None, error))?,
            // The other policies serve without Redis: connect on first use,
            // so a worker starts while Redis is down and uses it once it is up.
            FailurePolicy::FailOpen | FailurePolicy::LocalFallback { .. } => {
                ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|error| RedisStoreError::redis(None, error))?
            }
        };
        Ok(RedisStore::from_parts(
            connection,
            self.prefix,
            self.timeout,
            self.policy,
            self.approximate,
            self.coalesce,
        ))
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("policy", &self.policy)
            .field("approximate", &self.approximate)
            .field("coalesce", &self.coalesce)
            .finish_non_exhaustive()
    }
}
