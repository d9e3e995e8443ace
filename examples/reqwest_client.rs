//! reqwest driven through the stack, with request bodies replayed on retries.
//!
//! ```text
//! cargo run -p tower-quota-examples --example reqwest_client
//! cargo run -p tower-quota-examples --example reqwest_client -- --requests 100 --concurrency 8 --error-rate 0.1
//! ```
//!
//! `reqwest::Client` is not a `tower::Service` of `http::Request`s, so a
//! small adapter ([`ReqwestService`]) turns each `http::Request` into a
//! `reqwest::Request` (the body streams through `reqwest::Body::wrap`, no
//! copy) and each `reqwest::Response` back into an `http::Response`. The
//! tower-quota layers then stack on it like on any client:
//!
//! ```text
//! JitterBackoffLayer → RetryAfterLayer → SlidingWindowLayer → timeout → ReqwestService
//! ```
//!
//! The requests are `POST`s with a JSON body and an `Idempotency-Key`, which
//! is what lets the backoff layer retry a `POST`. The in-process `quota-mock`
//! opens with a throttle episode (two `429`s with `Retry-After: 1`), then
//! enforces 20 requests in any second and answers some admitted requests with
//! `503`. The provider hashes every body it receives: each retry carried the
//! same bytes as the first attempt.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use quota_mock::{Arrival, Fault, HeaderDialect, MockServer, Outcome, Rule, Scripted, fnv1a64};
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder, ServiceExt};
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
    /// How many `429`s with `Retry-After` the provider opens with.
    pub throttled_first: u32,
    /// The `Retry-After` of those `429`s.
    pub retry_after: Duration,
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
            requests: 60,
            concurrency: 8,
            error_rate: 0.1,
            throttled_first: 2,
            retry_after: Duration::from_secs(1),
            seed: 11,
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
    /// `429`s of the opening throttle episode.
    pub throttled: u64,
    /// The shortest time between a throttled attempt and the next attempt of
    /// the same request, as the provider saw it.
    pub shortest_wait_after_throttle: Option<Duration>,
    /// `503`s the provider injected.
    pub server_errors: u64,
    /// `429`s the provider's quota refused (the limiter should prevent all).
    pub refused: u64,
    /// Requests the provider received more than once.
    pub resent: usize,
    /// Requests whose attempts did not all carry the original body.
    pub body_mismatches: usize,
    /// The options that were run.
    pub options: Options,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Checks the outcome: every request succeeded, the throttle episode was
    /// waited out, nothing was refused for the quota, and every attempt
    /// carried the original body.
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
        if self.body_mismatches != 0 {
            return Err(format!(
                "{} requests were resent with a different body",
                self.body_mismatches
            ));
        }
        if self.resent == 0 {
            return Err("no request was resent: nothing was shown".into());
        }
        if let Some(wait) = self.shortest_wait_after_throttle
            && wait < self.options.retry_after
        {
            return Err(format!(
                "a throttled request was resent after {}, before its Retry-After of {}",
                humantime::format_duration(wait),
                humantime::format_duration(self.options.retry_after)
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "requests                 {}", self.requests)?;
        writeln!(f, "succeeded                {}", self.succeeded)?;
        writeln!(f, "attempts (server)        {}", self.attempts)?;
        writeln!(f, "429s with Retry-After    {}", self.throttled)?;
        if let Some(wait) = self.shortest_wait_after_throttle {
            writeln!(
                f,
                "  resent after           {} (Retry-After {})",
                human(wait),
                human(self.options.retry_after)
            )?;
        }
        writeln!(f, "503s retried             {}", self.server_errors)?;
        writeln!(f, "refused by the quota     {}", self.refused)?;
        writeln!(
            f,
            "resent requests          {} ({} with a different body)",
            self.resent, self.body_mismatches
        )?;
        write!(f, "elapsed                  {}", human(self.elapsed))
    }
}

