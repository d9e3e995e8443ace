//! The main job: a client that uses all of a provider's quota, is never
//! refused, and recovers from the provider's faults — measured at the
//! provider.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --quota 20 --window 1s --requests 300 --concurrency 32
//! cargo run --release --example quickstart -- --requests 200 --no-faults    # pacing alone
//! cargo run --release --example quickstart -- --provider-quota 15             # a provider stricter than its docs: FAILED, and why
//! ```
//!
//! An in-process `quota-mock` server enforces a strict sliding log (20
//! requests in any 1 s by default), answers 3% of requests with a 503, and
//! has one episode of `503 Retry-After: 1`. The client sends the requests
//! through the three layers on a hyper-util client:
//!
//! ```text
//! JitterBackoffLayer → RetryAfterLayer → SlidingWindowLayer → timeout → hyper-util Client
//! ```
//!
//! and prints what happened as the server saw it. The JSON telemetry of the
//! run and a timeline plot (SVG and PNG) are written under
//! `target/quickstart/`: what the provider accepted against the quota,
//! its refusals and 5xx answers, the client's retries by kind, and the
//! spans when the RetryAfter gate held every request back.

mod bitmap;
mod plot;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::{IntoDrawingArea, SVGBackend};
use quota_mock::{Fault, HeaderDialect, MockServer, Rule, Scripted, Stats};
use tokio::sync::Semaphore;
use tokio::time::Instant;
#[cfg(feature = "redis")]
use tower::util::Either;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::telemetry;
use tower_quota::{
    BoxError, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer,
};
use tower_quota_quickstart::human;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::plot::Timeline;

/// Runs requests through the three layers against an in-process provider
/// and reports what the provider saw.
///
/// Keeping the quota in Redis (--redis URL) needs the package's redis
/// feature: cargo run --release --example quickstart --features
/// tower-quota-quickstart/redis -- --redis redis://127.0.0.1:6379
#[derive(Debug, Parser)]
#[command(name = "quickstart")]
struct Options {
    /// Requests the client may send in any window (the provider's quota).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    quota: u64,
    /// The quota's window, e.g. 1s, 500ms, 1m.
    #[arg(long, default_value = "1s", value_parser = positive_duration)]
    window: Duration,
    /// Logical requests to send.
    #[arg(long, default_value_t = 300, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    concurrency: usize,
    /// No injected 503s and no Retry-After episode: pacing alone.
    #[arg(long)]
    no_faults: bool,
    /// How much longer than the window each admission is held, e.g. 5ms
    /// (default: 0.01% of the window, between 1 ms and 25 ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    safety_margin: Option<Duration>,
    /// How soon after its admission a request is assumed to reach the
    /// provider, e.g. 100ms (default: a tenth of the window, at most 100 ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    sent_within: Option<Duration>,
    /// Hold each admission until its answer comes back, and a window after.
    #[arg(long)]
    strict: bool,
    /// The quota the provider enforces, when it differs from --quota (a
    /// provider stricter than its documentation).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    provider_quota: Option<u64>,
    /// Keep the quota in Redis at this URL, shared by every process using it.
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Where the telemetry and the timeline plot are written.
    #[arg(long, default_value = "target/quickstart")]
    out: PathBuf,
}

impl Options {
    fn faults(&self) -> bool {
        !self.no_faults
    }
}

/// A duration above zero, for --window.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be above zero".into()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// What one logical request did, as the client saw it.
struct Outcome {
    /// Why the request did not succeed: the final status or the error.
    failure: Option<String>,
    latency: Duration,
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let options = Options::parse();
    std::fs::create_dir_all(&options.out)?;
    let log_path = options.out.join("telemetry.jsonl");
    let svg_path = options.out.join("timeline.svg");
    let png_path = options.out.join("timeline.png");

