//! The store: one script call per admission (or per batch of concurrent
//! admissions of one key), a sleep until the reserved slot, the failure
//! policy when Redis cannot decide.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use foldhash::HashMap;
use redis::{Cmd, ErrorKind, FromRedisValue, Script, ScriptInvocation, ServerErrorKind};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower_quota::sliding_window::{
    Admission, Completion, ConflictingQuotas, DriftMargin, LagProbe, Limits, MemoryStore,
    OverloadReason, Overloaded, Place, Priority, Quota, SlidingWindowLayer, Store,
};
use tower_quota::{BoxError, Key, Room, telemetry};

use crate::batch::{Join, Lanes, Outcome, Request};
use crate::builder::{FailurePolicy, RedisStoreBuilder};
use crate::connection::Connection;
use crate::error::{RedisStoreError, RedisStoreErrorKind};
use crate::leases::RedisLeases;
use crate::names::{Names, key_names, micros, shortest_window};
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

/// An admission's id as exact mode writes it in Redis: without
/// [`REDIS_ID`], below 2^63, so that a small log (a listpack) holds it as
/// an 8-byte integer instead of 19 digits of text. The other 63 bits are
/// random: ids stay unique per key across processes.
fn logged(id: u64) -> u64 {
    id & !REDIS_ID
}

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

pub(crate) struct Inner {
    connection: Connection,
    prefix: String,
    timeout: Duration,
    policy: FailurePolicy,
    approximate: bool,
    /// Exact mode: concurrent admissions of a key share script calls.
    coalesce: bool,
    fallback: MemoryStore,
    /// The Redis names and the limits last used with each key: built once,
    /// and `correct` knows the key's quotas.
    known: Mutex<HashMap<Key, Arc<Names>>>,
    /// The keys with an exact call in flight, and the requests waiting
    /// for it (with `coalesce`).
    pub(crate) lanes: Lanes,
    /// The extra margin of each key whose provider refused a request the
    /// log had room for.
    drift: Mutex<HashMap<Key, DriftMargin>>,
    /// After a connection failure or a timeout, Redis is not waited on
    /// again before this instant: requests meet the failure policy at once.
    suspended_until: Mutex<Option<Instant>>,
    /// Whether this process's tasks run late (exact mode).
    lag: LagProbe,
    /// The calls that report to Redis in the background (answers,
    /// corrections, dropped reservations, leases given back), which
    /// [`RedisStore::flush`] waits for. Closed from the start: closing only
    /// lets `wait` end once no call is left, and calls are still tracked.
    background: TaskTracker,
}

