//! Bytes per key: the in-process store by the counting allocator, governor's
//! keyed limiter for comparison, and the Redis store by `MEMORY USAGE`.

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::time::Duration;

use stats_alloc::Region;
use tower_quota::sliding_window::{Completion, Limits, MemoryStore, Store};
use tower_quota::{BoxError, Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

use crate::poll::poll_now;
use crate::redis_server::RedisServer;
use crate::{GLOBAL, results};

const KEY_COUNTS: [usize; 3] = [10, 1_000, 100_000];
const REDIS_KEY_COUNTS: [usize; 3] = [10, 1_000, 10_000];

/// A quota that one admission per key never fills: 10 per minute.
fn limits() -> Result<Limits, BoxError> {
    limits_of(10)
}

/// `max_calls` per minute.
fn limits_of(max_calls: u64) -> Result<Limits, BoxError> {
    Ok(SlidingWindowLayer::new(max_calls, Duration::from_secs(60))?
        .limits()
        .clone())
}

/// Keys, and admissions per key, of the large-quota row: a quota of
/// 1,000 per minute, full.
const LARGE_KEYS: usize = 1_000;
const LARGE_ADMISSIONS: usize = 1_000;

fn key(index: usize) -> Key {
    Key::from(format!("tenant-{index:06}"))
}

/// How the store's caller uses it.
#[derive(Clone, Copy)]
enum Caller {
    /// Admissions alone (`Store::acquire`, nothing reported).
    Bare,
    /// As `SlidingWindowLayer`'s services do: every answer reported
    /// (`Limits::reporting_answers`), each admission answered.
    Layer,
    /// The same with a usage function that reports refusals
    /// (`usage_fn(HttpFeedback)`, the README stack).
    Feedback,
}

/// Net bytes the allocator holds, per key, for a `MemoryStore` with
/// `keys` keys of `admissions` admissions each (key strings included).
fn memory_store(keys: usize, admissions: usize, caller: Caller) -> Result<f64, BoxError> {
    memory_store_of(limits()?, keys, admissions, caller)
}

/// The same under `limits`.
fn memory_store_of(
    limits: Limits,
    keys: usize,
    admissions: usize,
    caller: Caller,
) -> Result<f64, BoxError> {
    let limits = match caller {
        Caller::Bare => limits,
        Caller::Layer => limits.reporting_answers(),
        Caller::Feedback => limits.reporting_refusals(),
    };
    let region = Region::new(GLOBAL);
    let store = MemoryStore::new();
    for index in 0..keys {
        let key = key(index);
        for _ in 0..admissions {
            let admission = poll_now(store.acquire(key.clone(), 1, &limits))?;
            if !matches!(caller, Caller::Bare) {
                store.complete(&admission, Completion::Answered, &limits);
            }
        }
    }
    let change = region.change();
    let net = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    assert_eq!(store.key_count(), keys);
    drop(store);
    Ok(net / keys as f64)
}

/// The same for governor's keyed limiter (`DefaultKeyedRateLimiter<String>`).
fn governor_keyed(keys: usize) -> f64 {
    let region = Region::new(GLOBAL);
    let limiter = governor::RateLimiter::keyed(governor::Quota::per_minute(
        NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
    ));
    for index in 0..keys {
        let _ = limiter.check_key(&format!("tenant-{index:06}"));
    }
    let change = region.change();
    let net = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    drop(limiter);
    net / keys as f64
}

/// `MEMORY USAGE` summed over the Redis keys of each quota key, per key,
/// after one admission per key.
async fn redis_per_key(url: &str, approximate: bool, keys: usize) -> Result<f64, BoxError> {
    // The default prefix, as a user's keys have it: an empty Redis for
    // each measurement instead of a prefix of its own.
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHALL").exec_async(&mut connection).await?;
    let store = RedisStore::builder(url)
        .approximate(approximate)
        .build()
        .await?;
    let limits = limits()?;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(64) {
        // Each admission is one script call; 64 at a time, pipelined.
        let mut admissions = tokio::task::JoinSet::new();
        for index in chunk {
            admissions.spawn(store.acquire(key(*index), 1, &limits));
        }
        while let Some(admission) = admissions.join_next().await {
            admission??;
        }
    }
    let mut total: u64 = 0;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(256) {
        let mut pipe = redis::pipe();
        for index in chunk {
            for name in store.redis_keys(&key(*index), &limits) {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(name)
                    .arg("SAMPLES")
                    .arg(0);
            }
        }
        let usages: Vec<Option<u64>> = pipe.query_async(&mut connection).await?;
        total += usages.into_iter().flatten().sum::<u64>();
    }
    Ok(total as f64 / keys as f64)
}

/// "yes", or by how many times `bytes` is over `limit`.
fn met(bytes: f64, limit: f64) -> String {
    if bytes <= limit {
        "yes".to_owned()
    } else {
        format!("**no**: {:.1}× over", bytes / limit)
    }
}

pub(crate) async fn run() -> Result<(), BoxError> {
    let mut body = String::new();
    writeln!(
        body,
        "In process: the net bytes held by the global allocator (a counting wrapper around \
         the system allocator) after N keys each made their first admission under a quota \
         of 10 per minute, divided by N. It includes the key's string, the map entry, the \
         sliding log and its entries. Three callers: the store alone (`Store::acquire`, \
         nothing reported); as `SlidingWindowLayer`'s services use it (every answer \
         reported, each admission answered: the log keeps the answer's instant beside \
         the admission's); and with a usage function that reports refusals \
         (`usage_fn(HttpFeedback)`, the README stack: each key also keeps what it learns \
         from its provider's refusals, about 260 bytes). governor's keyed limiter (a GCRA cell per key in a \
         DashMap, `String` keys) is shown for comparison; `tower::limit::RateLimit` and \
         tower-resilience have no keyed limiter.\n"
    )?;
    writeln!(
        body,
        "| keys | MemoryStore alone, 1 admission per key | 10 admissions per key | \
         as the layer uses it, 1 answered request per key | 10 per key | \
         with `HttpFeedback`, 1 per key | 10 per key | governor keyed |"
    )?;
    writeln!(body, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    // The figures at the most keys, for the goals.
    let mut largest = (0.0, 0.0);
    for keys in KEY_COUNTS {
        println!("in-process store, {keys} keys");
        let mut row = format!("| {keys} |");
        for caller in [Caller::Bare, Caller::Layer, Caller::Feedback] {
            let one = memory_store(keys, 1, caller)?;
            let ten = memory_store(keys, 10, caller)?;
            write!(row, " {one:.0} B | {ten:.0} B |")?;
            if matches!(caller, Caller::Layer) {
                largest = (one, ten);
            }
        }
        let governor = governor_keyed(keys);
        writeln!(body, "{row} {governor:.0} B |")?;
    }
    writeln!(body)?;
    let keys = KEY_COUNTS[KEY_COUNTS.len() - 1];
    writeln!(
        body,
        "| goal (issue 15, {keys} keys, as the layer uses the store) | measured | met? |"
    )?;
    writeln!(body, "|---|---:|---|")?;
    for (goal, bytes, limit) in [
        ("≤ 128 B per key after 1 admission", largest.0, 128.0),
        ("≤ 160 B per key after 10 admissions", largest.1, 160.0),
    ] {
        writeln!(body, "| {goal} | {bytes:.0} B | {} |", met(bytes, limit))?;
    }
    writeln!(body)?;
    println!("in-process store, {LARGE_KEYS} keys of {LARGE_ADMISSIONS} admissions");
    let large = memory_store_of(
        limits_of(LARGE_ADMISSIONS as u64)?,
        LARGE_KEYS,
        LARGE_ADMISSIONS,
        Caller::Layer,
    )?;
    writeln!(
        body,
        "A key with a large quota: {LARGE_KEYS} keys, each with {LARGE_ADMISSIONS} answered \
         requests in the window of a quota of {LARGE_ADMISSIONS} per minute (as the layer uses \
         the store): {large:.0} B per key, {:.1} B per admission.\n",
        large / LARGE_ADMISSIONS as f64
    )?;

    writeln!(body, "### Redis\n")?;
    match RedisServer::start().await? {
        None => writeln!(body, "Not measured: no `redis-server` on PATH.")?,
        Some(redis) => {
            writeln!(
                body,
                "`MEMORY USAGE key SAMPLES 0`, summed over every Redis key of each quota key \
                 (`RedisStore::redis_keys`; exact mode: the sorted-set log and its costs hash \
                 when an entry costs other than 1; approximate mode: the counter hash; the \
                 log or the hash also holds the signature of the key's quota list), after one admission per key, divided by N. The figure counts the \
                 Redis key names: here the default prefix and quota keys `tenant-000000` \
                 on, as in `tq:{{tenant-000001}}:log`; each byte more in a key name adds \
                 about a byte per Redis key, rounded up to the allocator's size classes.\n"
            )?;
            writeln!(body, "| keys | exact | approximate |")?;
            writeln!(body, "|---:|---:|---:|")?;
            let mut exact_largest = 0.0;
            for keys in REDIS_KEY_COUNTS {
                println!("Redis store, {keys} keys");
                let exact = redis_per_key(&redis.url(), false, keys).await?;
                let approximate = redis_per_key(&redis.url(), true, keys).await?;
                writeln!(body, "| {keys} | {exact:.0} B | {approximate:.0} B |")?;
                exact_largest = exact;
            }
            let keys = REDIS_KEY_COUNTS[REDIS_KEY_COUNTS.len() - 1];
            writeln!(body)?;
            writeln!(body, "| goal (issue 15, {keys} keys) | measured | met? |")?;
            writeln!(body, "|---|---:|---|")?;
            writeln!(
                body,
                "| Redis exact mode ≤ 128 B per key after 1 admission | {exact_largest:.0} B | {} |",
                met(exact_largest, 128.0)
            )?;
        }
    }
    results::write_section("memory", &body)
}