    // Telemetry: every event of the layers as one JSON object per line, and
    // the gate's closings kept for the plot.
    let gates = GateLog::default();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(File::create(&log_path)?)
                .with_filter(Targets::new().with_target("tower_quota", Level::DEBUG)),
        )
        .with(
            gates
                .clone()
                .with_filter(Targets::new().with_target(telemetry::TARGET, Level::INFO)),
        )
        .init();

    // The provider: a strict sliding log, with faults, measured at the server.
    let mut provider = MockServer::builder()
        .rule(Rule::sliding_log(
            options.provider_quota.unwrap_or(options.quota),
            options.window,
        ))
        .headers(HeaderDialect::IetfStructured)
        .seed(7);
    if options.faults() {
        provider = provider.fault(Fault::ErrorRate {
            fraction: 0.03,
            statuses: vec![http::StatusCode::SERVICE_UNAVAILABLE],
        });
    }
    let server = provider.start().await?;

    // The client: the three layers around hyper-util's pooled client.
    let client = Client::builder(TokioExecutor::new()).build_http();
    // HttpFeedback: a 429 the window had room for widens the key's margin.
    let mut pacing = SlidingWindowLayer::new(options.quota, options.window)?.usage_fn(HttpFeedback);
    if let Some(margin) = options.safety_margin {
        pacing = pacing.safety_margin(margin)?;
    }
    if let Some(bound) = options.sent_within {
        pacing = pacing.sent_within(bound)?;
    }
    if options.strict {
        pacing = pacing.strict();
    }
    // With --redis, the quota lives in Redis and every process using the
    // same URL shares it.
    #[cfg(feature = "redis")]
    let (pacing, redis_store) = match &options.redis {
        Some(url) => {
            let store = tower_quota_redis::RedisStore::builder(url.as_str())
                .build()
                .await?;
            (Either::Left(pacing.store(store.clone())), Some(store))
        }
        None => (Either::Right(pacing), None),
    };
    let service = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .max_attempts(5)?
                .attempt_header("x-retry-attempt")?,
        )
        // The sliding window below knows the exact quota: the gate obeys
        // Retry-After and throttling, and leaves the pacing to it.
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
        .layer(pacing)
        .timeout(Duration::from_secs(10))
        .service(client);

    println!(
        "{} requests at concurrency {} to {} — quota {} per {}, strict sliding log{}",
        options.requests,
        options.concurrency,
        server.url(),
        options.quota,
        human(options.window),
        if options.faults() {
            ", 3% 503s and one Retry-After episode"
        } else {
            ""
        },
    );
    let progress = ProgressBar::new(options.requests as u64).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let in_flight = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..options.requests {
        if options.faults() && i == options.requests / 3 {
            // The provider pushes back once: the next two get 503 Retry-After: 1.
            server.script(
                Scripted::new(2, http::StatusCode::SERVICE_UNAVAILABLE)
                    .retry_after(Duration::from_secs(1)),
            );
        }
        let permit = in_flight.clone().acquire_owned().await?;
        let service = service.clone();
        // A path per logical request: the server's records tell its
        // attempts apart from other requests'.
        let request = http::Request::get(format!("{}/v1/items/{i}", server.url()))
            .body(Empty::<Bytes>::new())?;
        let progress = progress.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = service.oneshot(request).await;
            let failure = match result {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().collect().await {
                        Ok(_) if status.is_success() => None,
                        Ok(_) => Some(format!("answered {status}")),
                        Err(error) => Some(format!("body failed: {error}")),
                    }
                }
                Err(error) => {
                    progress.println(format!("request failed: {error}"));
                    Some(error.to_string())
                }
            };
            drop(permit);
            progress.inc(1);
            Outcome {
                failure,
                latency: sent.elapsed(),
            }
        });
    }
    let mut outcomes = Vec::with_capacity(options.requests);
    while let Some(outcome) = tasks.join_next().await {
        outcomes.push(outcome?);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    // With --redis, the last answers reach Redis before the process exits:
    // the other processes that share the quota get those slots back a
    // window after them, not at their `sent_within` bounds.
    #[cfg(feature = "redis")]
    if let Some(store) = &redis_store {
        store.flush().await;
    }

    let stats = server.stats();
    let server_started = server.started_at();
    server.shutdown().await;
    let report = Report::new(&stats, &outcomes, &options, elapsed);
    report.print(&options);
    let timeline = Timeline::new(
        &stats,
        options.quota,
        options.window,
        &gates.spans_since(server_started),
    );
    timeline.draw(&SVGBackend::new(&svg_path, plot::SIZE).into_drawing_area())?;
    println!();
    println!("telemetry (JSON lines): {}", log_path.display());
    println!("timeline plot (SVG):    {}", svg_path.display());
    match bitmap::find_font() {
        Some((_, font)) => {
            bitmap::write(&timeline, &font, &png_path)?;
            println!("timeline plot (PNG):    {}", png_path.display());
        }
        None => println!(
            "timeline plot (PNG):    not written: no TrueType font found; \
             set QUICKSTART_FONT to a .ttf file"
        ),
    }

    let problems = report.problems(&options, &log_path);
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!(
        "FAILED: {} problem(s), as the provider saw them",
        problems.len()
    );
    for problem in &problems {
        println!("  ✗ {}", problem.what);
        for fix in &problem.fixes {
            println!("      try: {fix}");
        }
    }
    Ok(ExitCode::FAILURE)
}

