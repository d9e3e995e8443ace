//! Concurrency slots in Redis: leases that expire, so that a process that
//! dies while holding slots cannot hold them forever.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower_quota::concurrency::{Lease, LeaseStore, MemoryLeases};
use tower_quota::sliding_window::{OverloadReason, Overloaded};
use tower_quota::{BoxError, Key, telemetry};

use crate::builder::FailurePolicy;
use crate::error::RedisStoreError;
use crate::scripts::SCRIPTS;
use crate::store::{invoke, report};

/// How long a lease lasts unless its holder renews it: a process that dies
/// holding slots frees them within this time.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(30);

/// The shortest lease time accepted.
const MIN_LEASE_TIME: Duration = Duration::from_millis(100);

/// The longest lease time accepted (one day).
const MAX_LEASE_TIME: Duration = Duration::from_secs(24 * 60 * 60);

/// How often a request waiting for a slot asks Redis again, unless a slot of
/// this process frees first or the earliest lease expires sooner; each wait
/// is drawn between half and one and a half of it, so waiters of many
/// processes do not ask in step.
const POLL: Duration = Duration::from_millis(25);

/// Concurrency slots in Redis, for a
/// [`ConcurrencyLayer`](tower_quota::concurrency::ConcurrencyLayer): every
/// process that uses the same Redis, prefix and key shares one count of
/// requests in flight. Made by [`RedisStore::leases`](crate::RedisStore::leases).
///
/// Each slot is a lease in the sorted set `{prefix}:{key}:leases` (member:
/// the lease's id; score: when it expires, on the Redis clock). One script
/// call takes a slot: it drops the expired leases and adds one if fewer
/// than `max_in_flight` remain. The holder renews its lease every third of
/// the [lease time](RedisLeases::lease_time) while the request is in flight
/// and removes it when the response body ends, so a lease outlives its
/// request only when the process died (or lost Redis for a whole lease
/// time): then the slot frees when the lease expires, within the lease time.
///
/// A request that finds every slot held asks again when a slot of this
/// process frees, when the earliest lease expires, or after about 25 ms
/// (for slots freed by other processes), whichever comes first. Waiters of
/// one key are not served in strict order across processes.
///
/// When Redis cannot decide, the store's [`FailurePolicy`] applies:
/// refuse, admit, or count in this process with `share` of the slots
/// (at least one).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_quota::concurrency::ConcurrencyLayer;
/// use tower_quota_redis::RedisStore;
///
/// # async fn run() -> Result<(), tower_quota::BoxError> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379").build().await?;
/// let layer = ConcurrencyLayer::new(5)?
///     .store(store.leases().lease_time(Duration::from_secs(10)));
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisLeases {
    shared: Arc<Shared>,
    lease_time: Duration,
}

struct Shared {
    connection: crate::connection::Connection,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    fallback: MemoryLeases,
    /// Wakes this process's waiters when one of its leases is given back.
    released: Notify,
    /// The store's background calls ([`RedisStore::flush`](crate::RedisStore::flush)).
    background: TaskTracker,
}

impl RedisLeases {
    pub(crate) fn new(
        connection: crate::connection::Connection,
        prefix: String,
        timeout: Duration,
        policy: FailurePolicy,
        background: TaskTracker,
    ) -> Self {
        RedisLeases {
            shared: Arc::new(Shared {
                connection,
                prefix,
                timeout,
                policy,
                fallback: MemoryLeases::new(),
                released: Notify::new(),
                background,
            }),
            lease_time: DEFAULT_LEASE_TIME,
        }
    }

    /// Sets how long a lease lasts unless renewed (default
    /// [`DEFAULT_LEASE_TIME`]), kept between 100 ms and one day. Shorter
    /// frees the slots of a dead process sooner, at the price of more
    /// renewals (one per third of it per request in flight); it should stay
    /// well above the store's timeout.
    pub fn lease_time(mut self, lease_time: Duration) -> Self {
        self.lease_time = lease_time.clamp(MIN_LEASE_TIME, MAX_LEASE_TIME);
        self
    }

    /// The lease time.
    pub fn get_lease_time(&self) -> Duration {
        self.lease_time
    }

    /// The Redis key that holds the leases of `key`.
    pub fn redis_key(&self, key: &Key) -> String {
        format!("{}:{{{}}}:leases", self.shared.prefix, key)
    }

