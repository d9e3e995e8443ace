//! The store: one script call per admission, a sleep until the reserved
//! slot, the failure policy when Redis cannot decide.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, ScriptInvocation};
use tokio::time::Instant;
use tower_quota::sliding_window::{
    Admission, Completion, ConflictingQuotas, DriftMargin, Limits, MemoryStore, OverloadReason,
    Overloaded, Quota, SlidingWindowLayer, Store,
};
use tower_quota::{BoxError, Key, telemetry};

use crate::builder::{FailurePolicy, RedisStoreBuilder};
use crate::error::{RedisStoreError, RedisStoreErrorKind};
use crate::leases::RedisLeases;
use crate::scripts::SCRIPTS;

/// The name of the event emitted when Redis cannot decide an admission
/// (target [`telemetry::TARGET`], fields `key`, `error.kind`, `policy`).
pub use tower_quota::telemetry::STORE_ERROR;

/// Keys whose quotas are remembered for [`Store::correct`] before the map
/// is cleared; corrections of forgotten keys are ignored. Also the bound of
/// the map of widened margins.
const KNOWN_KEYS: usize = 65_536;

/// The bit set in the id of every admission recorded in an exact log; ids
/// of the in-process fallback's admissions (a counter) never have it.
const REDIS_ID: u64 = 1 << 63;

/// The longest a request waiting for a strict admission's answer sleeps
/// before it asks Redis again.
const MAX_POLL: Duration = Duration::from_secs(1);

/// A [`Store`] in Redis: every process that uses the same Redis, prefix and
/// key shares one quota. See the [crate docs](crate) for the design.
///
/// Cloning shares the connection. Build one with [`RedisStore::builder`].
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    approximate: bool,
    fallback: MemoryStore,
    /// The limits last used with each key, so `correct` knows its quotas.
    known: Mutex<HashMap<Key, Limits>>,
    /// The extra margin of each key whose provider refused a request the
    /// log had room for.
    drift: Mutex<HashMap<Key, DriftMargin>>,
    /// After a connection failure or a timeout, Redis is not waited on
    /// again before this instant: requests meet the failure policy at once.
    suspended_until: Mutex<Option<Instant>>,
}

impl RedisStore {
    /// Configures a store for the Redis at `url`: `redis://[user][:password@]host[:port][/db]`,
    /// or `rediss://` with the `tls` feature.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url)
    }

    pub(crate) fn from_parts(
        connection: ConnectionManager,
        prefix: String,
        timeout: Duration,
        policy: FailurePolicy,
        approximate: bool,
    ) -> Self {
        RedisStore {
            inner: Arc::new(Inner {
                connection,
                prefix,
                timeout,
                policy,
                approximate,
                fallback: MemoryStore::new(),
                known: Mutex::new(HashMap::new()),
                drift: Mutex::new(HashMap::new()),
                suspended_until: Mutex::new(None),
            }),
        }
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The failure policy.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.policy
    }

    /// Whether the store uses the approximate sliding-window counter.
    pub fn is_approximate(&self) -> bool {
        self.inner.approximate
    }

    /// The Redis keys that hold `quota` of `key`: in exact mode the
    /// sorted-set log (score: the instant, in microseconds of the Redis
    /// clock, after which an admission holds its slot for a window and the
    /// margin), its costs hash and the sorted set of reserved admission
    /// instants; in approximate mode the counter hash. All of a key's Redis
    /// keys share the hash tag `{key}`, so one script call touches one Redis
    /// Cluster slot. One more Redis key per quota key,
    /// `{prefix}:{key}:quotas`, holds the signature of the quota list the
    /// key is counted under.
    pub fn redis_keys(&self, key: &Key, quota: &Quota) -> Vec<String> {
        let base = self.inner.quota_key(key, quota);
        if self.inner.approximate {
            vec![format!("{base}:counts")]
        } else {
            vec![
                format!("{base}:log"),
                format!("{base}:costs"),
                format!("{base}:queue"),
            ]
        }
    }

    /// Concurrency slots in the same Redis, with the same prefix, timeout and
    /// failure policy, for a
    /// [`ConcurrencyLayer`](tower_quota::concurrency::ConcurrencyLayer): see
    /// [`RedisLeases`].
    pub fn leases(&self) -> RedisLeases {
        RedisLeases::new(
            self.inner.connection.clone(),
            self.inner.prefix.clone(),
            self.inner.timeout,
            self.inner.policy,
        )
    }

    /// The margin this process adds to `key`'s admissions after its
    /// provider refused requests the log had room for (see
    /// [`Store::refused`]); zero when it never did or the margin has
    /// decayed.
    pub fn extra_margin(&self, key: &Key, limits: &Limits) -> Duration {
        self.inner.extra_margin(key, limits)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("policy", &self.inner.policy)
            .field("approximate", &self.inner.approximate)
            .finish_non_exhaustive()
    }
}

