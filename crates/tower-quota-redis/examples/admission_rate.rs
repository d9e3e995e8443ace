//! Admissions per second through the Redis store at concurrency 1 and 64,
//! each with and without coalescing (concurrent admissions of one key
//! sharing script calls), beside what the same server does for plain commands in the same run:
//! `redis-benchmark -t set` (50 clients), a single client's SET loop
//! through redis-rs (one round trip at a time, as the store makes at
//! concurrency one) and `redis-benchmark -c 1 -t set`; then the memory an
//! exact key takes after one admission.
//!
//! It also measures, with `redis-benchmark -c 50`, a script call that does
//! nothing but read Redis's clock (`TIME`) with one key and four arguments:
//! the least an exact admission decided in Redis takes (the key's log; its
//! quota's size and span, the admission's hold and its id; Redis's clock,
//! the one every process shares). No admission made by one script call
//! each can beat that rate, so its ratio to SET/s is the ceiling of the
//! uncoalesced rows on this machine.
//!
//! ```text
//! cargo run --release -p tower-quota-redis --example admission_rate
//! ```
//!
//! Starts its own `redis-server` (from PATH) on a free loopback port.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::time::Instant;
use tower_quota::sliding_window::{Quota, Store};
use tower_quota::{BoxError, Key, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

/// How long each rate is measured.
const DURATION: Duration = Duration::from_secs(3);
/// Keys admitted once each for the memory measurement.
const MEMORY_KEYS: usize = 20_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let Some(server) = support::shared() else {
        return Err("redis-server is not on PATH".into());
    };
    let coalescing = RedisStore::builder(server.url()).build().await?;
    let alone = RedisStore::builder(server.url())
        .coalesce(false)
        .build()
        .await?;
    let set_50 = redis_benchmark(server, 50, &["-t", "set"])?;
    println!("redis-benchmark -t set -c 50: {set_50:.0} SET/s");
    let (clock_only, clock_only_usec) = clock_only_script_rate(server).await?;
    println!(
        "redis-benchmark -c 50, EVALSHA of a script that only reads TIME \
         (1 key, 4 arguments): {clock_only:.0} calls/s ({:.2}x SET/s), \
         {clock_only_usec:.1} µs of Redis per call: the ceiling of one \
         script call per admission",
        clock_only / set_50
    );
    let set_1 = redis_benchmark(server, 1, &["-t", "set"])?;
    println!("redis-benchmark -t set -c 1: {set_1:.0} SET/s");
    let loop_1 = set_loop(server).await?;
    println!("redis-rs SET loop, one client: {loop_1:.0} SET/s");
    for concurrency in [1, 64] {
        for store in [&alone, &coalescing] {
            let mut stats = ConnectionManager::new(redis::Client::open(server.url())?).await?;
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec_async(&mut stats)
                .await?;
            let (admitted, rate) = admission_rate(store, concurrency).await?;
            let (calls, usec) = evalsha_stats(&mut stats).await?;
            let (reference, name) = if concurrency == 1 {
                (loop_1, "the SET loop")
            } else {
                (set_50, "redis-benchmark SET/s")
            };
            println!(
                "concurrency {concurrency}, coalescing {}: {rate:.0} admissions/s \
                 ({:.2}x {name}); {:.1} admissions per script call, \
                 {:.1} µs of Redis per call",
                if store.coalesces() { "on" } else { "off" },
                rate / reference,
                admitted as f64 / calls.max(1) as f64,
                usec / calls.max(1) as f64,
            );
        }
    }
    let (info_bytes, usage_bytes) = bytes_per_key(server).await?;
    println!(
        "exact mode, {MEMORY_KEYS} keys after 1 admission each: \
         {info_bytes:.0} bytes/key (INFO used_memory delta), \
         {usage_bytes:.0} bytes/key (MEMORY USAGE of its Redis keys)"
    );
    Ok(())
}

/// Admissions of one key by `concurrency` tasks for [`DURATION`] (and the
/// first one, which loads the script), and their rate per second.
async fn admission_rate(store: &RedisStore, concurrency: usize) -> Result<(u64, f64), BoxError> {
    let limiter =
        SlidingWindowLayer::with_quotas([Quota::new(1_000_000_000, Duration::from_secs(1))?])?;
    let key = Key::from(format!("bench-{concurrency}-{}", rand::random::<u32>()));
    // The first call loads the script.
    store.acquire(key.clone(), 1, limiter.limits()).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (store, key, limits) = (store.clone(), key.clone(), limiter.limits().clone());
        tasks.spawn(async move {
            let mut admitted = 0u64;
            while started.elapsed() < DURATION {
                store.acquire(key.clone(), 1, &limits).await?;
                admitted += 1;
            }
            Ok::<_, BoxError>(admitted)
        });
    }
    let mut admitted = 0;
    for count in tasks.join_all().await {
        admitted += count?;
    }
    let rate = admitted as f64 / started.elapsed().as_secs_f64();
    Ok((admitted + 1, rate))
}

