//! Building a [`RedisStore`]: URL, prefix, timeout, failure policy, mode.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::connection::Connection;
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
    target: Target,
    #[cfg(feature = "tls")]
    tls: Tls,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    approximate: bool,
    coalesce: bool,
}

impl RedisStoreBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self::with_target(Target::Single(url.into()))
    }

    #[cfg(feature = "cluster")]
    pub(crate) fn cluster<I, U>(nodes: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        Self::with_target(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    #[cfg(feature = "sentinel")]
    pub(crate) fn sentinel<I, U>(sentinels: I, master_name: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        Self::with_target(Target::Sentinel(SentinelTarget {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: master_name.into(),
            master_auth: None,
            master_db: 0,
        }))
    }

    fn with_target(target: Target) -> Self {
        RedisStoreBuilder {
            target,
            #[cfg(feature = "tls")]
            tls: Tls::default(),
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
    /// in the next call (at once, as a second call in flight, when 16
    /// wait), which admits them one after another in arrival
    /// order, exactly as separate calls would. A request that joins a call
    /// in flight may wait for it and its own call: up to two timeouts when
    /// Redis stops answering. Off, every admission is one call of its own.
    /// The approximate mode makes one call per admission either way.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// With a Sentinel set-up ([`RedisStore::sentinel_builder`]): the
    /// credentials of the master and its replicas (the Sentinels' own come
    /// from their URLs). Without it, the master is reached without a
    /// password.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// use tower_quota_redis::RedisStore;
    ///
    /// let store = RedisStore::sentinel_builder(["redis://:sentinel-secret@10.0.0.1:26379"], "quota")
    ///     .sentinel_master_auth(None, "master-secret")
    ///     .build()
    ///     .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel_master_auth(
        mut self,
        username: Option<String>,
        password: impl Into<String>,
    ) -> Self {
        if let Target::Sentinel(target) = &mut self.target {
            target.master_auth = Some((username, password.into()));
        }
        self
    }

    /// With a Sentinel set-up: the database of the master (0 by default).
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel_master_db(mut self, db: i64) -> Self {
        if let Target::Sentinel(target) = &mut self.target {
            target.master_db = db;
        }
        self
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM
    /// certificates) for `rediss://` connections, *instead of* the webpki
    /// root certificates: for a Redis whose certificate comes from a private
    /// CA. Applies to every node of a cluster, and to the Sentinels and
    /// their master.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// use tower_quota_redis::RedisStore;
    ///
    /// let store = RedisStore::builder("rediss://redis.internal:6380")
    ///     .tls_root_certificates(std::fs::read("/etc/redis/ca.crt")?)
    ///     .tls_client_certificate(
    ///         std::fs::read("/etc/redis/client.crt")?,
    ///         std::fs::read("/etc/redis/client.key")?,
    ///     )
    ///     .build()
    ///     .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_certificates = Some(pem.into());
        self
    }

    /// Presents this client certificate and its private key (PEM) on
    /// `rediss://` connections, for servers that require one
    /// (`tls-auth-clients yes`).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Connects to Redis.
    ///
    /// # Errors
    ///
    /// [`RedisStoreError`] of kind `Config` for an invalid URL, an empty
    /// list of cluster nodes or Sentinels, an empty master name, a zero
    /// timeout or a share outside `(0, 1]`; of kind `Connection` or
    /// `Timeout` when Redis cannot be reached within the timeout (at least
    /// one second is allowed for the first connection). Only a store that
    /// fails closed connects here: the others connect on first use, so a
    /// worker starts while Redis is down.
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
        let connect_timeout = self.timeout.max(Duration::from_secs(1));
        let connection = match &self.target {
            Target::Single(url) => {
                Connection::Single(self.connect_single(url, connect_timeout).await?)
            }
            #[cfg(feature = "cluster")]
            Target::Cluster(nodes) => self.connect_cluster(nodes, connect_timeout).await?,
            #[cfg(feature = "sentinel")]
            Target::Sentinel(target) => self.connect_sentinel(target, connect_timeout).await?,
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

impl RedisStoreBuilder {
    async fn connect_single(
        &self,
        url: &str,
        connect_timeout: Duration,
    ) -> Result<ConnectionManager, RedisStoreError> {
        // redis-rs's message may quote the URL, password included.
        let invalid = |_| RedisStoreError::config("invalid Redis URL");
        #[cfg(feature = "tls")]
        let client = match self.tls.certificates() {
            Some(certificates) => redis::Client::build_with_tls(url, certificates),
            None => redis::Client::open(url),
        }
        .map_err(invalid)?;
        #[cfg(not(feature = "tls"))]
        let client = redis::Client::open(url).map_err(invalid)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            // The store applies its own timeout around each call.
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        match self.policy {
            // Failing closed, a store that cannot reach Redis serves nobody:
            // say so now, at start-up.
            FailurePolicy::FailClosed => tokio::time::timeout(
                connect_timeout,
                ConnectionManager::new_with_config(client, config),
            )
            .await
            .map_err(|_| RedisStoreError::timeout(None, connect_timeout))?
            .map_err(|error| RedisStoreError::redis(None, error)),
            // The other policies serve without Redis: connect on first use,
            // so a worker starts while Redis is down and uses it once it is up.
            FailurePolicy::FailOpen | FailurePolicy::LocalFallback { .. } => {
                ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|error| RedisStoreError::redis(None, error))
            }
        }
    }

    #[cfg(feature = "cluster")]
    async fn connect_cluster(
        &self,
        nodes: &[String],
        connect_timeout: Duration,
    ) -> Result<Connection, RedisStoreError> {
        use crate::connection::cluster::LazyCluster;

        if nodes.is_empty() {
            return Err(RedisStoreError::config(
                "a Redis Cluster needs the URL of at least one node",
            ));
        }
        for node in nodes {
            redis::IntoConnectionInfo::into_connection_info(node.as_str())
                .map_err(|_| RedisStoreError::config("invalid Redis Cluster node URL"))?;
        }
        let builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .connection_timeout(connect_timeout)
            // Each call is bounded by the store's timeout; redirections
            // (MOVED, ASK) and a refreshed slot map are retried within it.
            .response_timeout(self.timeout)
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100);
        #[cfg(feature = "tls")]
        let builder = match self.tls.certificates() {
            Some(certificates) => builder.certs(certificates),
            None => builder,
        };
        let client = builder
            .build()
            .map_err(|_| RedisStoreError::config("invalid Redis Cluster configuration"))?;
        let cluster = LazyCluster::new(client);
        if self.policy == FailurePolicy::FailClosed {
            tokio::time::timeout(connect_timeout, cluster.connection())
                .await
                .map_err(|_| RedisStoreError::timeout(None, connect_timeout))?
                .map_err(|error| RedisStoreError::redis(None, error))?;
        }
        Ok(Connection::Cluster(cluster))
    }

    #[cfg(feature = "sentinel")]
    async fn connect_sentinel(
        &self,
        target: &SentinelTarget,
        connect_timeout: Duration,
    ) -> Result<Connection, RedisStoreError> {
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        use redis::{ConnectionAddr, TlsMode};

        use crate::connection::sentinel::SentinelConnection;

        if target.sentinels.is_empty() {
            return Err(RedisStoreError::config(
                "a Sentinel set-up needs the URL of at least one Sentinel",
            ));
        }
        if target.master_name.is_empty() {
            return Err(RedisStoreError::config(
                "a Sentinel set-up needs the name of its master",
            ));
        }
        let mut addresses = Vec::with_capacity(target.sentinels.len());
        let mut sentinel_auth = None;
        for url in &target.sentinels {
            let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|_| RedisStoreError::config("invalid Sentinel URL"))?;
            let settings = info.redis_settings();
            if sentinel_auth.is_none()
                && let Some(password) = settings.password()
            {
                sentinel_auth = Some((settings.username().map(str::to_owned), password.to_owned()));
            }
            addresses.push(info.addr().clone());
        }
        let tls = addresses
            .iter()
            .any(|address| matches!(address, ConnectionAddr::TcpTls { .. }));
        let mut builder =
            SentinelClientBuilder::new(addresses, &target.master_name, SentinelServerType::Master)
                .map_err(|_| RedisStoreError::config("invalid Sentinel configuration"))?
                .set_client_to_redis_db(target.master_db);
        if let Some((username, password)) = &sentinel_auth {
            if let Some(username) = username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some((username, password)) = &target.master_auth {
            if let Some(username) = username {
                builder = builder.set_client_to_redis_username(username);
            }
            builder = builder.set_client_to_redis_password(password);
        }
        if tls {
            // `rediss://` Sentinels: their master speaks TLS too.
            builder = builder
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_redis_tls_mode(TlsMode::Secure);
        }
        #[cfg(feature = "tls")]
        if let Some(certificates) = self.tls.certificates() {
            builder = builder
                .set_client_to_sentinel_certificates(certificates.clone())
                .set_client_to_redis_certificates(certificates);
        }
        let client = builder
            .build()
            .map_err(|_| RedisStoreError::config("invalid Sentinel configuration"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            // The store applies its own timeout around each call.
            .set_response_timeout(None);
        let connection = SentinelConnection::new(client, config, target.master_db);
        if self.policy == FailurePolicy::FailClosed {
            tokio::time::timeout(connect_timeout, connection.connection())
                .await
                .map_err(|_| RedisStoreError::timeout(None, connect_timeout))?
                .map_err(|error| RedisStoreError::redis(None, error))?;
        }
        Ok(Connection::Sentinel(connection))
    }
}

/// Where the store's Redis is.
#[derive(Clone)]
enum Target {
    Single(String),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    #[cfg(feature = "sentinel")]
    Sentinel(SentinelTarget),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Single(_) => "single",
            #[cfg(feature = "cluster")]
            Target::Cluster(_) => "cluster",
            #[cfg(feature = "sentinel")]
            Target::Sentinel(_) => "sentinel",
        }
    }
}

#[cfg(feature = "sentinel")]
#[derive(Clone)]
struct SentinelTarget {
    sentinels: Vec<String>,
    master_name: String,
    master_auth: Option<(Option<String>, String)>,
    master_db: i64,
}

/// Certificates for `rediss://`, beside or instead of the defaults.
#[cfg(feature = "tls")]
#[derive(Clone, Default)]
struct Tls {
    root_certificates: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

#[cfg(feature = "tls")]
impl Tls {
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.root_certificates.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert: client_cert.clone(),
                    client_key: client_key.clone(),
                }
            }),
            root_cert: self.root_certificates.clone(),
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("RedisStoreBuilder")
            .field("target", &self.target.kind())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("policy", &self.policy)
            .field("approximate", &self.approximate)
            .field("coalesce", &self.coalesce)
            .finish_non_exhaustive()
    }
}