impl Store for RedisStore {
    type Acquire = Acquire;

    fn acquire(&self, key: Key, cost: u64, limits: &Limits) -> Acquire {
        Acquire {
            future: Box::pin(acquire(self.inner.clone(), key, cost, limits.clone())),
        }
    }

    fn correct(&self, admission: &Admission, actual_cost: u64) {
        if let FailurePolicy::LocalFallback { .. } = self.inner.policy {
            self.inner.fallback.correct(admission, actual_cost);
        }
        if admission.id() == 0 || (!self.inner.approximate && admission.id() & REDIS_ID == 0) {
            return; // admitted without Redis (fail open, zero cost, local fallback)
        }
        let Some(limits) = lock(&self.inner.known).get(admission.key()).cloned() else {
            return;
        };
        let weighted: Vec<Quota> = limits
            .quotas()
            .iter()
            .filter(|quota| !quota.is_per_request())
            .copied()
            .collect();
        if weighted.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let key = admission.key().clone();
        let id = admission.id();
        let margin = limits.safety_margin();
        let delta = i128::from(units(actual_cost)) - i128::from(units(admission.cost()));
        let delta =
            i64::try_from(delta.clamp(-i128::from(MAX_UNITS), i128::from(MAX_UNITS))).unwrap_or(0);
        runtime.spawn(async move {
            let result = if inner.approximate {
                let mut invocation = SCRIPTS.approx_adjust.prepare_invoke();
                invocation.arg(id);
                for quota in &weighted {
                    invocation
                        .key(format!("{}:counts", inner.quota_key(&key, quota)))
                        .arg(micros(quota.window().saturating_add(margin)))
                        .arg(delta);
                }
                inner.call::<i64>(&key, &invocation).await
            } else {
                let mut invocation = SCRIPTS.exact_correct.prepare_invoke();
                for quota in &weighted {
                    let base = inner.quota_key(&key, quota);
                    invocation
                        .key(format!("{base}:log"))
                        .key(format!("{base}:costs"));
                }
                invocation.arg(id).arg(units(actual_cost));
                inner.call::<i64>(&key, &invocation).await
            };
            if let Err(error) = result {
                report(&key, &error, "correct");
            }
        });
    }

    fn complete(&self, admission: &Admission, completion: Completion, limits: &Limits) {
        if completion == Completion::Dropped && !limits.is_strict() {
            // A dropped request may still be on its way: it keeps its bound.
            return;
        }
        if let FailurePolicy::LocalFallback { .. } = self.inner.policy {
            self.inner.fallback.complete(admission, completion, limits);
        }
        if self.inner.approximate || admission.id() & REDIS_ID == 0 {
            // Counters cannot release one admission early; an admission
            // without the bit was not recorded in Redis.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the entry leaves at its bound (strict: see the crate docs)
        };
        let key = admission.key().clone();
        let logs: Vec<String> = limits
            .quotas()
            .iter()
            .filter(|quota| quota.units(admission.cost()) > 0)
            .map(|quota| format!("{}:log", self.inner.quota_key(&key, quota)))
            .collect();
        if logs.is_empty() {
            return;
        }
        let extra = self.inner.extra_margin(&key, limits);
        let inner = self.inner.clone();
        let id = admission.id();
        runtime.spawn(async move {
            let mut invocation = SCRIPTS.exact_complete.prepare_invoke();
            for log in &logs {
                invocation.key(log);
            }
            invocation.arg(id).arg(micros(extra));
            if let Err(error) = inner.call::<i64>(&key, &invocation).await {
                report(&key, &error, "complete");
            }
        });
    }

