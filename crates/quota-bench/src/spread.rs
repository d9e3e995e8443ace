//! The retry spread after a shared 503: N requests fail together, and the
//! server records when their retries land, for each jitter strategy.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Scripted};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::backoff::Jitter;
use tower_quota::{BoxError, JitterBackoffLayer};

use crate::{plot, results};

/// Requests that fail together.
const REQUESTS: usize = 200;
/// The backoff's base: the first retry's ceiling.
const BASE: Duration = Duration::from_millis(200);
const BUCKET: Duration = Duration::from_millis(10);

const STRATEGIES: [(&str, Jitter); 4] = [
    ("none", Jitter::None),
    ("full", Jitter::Full),
    ("equal", Jitter::Equal),
    ("decorrelated", Jitter::Decorrelated),
];

/// The retry delays (since the shared 503 began) the server saw.
async fn retry_delays(jitter: Jitter) -> Result<Vec<Duration>, BoxError> {
    let server = MockServer::builder()
        .scripted(Scripted::new(
            u32::try_from(REQUESTS)?,
            http::StatusCode::SERVICE_UNAVAILABLE,
        ))
        .start()
        .await?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .jitter(jitter)
                .backoff(BASE, Duration::from_secs(2))?
                .max_attempts(2)?
                // Every failed request retries: the budget would refuse most.
                .no_budget()
                .attempt_header("x-retry-attempt")?,
        )
        .service(client);
    let url: http::Uri = format!("{}/v1/items", server.url()).parse()?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let service = service.clone();
        let request = http::Request::get(url.clone()).body(Empty::<Bytes>::new())?;
        tasks.spawn(async move {
            let response = service.oneshot(request).await?;
            response.into_body().collect().await?;
            Ok::<_, BoxError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let stats = server.stats();
    server.shutdown().await;
    let first = stats
        .arrivals
        .iter()
        .filter(|a| a.status == 503)
        .map(|a| a.at)
        .min()
        .ok_or("no 503 was served")?;
    let mut delays: Vec<Duration> = stats
        .arrivals
        .iter()
        .filter(|a| a.attempt.is_some_and(|attempt| attempt > 1))
        .map(|a| a.at.saturating_sub(first))
        .collect();
    delays.sort();
    Ok(delays)
}

/// Peak 10 ms bucket ÷ mean bucket, over the buckets from the shared 503
/// to the last retry.
pub(crate) fn peak_over_mean(sorted: &[Duration]) -> (u64, f64, f64) {
    let Some(last) = sorted.last() else {
        return (0, 0.0, 0.0);
    };
    let buckets = (last.as_nanos() / BUCKET.as_nanos()) as usize + 1;
    let mut counts = vec![0u64; buckets];
    for delay in sorted {
        counts[(delay.as_nanos() / BUCKET.as_nanos()) as usize] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(0);
    let mean = sorted.len() as f64 / buckets as f64;
    (peak, mean, peak as f64 / mean)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Runs every strategy; returns the Markdown section and draws the CDF.
pub(crate) async fn run() -> Result<String, BoxError> {
    let mut curves = Vec::new();
    let mut body = String::new();
    writeln!(body, "### Retry spread after a shared 503\n")?;
    writeln!(
        body,
        "{REQUESTS} requests are sent at once through `JitterBackoffLayer` (base {BASE:?}, \
         max 2 s, 2 attempts, no budget) to quota-mock, which answers each first attempt \
         with a 503 without `Retry-After`. The server records when each retry lands. \
         Peak ÷ mean is the busiest 10 ms bucket over the mean bucket, buckets spanning \
         the shared 503 to the last retry: 1 is perfectly even, `None` puts every retry in \
         one or two buckets.\n"
    )?;
    writeln!(
        body,
        "| jitter | retries seen | first retry | median | p99 | last retry | peak 10 ms bucket | mean per bucket | peak ÷ mean |"
    )?;
    writeln!(body, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (name, jitter) in STRATEGIES {
        let delays = retry_delays(jitter).await?;
        let (peak, mean, ratio) = peak_over_mean(&delays);
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        writeln!(
            body,
            "| {name} | {} | {} | {} | {} | {} | {peak} | {mean:.2} | {ratio:.2} |",
            delays.len(),
            ms(delays.first().copied().unwrap_or_default()),
            ms(percentile(&delays, 0.5)),
            ms(percentile(&delays, 0.99)),
            ms(delays.last().copied().unwrap_or_default()),
        )?;
        curves.push((name, delays));
    }
    writeln!(body)?;
    plot::retry_cdf(&curves, &results::crate_dir().join("retry_cdf.svg"))?;
    writeln!(
        body,
        "![CDF of retry arrival times after the shared 503, per jitter strategy](retry_cdf.svg)"
    )?;
    Ok(body)
}
