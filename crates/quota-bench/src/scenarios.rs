//! Saturation and bursts against quota-mock over loopback, for every
//! limiter; tower-quota with the Redis store and four worker processes; then
//! the retry spread after a shared 503.

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quota_mock::{MockServer, Rule, Stats};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::{BoxError, SlidingWindowLayer};
use tower_quota_redis::RedisStore;

use crate::limiters::{Limited, Limiter, http_client};
use crate::redis_server::RedisServer;
use crate::{plot, results, spread};

/// The provider's quota: a strict sliding log of 20 in any second.
pub(crate) const QUOTA: u64 = 20;
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// Requests of one saturation run, and how many are in flight at once.
const REQUESTS: usize = 200;
const CONCURRENCY: usize = 32;
const REDIS_WORKERS: usize = 4;
const LULL: Duration = Duration::from_millis(900);

/// One run as the server saw it.
pub(crate) struct Run {
    pub(crate) name: String,
    pub(crate) stats: Stats,
    pub(crate) client_errors: usize,
}

impl Run {
    /// Admissions over what the quota allowed while the server was busy:
    /// `accepted / (quota × (span + window) / window)`.
    pub(crate) fn utilization(&self) -> f64 {
        self.stats.utilization(QUOTA, WINDOW)
    }

    pub(crate) fn accepted_times(&self) -> Vec<Duration> {
        let mut times: Vec<Duration> = self
            .stats
            .arrivals
            .iter()
            .filter(|a| a.is_accepted())
            .map(|a| a.at)
            .collect();
        times.sort();
        times
    }

    /// The most requests that *arrived* (accepted or refused) in any
    /// `[t, t + window)`: what the client sent, whatever the server did.
    fn max_arrived_in_window(&self) -> u64 {
        let mut times: Vec<Duration> = self.stats.arrivals.iter().map(|a| a.at).collect();
        times.sort();
        max_in_window(&times, WINDOW)
    }
}