    fn refused(&self, admission: &Admission, limits: &Limits) -> Option<(Duration, Duration)> {
        if self.inner.approximate {
            // A margin in the counters' span would move their fixed windows.
            return None;
        }
        if admission.id() & REDIS_ID == 0 {
            // Admitted by the local fallback, or without any limiter.
            return match self.inner.policy {
                FailurePolicy::LocalFallback { .. } => {
                    self.inner.fallback.refused(admission, limits)
                }
                _ => None,
            };
        }
        let window = shortest_window(limits);
        let now = Instant::now();
        let mut drift = lock(&self.inner.drift);
        if drift.len() >= KNOWN_KEYS && !drift.contains_key(admission.key()) {
            drift.retain(|_, drift| !drift.extra(now, window).is_zero());
            if drift.len() >= KNOWN_KEYS {
                drift.clear();
            }
        }
        drift
            .entry(admission.key().clone())
            .or_default()
            .refused(now, limits)
    }
}

fn shortest_window(limits: &Limits) -> Duration {
    limits
        .quotas()
        .iter()
        .map(Quota::window)
        .min()
        .unwrap_or(Duration::ZERO)
}

/// How long a request whose slot waits for a strict admission's answer
/// sleeps before asking again: a quarter of the shortest window, at most
/// [`MAX_POLL`]. The slot frees a window after the answer, so a request
/// that asks again within a window of it loses nothing.
fn poll_interval(limits: &Limits) -> Duration {
    (shortest_window(limits) / 4).clamp(Duration::from_millis(1), MAX_POLL)
}

/// The future of one admission by a [`RedisStore`].
///
/// Boxed: a Redis round trip already allocates, and the boxed state is what
/// lets a dropped waiter remove its reservation.
pub struct Acquire {
    future: Pin<Box<dyn Future<Output = Result<Admission, BoxError>> + Send>>,
}

impl Future for Acquire {
    type Output = Result<Admission, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire").finish_non_exhaustive()
    }
}

/// Why a Redis admission did not happen.
enum Failure {
    /// Redis decided: the request is refused (overloaded).
    Refused(BoxError),
    /// Redis could not decide: the failure policy applies.
    Store(RedisStoreError),
}

/// What a script call decided, short of a failure.
enum Settled {
    /// Admitted, after the wait for its reserved slot.
    Admitted(Admission),
    /// Nothing recorded: the slot frees only once a strict admission's
    /// answer comes back. Ask again later.
    Blocked,
}

async fn acquire(
    inner: Arc<Inner>,
    key: Key,
    cost: u64,
    limits: Limits,
) -> Result<Admission, BoxError> {
    limits.check_cost(&key, cost)?;
    if limits.quotas().iter().all(|quota| quota.units(cost) == 0) {
        return Ok(Admission::new(key, 0, cost, Duration::ZERO, 0));
    }
    let result = if inner.is_suspended() {
        Err(Failure::Store(RedisStoreError::suspended(key.clone())))
    } else if inner.approximate {
        inner.acquire_approximate(&key, cost, &limits).await
    } else {
        inner.acquire_exact(&key, cost, &limits).await
    };
    match result {
        Ok(admission) => Ok(admission),
        Err(Failure::Refused(error)) => Err(error),
        Err(Failure::Store(error)) => inner.fail(key, cost, &limits, error).await,
    }
}

impl Inner {
    fn quota_key(&self, key: &Key, quota: &Quota) -> String {
        format!(
            "{}:{{{}}}:{}:{}:{}",
            self.prefix,
            key,
            micros(quota.window()),
            quota.max_calls(),
            if quota.is_per_request() { "r" } else { "w" }
        )
    }

    /// The Redis key that holds which quotas `key` is counted under, and
    /// the signature of `limits`' quotas and safety margin (in any order:
    /// each quota has logs of its own). While a key has admissions in its
    /// windows, a call with another signature is refused with
    /// [`ConflictingQuotas`]: processes that gave one key different quota
    /// lists would otherwise each count only their own quotas.
    fn signature(&self, key: &Key, limits: &Limits) -> (String, String) {
        let mut quotas: Vec<String> = limits
            .quotas()
            .iter()
            .map(|quota| {
                format!(
                    "{}:{}:{}",
                    micros(quota.window()),
                    quota.max_calls(),
                    if quota.is_per_request() { "r" } else { "w" }
                )
            })
            .collect();
        quotas.sort_unstable();
        let signature = format!("{};m={}", quotas.join(","), micros(limits.safety_margin()));
        (format!("{}:{{{}}}:quotas", self.prefix, key), signature)
    }

