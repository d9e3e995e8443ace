//! A Redis [`Store`](tower_quota::sliding_window::Store) for tower-quota's
//! `SlidingWindowLayer`: many processes share one exact quota.
//!
//! # The problem
//!
//! Ten workers with a 10 requests/s limiter each send 100 requests/s
//! together. Once a pipeline outgrows one process, the quota must live where
//! every worker sees it. [`RedisStore`] keeps it in Redis, with the same
//! guarantee as the in-process store: no window of any quota ever holds more
//! than its `max_calls`, across all processes.
//!
//! # How one admission works
//!
//! - **One round trip.** Each admission is one Lua script call (EVALSHA; the
//!   script is loaded again by itself after a Redis restart or `SCRIPT FLUSH`),
//!   or a share of one: see [Coalescing](#coalescing).
//!   The script reads the clock with Redis `TIME`, never a worker's clock,
//!   drops the entries that have left every window, and either admits the
//!   request now or *reserves* the earliest instant at which every quota of
//!   the key has room, and returns the wait. The worker then sleeps (on
//!   tokio's clock) until that instant and sends. The common call (one
//!   quota, unit costs, no reservations, room for every request of the
//!   call) goes in a compact form (four keys and seven arguments before
//!   the requests' ids, instead of five and thirteen: every value costs
//!   Redis time to read) and is decided on a short path of six Redis
//!   commands; a test runs the same calls through the script with the
//!   short path, in the compact form, and without it, in the general
//!   form, and compares what they decide and write.
//! - **Exact logs.** Each quota of a key is a sorted set of admissions (one
//!   member per admission) with a hash beside it for costs other than 1 and
//!   the running sum (only while an entry costs other than 1: otherwise the
//!   sum is the log's size), and a small sorted set of the admission
//!   instants still to come (reservations), which keeps the key's
//!   admissions in order. A request reaches the provider somewhere between its admission
//!   and its answer, so an admission is held until a window (plus the
//!   safety margin) after its answer, or after its
//!   [`sent_within`](tower_quota::SlidingWindowLayer::sent_within) bound if
//!   that comes first — the same rule as the in-process store. Its
//!   exceptions hold here too, for callers that report answers (the
//!   layer's services do): the bound is
//!   [three times as long](tower_quota::sliding_window::Limits::cold_sent_within)
//!   in a key's first window in this process, while connections are being
//!   opened, and whenever this process has more of the key's requests
//!   under way (waiting or in flight) than it had in flight at once in the
//!   last 5 s ([`InFlightPeak`](tower_quota::sliding_window::InFlightPeak)):
//!   processes sharing a quota get a different share of it from window to
//!   window, and a request beyond the connections a pool holds opens a new
//!   one, a handshake later (the multi-process test's handshakes take
//!   150 ms). A longer bound costs nothing when the answer comes back
//!   sooner. While this process's tasks run late
//!   ([`LagProbe`](tower_quota::sliding_window::LagProbe), a `pacing_lagging`
//!   event) it is a whole window, where the in-process store holds an
//!   admission until answered (a Redis entry cannot tell a request dropped
//!   in flight from one still on its way). The
//!   member's score is that instant, in microseconds of the Redis clock:
//!   `admitted + sent_within` at admission, lowered to the Redis time of the
//!   answer when it comes back. Every entry counts from the call that
//!   records it until it leaves (a reservation too, before its instant),
//!   and answers only ever move a departure earlier, so checking the log
//!   at the new admission's instant keeps every later window at or under
//!   its limit.
//! - **Answers.** [`Store::complete`](tower_quota::sliding_window::Store::complete)
//!   lowers the admission's score to the Redis `TIME` of the call (one
//!   `ZADD XX LT` per quota, one script call from a spawned task, never on
//!   the response's path). A request dropped in flight keeps its bound: it
//!   may still be on its way. The call runs a little after the answer, which
//!   only holds the slot a little longer; a call still to run when the
//!   process ends its runtime never runs, and its slot is held until the
//!   bound, so a worker awaits [`RedisStore::flush`] before it exits.
//!   Since every instant is on one clock and a slot is released relative
//!   to the answer, workers on other hosts need no margin for the network
//!   or their timers' jitter while answers come back within `sent_within`:
//!   the default safety margin is enough (the multi-process test uses it
//!   across a simulated network).
//! - **Reservations move up.** A reservation made while the admissions it
//!   waits for are unanswered is counted behind their `sent_within`
//!   bounds, and one behind another reservation more so. So each
//!   reservation also gets a floor, the instant its slot would free had
//!   those admissions been answered at once, and its worker asks Redis
//!   again at the floor (one more script call, rarely more): once the
//!   answers are back, the reservation takes the slot a window after them.
//!   Under saturation, without this every slot would be reused
//!   `sent_within` late, up to a tenth of the quota lost; four processes
//!   sharing one quota now use 0.990–0.996 of it (quota-bench's scenarios,
//!   the workers flushing before they exit: 0.990–0.994 in 60 runs on one
//!   day, 0.995–0.996 in most runs on a quieter one). The check at the new
//!   instant is exact by the same argument as any admission (see
//!   `exact_acquire.lua`). A call to move up that fails may
//!   still run and move the reservation to a slot the worker does not
//!   know: the request then fails as the failure policy says, and its
//!   reservation is removed.
//! - **Strict mode.** With
//!   [`strict`](tower_quota::SlidingWindowLayer::strict), an admission is
//!   held until its answer comes back, with no time bound (the score is a
//!   sentinel 2^52 µs ahead until then); a request dropped in flight counts
//!   as answered when dropped. A request whose slot depends on an answer
//!   still to come records nothing and asks again every quarter window (at
//!   most every second), which costs nothing: the slot frees a window after
//!   the answer. One bound remains, for workers that die with requests in
//!   flight: a strict admission still unanswered an hour after its admission
//!   is dropped a window after that hour, and its keys' TTL covers it.
//! - **Refusals.** When the provider refuses with a 429 a request the log had
//!   room for, [`Store::refused`](tower_quota::sliding_window::Store::refused)
//!   widens the key's margin in this process: doubled plus the safety margin
//!   on each refusal, up to a quarter of the shortest window, halved for
//!   every ten windows without one (a map bounded like the other keyed maps).
//!   The extra margin is added to the admission's score, so the entry holds
//!   its slot longer whichever process prunes the log.
//!   [`RedisStore::extra_margin`] shows it.
//! - **Order.** Requests of one key are served in the order their scripts
//!   run in Redis. That is first-come first-served per Redis, not FIFO in
//!   the order requests were made across processes (which no store could
//!   see); within one process, requests issued one after another keep their
//!   order, and so do concurrent requests of one key (coalescing sends them
//!   in arrival order). A reservation moving up may pass one made before
//!   it that waits for answers still to come or for more units; the one
//!   passed keeps its instant.
//! - **Several quotas, costs.** A key may carry several quotas (requests per
//!   second and tokens per minute): one call checks and records them all.
//!   A quota made with `Quota::per_request` spends 1 per request, others
//!   spend the request's cost. A cost larger than a quota's `max_calls` is
//!   refused at once with
//!   [`CostTooLarge`](tower_quota::sliding_window::CostTooLarge), without a call.
//! - **Cancellation.** A request dropped before its reserved instant removes
//!   its reservation (one call from a spawned task). A request dropped while
//!   its call is in flight (alone or in a batch) removes what the call
//!   records the same way; one dropped while it waits for its batch to be
//!   sent is never sent. Requests that reserved
//!   later instants keep them: the freed room goes to the next arrivals.
//!   Room freed by an early answer likewise goes to the next arrivals, after
//!   the reservations already made.
//! - **Bounds.** With `max_wait`, a request whose reserved wait would exceed
//!   it is refused with
//!   [`Overloaded`](tower_quota::sliding_window::Overloaded) and nothing is recorded; with
//!   `max_queue`, so is a request that would wait behind `max_queue`
//!   reservations.
//! - **Corrections.** [`Store::correct`](tower_quota::sliding_window::Store::correct)
//!   sets the cost recorded for an admission to the real one (one call from
//!   a spawned task, with the timeout).
//! - **One quota list per key.** A key's admissions are counted under one
//!   list of quotas and safety margin. Its signature is kept in the key's
//!   *anchor*: the log (exact mode, as a member scored `+inf`) or the
//!   counter hash (approximate mode, as the field `q`) of one of its
//!   quotas, named `{prefix}:{key}:log` or `{prefix}:{key}:counts`
//!   whatever the quota, which expires with the longest-kept of the key's
//!   Redis keys: no Redis key of its own ([`RedisStore::redis_keys`] lists
//!   them). While a key has admissions in their windows, a
//!   process (or layer) that gives it another list is refused with
//!   [`ConflictingQuotas`](tower_quota::sliding_window::ConflictingQuotas),
//!   as by the in-process store: it would count only its own quotas and
//!   let the others' requests through uncounted. The same quotas in
//!   another order are the same list.
//! - **Saturation.** Redis counts at most 2^53 − 1 units per log or window
//!   (the largest integer Lua's numbers hold exactly): larger costs,
//!   corrections and quotas saturate at it, which refuses more, never less,
//!   and no script fails after it has written.
//! - **Redis Cluster.** All Redis keys of one quota key carry the hash tag
//!   `{key}`, so a script touches one slot and stays atomic, while
//!   different quota keys spread over the masters. The Redis keys of each
//!   quota share one expiry, only ever extended, to a second past their
//!   longest-held entry (so most calls need not extend it), and the
//!   anchor that holds the signature outlives them: idle quotas vanish by
//!   themselves. See
//!   [Cluster and Sentinel](#cluster-and-sentinel).
//! - **Redis version.** The scripts use `ZADD ... LT` and `PEXPIRE ... GT`:
//!   Redis 7.0 or later.
//!
//! # Coalescing
//!
//! In exact mode, concurrent admissions of one key share script calls
//! ([`RedisStoreBuilder::coalesce`], on by default). The first admission
//! of an idle key is sent at once, by its own future: nothing waits for a
//! batch, and a lone request pays exactly one round trip. Requests of the
//! key that arrive while that call is in flight wait for it, then go
//! together in the next call (up to 256 per call), sent by a spawned task;
//! and so on while more arrive. Once 16 of them wait, they go at once as a
//! second call, behind the first on the connection, so that Redis decides
//! one batch while the next is on its way (at most two calls of a key in
//! flight, and a call goes only once the one before it has been sent).
//! The script admits a batch's requests one
//! after another at one Redis instant, exactly as if each had made its own
//! call in that order: the same decisions, waits, refusals and bounds, so
//! exactness is unchanged and the key's requests are served in arrival
//! order (while the connection is being re-established, two calls in
//! flight may run in either order: still exact). Under load, a key's
//! admissions then cost a few script calls per hundred requests instead
//! of one each.
//!
//! A request that joins a call in flight waits for that call before its
//! own is sent: when Redis stops answering, it may wait up to two
//! timeouts before its failure policy applies (after the first, Redis is
//! suspended and the batch is not sent). Requests of one key under other
//! limits than the call in flight are sent alone. The approximate mode
//! makes one call per admission.
//!
//! # Failures
//!
//! Every call has a timeout ([`DEFAULT_TIMEOUT`], 250 ms, by default). When
//! Redis cannot decide (connection down, error reply, timeout), the
//! [`FailurePolicy`] chosen in the builder applies: refuse with a
//! [`RedisStoreError`] (`FailClosed`, the default), admit (`FailOpen`), or
//! admit through an in-process limiter holding a share of each quota
//! (`LocalFallback`). Each failure emits a `store_error` event (target
//! `tower_quota`, fields `key`, `error.kind`, `policy`; never the URL or
//! password). After a connection failure or a timeout, Redis is not waited
//! on again for one timeout period, so an outage costs each request at most
//! one timeout (two for a request that joined a call in flight: see
//! [Coalescing](#coalescing)). The connection manager reconnects by itself: when Redis is
//! back, admissions go through it again without a restart of the program.
//!
//! A Redis restarted empty has forgotten the admissions of the current
//! windows: up to `max_calls` more may be admitted in the first window after
//! it. Admissions made by the local fallback are likewise unknown to Redis;
//! their answers, corrections and refusals go to the fallback, which holds
//! them with the same `sent_within`, strict mode and margin. An answer whose
//! call fails leaves the admission at its bound (strict: at the hour's
//! bound).
//!
//! # Cluster and Sentinel
//!
//! - **Redis Cluster** (feature `cluster`):
//!   `RedisStore::cluster_builder` takes the URLs of some nodes and uses
//!   redis-rs's cluster-async connection: each script call goes to the
//!   master of its key's slot, `MOVED` and `ASK` redirections during
//!   resharding are followed (and retried within the store's timeout). A
//!   master that dies answers nothing, so after a failure that may be a
//!   failover (the connection fails or times out, `CLUSTERDOWN`,
//!   `READONLY`, `TRYAGAIN`) the store makes a new cluster connection in
//!   the background, which reads the slot map again; calls use it once
//!   made. Keys spread over every master: the tests check it with 100 keys
//!   on a 3-master cluster, and four processes sharing them see zero 429s
//!   at a provider that counts every arrival.
//! - **Resharding.** While a key's slot migrates, its script meets `ASK`
//!   (its Redis keys moved) or `TRYAGAIN` (some moved, some not: a script
//!   needs all of them in one place); redis-rs follows the first and
//!   retries the second within the store's timeout, and the keys move with
//!   their entries, so nothing is admitted twice. Once the slot has its new
//!   owner, `MOVED` updates the slot map. Measured (50 per second, 8
//!   concurrent requesters, a slot moved with `CLUSTER SETSLOT` and
//!   `MIGRATE` in steps 100 ms apart): no refusal, no window over 50.
//!   A migration slower than the retries (a slot with many keys) meets the
//!   failure policy for its duration.
//! - **Sentinel** (feature `sentinel`): `RedisStore::sentinel_builder`
//!   takes the Sentinels' URLs and the master's name. The store asks a
//!   Sentinel for the master, checks its `ROLE`, and keeps one multiplexed
//!   connection to it. After a failure that may be a failover (the
//!   connection fails, a call times out, `READONLY`, `MASTERDOWN`) it
//!   forgets the connection and asks the Sentinels again on the next call:
//!   the promoted replica is used without a restart.
//! - **TLS** (feature `tls`): `rediss://` URLs, for one server, every
//!   node of a cluster, or Sentinels and their master.
//!   `RedisStoreBuilder::tls_root_certificates` trusts a private CA
//!   instead of the webpki roots; `RedisStoreBuilder::tls_client_certificate`
//!   presents a client certificate.
//!
//! # Failover
//!
//! A failover costs availability for a few seconds and, because Redis
//! replicates asynchronously, possibly a little exactness.
//!
//! - **Until promotion.** From a master's death until its replica is
//!   promoted (Cluster: `cluster-node-timeout` plus an election; Sentinel:
//!   `down-after-milliseconds` plus an election), the key's slot has no
//!   master. Every call fails within the store's timeout (at once when the
//!   connection is refused; one timeout when the master is partitioned
//!   away; two for a request that joined a call in flight), Redis is then
//!   not asked again for one timeout period, and the [`FailurePolicy`]
//!   decides: `FailClosed` refuses with a [`RedisStoreError`] of kind
//!   `Connection` or `Timeout`; `FailOpen` admits without a limit;
//!   `LocalFallback` admits through the in-process limiter with its share.
//!   No request waits past the timeout.
//! - **After promotion.** The next call finds the new master (a new slot
//!   map, or the Sentinels' answer) and admissions go through Redis again,
//!   without a restart. The new master holds the logs its replica had.
//! - **The bound.** The old master acknowledged each admission before its
//!   replica had it. The admissions it acknowledged within its replication
//!   lag before dying are lost with it, and their slots are given again.
//!   In any window that spans a failover, a key's admissions stay within
//!   `max_calls + lost + fallback`, where `lost` is at most the admissions
//!   of the last replication lag (usually well under a millisecond on a
//!   LAN, so 0 or 1 admissions; at worst `max_calls`, for a replica that
//!   had not synced at all, as after a restart with no data), and
//!   `fallback` is 0 failing closed, at most `n × share × max_calls` with
//!   `LocalFallback` across `n` processes (Redis does not know the
//!   fallback's admissions), and unbounded failing open. Masters
//!   configured with `min-replicas-to-write 1` and `min-replicas-max-lag`
//!   refuse writes when their replicas fall behind: that bounds `lost` at
//!   the price of refusals.
//! - **Measured** (the failover tests: 50 per second, 8 concurrent
//!   requesters, loopback, a master killed with SIGKILL, 2 shared cores):
//!   on a 3-master cluster failing closed, refusals for about 2 s, service
//!   resumed about 2.5 s after the kill, the slowest decision 135 ms
//!   (timeout 250 ms), and no window over 50 (`lost` = 0); with Sentinel
//!   and `LocalFallback { share: 0.5 }`, 58 fallback admissions during
//!   about 2 s, service resumed 2.5 s after the kill, at most 58 in any
//!   window (over by 8, within 25 + `lost`).
//!
//! # Approximate mode
//!
//! [`RedisStoreBuilder::approximate`] replaces each log with a
//! sliding-window counter: the counts of two fixed windows, the previous
//! one weighted by how much of it the sliding window still covers. Memory
//! is O(1) per key and quota, whatever the quota, and each call is O(1).
//!
//! A counter has no entry per admission: each admission counts for
//! `window + safety_margin` from its admission instant, whatever its answer
//! does. [`Store::complete`](tower_quota::sliding_window::Store::complete)
//! cannot release a slot early and does nothing, `sent_within` and strict
//! mode do not apply, and [`Store::refused`](tower_quota::sliding_window::Store::refused)
//! does not widen the margin (it would move the counters' fixed windows):
//! give an approximate store the margin its network needs.
//!
//! Its error bound: no *fixed* window ever holds more than `max_calls`, and
//! any sliding window of the quota's length (plus margin) holds at most
//! `max_calls + previous * f`, where `previous` is the count of the fixed
//! window before and `f` the fraction of the current fixed window elapsed:
//! always under `2 * max_calls`, and reached only when a whole window's
//! admissions crowd at its very end. Under steady load the estimate is
//! close to the true count. Use it for quotas with many thousands of
//! admissions per window, where the provider's own enforcement is usually
//! approximate too; use the exact mode when every window must stay under
//! the limit.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_quota::SlidingWindowLayer;
//! use tower_quota_redis::{FailurePolicy, RedisStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .prefix("tq")
//!     .timeout(Duration::from_millis(200))
//!     .failure_policy(FailurePolicy::LocalFallback { share: 0.25 })
//!     .build()
//!     .await?;
//! // 50 requests in any second, shared by every process using this Redis.
//! let client = ServiceBuilder::new()
//!     .layer(SlidingWindowLayer::new(50, Duration::from_secs(1))?.store(store))
//!     .service(service_fn(|request: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(request.uri().to_string())
//!     }));
//! let response = client.oneshot(http::Request::get("/v1/items").body(())?).await?;
//! assert_eq!(response, "/v1/items");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch;
mod builder;
mod connection;
mod error;
mod leases;
mod names;
mod scripts;
mod store;

pub use builder::{DEFAULT_PREFIX, DEFAULT_TIMEOUT, FailurePolicy, RedisStoreBuilder};
pub use error::{RedisStoreError, RedisStoreErrorKind};
pub use leases::{DEFAULT_LEASE_TIME, RedisLeases};
pub use store::{Acquire, RedisStore, STORE_ERROR};