impl RedisStore {
    /// Configures a store for the Redis at `url`: `redis://[user][:password@]host[:port][/db]`,
    /// or `rediss://` with the `tls` feature.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url)
    }

    /// Configures a store for a Redis Cluster, given the URLs of some of
    /// its nodes (one that answers is enough: the others are discovered).
    ///
    /// Each quota key's Redis keys share the hash tag `{key}`, so each
    /// script call touches one slot and stays atomic, while different keys
    /// spread over the masters. Calls go to the master of the key's slot;
    /// redis-rs follows `MOVED` and `ASK` redirections during resharding and
    /// refreshes its slot map after a failover. See
    /// [Failover](crate#failover) for what a failover costs.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// use tower_quota_redis::RedisStore;
    ///
    /// let store = RedisStore::cluster_builder([
    ///     "redis://10.0.0.1:7000",
    ///     "redis://10.0.0.2:7000",
    /// ])
    /// .build()
    /// .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// An empty list is refused by
    /// [`build`](RedisStoreBuilder::build) with an error of kind `Config`.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster_builder<I, U>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        RedisStoreBuilder::cluster(nodes)
    }

    /// Configures a store for the master that Redis Sentinels name
    /// `master_name`, given the URLs of the Sentinels
    /// (`redis://[user:password@]host:port`; the credentials are the
    /// Sentinels' own: give the master's with
    /// [`sentinel_master_auth`](RedisStoreBuilder::sentinel_master_auth)).
    ///
    /// The store asks the Sentinels for the master, checks its role, and
    /// keeps one connection to it. After a failure that may mean a failover
    /// (the connection fails, a call times out, the server answers
    /// `READONLY`), it asks the Sentinels again on the next call, so
    /// admissions go to the promoted replica without a restart. See
    /// [Failover](crate#failover) for what a failover costs.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), tower_quota::BoxError> {
    /// use tower_quota_redis::RedisStore;
    ///
    /// let store = RedisStore::sentinel_builder(
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"],
    ///     "quota",
    /// )
    /// .build()
    /// .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// An empty list of Sentinels or an empty master name is refused by
    /// [`build`](RedisStoreBuilder::build) with an error of kind `Config`.
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel_builder<I, U>(sentinels: I, master_name: impl Into<String>) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        RedisStoreBuilder::sentinel(sentinels, master_name)
    }

    pub(crate) fn from_parts(
        connection: Connection,
        prefix: String,
        timeout: Duration,
        policy: FailurePolicy,
        approximate: bool,
        coalesce: bool,
    ) -> Self {
        RedisStore {
            inner: Arc::new(Inner {
                connection,
                prefix,
                timeout,
                policy,
                approximate,
                coalesce,
                fallback: MemoryStore::new(),
                known: Mutex::new(HashMap::default()),
                lanes: Lanes::default(),
                drift: Mutex::new(HashMap::default()),
                suspended_until: Mutex::new(None),
                lag: LagProbe::new(),
                background: {
                    let tracker = TaskTracker::new();
                    tracker.close();
                    tracker
                },
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

    /// Whether concurrent exact admissions of one key share script calls
    /// (see [`RedisStoreBuilder::coalesce`]).
    pub fn coalesces(&self) -> bool {
        self.inner.coalesce && !self.inner.approximate
    }

    /// The Redis keys that hold `key`'s state under `limits`, in the order
    /// of `limits.quotas()`.
    ///
    /// Exact mode: for each quota, its sorted-set log (score: the instant,
    /// in microseconds of the Redis clock, after which an admission holds
    /// its slot for a window and the margin), its costs hash (present only
    /// while an entry costs other than 1), the sorted set of reserved
    /// admission instants and the sorted set of the reservations' floors
    /// (the earliest instant each could move up to); then, when some class
    /// leaves a share free, each quota's log of the admissions of the
    /// classes above. Approximate mode: each quota's counter hash.
    ///
    /// One log (or counter hash), the anchor, is named `{prefix}:{key}:log`
    /// (or `{prefix}:{key}:counts`) whatever its quota: it also holds the
    /// signature of the quota list the key is counted under, as a member
    /// scored `+inf` (every other score is a finite instant), or as the
    /// field `q`.
    ///
    /// All of a key's Redis keys share the hash tag `{key}`, so one script
    /// call touches one Redis Cluster slot.
    pub fn redis_keys(&self, key: &Key, limits: &Limits) -> Vec<String> {
        let (mut keys, jumpers) =
            key_names(&self.inner.prefix, key, limits, self.inner.approximate);
        // The anchor, last, is also one of the quotas'.
        keys.pop();
        keys.extend(jumpers);
        keys
    }

    /// The member `admission` has in its key's exact logs (and queues), or
    /// `None` when Redis did not record it: approximate mode, or admitted
    /// without Redis (fail open, the local fallback).
    pub fn log_member(&self, admission: &Admission) -> Option<u64> {
        (!self.inner.approximate && admission.id() & REDIS_ID != 0).then(|| logged(admission.id()))
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
            self.inner.background.clone(),
        )
    }

    /// Waits until the calls this process makes to Redis in the background
    /// have run: the answers that release slots early
    /// ([`Store::complete`]), the corrections of costs, the removal of
    /// reservations dropped before their slot, and the leases of
    /// [`leases`](Self::leases) given back.
    ///
    /// They run on spawned tasks, off the responses' path, so a process
    /// that ends its runtime right after its last answers drops those still
    /// to run. Nothing is counted short for it (a slot only frees later),
    /// but its last admissions then hold their slots until their
    /// `sent_within` bounds instead of a window after their answers, and
    /// the other processes that share the quota wait for them (four worker
    /// processes lost up to a third of a second of the last window that
    /// way). Await it after a worker's last response, before it exits.
    ///
    /// It returns once no background call is left, those made while it
    /// waits included; each is bounded by the store's
    /// [`timeout`](Self::timeout).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_quota::BoxError> {
    /// use std::time::Duration;
    /// use tower_quota::SlidingWindowLayer;
    /// use tower_quota_redis::RedisStore;
    ///
    /// let store = RedisStore::builder("redis://127.0.0.1/").build().await?;
    /// let layer = SlidingWindowLayer::new(100, Duration::from_secs(1))?.store(store.clone());
    /// // ... the worker sends its requests through `layer` ...
    /// store.flush().await;
    /// # drop(layer);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self) {
        self.inner.background.wait().await;
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
            .field("coalesce", &self.inner.coalesce)
            .finish_non_exhaustive()
    }
}

impl Store for RedisStore {
    type Acquire = Acquire;

    fn acquire(&self, key: Key, cost: u64, limits: &Limits) -> Acquire {
        Acquire {
            future: Box::pin(acquire(
                self.inner.clone(),
                key,
                cost,
                limits.clone(),
                Priority::default(),
            )),
        }
    }

    /// Keeps the deadline as `max_wait`, and in exact mode (not strict)
    /// each class's reserved share across processes: the classes below
    /// leave it free, and the classes it is kept for may take it at once,
    /// ahead of the others' reservations (see `exact_acquire.lua`).
    /// Otherwise requests go in the order their calls reach Redis, whatever
    /// their class or tenant.
    fn acquire_placed(&self, key: Key, cost: u64, limits: &Limits, place: Place) -> Acquire {
        let mut limits = limits.clone();
        if let Some(deadline) = place.get_deadline() {
            let left = deadline.saturating_duration_since(Instant::now());
            limits = limits.waiting_at_most(left);
        }
        Acquire {
            future: Box::pin(acquire(
                self.inner.clone(),
                key,
                cost,
                limits,
                place.get_priority(),
            )),
        }
    }

    fn correct(&self, admission: &Admission, actual_cost: u64) {
        if let FailurePolicy::LocalFallback { .. } = self.inner.policy {
            self.inner.fallback.correct(admission, actual_cost);
        }
        if admission.id() == 0 || (!self.inner.approximate && admission.id() & REDIS_ID == 0) {
            return; // admitted without Redis (fail open, zero cost, local fallback)
        }
        let Some(names) = lock(&self.inner.known).get(admission.key()).cloned() else {
            return;
        };
        let weighted: Vec<(usize, Quota)> = names
            .limits
            .quotas()
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, quota)| !quota.is_per_request())
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
        let margin = names.limits.safety_margin();
        let delta = i128::from(units(actual_cost)) - i128::from(units(admission.cost()));
        let delta =
            i64::try_from(delta.clamp(-i128::from(MAX_UNITS), i128::from(MAX_UNITS))).unwrap_or(0);
        self.inner.background.spawn_on(
            async move {
                let result = if inner.approximate {
                    let mut invocation = SCRIPTS.approx_adjust.prepare_invoke();
                    invocation.arg(id);
                    for (index, quota) in &weighted {
                        invocation
                            .key(names.counts(*index))
                            .arg(micros(quota.window().saturating_add(margin)))
                            .arg(delta);
                    }
                    inner.call::<i64>(&key, &invocation).await
                } else {
                    let mut invocation = SCRIPTS.exact_correct.prepare_invoke();
                    for (index, _) in &weighted {
                        invocation.key(names.log(*index)).key(names.costs(*index));
                    }
                    invocation.arg(logged(id)).arg(units(actual_cost));
                    inner.call::<i64>(&key, &invocation).await
                };
                if let Err(error) = result {
                    report(&key, &error, "correct");
                }
            },
            &runtime,
        );
    }

    fn complete(&self, admission: &Admission, completion: Completion, limits: &Limits) {
        if let FailurePolicy::LocalFallback { .. } = self.inner.policy {
            // The fallback keeps a dropped request's bound itself, and
            // counts the answers its keys wait for.
            self.inner.fallback.complete(admission, completion, limits);
        }
        if self.inner.approximate || admission.id() & REDIS_ID == 0 {
            // Counters cannot release one admission early; an admission
            // without the bit was not recorded in Redis.
            return;
        }
        let names = self.inner.names(admission.key(), limits);
        names.flight.ended();
        if completion == Completion::Dropped && !limits.is_strict() {
            // A dropped request may still be on its way: it keeps its bound.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the entry leaves at its bound (strict: see the crate docs)
        };
        let key = admission.key().clone();
        let logs: Vec<usize> = (0..limits.quotas().len())
            .filter(|index| limits.quotas()[*index].units(admission.cost()) > 0)
            .collect();
        if logs.is_empty() {
            return;
        }
        let extra = self.inner.extra_margin(&key, limits);
        let inner = self.inner.clone();
        let id = admission.id();
        self.inner.background.spawn_on(
            async move {
                let mut invocation = SCRIPTS.exact_complete.prepare_invoke();
                for index in logs {
                    invocation.key(names.log(index));
                }
                invocation.arg(logged(id)).arg(micros(extra));
                if let Err(error) = inner.call::<i64>(&key, &invocation).await {
                    report(&key, &error, "complete");
                }
            },
            &runtime,
        );
    }

    fn accepted(&self, admission: &Admission, room: &dyn Fn() -> Option<Room>, limits: &Limits) {
        if admission.id() & REDIS_ID == 0
            && let FailurePolicy::LocalFallback { .. } = self.inner.policy
        {
            // Admitted by the local fallback, whose fresh keys start at
            // the pace of their answers.
            self.inner.fallback.accepted(admission, room, limits);
        }
    }

    fn probes_lag(&self, admission: &Admission) -> bool {
        // Exact mode only: counters cannot hold an admission longer.
        !self.inner.approximate
            && admission.id() & REDIS_ID != 0
            && self.inner.lag.probes(admission)
    }

    fn probed(&self, lag: Option<Duration>, limits: &Limits) {
        self.inner.lag.probed(lag, limits);
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

/// How long a request whose slot waits for a strict admission's answer
/// sleeps before asking again: a quarter of the shortest window, at most
/// [`MAX_POLL`]. The slot frees a window after the answer, so a request
/// that asks again within a window of it loses nothing.
fn poll_interval(limits: &Limits) -> Duration {
    (shortest_window(limits) / 4).clamp(Duration::from_millis(1), MAX_POLL)
}

/// `by` after `at`; a sum past what an instant holds (a timeout of
/// `Duration::MAX`, a wait out of contract in a reply) gives an instant 30
/// years on, which no wait reaches.
fn later(at: Instant, by: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    at.checked_add(by)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// A wait in a script's reply, in µs; a negative one (out of contract) is
/// no wait.
fn from_micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

/// What a reservation takes to ask Redis again for an earlier slot.
struct MoveUp<'a> {
    names: &'a Names,
    request: Request,
    /// The wait until its floor, as the reply gave it.
    floor: Duration,
}

/// The most times one reservation asks to move up. Asking again once its
/// floor has passed usually finds the answers it waited for.
const MAX_MOVES_UP: usize = 4;

/// The least a move up must be able to gain to be worth a round trip.
const MIN_MOVE_UP: Duration = Duration::from_millis(1);

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
    class: Priority,
) -> Result<Admission, BoxError> {
    // A request of a class that leaves a share free fits beside it: the
    // script's exactness across processes rests on it.
    limits.check_cost_for(&key, cost, Some(class))?;
    if limits.quotas().iter().all(|quota| quota.units(cost) == 0) {
        return Ok(Admission::new(key, 0, cost, Duration::ZERO, 0));
    }
    let result = if inner.is_suspended() {
        Err(Failure::Store(RedisStoreError::suspended(key.clone())))
    } else if inner.approximate {
        inner.acquire_approximate(&key, cost, &limits).await
    } else {
        inner.acquire_exact(&key, cost, &limits, class).await
    };
    match result {
        Ok(admission) => Ok(admission),
        Err(Failure::Refused(error)) => Err(error),
        Err(Failure::Store(error)) => inner.fail(key, cost, &limits, error).await,
    }
}