pub(crate) fn max_in_window(sorted: &[Duration], window: Duration) -> u64 {
    let mut start = 0;
    let mut best = 0;
    for (end, at) in sorted.iter().enumerate() {
        while sorted[start] + window <= *at {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best as u64
}

async fn provider() -> Result<MockServer, BoxError> {
    Ok(MockServer::builder()
        .rule(Rule::sliding_log(QUOTA, WINDOW))
        .start()
        .await?)
}

/// Sends `requests` GETs through `service`, `concurrency` at a time;
/// returns each request's latency, and how many failed at the client.
async fn drive(
    service: Limited,
    url: &http::Uri,
    requests: usize,
    concurrency: usize,
) -> Result<(Vec<Duration>, usize), BoxError> {
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let permit = in_flight.clone().acquire_owned().await?;
        let service = service.clone();
        let request = http::Request::get(url.clone()).body(Empty::<Bytes>::new())?;
        tasks.spawn(async move {
            let sent = Instant::now();
            let ok = match service.oneshot(request).await {
                Ok(response) => response.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            drop(permit);
            (sent.elapsed(), ok)
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut errors = 0;
    while let Some(outcome) = tasks.join_next().await {
        let (latency, ok) = outcome?;
        latencies.push(latency);
        errors += usize::from(!ok);
    }
    Ok((latencies, errors))
}

struct Burst {
    all_done: Duration,
    median: Duration,
    refused: u64,
}

/// A burst of N requests at once on an idle limiter.
async fn burst(limiter: Limiter) -> Result<Burst, BoxError> {
    let server = provider().await?;
    let url: http::Uri = format!("{}/v1/items", server.url()).parse()?;
    let client = http_client();
    // Open N pooled connections first (on a path the quota does not
    // count), so that the burst measures the limiter, not TCP connects.
    let stats_url: http::Uri = format!("{}/__quota/stats", server.url()).parse()?;
    let raw = Limited::new(client.clone().map_err(BoxError::from));
    drive(raw, &stats_url, QUOTA as usize, QUOTA as usize).await?;
    let service = limiter.build(QUOTA, WINDOW, client)?;
    let (mut latencies, _) = drive(service, &url, QUOTA as usize, QUOTA as usize).await?;
    let refused = server.stats().count(429);
    server.shutdown().await;
    latencies.sort();
    Ok(Burst {
        all_done: latencies.last().copied().unwrap_or_default(),
        median: latencies[latencies.len() / 2],
        refused,
    })
}

/// Saturation: `REQUESTS` requests, `CONCURRENCY` in flight. After a lull,
/// one request goes first and the rest 900 ms later, when a fixed window
/// started by the first is about to end.
async fn saturate(limiter: Limiter, lull: bool) -> Result<Run, BoxError> {
    let server = provider().await?;
    let url: http::Uri = format!("{}/v1/items", server.url()).parse()?;
    let service = limiter.build(QUOTA, WINDOW, http_client())?;
    if lull {
        let request = http::Request::get(url.clone()).body(Empty::<Bytes>::new())?;
        let response = service.clone().oneshot(request).await?;
        response.into_body().collect().await?;
        tokio::time::sleep(LULL).await;
    }
    let (_, client_errors) = drive(service, &url, REQUESTS, CONCURRENCY).await?;
    let stats = server.stats();
    server.shutdown().await;
    Ok(Run {
        name: limiter.name().to_owned(),
        stats,
        client_errors,
    })
}

/// tower-quota with the Redis store, shared by four worker processes.
async fn redis_workers() -> Result<Option<Run>, BoxError> {
    let Some(redis) = RedisServer::start().await? else {
        return Ok(None);
    };
    let server = provider().await?;
    let exe = std::env::current_exe()?;
    let each = REQUESTS / REDIS_WORKERS;
    let mut children = Vec::new();
    for _ in 0..REDIS_WORKERS {
        children.push(
            tokio::process::Command::new(&exe)
                .args(["worker", &redis.url(), &server.url()])
                .args([each.to_string(), (CONCURRENCY / REDIS_WORKERS).to_string()])
                .stdout(Stdio::inherit())
                .spawn()?,
        );
    }
    let mut client_errors = 0;
    for mut child in children {
        let status = child.wait().await?;
        client_errors += usize::from(!status.success());
    }
    let stats = server.stats();
    server.shutdown().await;
    drop(redis);
    Ok(Some(Run {
        name: format!("tower-quota + Redis store, {REDIS_WORKERS} processes"),
        stats,
        client_errors,
    }))
}

/// One Redis worker process: `worker REDIS_URL SERVER_URL REQUESTS CONCURRENCY`.
pub(crate) async fn worker(args: &[String]) -> Result<(), BoxError> {
    let [redis_url, server_url, requests, concurrency] = args else {
        return Err("usage: quota-bench worker REDIS_URL SERVER_URL REQUESTS CONCURRENCY".into());
    };
    let store = RedisStore::builder(redis_url.as_str())
        .prefix("quota-bench")
        .build()
        .await?;
    let service = ServiceBuilder::new()
        .layer(SlidingWindowLayer::new(QUOTA, WINDOW)?.store(store.clone()))
        .service(http_client());
    let url: http::Uri = format!("{server_url}/v1/items").parse()?;
    let (_, errors) = drive(
        Limited::new(service),
        &url,
        requests.parse()?,
        concurrency.parse()?,
    )
    .await?;
    // The last answers reach Redis before the process exits, so the other
    // workers reuse their slots a window after them.
    store.flush().await;
    if errors > 0 {
        return Err(format!("{errors} requests failed").into());
    }
    Ok(())
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

pub(crate) async fn run() -> Result<(), BoxError> {
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut bursts = Vec::new();
    let mut lulls = Vec::new();
    for limiter in Limiter::ALL {
        println!(
            "{}: burst of {QUOTA}; {REQUESTS} requests; again after a lull",
            limiter.name()
        );
        bursts.push(burst(limiter).await?);
        runs.push(saturate(limiter, false).await?);
        lulls.push(saturate(limiter, true).await?);
    }
    println!("tower-quota with Redis, {REDIS_WORKERS} worker processes");
    let redis = redis_workers().await?;

    let mut body = String::new();
    writeln!(
        body,
        "The provider is quota-mock enforcing a strict sliding log of {QUOTA} requests in any \
         {WINDOW:?}, measured at the server, on its clock. Saturation: {REQUESTS} GETs, \
         {CONCURRENCY} in flight, through each limiter configured with the provider's quota \
         and nothing else (no retries: a 429 is a lost request). Utilization is accepted ÷ \
         (quota × (span + window) ÷ window), span being first to last acceptance. \"Arrived\" \
         counts every request the server saw, accepted or refused: it is what the client \
         sent. Burst: {QUOTA} requests at once on an idle limiter (connections already \
         open), the time until all have their response. After a lull: one request, 900 ms \
         of quiet, then the same saturation — the case where a fixed window (tower's \
         `RateLimit`) or a full bucket (governor, burst = N) lets 2N through in little more \
         than a window.\n"
    )?;
    writeln!(
        body,
        "| limiter | accepted / sent | 429s | max arrived in any window ÷ N | max accepted in any window ÷ N | utilization | burst of N: all done | burst: median | after a lull: 429s | after a lull: max arrived ÷ N |"
    )?;
    writeln!(body, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for ((run, burst), lull) in runs.iter().zip(&bursts).zip(&lulls) {
        writeln!(
            body,
            "| {} | {} / {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {:.3} |",
            run.name,
            run.stats.accepted(),
            run.stats.total,
            run.stats.count(429) + burst.refused,
            run.max_arrived_in_window() as f64 / QUOTA as f64,
            run.stats.max_in_any_window(WINDOW) as f64 / QUOTA as f64,
            run.utilization(),
            ms(burst.all_done),
            ms(burst.median),
            lull.stats.count(429),
            lull.max_arrived_in_window() as f64 / QUOTA as f64,
        )?;
    }
    match &redis {
        Some(run) => writeln!(
            body,
            "| {} | {} / {} | {} | {:.3} | {:.3} | {:.3} | — | — | — | — |",
            run.name,
            run.stats.accepted(),
            run.stats.total,
            run.stats.count(429),
            run.max_arrived_in_window() as f64 / QUOTA as f64,
            run.stats.max_in_any_window(WINDOW) as f64 / QUOTA as f64,
            run.utilization(),
        )?,
        None => writeln!(
            body,
            "| tower-quota + Redis store, {REDIS_WORKERS} processes | not run: no redis-server on PATH | | | | | | | | |"
        )?,
    }
    writeln!(body)?;
    let errors: usize = runs
        .iter()
        .chain(&lulls)
        .map(|run| run.client_errors)
        .sum::<usize>()
        + redis.as_ref().map_or(0, |run| run.client_errors);
    writeln!(
        body,
        "Requests that failed at the client (errors other than an HTTP status): {errors}.\n"
    )?;
    let margin = tower_quota::sliding_window::Quota::new(QUOTA, WINDOW)
        .map(|quota| tower_quota::sliding_window::default_safety_margin(&[quota]))?;
    writeln!(
        body,
        "Loopback jitter makes the peers' rows vary from run to run at the margin: a \
         limiter that admits exactly at the window's edge (tower-resilience's log, tower's \
         windows back to back) is sometimes seen by the server a little early and refused. \
         tower-quota holds each slot until a window after the request's answer, plus a \
         safety margin ({} here, the default: a ten-thousandth of the shortest window, at \
         least 1 ms), which is what its utilization gives up.\n",
        ms(margin)
    )?;

    // Goals.
    let ours = &runs[0];
    let mut goals = vec![
        goal(
            "tower-quota in process: max arrived in any window ÷ N = 1.000",
            ours.max_arrived_in_window() as f64 / QUOTA as f64,
            |v| v <= 1.0,
            "{:.3}",
        ),
        goal(
            "tower-quota in process: utilization ≥ 0.99",
            ours.utilization(),
            |v| v >= 0.99,
            "{:.3}",
        ),
        goal(
            "tower-quota in process, after a lull: max arrived in any window ÷ N = 1.000",
            lulls[0].max_arrived_in_window() as f64 / QUOTA as f64,
            |v| v <= 1.0,
            "{:.3}",
        ),
        goal(
            "tower-quota in process: zero 429s (saturation, burst, after a lull)",
            (ours.stats.count(429) + bursts[0].refused + lulls[0].stats.count(429)) as f64,
            |v| v == 0.0,
            "{:.0}",
        ),
    ];
    if let Some(run) = &redis {
        goals.push(goal(
            "tower-quota + Redis, 4 processes: max arrived in any window ÷ N = 1.000",
            run.max_arrived_in_window() as f64 / QUOTA as f64,
            |v| v <= 1.0,
            "{:.3}",
        ));
        goals.push(goal(
            "tower-quota + Redis, 4 processes: utilization ≥ 0.97",
            run.utilization(),
            |v| v >= 0.97,
            "{:.3}",
        ));
        goals.push(goal(
            "tower-quota + Redis, 4 processes: zero 429s",
            run.stats.count(429) as f64,
            |v| v == 0.0,
            "{:.0}",
        ));
    }
    writeln!(body, "| goal (issue 7) | measured | met? |")?;
    writeln!(body, "|---|---:|---|")?;
    for line in goals {
        writeln!(body, "{line}")?;
    }
    writeln!(body)?;

    let mut timeline_runs: Vec<&Run> = runs.iter().collect();
    if let Some(run) = &redis {
        timeline_runs.push(run);
    }
    plot::timeline(
        &timeline_runs,
        QUOTA,
        WINDOW,
        &results::crate_dir().join("timeline.svg"),
    )?;
    writeln!(
        body,
        "![admissions in the trailing window per limiter, against the quota](timeline.svg)\n"
    )?;

    println!("retry spread after a shared 503");
    body.push_str(&spread::run().await?);
    writeln!(
        body,
        "\nWall time of `scenarios`: {:.0} s.",
        started.elapsed().as_secs_f64()
    )?;
    results::write_section("scenarios", &body)
}

fn goal(name: &str, value: f64, met: impl Fn(f64) -> bool, format: &str) -> String {
    let shown = match format {
        "{:.0}" => format!("{value:.0}"),
        _ => format!("{value:.3}"),
    };
    let verdict = if met(value) { "yes" } else { "**no**" };
    format!("| {name} | {shown} | {verdict} |")
}