/// A `tower::Service` of `http::Request`s that sends them with a
/// [`reqwest::Client`]: the adapter between the tower ecosystem and reqwest.
///
/// Any body with `Bytes` data that is `Send + Sync` goes through
/// `reqwest::Body::wrap` and streams as it is read; tower-quota's
/// `ReplayBody` is `Sync` even when the body it wraps is not. Responses come
/// back as `http::Response<reqwest::Body>`.
#[derive(Debug, Clone)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Sends requests with `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client }
    }
}

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest queues internally and has no backpressure to report.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap));
        Box::pin(async move {
            let response = client.execute(request?).await?;
            Ok(http::Response::from(response))
        })
    }
}

/// The JSON body of order `order`.
fn order_body(order: usize) -> String {
    format!(r#"{{"order":{order},"item":"widget","quantity":1}}"#)
}

/// Starts the provider, sends `options.requests` orders through the stack,
/// and reports.
pub async fn run(options: Options) -> Result<Summary, BoxError> {
    if options.concurrency == 0 {
        return Err("concurrency must be at least 1".into());
    }
    let server = MockServer::builder()
        .rule(Rule::sliding_log(options.quota, options.window))
        .headers(HeaderDialect::OpenAi)
        .scripted(
            Scripted::new(options.throttled_first, StatusCode::TOO_MANY_REQUESTS)
                .retry_after(options.retry_after),
        )
        .fault(Fault::ErrorRate {
            fraction: options.error_rate,
            statuses: vec![StatusCode::SERVICE_UNAVAILABLE],
        })
        .seed(options.seed)
        .start()
        .await?;

    // Plain HTTP to loopback: no TLS, and no proxy from the environment.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
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
        .service(ReqwestService::new(client));

    let started = tokio::time::Instant::now();
    let in_flight = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for order in 0..options.requests {
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let request = http::Request::post(format!("{}/v1/orders/{order}", server.url()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", format!("order-{order}"))
            .body(Full::new(Bytes::from(order_body(order))))?;
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(request).await?;
            let status = response.status();
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

    // The provider's records, per order: every attempt, in arrival order.
    let mut by_order: BTreeMap<usize, Vec<&Arrival>> = BTreeMap::new();
    for arrival in &stats.arrivals {
        if let Some(order) = arrival.path.strip_prefix("/v1/orders/") {
            by_order.entry(order.parse()?).or_default().push(arrival);
        }
    }
    let mut resent = 0;
    let mut body_mismatches = 0;
    let mut shortest_wait_after_throttle: Option<Duration> = None;
    for (order, attempts) in &by_order {
        let expected = fnv1a64(order_body(*order).as_bytes());
        if attempts.len() > 1 {
            resent += 1;
        }
        if attempts.iter().any(|arrival| arrival.body_hash != expected) {
            body_mismatches += 1;
        }
        for pair in attempts.windows(2) {
            if pair[0].outcome == Outcome::Scripted {
                let wait = pair[1].at.saturating_sub(pair[0].at);
                shortest_wait_after_throttle =
                    Some(shortest_wait_after_throttle.map_or(wait, |shortest| shortest.min(wait)));
            }
        }
    }
    let scripted = |arrival: &&Arrival| arrival.outcome == Outcome::Scripted;
    let refused = |arrival: &&Arrival| arrival.outcome == Outcome::Refused;
    Ok(Summary {
        requests: options.requests,
        succeeded,
        attempts: stats.total,
        throttled: stats.arrivals.iter().filter(scripted).count() as u64,
        shortest_wait_after_throttle,
        server_errors: stats.count(503),
        refused: stats.arrivals.iter().filter(refused).count() as u64,
        resent,
        body_mismatches,
        options,
        elapsed,
    })
}

/// reqwest driven through the stack, with request bodies replayed on
/// retries; a flag left out keeps its default.
#[derive(Debug, Parser)]
#[command(name = "reqwest_client")]
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