impl Inner {
    /// The Redis names of `key` under `limits`, built on first use.
    fn names(&self, key: &Key, limits: &Limits) -> Arc<Names> {
        let mut known = lock(&self.known);
        if let Some(names) = known.get(key)
            && names.limits == *limits
        {
            return names.clone();
        }
        if known.len() >= KNOWN_KEYS {
            // Keys with requests under way or in flight keep their counts.
            known.retain(|_, names| !names.flight.is_idle());
            if known.len() >= KNOWN_KEYS {
                known.clear();
            }
        }
        let names = Arc::new(Names::new(&self.prefix, key, limits, self.approximate));
        known.insert(key.clone(), names.clone());
        names
    }

    pub(crate) fn is_suspended(&self) -> bool {
        lock(&self.suspended_until).is_some_and(|until| Instant::now() < until)
    }

    fn suspend(&self) {
        *lock(&self.suspended_until) = Some(later(Instant::now(), self.timeout));
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

    /// The bound this process's admissions of `names`' key are held for
    /// while unanswered, in µs (-1: until answered, strict mode): the
    /// `sent_within` bound; three times as long in the key's first window
    /// in this process, while connections are being opened, and while the
    /// process has more of the key's requests under way and in flight than
    /// it had in flight at once lately (the ones beyond may open
    /// connections: [`Limits::cold_sent_within`]); and a whole window while the
    /// process lags ([`LagProbe`]), where the in-process store holds them
    /// until answered. A caller that does not report answers always gets
    /// `sent_within`: its entries are never lowered to an answer.
    fn sent_within(&self, names: &Names) -> i64 {
        let limits = &names.limits;
        if limits.is_strict() {
            return -1;
        }
        if !limits.reports_answers() {
            return micros(limits.sent_within());
        }
        let now = Instant::now();
        let bound = if self.lag.is_lagging(now) {
            shortest_window(limits).max(limits.cold_sent_within())
        } else if now < names.warm_at || names.flight.is_cold(now) {
            limits.cold_sent_within()
        } else {
            limits.sent_within()
        };
        micros(bound)
    }

    async fn acquire_exact(
        self: &Arc<Self>,
        key: &Key,
        cost: u64,
        limits: &Limits,
        class: Priority,
    ) -> Result<Admission, Failure> {
        let names = self.names(key, limits);
        let _under_way = names.flight.under_way();
        let started = Instant::now();
        // How long the request waited for answers in earlier calls.
        let mut elapsed = Duration::ZERO;
        loop {
            // The id is chosen here, so that a request dropped while its
            // call is in flight can still remove what the call records.
            let request = Request {
                id: rand::random::<u64>() | REDIS_ID,
                cost,
                max_wait: limits
                    .max_wait()
                    .map_or(-1, |max_wait| micros(max_wait.saturating_sub(elapsed))),
                class,
                move_up: false,
            };
            let join = if self.coalesce {
                self.lanes.join(self, key, &names, request)
            } else {
                Join::Alone
            };
            let outcome = match join {
                Join::Lead(flight) => {
                    let outcome = self.decide(key, &names, &[request]).await.pop();
                    // Hands the key on to the requests that came meanwhile.
                    drop(flight);
                    outcome
                }
                Join::Alone => self.decide(key, &names, &[request]).await.pop(),
                Join::Wait(receiver) => receiver.await.ok(),
            };
            let Some(outcome) = outcome else {
                return Err(Failure::Store(RedisStoreError::unexpected_reply(
                    key.clone(),
                    "the call of the request's batch was abandoned",
                )));
            };
            let Outcome {
                decision,
                reservation,
            } = outcome;
            // A call that timed out may still run: the reservation's drop
            // removes what it records. Nothing ran for other errors.
            let row = decision.map_err(Failure::Store)?;
            // A reservation behind unanswered admissions may move up once
            // they are answered: not one of a class that jumps ahead of a
            // share, nor a strict one (its slots wait for answers anyway).
            let move_up = (!limits.is_strict()
                && (names.jumpers.is_empty() || limits.reserved_share(class) > 0.0))
                .then(|| MoveUp {
                    names: &names,
                    request,
                    floor: from_micros(row[4]),
                });
            match self
                .settle(
                    key,
                    cost,
                    limits,
                    &row,
                    request.id,
                    elapsed,
                    reservation,
                    move_up,
                )
                .await?
            {
                Settled::Admitted(admission) => {
                    names.flight.sent(Instant::now());
                    return Ok(admission);
                }
                // Strict: a slot frees a window after an answer still to
                // come. Nothing was recorded; ask again.
                Settled::Blocked => {
                    tokio::time::sleep(poll_interval(limits)).await;
                    elapsed = started.elapsed();
                }
            }
        }
    }

    /// One exact script call for `requests` of `key`, in order: each one's
    /// row of the reply, or the error, with what to remove if the request
    /// is dropped before its slot.
    pub(crate) async fn decide(
        self: &Arc<Self>,
        key: &Key,
        names: &Arc<Names>,
        requests: &[Request],
    ) -> Vec<Outcome> {
        // Made before the call: a request dropped while it is in flight
        // removes what it records.
        let mut reservations: Vec<Reservation> = requests
            .iter()
            .map(|request| Reservation {
                inner: self.clone(),
                key: key.clone(),
                cancel: Cancel::Exact {
                    names: names.clone(),
                    id: request.id,
                },
                armed: true,
            })
            .collect();
        if self.is_suspended() {
            // Redis failed while the batch waited: not asked.
            return reservations
                .into_iter()
                .map(|mut reservation| {
                    reservation.armed = false;
                    Outcome {
                        decision: Err(RedisStoreError::suspended(key.clone())),
                        reservation,
                    }
                })
                .collect();
        }
        let result = self.call_exact(key, names, requests).await;
        match result {
            // The script's common call: every request recorded and
            // admitted now.
            Ok(reply) if reply.is_empty() && !requests.is_empty() => reservations
                .into_iter()
                .map(|reservation| Outcome {
                    decision: Ok([0; 5]),
                    reservation,
                })
                .collect(),
            Ok(reply) if reply.len() == 5 * requests.len() => reservations
                .into_iter()
                .zip(reply.chunks_exact(5))
                .map(|(mut reservation, row)| {
                    // Only status 0 recorded anything.
                    reservation.armed = row[0] == 0;
                    Outcome {
                        decision: Ok([row[0], row[1], row[2], row[3], row[4]]),
                        reservation,
                    }
                })
                .collect(),
            Ok(reply) => {
                for reservation in &mut reservations {
                    reservation.armed = false;
                }
                let detail = format!("script returned {} values", reply.len());
                reservations
                    .into_iter()
                    .map(|reservation| Outcome {
                        decision: Err(RedisStoreError::unexpected_reply(
                            key.clone(),
                            detail.clone(),
                        )),
                        reservation,
                    })
                    .collect()
            }
            Err(error) => {
                // Before the requests waiting for this key are sent: they
                // meet the failure policy at once.
                if matches!(
                    error.kind(),
                    RedisStoreErrorKind::Timeout | RedisStoreErrorKind::Connection
                ) {
                    self.suspend();
                }
                let timed_out = error.kind() == RedisStoreErrorKind::Timeout;
                reservations
                    .into_iter()
                    .map(|mut reservation| {
                        reservation.armed = timed_out;
                        Outcome {
                            decision: Err(error.duplicate()),
                            reservation,
                        }
                    })
                    .collect()
            }
        }
    }

    /// Runs `exact_acquire.lua` for `requests` (see its contract): an
    /// EVALSHA built in one buffer, the requests in runs of consecutive
    /// requests alike (same cost, wait and class), so a batch of alike
    /// requests costs one argument each.
    async fn call_exact(
        &self,
        key: &Key,
        names: &Names,
        requests: &[Request],
    ) -> Result<Vec<i64>, RedisStoreError> {
        let limits = &names.limits;
        let quotas = limits.quotas();
        let margin = limits.safety_margin();
        let script = &SCRIPTS.exact_acquire;
        let sent_within = self.sent_within(names);
        if let Some(cmd) = self.compact_exact(key, names, requests, sent_within) {
            return eval(&self.connection, self.timeout, key, script, &cmd).await;
        }
        let mut cmd = Cmd::with_capacity(
            16 + names.keys.len() + 2 * quotas.len() + 8 * requests.len(),
            names.bytes + 24 * (requests.len() + 8 + 2 * quotas.len()),
        );
        cmd.arg("EVALSHA")
            .arg(script.get_hash())
            .arg(names.keys.len() + names.jumpers.len());
        for redis_key in names.keys.iter().chain(&names.jumpers) {
            cmd.arg(redis_key.as_str());
        }
        cmd.arg(max_queue(limits))
            .arg(sent_within)
            .arg(micros(self.extra_margin(key, limits)))
            .arg(quotas.len());
        for quota in quotas {
            cmd.arg(span(quota, margin)).arg(units(quota.max_calls()));
        }
        cmd.arg(names.signature.as_str()).arg(requests.len());
        // The share the lowest class that leaves one keeps for the
        // classes above: what a request of those may take at once.
        let top = Priority::ALL
            .into_iter()
            .find(|class| limits.reserved_share(*class) > 0.0);
        let alike = |a: &Request, b: &Request| {
            a.cost == b.cost
                && a.max_wait == b.max_wait
                && a.class == b.class
                && a.move_up == b.move_up
        };
        for run in requests.chunk_by(alike) {
            let first = run[0];
            let jump = !names.jumpers.is_empty() && limits.reserved_share(first.class) == 0.0;
            // The request's kind: new, new of a class that jumps, moving up.
            let kind = if first.move_up { 2 } else { u8::from(jump) };
            cmd.arg(run.len()).arg(first.max_wait).arg(kind);
            for quota in quotas {
                cmd.arg(units(quota.units(first.cost)));
            }
            let class = match top {
                Some(top) if jump => top,
                _ => first.class,
            };
            for quota in quotas {
                cmd.arg(units(limits.reserved_units(class, quota.max_calls())));
            }
            for request in run {
                cmd.arg(logged(request.id));
            }
        }
        eval(&self.connection, self.timeout, key, script, &cmd).await
    }

    /// The compact form of `exact_acquire.lua`'s common call (see its
    /// contract), when `requests` have its shape: one quota, whose log is
    /// the anchor, no jumpers, not strict, and one run of new requests of
    /// unit cost that keep no share free. Four keys and seven arguments
    /// before the ids instead of five and thirteen: what Redis reads and
    /// hands to the script for every call.
    fn compact_exact(
        &self,
        key: &Key,
        names: &Names,
        requests: &[Request],
        sent_within: i64,
    ) -> Option<Cmd> {
        let limits = &names.limits;
        let [quota] = limits.quotas() else {
            return None;
        };
        let [log, costs, queue, floors, anchor] = names.keys.as_slice() else {
            return None;
        };
        let first = requests.first()?;
        let alike = requests.iter().all(|request| {
            request.cost == first.cost
                && request.max_wait == first.max_wait
                && request.class == first.class
                && !request.move_up
        });
        let common = anchor == log
            && names.jumpers.is_empty()
            && sent_within >= 0
            && alike
            && units(quota.units(first.cost)) == 1
            && units(limits.reserved_units(first.class, quota.max_calls())) == 0;
        if !common {
            return None;
        }
        let script = &SCRIPTS.exact_acquire;
        let mut cmd =
            Cmd::with_capacity(14 + requests.len(), names.bytes + 24 * (requests.len() + 8));
        cmd.arg("EVALSHA")
            .arg(script.get_hash())
            .arg(4)
            .arg(log.as_str())
            .arg(costs.as_str())
            .arg(queue.as_str())
            .arg(floors.as_str())
            .arg(max_queue(limits))
            .arg(sent_within)
            .arg(micros(self.extra_margin(key, limits)))
            .arg(span(quota, limits.safety_margin()))
            .arg(units(quota.max_calls()))
            .arg(names.signature.as_str())
            .arg(first.max_wait);
        for request in requests {
            cmd.arg(logged(request.id));
        }
        Some(cmd)
    }

    async fn acquire_approximate(
        self: &Arc<Self>,
        key: &Key,
        cost: u64,
        limits: &Limits,
    ) -> Result<Admission, Failure> {
        let names = self.names(key, limits);
        let quotas = limits.quotas();
        let margin = limits.safety_margin();
        let mut invocation = SCRIPTS.approx_acquire.prepare_invoke();
        let mut keys = Vec::with_capacity(quotas.len());
        for (index, quota) in quotas.iter().enumerate() {
            invocation.key(names.counts(index));
            keys.push((
                names.counts(index).to_owned(),
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
        // The anchor, which holds the signature.
        let anchor = names.keys.last().map_or("", String::as_str);
        invocation.key(anchor).arg(names.signature.as_str());
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
                None,
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
        move_up: Option<MoveUp<'_>>,
    ) -> Result<Settled, Failure> {
        let &[status, wait_us, queued, limiting, ..] = reply else {
            reservation.armed = false;
            return Err(Failure::Store(RedisStoreError::unexpected_reply(
                key.clone(),
                format!("script returned {} values", reply.len()),
            )));
        };
        let wait = from_micros(wait_us);
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
                Overloaded::new(key.clone(), elapsed.saturating_add(wait), queued, reason).into(),
            ));
        }
        let waited = if wait.is_zero() {
            elapsed
        } else {
            // A failed move up may still have run: the reservation's drop
            // removes what it records, and the failure policy applies.
            // Boxed: only a request that waits needs its timer and its
            // calls to move up, and the admission future of every request
            // would otherwise carry their room (it is moved into its box
            // whole, once per request).
            let slept = Box::pin(self.sleep_until_slot(key, wait, move_up))
                .await
                .map_err(Failure::Store)?;
            elapsed.saturating_add(slept)
        };
        reservation.armed = false;
        Ok(Settled::Admitted(
            Admission::new(key.clone(), id, cost, waited, queued).with_limited_by(limited_by),
        ))
    }

    /// Sleeps until a reserved slot `wait` from now, and returns the wait
    /// it was given in the end, or the error of a call to move up (which
    /// may still run, and move the reservation: its slot is then unknown). A reservation counted behind unanswered admissions asks
    /// again at its floor, the instant its slot would free had they been
    /// answered at once, and takes the earlier instant Redis gives it (see
    /// `exact_acquire.lua`): the slot an early answer frees is not lost
    /// for the whole `sent_within` bound, nor again by each reservation
    /// behind it.
    async fn sleep_until_slot(
        &self,
        key: &Key,
        wait: Duration,
        move_up: Option<MoveUp<'_>>,
    ) -> Result<Duration, RedisStoreError> {
        let started = tokio::time::Instant::now();
        // The slot is at Redis time `now + wait`; the reply left Redis after
        // `now`, so waking `wait` after receiving it is never early.
        let mut slot = later(started, wait);
        if let Some(MoveUp {
            names,
            mut request,
            floor,
        }) = move_up
        {
            request.move_up = true;
            let mut floor = later(started, floor);
            for _ in 0..MAX_MOVES_UP {
                if slot.saturating_duration_since(floor) < MIN_MOVE_UP {
                    break;
                }
                tokio::time::sleep_until(floor).await;
                let reply = self.call_exact(key, names, &[request]).await?;
                let received = tokio::time::Instant::now();
                let &[status, wait_us, _, _, floor_us] = reply.as_slice() else {
                    return Err(RedisStoreError::unexpected_reply(
                        key.clone(),
                        format!("script returned {} values", reply.len()),
                    ));
                };
                if status != 0 {
                    // Recorded nothing (the reservation is gone, or the key
                    // busy under other quotas): it keeps its slot.
                    break;
                }
                slot = slot.min(later(received, from_micros(wait_us)));
                floor = later(received, from_micros(floor_us));
            }
        }
        tokio::time::sleep_until(slot).await;
        Ok(slot - started)
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

/// Runs `cmd`, an EVALSHA of `script`, for `key` within `timeout`; loads
/// the script and runs `cmd` again when Redis does not have it (after a
/// restart or `SCRIPT FLUSH`), as [`ScriptInvocation`] does.
pub(crate) async fn eval<T: FromRedisValue>(
    connection: &Connection,
    timeout: Duration,
    key: &Key,
    script: &Script,
    cmd: &Cmd,
) -> Result<T, RedisStoreError> {
    let mut connection = connection.clone();
    let call = async {
        match cmd.query_async(&mut connection).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut connection).await?;
                cmd.query_async(&mut connection).await
            }
            result => result,
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(RedisStoreError::redis(Some(key.clone()), error)),
        Err(_) => Err(RedisStoreError::timeout(Some(key.clone()), timeout)),
    }
}

/// Runs a script for `key` within `timeout`.
pub(crate) async fn invoke<T: FromRedisValue>(
    connection: &Connection,
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
        names: Arc<Names>,
        id: u64,
    },
    Approximate {
        keys: Vec<(String, i64, i64)>,
        at: i64,
    },
}

