//! The full stack on hyper-util's pooled client, with connection reuse shown.
//!
//! ```text
//! cargo run -p tower-quota-examples --example hyper_client
//! cargo run -p tower-quota-examples --example hyper_client -- --requests 200 --concurrency 16 --quota 20 --error-rate 0.05
//! RUST_LOG=tower_quota=debug cargo run -p tower-quota-examples --example hyper_client 2>log.json
//! ```
//!
//! An in-process `quota-mock` enforces 20 requests in any second and answers
//! a few admitted requests with `503`. The client is hyper-util's legacy
//! `Client` with explicit pool settings, behind the three layers in their
//! order:
//!
//! ```text
//! JitterBackoffLayer → RetryAfterLayer → SlidingWindowLayer → timeout → Client
//! ```
//!
//! The connector is wrapped in `tower_quota::connect::TrackConnections`,
//! which counts the connections it opens: paced requests reuse a handful of
//! pooled connections instead of opening one each. Telemetry goes to stderr as JSON
//! lines; the summary goes to stdout.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use quota_mock::{Fault, HeaderDialect, MockServer, Rule};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::connect::TrackConnections;
use tower_quota::{BoxError, JitterBackoffLayer, RetryAfterLayer};
use tower_quota_examples::common;
use tower_quota_quickstart::human;

/// What to run: the provider's quota and faults, and the client's load.
#[derive(Debug, Clone)]
pub struct Options {
    /// The provider's quota: at most `quota` requests in any `window`.
    pub quota: u64,
    /// The length of the quota's window.
    pub window: Duration,
    /// How many logical requests to send.
    pub requests: usize,
    /// How many requests are in flight at once.
    pub concurrency: usize,
    /// The fraction of admitted requests the provider answers with `503`.
    pub error_rate: f64,
    /// The seed of the provider's fault injection, for repeatable runs.
    pub seed: u64,
    /// Extra time each admission is held past the window (`None`: the
    /// library's default). Loopback tests on a busy CI machine raise it, as
    /// a client should across a network with jitter.
    pub safety_margin: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quota: 20,
            window: Duration::from_secs(1),
            requests: 100,
            concurrency: 8,
            error_rate: 0.05,
            seed: 7,
            safety_margin: None,
        }
    }
}