    fn is_suspended(&self) -> bool {
        lock(&self.suspended_until).is_some_and(|until| Instant::now() < until)
    }

    fn suspend(&self) {
        *lock(&self.suspended_until) = Some(Instant::now() + self.timeout);
    }

    async fn call<T: FromRedisValue>(
        &self,
        key: &Key,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisStoreError> {
        invoke(&self.connection, self.timeout, key, invocation).await
    }

    fn extra_margin(&self, key: &Key, limits: &Limits) -> Duration {
        let drift = lock(&self.drift);
        drift.get(key).map_or(Duration::ZERO, |drift| {
            drift.extra(Instant::now(), shortest_window(limits))
        })
    }

    fn remember(&self, key: &Key, limits: &Limits) {
        let mut known = lock(&self.known);
        if known.get(key) != Some(limits) {
            if known.len() >= KNOWN_KEYS {
                known.clear();
            }
            known.insert(key.clone(), limits.clone());
        }
    }

    async fn acquire_exact(
        self: &Arc<Self>,
        key: &Key,
        cost: u64,
        limits: &Limits,
    ) -> Result<Admission, Failure> {
        // The id is chosen here, so that a request dropped while its call is
        // in flight can still remove what the call records.
        let id = rand::random::<u64>() | REDIS_ID;
        let quotas = limits.quotas();
        let margin = limits.safety_margin();
        let mut keys = Vec::with_capacity(quotas.len() * 3);
        for quota in quotas {
            let base = self.quota_key(key, quota);
            keys.push(format!("{base}:log"));
            keys.push(format!("{base}:costs"));
            keys.push(format!("{base}:queue"));
        }
        let sent_within = if limits.is_strict() {
            -1
        } else {
            micros(limits.sent_within())
        };
        let (signature_key, signature) = self.signature(key, limits);
        let started = Instant::now();
        // How long the request waited for answers in earlier calls.
        let mut elapsed = Duration::ZERO;
        loop {
            let mut invocation = SCRIPTS.exact_acquire.prepare_invoke();
            for redis_key in &keys {
                invocation.key(redis_key);
            }
            invocation
                .arg(id)
                .arg(
                    limits
                        .max_wait()
                        .map_or(-1, |max_wait| micros(max_wait.saturating_sub(elapsed))),
                )
                .arg(limits.max_queue().map_or(-1, |max| max as i64))
                .arg(sent_within)
                .arg(micros(self.extra_margin(key, limits)))
                .arg(quotas.len());
            for quota in quotas {
                invocation
                    .arg(micros(quota.window().saturating_add(margin)))
                    .arg(units(quota.max_calls()))
                    .arg(units(quota.units(cost)));
            }
            invocation.key(&signature_key).arg(&signature);
            let mut reservation = Reservation {
                inner: self.clone(),
                key: key.clone(),
                cancel: Cancel::Exact {
                    keys: keys.clone(),
                    id,
                },
                armed: true,
            };
            let reply: Vec<i64> = match self.call(key, &invocation).await {
                Ok(reply) => reply,
                Err(error) => {
                    // A call that timed out may still run: the reservation's
                    // drop removes what it records. Nothing ran for other
                    // errors.
                    reservation.armed = error.kind() == RedisStoreErrorKind::Timeout;
                    return Err(Failure::Store(error));
                }
            };
            match self
                .settle(key, cost, limits, &reply, id, elapsed, reservation)
                .await?
            {
                Settled::Admitted(admission) => return Ok(admission),
                // Strict: a slot frees a window after an answer still to
                // come. Nothing was recorded; ask again.
                Settled::Blocked => {
                    tokio::time::sleep(poll_interval(limits)).await;
                    elapsed = started.elapsed();
                }
            }
        }
    }

    async fn acquire_approximate(
        self: &Arc<Self>,
        key: &Key,
        cost: u64,
        limits: &Limits,
    ) -> Result<Admission, Failure> {
        let quotas = limits.quotas();
        let margin = limits.safety_margin();
        let mut invocation = SCRIPTS.approx_acquire.prepare_invoke();
        let mut keys = Vec::with_capacity(quotas.len());
        for quota in quotas {
            let redis_key = format!("{}:counts", self.quota_key(key, quota));
            invocation.key(&redis_key);
            keys.push((
                redis_key,
                micros(quota.window().saturating_add(margin)),
                units(quota.units(cost)),
            ));
        }
        invocation
            .arg(limits.max_wait().map_or(-1, micros))
            .arg(quotas.len());
        for quota in quotas {
            invocation
                .arg(micros(quota.window().saturating_add(margin)))
                .arg(units(quota.max_calls()))
                .arg(units(quota.units(cost)));
        }
        let (signature_key, signature) = self.signature(key, limits);
        invocation.key(&signature_key).arg(&signature);
        let reply: Vec<i64> = self.call(key, &invocation).await.map_err(Failure::Store)?;
        let at = reply.get(4).copied().unwrap_or(0).max(1);
        let reservation = Reservation {
            inner: self.clone(),
            key: key.clone(),
            cancel: Cancel::Approximate { keys, at },
            armed: true,
        };
        match self
            .settle(
                key,
                cost,
                limits,
                &reply,
                at as u64,
                Duration::ZERO,
                reservation,
            )
            .await?
        {
            Settled::Admitted(admission) => Ok(admission),
            Settled::Blocked => Err(Failure::Store(RedisStoreError::unexpected_reply(
                key.clone(),
                "script returned status 3",
            ))),
        }
    }

    /// Turns a script's reply into an admission, after sleeping until the
    /// reserved slot, or into a refusal. `elapsed`: how long the request
    /// has waited already, in earlier calls.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        key: &Key,
        cost: u64,
        limits: &Limits,
        reply: &[i64],
        id: u64,
        elapsed: Duration,
        mut reservation: Reservation,
    ) -> Result<Settled, Failure> {
        let &[status, wait_us, queued, limiting, ..] = reply else {
            reservation.armed = false;
            return Err(Failure::Store(RedisStoreError::unexpected_reply(
                key.clone(),
                format!("script returned {} values", reply.len()),
            )));
        };
        let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        let waited = elapsed.saturating_add(wait);
        let queued = usize::try_from(queued).unwrap_or(0);
        let limited_by = usize::try_from(limiting)
            .ok()
            .and_then(|index| index.checked_sub(1))
            .and_then(|index| limits.quotas().get(index).copied());
        let reason = match status {
            0 => None,
            3 => {
                // Recorded nothing.
                reservation.armed = false;
                return Ok(Settled::Blocked);
            }
            1 => Some(OverloadReason::MaxWait(
                limits.max_wait().unwrap_or_default(),
            )),
            2 => Some(OverloadReason::QueueFull(
                limits.max_queue().unwrap_or_default(),
            )),
            4 => {
                // Recorded nothing: the key is busy under other quotas.
                reservation.armed = false;
                return Err(Failure::Refused(ConflictingQuotas::new(key.clone()).into()));
            }
            other => {
                reservation.armed = false;
                return Err(Failure::Store(RedisStoreError::unexpected_reply(
                    key.clone(),
                    format!("script returned status {other}"),
                )));
            }
        };
        if let Some(reason) = reason {
            // Refused by the script: it recorded nothing.
            reservation.armed = false;
            return Err(Failure::Refused(
                Overloaded::new(key.clone(), waited, queued, reason).into(),
            ));
        }
        self.remember(key, limits);
        if !wait.is_zero() {
            // The slot is at Redis time `now + wait`; the reply left Redis
            // after `now`, so waking `wait` after receiving it is never early.
            tokio::time::sleep(wait).await;
        }
        reservation.armed = false;
        Ok(Settled::Admitted(
            Admission::new(key.clone(), id, cost, waited, queued).with_limited_by(limited_by),
        ))
    }