/// What a call recorded, removed again if the request is dropped (or its
/// call timed out) before its slot.
pub(crate) struct Reservation {
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
            Cancel::Approximate {
                keys: Vec::new(),
                at: 0,
            },
        );
        self.inner.background.spawn_on(
            async move {
                let result = match &cancel {
                    Cancel::Exact { names, id } => {
                        let mut invocation = SCRIPTS.exact_cancel.prepare_invoke();
                        for redis_key in names.quota_keys() {
                            invocation.key(redis_key.as_str());
                        }
                        invocation.arg(logged(*id));
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
            },
            &runtime,
        );
    }
}

/// The most units Redis counts in one log or window: 2^53 − 1, the largest
/// integer Lua's numbers (doubles) hold exactly. Costs, corrections and
/// quotas above it saturate at it, which refuses more than it admits: a
/// cost of `MAX_UNITS` fills any quota Redis can count. The scripts keep
/// every sum at most this, so `HINCRBY` never overflows.
const MAX_UNITS: i64 = (1 << 53) - 1;

/// `exact_acquire.lua`'s `max_queue`: -1 for none.
fn max_queue(limits: &Limits) -> i64 {
    limits
        .max_queue()
        .map_or(-1, |max| i64::try_from(max).unwrap_or(i64::MAX))
}

/// `exact_acquire.lua`'s `span_us` of `quota`: its window and the margin.
fn span(quota: &Quota, margin: Duration) -> i64 {
    micros(quota.window().saturating_add(margin))
}

/// `value`, saturated at [`MAX_UNITS`].
fn units(value: u64) -> i64 {
    i64::try_from(value).map_or(MAX_UNITS, |value| value.min(MAX_UNITS))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single assignment or map operation.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
