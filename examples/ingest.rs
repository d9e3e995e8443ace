//! Batch ingestion: 100,000 records into an embeddings-style batch
//! endpoint, 100 per request, under a quota counted in items.
//!
//! ```text
//! cargo run --release -p tower-quota-examples --example ingest
//! cargo run -p tower-quota-examples --example ingest -- --records 5000 --quota 2000 --window-secs 1
//! INGEST_RECORDS=5000 cargo run -p tower-quota-examples --example ingest
//! ```
//!
//! An in-process `quota-mock` plays the provider: a batch endpoint whose
//! quota counts *items* (60,000 per minute by default), as embeddings and
//! bulk-indexing APIs do. Each caller sends one record; the stack
//!
//! ```text
//! BatchLayer → JitterBackoffLayer → RetryAfterLayer → SlidingWindowLayer(items) → timeout → MarkNewConnection → Client(TrackConnections)
//! ```
//!
//! groups them into batches of up to 100 (or whatever has come within
//! 20 ms), charges each batch its item count against the quota (the
//! `RequestCost` the batcher sets, read with `CostFromExtension`), paces,
//! obeys the server and retries whole batches, and splits each response
//! back to its records. The connector counts the connections opened. A
//! progress bar runs on stderr; the summary goes to stdout.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quota_mock::{MockServer, Rule};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_quota::batch::BatchLayer;
use tower_quota::connect::{MarkNewConnectionLayer, NewConnection, TrackConnections};
use tower_quota::{
    BoxError, CostFromExtension, HttpFeedback, JitterBackoffLayer, RetryAfterLayer,
    SlidingWindowLayer,
};
use tower_quota_quickstart::human;

/// What to run: the provider's quota in items, and the pipeline's size.
#[derive(Debug, Clone)]
pub struct Options {
    /// Records to ingest.
    pub records: u64,
    /// The most records per batch request.
    pub batch: usize,
    /// The provider's quota: at most `quota` items in any `window`.
    pub quota: u64,
    /// The length of the quota's window.
    pub window: Duration,
    /// Records queued or in flight at once (the batcher's `max_pending`).
    pub max_pending: usize,
    /// Whether to draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            records: 100_000,
            batch: 100,
            quota: 60_000,
            window: Duration::from_secs(60),
            max_pending: 5_000,
            progress: true,
        }
    }
}