/// One thing that went wrong, and what to try about it.
struct Problem {
    what: String,
    fixes: Vec<String>,
}

/// The run in numbers, from the server's records and the client's outcomes.
struct Report {
    succeeded: usize,
    /// How many requests failed, per reason.
    failures: BTreeMap<String, usize>,
    attempts: u64,
    refused: u64,
    server_errors: u64,
    max_in_window: u64,
    achieved_rate: f64,
    utilization: f64,
    p50: Duration,
    p99: Duration,
    elapsed: Duration,
}

impl Report {
    fn new(stats: &Stats, outcomes: &[Outcome], options: &Options, elapsed: Duration) -> Self {
        let admitted: Vec<Duration> = stats
            .arrivals
            .iter()
            .filter(|a| a.is_accepted())
            .map(|a| a.at)
            .collect();
        let span = match (admitted.iter().min(), admitted.iter().max()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        };
        let window = options.window.as_secs_f64();
        let possible = options.quota as f64 * (span.as_secs_f64() + window) / window;
        let succeeded = outcomes.iter().filter(|o| o.failure.is_none()).count();
        let mut failures = BTreeMap::new();
        for failure in outcomes.iter().filter_map(|o| o.failure.as_deref()) {
            *failures.entry(failure.to_owned()).or_insert(0) += 1;
        }
        let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
        latencies.sort();
        let percentile = |p: f64| -> Duration {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            let index =
                ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[index]
        };
        let successes_at_server = stats.count(200) as f64;
        Report {
            succeeded,
            failures,
            attempts: stats.total,
            refused: stats.count(429),
            server_errors: stats
                .by_status
                .iter()
                .filter(|(status, _)| **status >= 500)
                .map(|(_, n)| n)
                .sum(),
            max_in_window: stats.max_in_any_window(options.window),
            // Successful responses per window, over the time the server was
            // busy, against the quota.
            achieved_rate: successes_at_server / possible,
            utilization: admitted.len() as f64 / possible,
            p50: percentile(0.50),
            p99: percentile(0.99),
            elapsed,
        }
    }