/// SET/s of one client through redis-rs, one round trip at a time, from a
/// spawned task as the admissions are.
async fn set_loop(server: &support::RedisServer) -> Result<f64, BoxError> {
    let mut connection = ConnectionManager::new(redis::Client::open(server.url())?).await?;
    tokio::spawn(async move {
        let started = Instant::now();
        let mut sets = 0u64;
        while started.elapsed() < DURATION {
            redis::cmd("SET")
                .arg("round-trip")
                .arg("x")
                .exec_async(&mut connection)
                .await?;
            sets += 1;
        }
        Ok(sets as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// `redis-benchmark` with `clients` clients and `test` (`-t set`, or a
/// command of its own): requests per second of its one test.
fn redis_benchmark(
    server: &support::RedisServer,
    clients: usize,
    test: &[&str],
) -> Result<f64, BoxError> {
    let requests = if clients == 1 { 50_000 } else { 200_000 };
    let output = std::process::Command::new("redis-benchmark")
        .args(["-p", &server.port().to_string(), "--csv"])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(test)
        .output()?;
    // `"test","rps",...` then `"SET","105820.11",...` (or the command).
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .nth(1)
        .and_then(|line| line.split("\",\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .and_then(|rps| rps.parse().ok())
        .ok_or_else(|| format!("no rate in redis-benchmark's output: {stdout}").into())
}

/// Calls/s of `EVALSHA` of a script that only reads `TIME`, with one key
/// and four arguments, from 50 `redis-benchmark` clients, and the Redis
/// time of each call.
async fn clock_only_script_rate(server: &support::RedisServer) -> Result<(f64, f64), BoxError> {
    let mut connection = ConnectionManager::new(redis::Client::open(server.url())?).await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("local now = redis.call('TIME') return {}")
        .query_async(&mut connection)
        .await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec_async(&mut connection)
        .await?;
    let rate = redis_benchmark(
        server,
        50,
        &[
            "evalsha",
            &sha,
            "1",
            "bench:{clock}:log",
            "60000000",
            "10",
            "1000000",
            "12345",
        ],
    )?;
    let (calls, usec) = evalsha_stats(&mut connection).await?;
    Ok((rate, usec / calls.max(1) as f64))
}

/// Bytes per exact key after one admission each, with a quota of one
/// minute (nothing expires while measuring): the `INFO memory` delta, and
/// the sum of `MEMORY USAGE` over the Redis keys written, per key.
async fn bytes_per_key(server: &support::RedisServer) -> Result<(f64, f64), BoxError> {
    let prefix = format!("mem{}", rand::random::<u16>());
    let store = RedisStore::builder(server.url())
        .prefix(prefix.clone())
        .build()
        .await?;
    let limiter = SlidingWindowLayer::with_quotas([Quota::new(100, Duration::from_secs(60))?])?;
    store
        .acquire(Key::from("warm-up"), 1, limiter.limits())
        .await?;
    let mut connection = ConnectionManager::new(redis::Client::open(server.url())?).await?;
    let before = used_memory(&mut connection).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..64 {
        let (store, limits) = (store.clone(), limiter.limits().clone());
        tasks.spawn(async move {
            for i in (task..MEMORY_KEYS).step_by(64) {
                store
                    .acquire(Key::from(format!("user-{i:06}")), 1, &limits)
                    .await?;
            }
            Ok::<_, BoxError>(())
        });
    }
    for result in tasks.join_all().await {
        result?;
    }
    let after = used_memory(&mut connection).await?;
    let mut usage = 0u64;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:{{user-*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        for key in keys {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            usage += bytes.unwrap_or(0);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let keys = MEMORY_KEYS as f64;
    Ok((
        after.saturating_sub(before) as f64 / keys,
        usage as f64 / keys,
    ))
}

/// EVALSHA calls since `CONFIG RESETSTAT`, and the µs Redis spent in them.
async fn evalsha_stats(connection: &mut ConnectionManager) -> Result<(u64, f64), BoxError> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await?;
    let stats = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or_default();
    let field = |name: &str| {
        stats
            .split(',')
            .find_map(|field| field.strip_prefix(name))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((field("calls=") as u64, field("usec=")))
}

async fn used_memory(connection: &mut ConnectionManager) -> Result<u64, BoxError> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|bytes| bytes.trim().parse().ok())
        .ok_or_else(|| "no used_memory in INFO memory".into())
}