/// What happened, from the client's side and as the provider saw it.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Logical requests sent.
    pub requests: usize,
    /// Logical requests that ended in a `2xx`.
    pub succeeded: usize,
    /// Requests the provider received, retries included.
    pub attempts: u64,
    /// `503`s the provider injected (each one retried by the backoff layer).
    pub server_errors: u64,
    /// `429`s: requests the provider refused for the quota.
    pub refused: u64,
    /// The most requests the provider accepted in any window.
    pub max_in_window: u64,
    /// TCP connections the client opened.
    pub connections_opened: u64,
    /// The options that were run.
    pub options: Options,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Checks the outcome: every request succeeded, none was refused for the
    /// quota, no window held more than the quota, and the pool reused its
    /// connections. At most one connection per request in flight is needed;
    /// the bound allows twice that, because hyper-util's pool, when a request
    /// finds no idle connection, starts a new one even if an idle connection
    /// comes back first (and keeps it).
    pub fn verify(&self) -> Result<(), String> {
        if self.succeeded != self.requests {
            return Err(format!(
                "{} of {} requests succeeded",
                self.succeeded, self.requests
            ));
        }
        if self.refused != 0 {
            return Err(format!("the provider refused {} requests", self.refused));
        }
        if self.max_in_window > self.options.quota {
            return Err(format!(
                "{} accepted in one window, over the quota of {}",
                self.max_in_window, self.options.quota
            ));
        }
        if self.connections_opened > 2 * self.options.concurrency as u64 {
            return Err(format!(
                "{} connections opened for {} requests in flight: the pool did not reuse them",
                self.connections_opened, self.options.concurrency
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "requests            {}", self.requests)?;
        writeln!(f, "succeeded           {}", self.succeeded)?;
        writeln!(f, "attempts (server)   {}", self.attempts)?;
        writeln!(f, "503s retried        {}", self.server_errors)?;
        writeln!(f, "429s                {}", self.refused)?;
        writeln!(
            f,
            "max in any {}      {} (quota {})",
            human(self.options.window),
            self.max_in_window,
            self.options.quota
        )?;
        writeln!(
            f,
            "connections opened  {} (for {} requests)",
            self.connections_opened, self.attempts
        )?;
        write!(f, "elapsed             {}", human(self.elapsed))
    }
}

/// Starts the provider, sends `options.requests` requests through the
/// stack, and reports.
pub async fn run(options: Options) -> Result<Summary, BoxError> {
    if options.concurrency == 0 {
        return Err("concurrency must be at least 1".into());
    }
    // The provider: a strict sliding log that reports its quota in
    // OpenAI's headers (resets to the millisecond), and some 503s among
    // admitted requests.
    let server = MockServer::builder()
        .rule(Rule::sliding_log(options.quota, options.window))
        .headers(HeaderDialect::OpenAi)
        .fault(Fault::ErrorRate {
            fraction: options.error_rate,
            statuses: vec![StatusCode::SERVICE_UNAVAILABLE],
        })
        .seed(options.seed)
        .start()
        .await?;

    // The client: one idle connection kept per request in flight, kept
    // for 30 s, so paced requests find a warm connection.
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let connector = TrackConnections::new(http);
    let connections = connector.stats();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(options.concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);

    let service = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .backoff(Duration::from_millis(50), Duration::from_secs(1))?
                .max_attempts(5)?
                .attempt_header("x-retry-attempt")?,
        )
        .layer(RetryAfterLayer::new())
        .layer(common::pacing(
            options.quota,
            options.window,
            options.safety_margin,
        )?)
        .timeout(Duration::from_secs(5))
        .service(client);

    let started = tokio::time::Instant::now();
    let in_flight = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for item in 0..options.requests {
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let uri: Uri = format!("{}/v1/items/{item}", server.url()).parse()?;
        let request = http::Request::get(uri).body(Empty::<Bytes>::new())?;
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(request).await?;
            let status = response.status();
            // Read the body to the end, so the connection goes back to the pool.
            response.into_body().collect().await?;
            drop(permit);
            Ok::<_, BoxError>(status)
        });
    }
    let mut succeeded = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(status) if status.is_success() => succeeded += 1,
            Ok(status) => tracing::warn!(%status, "request failed"),
            Err(error) => tracing::warn!(%error, "request failed"),
        }
    }
    let elapsed = started.elapsed();

    let stats = server.stats();
    server.shutdown().await;
    Ok(Summary {
        requests: options.requests,
        succeeded,
        attempts: stats.total,
        server_errors: stats.count(503),
        refused: stats.count(429),
        max_in_window: stats.max_in_any_window(options.window),
        connections_opened: connections.opened(),
        options,
        elapsed,
    })
}

/// The full stack on hyper-util's pooled client, with connection reuse
/// shown; a flag left out keeps its default.
#[derive(Debug, Parser)]
#[command(name = "hyper_client")]
struct Flags {
    #[command(flatten)]
    load: common::Load,
}

impl From<Flags> for Options {
    fn from(Flags { load }: Flags) -> Self {
        let default = Options::default();
        Options {
            quota: load.quota.unwrap_or(default.quota),
            requests: load.requests.unwrap_or(default.requests),
            concurrency: load.concurrency.unwrap_or(default.concurrency),
            error_rate: load.error_rate.unwrap_or(default.error_rate),
            seed: load.seed.unwrap_or(default.seed),
            ..default
        }
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    common::main(Flags::parse().into(), run, Summary::verify).await
}