    async fn fail(
        &self,
        key: Key,
        cost: u64,
        limits: &Limits,
        error: RedisStoreError,
    ) -> Result<Admission, BoxError> {
        if !error.is_suspended()
            && matches!(
                error.kind(),
                RedisStoreErrorKind::Timeout | RedisStoreErrorKind::Connection
            )
        {
            self.suspend();
        }
        report(&key, &error, self.policy.as_str());
        match self.policy {
            FailurePolicy::FailOpen => Ok(Admission::new(key, 0, cost, Duration::ZERO, 0)),
            FailurePolicy::LocalFallback { share } => {
                let local = local_limits(limits, share)?;
                self.fallback.acquire(key, cost, &local).await
            }
            _ => Err(error.into()),
        }
    }
}

/// Runs a script for `key` within `timeout`.
pub(crate) async fn invoke<T: FromRedisValue>(
    connection: &ConnectionManager,
    timeout: Duration,
    key: &Key,
    invocation: &ScriptInvocation<'_>,
) -> Result<T, RedisStoreError> {
    let mut connection = connection.clone();
    match tokio::time::timeout(timeout, invocation.invoke_async(&mut connection)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(RedisStoreError::redis(Some(key.clone()), error)),
        Err(_) => Err(RedisStoreError::timeout(Some(key.clone()), timeout)),
    }
}

