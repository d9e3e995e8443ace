//! Several worker processes share one quota through Redis, or through a
//! Redis Cluster.
//!
//! Run with a Redis listening on `REDIS_URL` (default `redis://127.0.0.1:6379`):
//!
//! ```text
//! redis-server --port 6379 --save "" --appendonly no &
//! cargo run -p tower-quota-examples --example redis_workers
//! ```
//!
//! or with a Redis Cluster, given some of its nodes in `REDIS_CLUSTER_URLS`
//! (comma-separated), and the number of workers in `WORKERS` (3 by default):
//!
//! ```text
//! REDIS_CLUSTER_URLS=redis://127.0.0.1:7000,redis://127.0.0.1:7001 WORKERS=8 \
//!     cargo run -p tower-quota-examples --example redis_workers
//! ```
//!
//! The parent starts quota-mock in this process, enforcing 20 requests per
//! second with a strict sliding log, then runs `WORKERS` copies of itself as
//! worker processes. Each worker has its own Redis connection and its own
//! `SlidingWindowLayer` of 20 per second backed by a `RedisStore`, and sends
//! as fast as the layer lets it for three seconds. Together they get 20 per
//! second, not 60, and the server refuses none of them.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::{BoxError, SlidingWindowLayer};
use tower_quota_quickstart::human;
use tower_quota_redis::{FailurePolicy, RedisStore};

const MAX_CALLS: u64 = 20;
const WINDOW: Duration = Duration::from_secs(1);
/// Worker processes unless `WORKERS` says otherwise.
const WORKERS: usize = 3;
const RUN: Duration = Duration::from_secs(3);

/// Several worker processes share one quota through Redis (at REDIS_URL,
/// default redis://127.0.0.1:6379).
#[derive(Debug, Parser)]
#[command(name = "redis_workers")]
struct Flags {
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// One worker process, as the parent starts it.
    #[command(hide = true)]
    Worker {
        /// The server's URL.
        base: String,
        /// The worker's number, in its request paths and output.
        id: String,
    },
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let flags = Flags::parse();
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if let Some(Role::Worker { base, id }) = flags.role {
        return worker(&redis_url, &base, &id).await;
    }

    let server = MockServer::builder()
        .rule(Rule::sliding_log(MAX_CALLS, WINDOW))
        .start()
        .await?;
    println!(
        "quota-mock at {}: {MAX_CALLS} per {}",
        server.url(),
        human(WINDOW)
    );
    let exe = std::env::current_exe()?;
    let workers = match std::env::var("WORKERS") {
        Ok(workers) => workers
            .parse::<usize>()
            .map_err(|_| format!("WORKERS must be a number, not {workers:?}"))?,
        Err(_) => WORKERS,
    };
    let mut children = Vec::new();
    for id in 0..workers {
        children.push(
            Command::new(&exe)
                .args(["worker", &server.url(), &id.to_string()])
                .stdout(Stdio::inherit())
                .spawn()?,
        );
    }
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        if !status.success() {
            return Err(format!("a worker failed: {status}").into());
        }
    }
    let stats = server.stats();
    println!(
        "server saw {} requests: {} accepted, {} refused (429); at most {} in any {}",
        stats.total,
        stats.accepted(),
        stats.count(429),
        stats.max_in_any_window(WINDOW),
        human(WINDOW)
    );
    Ok(())
}

async fn worker(redis_url: &str, base: &str, id: &str) -> Result<(), BoxError> {
    // The same store on one Redis or on a cluster: each quota key's state
    // lives in one slot (its hash tag), so one script call decides an
    // admission atomically on the key's master.
    let builder = match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(nodes) => RedisStore::cluster_builder(nodes.split(',')),
        Err(_) => RedisStore::builder(redis_url),
    };
    let store = builder
        .prefix("redis-workers-example")
        .timeout(Duration::from_millis(200))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .await
        .map_err(|error| {
            format!("worker {id}: cannot reach Redis at REDIS_URL or REDIS_CLUSTER_URLS: {error}")
        })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(SlidingWindowLayer::new(MAX_CALLS, WINDOW)?.store(store.clone()))
        .service(client);

    let started = tokio::time::Instant::now();
    let mut sent = 0;
    // One request at a time per worker, each waiting for its slot; the run
    // ends at the first slot past the deadline.
    while started.elapsed() < RUN {
        let request = http::Request::get(format!("{base}/items/{id}-{sent}")).body(Empty::new())?;
        let remaining = RUN.saturating_sub(started.elapsed());
        let Ok(response) = tokio::time::timeout(remaining, service.clone().oneshot(request)).await
        else {
            break; // dropped while waiting: its reservation is removed
        };
        let response = response?;
        let status = response.status();
        response.into_body().collect().await?;
        sent += 1;
        println!(
            "worker {id}: request {sent} -> {status} at {}",
            human(started.elapsed())
        );
    }
    // Before the process exits: its last answers and dropped reservations
    // reach Redis, so the other workers get those slots back on time.
    store.flush().await;
    println!("worker {id}: sent {sent}");
    Ok(())
}