    /// What went wrong, as the server saw it, each with what to try.
    fn problems(&self, options: &Options, log_path: &Path) -> Vec<Problem> {
        let quota = format!("{} per {}", options.quota, human(options.window));
        let log = log_path.display();
        let mut problems = Vec::new();
        if self.refused > 0 {
            let mut fixes = Vec::new();
            if self.max_in_window < options.quota {
                // The provider never accepted a full quota in any window:
                // it enforces less than the client was told.
                fixes.push(format!(
                    "the provider accepted at most {} in any window: if it enforces less than \
                     its documented {quota}, run with --quota {}",
                    self.max_in_window, self.max_in_window
                ));
            }
            fixes.push(format!(
                "if requests reach the provider later than the pacing assumes (a loaded \
                 machine, a queueing pool or proxy), run with --strict (hold each admission \
                 until its answer) or a larger --sent-within; look for `pacing_drift` and \
                 `rate_limit_hit` in {log}"
            ));
            problems.push(Problem {
                what: format!("{} × 429 at the provider", self.refused),
                fixes,
            });
        }
        if self.max_in_window > options.quota {
            problems.push(Problem {
                what: format!(
                    "max {} in a window > quota {quota}: the client sent more than its quota",
                    self.max_in_window
                ),
                fixes: vec![
                    "send every request through one SlidingWindowLayer (its clones share the \
                     quota) and run with --strict, which assumes nothing about the network"
                        .into(),
                ],
            });
        }
        if self.succeeded < options.requests {
            let reasons: Vec<String> = self
                .failures
                .iter()
                .map(|(reason, n)| format!("{n} × {reason}"))
                .collect();
            problems.push(Problem {
                what: format!(
                    "{} of {} requests failed: {}",
                    options.requests - self.succeeded,
                    options.requests,
                    reasons.join("; ")
                ),
                fixes: vec![format!(
                    "more attempts (JitterBackoffLayer::max_attempts, 5 here), a longer \
                     max_wait, or a lower --concurrency; each failure is logged as \
                     `retries_exhausted` or `retry_skipped` (with its reason) in {log}"
                )],
            });
        }
        problems
    }

    fn print(&self, options: &Options) {
        let rows = [
            ("sent (logical requests)", options.requests.to_string()),
            ("succeeded", self.succeeded.to_string()),
            ("attempts seen by the server", self.attempts.to_string()),
            ("429 Too Many Requests", self.refused.to_string()),
            ("5xx answered, then retried", self.server_errors.to_string()),
            (
                "max accepted in any window",
                format!(
                    "{} (quota {} per {})",
                    self.max_in_window,
                    options.quota,
                    human(options.window)
                ),
            ),
            (
                "achieved rate / quota",
                format!("{:.1}% ({:.4})", self.utilization * 100.0, self.utilization),
            ),
            (
                "successful responses / quota",
                format!("{:.1}%", self.achieved_rate * 100.0),
            ),
            (
                "latency p50 / p99",
                format!("{} / {}", human(self.p50), human(self.p99)),
            ),
            ("wall time", human(self.elapsed).to_string()),
        ];
        println!();
        println!("  as measured by the server");
        println!("  {}", "-".repeat(60));
        for (name, value) in rows {
            println!("  {name:<30} {value}");
        }
    }
}

/// When the RetryAfter gate closed and for how long, from the layers'
/// `gate_closed` events.
#[derive(Clone, Default)]
struct GateLog(Arc<Mutex<Vec<(Instant, Duration)>>>);

impl GateLog {
    /// The closed spans, as `(from, to)` since `origin`.
    fn spans_since(&self, origin: Instant) -> Vec<(Duration, Duration)> {
        let closings = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        closings
            .iter()
            .map(|(at, until)| {
                let from = at.saturating_duration_since(origin);
                (from, from + *until)
            })
            .collect()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for GateLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().name() != telemetry::GATE_CLOSED {
            return;
        }
        let mut until = UntilMs(None);
        event.record(&mut until);
        if let Some(millis) = until.0 {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Instant::now(), Duration::from_millis(millis)));
        }
    }
}

/// Reads the `until_ms` field of a `gate_closed` event.
struct UntilMs(Option<u64>);

impl tracing::field::Visit for UntilMs {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == telemetry::field::UNTIL_MS {
            self.0 = Some(value);
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == telemetry::field::UNTIL_MS {
            self.0 = u64::try_from(value).ok();
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}