/// What happened, from the pipeline's side and as the provider saw it.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Records that were answered with their slice of a 2xx.
    pub succeeded: u64,
    /// Records that failed.
    pub failed: u64,
    /// Requests the provider received (batches, retries included).
    pub requests: u64,
    /// `429`s the provider counted.
    pub refused: u64,
    /// The most items the provider accepted in any window.
    pub max_in_window: u64,
    /// Connections the tracked connector opened.
    pub connections_opened: u64,
    /// Connections the provider accepted.
    pub connections_accepted: u64,
    /// Responses that came on a new connection (cold requests).
    pub cold_responses: u64,
    /// The options that were run.
    pub options: Options,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Records per second over the run.
    pub fn records_per_second(&self) -> f64 {
        self.succeeded as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// One request per batch: the fewest requests the records need.
    pub fn fewest_requests(&self) -> u64 {
        self.options.records.div_ceil(self.options.batch as u64)
    }

    /// Checks the outcome: every record succeeded, none was refused, no
    /// window held more items than the quota, the request count was cut by
    /// the batch size (at most 10% more requests than full batches need:
    /// a batch leaves early only when its delay passes), and the connector
    /// counted what the provider accepted.
    pub fn verify(&self) -> Result<(), String> {
        if self.succeeded != self.options.records {
            return Err(format!(
                "{} of {} records succeeded",
                self.succeeded, self.options.records
            ));
        }
        if self.refused != 0 {
            return Err(format!("the provider refused {} batches", self.refused));
        }
        if self.max_in_window > self.options.quota {
            return Err(format!(
                "{} items accepted in one window, over the quota of {}",
                self.max_in_window, self.options.quota
            ));
        }
        if self.requests * 10 > self.fewest_requests() * 11 {
            return Err(format!(
                "{} requests for {} records in batches of {}: not batched",
                self.requests, self.options.records, self.options.batch
            ));
        }
        if self.connections_opened != self.connections_accepted {
            return Err(format!(
                "the connector counted {} connections, the provider accepted {}",
                self.connections_opened, self.connections_accepted
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "records             {}", self.options.records)?;
        writeln!(f, "succeeded           {}", self.succeeded)?;
        writeln!(f, "failed              {}", self.failed)?;
        writeln!(
            f,
            "records/s           {:.0} (quota {} items per {})",
            self.records_per_second(),
            self.options.quota,
            human(self.options.window)
        )?;
        writeln!(
            f,
            "requests (server)   {} ({} records per request; {} without batching)",
            self.requests,
            self.succeeded.checked_div(self.requests).unwrap_or(0),
            self.options.records
        )?;
        writeln!(f, "429s (server)       {}", self.refused)?;
        writeln!(
            f,
            "max items in a {}  {} (quota {})",
            human(self.options.window),
            self.max_in_window,
            self.options.quota
        )?;
        writeln!(
            f,
            "connections opened  {} (server accepted {}; {} cold responses)",
            self.connections_opened, self.connections_accepted, self.cold_responses
        )?;
        write!(f, "elapsed             {}", human(self.elapsed))
    }
}

/// Starts the provider, ingests `options.records` records, and reports.
pub async fn run(options: Options) -> Result<Summary, BoxError> {
    // The provider: a sliding log of items per window; each batch declares
    // its item count in `x-cost`, as a real provider counts the inputs of
    // the body.
    let server = MockServer::builder()
        .rule(Rule::sliding_log(options.quota, options.window).weighted())
        .start()
        .await?;
    let url = format!("{}/v1/embeddings", server.url());

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let connector = TrackConnections::new(http);
    let connections = connector.stats();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);

    // A batch job waits as long as its quota needs: when the provider says
    // the window's items are spent until it slides (up to a whole window),
    // the batches wait for it instead of failing after the default 60 s.
    let max_wait = options.window.saturating_mul(2) + Duration::from_secs(10);
    let stack = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .backoff(Duration::from_millis(50), Duration::from_secs(2))?
                .max_attempts(5)?
                .max_elapsed(max_wait)?,
        )
        .layer(RetryAfterLayer::new().max_wait(max_wait))
        .layer(
            SlidingWindowLayer::new(options.quota, options.window)?
                .cost_fn(CostFromExtension)
                .usage_fn(HttpFeedback),
        )
        .timeout(Duration::from_secs(30))
        .layer(MarkNewConnectionLayer::new())
        .service(client);

    let batches = Arc::new(AtomicU64::new(0));
    let cold = Arc::new(AtomicU64::new(0));
    let cold_counted = Arc::clone(&cold);
    let batcher = BatchLayer::new(
        move |records: &[u64]| {
            let inputs: Vec<String> = records
                .iter()
                .map(|record| format!("\"record {record}\""))
                .collect();
            let body = format!("{{\"input\":[{}]}}", inputs.join(","));
            // Safe to retry: the provider deduplicates by idempotency key.
            let batch = batches.fetch_add(1, Ordering::Relaxed);
            http::Request::post(url.as_str())
                .header("content-type", "application/json")
                .header("x-cost", records.len())
                .header("idempotency-key", format!("batch-{batch}"))
                .body(Full::new(Bytes::from(body)))
                .expect("a valid request: a fixed method, URL and headers")
        },
        move |response: http::Response<hyper::body::Incoming>, records: usize| {
            let cold = Arc::clone(&cold_counted);
            async move {
                if response.extensions().get::<NewConnection>().is_some() {
                    cold.fetch_add(1, Ordering::Relaxed);
                }
                let status = response.status();
                // Read to the end, so the connection goes back to the pool.
                response.into_body().collect().await?;
                if !status.is_success() {
                    return Err::<Vec<()>, BoxError>(format!("batch answered {status}").into());
                }
                Ok(vec![(); records])
            }
        },
    )
    .max_pending(options.max_pending.max(options.batch))?
    .max_items(options.batch)?
    .max_delay(Duration::from_millis(20))
    .layer(stack);

    let progress = if options.progress {
        ProgressBar::new(options.records)
    } else {
        ProgressBar::with_draw_target(Some(options.records), ProgressDrawTarget::hidden())
    };
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} records {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let started = tokio::time::Instant::now();
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for record in 0..options.records {
        let mut batcher = batcher.clone();
        // Waits while `max_pending` records are unanswered: backpressure.
        batcher.ready().await?;
        let answer = batcher.call(record);
        let progress = progress.clone();
        let failed = Arc::clone(&failed);
        tasks.spawn(async move {
            // The first failure is shown; the summary counts them all.
            if let Err(error) = answer.await
                && failed.fetch_add(1, Ordering::Relaxed) == 0
            {
                progress.suspend(|| eprintln!("record {record} failed: {error}"));
            }
            progress.inc(1);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    let stats = server.stats();
    let connections_accepted = server.connections_accepted();
    server.shutdown().await;
    let failed = failed.load(Ordering::Relaxed);
    Ok(Summary {
        succeeded: options.records - failed,
        failed,
        requests: stats.total,
        refused: stats.count(429),
        max_in_window: stats.rules[0].max_accepted_in_any_window,
        connections_opened: connections.opened(),
        connections_accepted,
        cold_responses: cold.load(Ordering::Relaxed),
        options,
        elapsed,
    })
}

/// Batch ingestion under a quota counted in items; a flag left out keeps
/// its default.
#[derive(Debug, Parser)]
#[command(name = "ingest")]
struct Flags {
    /// Records to ingest (or the INGEST_RECORDS environment variable).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    records: Option<u64>,
    /// The most records per batch request.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: Option<u64>,
    /// The provider's quota in items per window.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    quota: Option<u64>,
    /// The quota's window, in seconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    window_secs: Option<u64>,
}

impl From<Flags> for Options {
    fn from(flags: Flags) -> Self {
        let default = Options::default();
        let records = flags.records.or_else(|| {
            std::env::var("INGEST_RECORDS")
                .ok()
                .and_then(|records| records.parse().ok())
        });
        Options {
            records: records.unwrap_or(default.records),
            batch: flags
                .batch
                .and_then(|batch| usize::try_from(batch).ok())
                .unwrap_or(default.batch),
            quota: flags.quota.unwrap_or(default.quota),
            window: flags
                .window_secs
                .map_or(default.window, Duration::from_secs),
            ..default
        }
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    tower_quota_examples::common::main(Flags::parse().into(), run, Summary::verify).await
}