    async fn take(
        self,
        key: Key,
        max_in_flight: u32,
        max_wait: Option<Duration>,
    ) -> Result<Lease, BoxError> {
        let started = Instant::now();
        let redis_key = self.redis_key(&key);
        let id = format!("{:016x}", rand::random::<u64>());
        let lease_ms = millis(self.lease_time);
        loop {
            // Registered before asking: a slot this process frees while the
            // script runs is not missed.
            let released = self.shared.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            let mut invocation = SCRIPTS.lease_acquire.prepare_invoke();
            invocation
                .key(&redis_key)
                .arg(max_in_flight.max(1))
                .arg(lease_ms)
                .arg(&id);
            let reply: Result<(i64, i64), RedisStoreError> = invoke(
                &self.shared.connection,
                self.shared.timeout,
                &key,
                &invocation,
            )
            .await;
            let expires_in = match reply {
                Ok((1, _)) => {
                    let waited = started.elapsed();
                    return Ok(self.leased(key, redis_key, id, waited));
                }
                Ok((_, expires_in)) => {
                    Duration::from_millis(u64::try_from(expires_in).unwrap_or(0).max(1))
                }
                Err(error) => {
                    return self
                        .fail(key, max_in_flight, max_wait, started, error)
                        .await;
                }
            };
            let mut wait = expires_in.min(POLL.mul_f64(rand::random_range(0.5..1.5)));
            if let Some(max_wait) = max_wait {
                let waited = started.elapsed();
                if waited >= max_wait {
                    return Err(
                        Overloaded::new(key, waited, 0, OverloadReason::MaxWait(max_wait)).into(),
                    );
                }
                wait = wait.min(max_wait - waited);
            }
            let _ = tokio::time::timeout(wait, released).await;
        }
    }

    /// A lease taken: renewed while held, removed when dropped.
    fn leased(&self, key: Key, redis_key: String, id: String, waited: Duration) -> Lease {
        let renewal = tokio::spawn(renew(
            self.shared.clone(),
            key.clone(),
            redis_key.clone(),
            id.clone(),
            self.lease_time,
        ))
        .abort_handle();
        Lease::new(
            key,
            waited,
            Held {
                shared: self.shared.clone(),
                redis_key,
                id,
                renewal,
            },
        )
    }

    async fn fail(
        &self,
        key: Key,
        max_in_flight: u32,
        max_wait: Option<Duration>,
        started: Instant,
        error: RedisStoreError,
    ) -> Result<Lease, BoxError> {
        report(&key, &error, self.shared.policy.as_str());
        match self.shared.policy {
            FailurePolicy::FailOpen => Ok(Lease::new(key, started.elapsed(), ())),
            FailurePolicy::LocalFallback { share } => {
                let slots = ((f64::from(max_in_flight) * share).floor() as u32).max(1);
                let max_wait = max_wait.map(|max_wait| max_wait.saturating_sub(started.elapsed()));
                self.shared.fallback.acquire(key, slots, max_wait).await
            }
            _ => Err(error.into()),
        }
    }
}

/// Renews a lease every third of its time until aborted; stops when Redis
/// says the lease is gone.
async fn renew(shared: Arc<Shared>, key: Key, redis_key: String, id: String, lease_time: Duration) {
    let lease_ms = millis(lease_time);
    loop {
        tokio::time::sleep(lease_time / 3).await;
        let mut invocation = SCRIPTS.lease_renew.prepare_invoke();
        invocation.key(&redis_key).arg(lease_ms).arg(&id);
        match invoke::<i64>(&shared.connection, shared.timeout, &key, &invocation).await {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(
                    name: telemetry::STORE_ERROR,
                    target: telemetry::TARGET,
                    event = telemetry::STORE_ERROR,
                    key = %key,
                    error.kind = "lease_expired",
                    policy = shared.policy.as_str(),
                    "a concurrency lease expired while its request was in flight; \
                     its slot may be taken by another request"
                );
                return;
            }
            // Tried again at the next renewal, within the lease time.
            Err(error) => report(&key, &error, shared.policy.as_str()),
        }
    }
}

/// A lease held: dropped, it stops renewing and removes the lease.
struct Held {
    shared: Arc<Shared>,
    redis_key: String,
    id: String,
    renewal: AbortHandle,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewal.abort();
        // Outside a runtime the lease is left to expire.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        let redis_key = std::mem::take(&mut self.redis_key);
        let id = std::mem::take(&mut self.id);
        let background = self.shared.background.clone();
        background.spawn_on(
            async move {
                let mut connection = shared.connection.clone();
                let mut command = redis::cmd("ZREM");
                command.arg(&redis_key).arg(&id);
                let remove = command.exec_async(&mut connection);
                // A lease not removed expires within its time.
                let _ = tokio::time::timeout(shared.timeout, remove).await;
                shared.released.notify_waiters();
            },
            &runtime,
        );
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl LeaseStore for RedisLeases {
    type Acquire = Pin<Box<dyn Future<Output = Result<Lease, BoxError>> + Send>>;

    fn acquire(&self, key: Key, max_in_flight: u32, max_wait: Option<Duration>) -> Self::Acquire {
        Box::pin(self.clone().take(key, max_in_flight, max_wait))
    }
}

impl fmt::Debug for RedisLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLeases")
            .field("prefix", &self.shared.prefix)
            .field("lease_time", &self.lease_time)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}