/// Reports a decision Redis could not make, and what `policy` did instead.
pub(crate) fn report(key: &Key, error: &RedisStoreError, policy: &'static str) {
    tracing::warn!(
        name: STORE_ERROR,
        target: telemetry::TARGET,
        event = STORE_ERROR,
        key = %key,
        error.kind = error.kind().as_str(),
        policy,
        "the Redis store could not decide: {}",
        error.kind()
    );
    tower_quota::metrics::store_error(key, error.kind().as_str());
}

/// The limits of the local fallback: `share` of each quota, at least 1.
fn local_limits(limits: &Limits, share: f64) -> Result<Limits, BoxError> {
    let quotas = limits
        .quotas()
        .iter()
        .map(|quota| {
            let max_calls = ((quota.max_calls() as f64 * share).floor() as u64).max(1);
            if quota.is_per_request() {
                Quota::per_request(max_calls, quota.window())
            } else {
                Quota::new(max_calls, quota.window())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut layer = SlidingWindowLayer::with_quotas(quotas)?
        .safety_margin(limits.safety_margin())?
        .sent_within(limits.sent_within())?;
    if limits.is_strict() {
        layer = layer.strict();
    }
    if let Some(max_wait) = limits.max_wait() {
        layer = layer.max_wait(max_wait);
    }
    if let Some(max_queue) = limits.max_queue() {
        layer = layer.max_queue(max_queue);
    }
    Ok(layer.limits().clone())
}

enum Cancel {
    Exact {
        keys: Vec<String>,
        id: u64,
    },
    Approximate {
        keys: Vec<(String, i64, i64)>,
        at: i64,
    },
}

/// What a call recorded, removed again if the request is dropped (or its
/// call timed out) before its slot.
struct Reservation {
    inner: Arc<Inner>,
    key: Key,
    cancel: Cancel,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the entries expire with their keys
        };
        let inner = self.inner.clone();
        let key = self.key.clone();
        let cancel = std::mem::replace(
            &mut self.cancel,
            Cancel::Exact {
                keys: Vec::new(),
                id: 0,
            },
        );
        runtime.spawn(async move {
            let result = match &cancel {
                Cancel::Exact { keys, id } => {
                    let mut invocation = SCRIPTS.exact_cancel.prepare_invoke();
                    for redis_key in keys {
                        invocation.key(redis_key);
                    }
                    invocation.arg(*id);
                    inner.call::<i64>(&key, &invocation).await
                }
                Cancel::Approximate { keys, at } => {
                    let mut invocation = SCRIPTS.approx_adjust.prepare_invoke();
                    invocation.arg(*at);
                    for (redis_key, span, units) in keys {
                        invocation.key(redis_key).arg(*span).arg(-*units);
                    }
                    inner.call::<i64>(&key, &invocation).await
                }
            };
            if let Err(error) = result {
                report(&key, &error, "cancel");
            }
        });
    }
}

/// The most units Redis counts in one log or window: 2^53 − 1, the largest
/// integer Lua's numbers (doubles) hold exactly. Costs, corrections and
/// quotas above it saturate at it, which refuses more than it admits: a
/// cost of `MAX_UNITS` fills any quota Redis can count. The scripts keep
/// every sum at most this, so `HINCRBY` never overflows.
const MAX_UNITS: i64 = (1 << 53) - 1;

/// `value`, saturated at [`MAX_UNITS`].
fn units(value: u64) -> i64 {
    i64::try_from(value).map_or(MAX_UNITS, |value| value.min(MAX_UNITS))
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single assignment or map operation.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
