//! The main job: pace a hyper-util client to a provider's quota and show,
//! from the provider's own records, that it used all of it and was never
//! refused.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --quota 20 --window 1s --requests 200 --concurrency 32
//! ```
//!
//! An in-process `quota-mock` server enforces a strict sliding log
//! (20 requests in any 1 s by default) and records every arrival. The client
//! sends the requests through `SlidingWindowLayer` with `concurrency` calls in
//! flight, then prints what the server measured: 429s, the maximum accepted
//! in any window, and the utilization of the quota.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule, Stats};
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::{BoxError, SlidingWindowLayer};

struct Options {
    quota: u64,
    window: Duration,
    requests: usize,
    concurrency: usize,
    safety_margin: Option<Duration>,
}

impl Options {
    fn from_args() -> Result<Self, String> {
        let mut options = Options {
            quota: 20,
            window: Duration::from_secs(1),
            requests: 200,
            concurrency: 32,
            safety_margin: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--quota" => options.quota = parse(&flag, &value()?)?,
                "--window" => {
                    let text = value()?;
                    options.window = humantime::parse_duration(&text)
                        .map_err(|error| format!("--window {text}: {error}"))?;
                }
                "--safety-margin" => {
                    let text = value()?;
                    options.safety_margin = Some(
                        humantime::parse_duration(&text)
                            .map_err(|error| format!("--safety-margin {text}: {error}"))?,
                    );
                }
                "--requests" => options.requests = parse(&flag, &value()?)?,
                "--concurrency" => options.concurrency = parse(&flag, &value()?)?,
                "--help" | "-h" => {
                    return Err("usage: quickstart [--quota N] [--window 1s] [--requests N] [--concurrency N] [--safety-margin 10ms]".into());
                }
                other => return Err(format!("unknown flag {other}; try --help")),
            }
        }
        if options.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        Ok(options)
    }
}

fn parse<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: `{text}` is not a valid number"))
}

/// What the server saw, in the terms of the acceptance criteria.
struct Report {
    accepted: u64,
    refused: u64,
    max_in_window: u64,
    span: Duration,
    utilization: f64,
}

fn report(stats: &Stats, quota: u64, window: Duration) -> Report {
    let accepted: Vec<Duration> = stats
        .arrivals
        .iter()
        .filter(|arrival| arrival.is_accepted())
        .map(|arrival| arrival.at)
        .collect();
    let span = match (accepted.iter().min(), accepted.iter().max()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    // The most a client could have had accepted from the first accepted
    // arrival to the last: a full quota per window, over span + window.
    let possible = quota as f64 * (span + window).as_secs_f64() / window.as_secs_f64();
    Report {
        accepted: accepted.len() as u64,
        refused: stats.count(429),
        max_in_window: stats.max_in_any_window(window),
        span,
        utilization: accepted.len() as f64 / possible,
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let options = match Options::from_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };

    // The provider: a strict sliding log, measured at the server.
    let server = MockServer::builder()
        .rule(Rule::sliding_log(options.quota, options.window))
        .start()
        .await?;

    // The client: hyper-util's pooled client, paced by the sliding window.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut limiter = SlidingWindowLayer::new(options.quota, options.window)?;
    if let Some(margin) = options.safety_margin {
        limiter = limiter.safety_margin(margin)?;
    }
    let service = ServiceBuilder::new().layer(limiter).service(client);

    println!(
        "sending {} requests at concurrency {} to {} (quota {} per {:?}, strict sliding log)",
        options.requests,
        options.concurrency,
        server.url(),
        options.quota,
        options.window
    );
    let url: http::Uri = format!("{}/v1/items", server.url()).parse()?;
    let in_flight = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..options.requests {
        let permit = in_flight.clone().acquire_owned().await?;
        let service = service.clone();
        let request = http::Request::get(url.clone()).body(Empty::new())?;
        tasks.spawn(async move {
            let response = service.oneshot(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            drop(permit);
            Ok::<_, BoxError>(status)
        });
    }
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(status) if status.is_success() => {}
            Ok(status) => {
                failures += 1;
                eprintln!("request answered {status}");
            }
            Err(error) => {
                failures += 1;
                eprintln!("request failed: {error}");
            }
        }
    }

    let stats = server.stats();
    if std::env::var_os("QUICKSTART_DEBUG").is_some() {
        let times: Vec<f64> = stats.arrivals.iter().map(|a| a.at.as_secs_f64()).collect();
        for chunk in times.chunks(options.quota as usize) {
            let lo = chunk.iter().cloned().fold(f64::MAX, f64::min);
            let hi = chunk.iter().cloned().fold(0.0, f64::max);
            eprintln!("burst at {lo:.4} spread {:.2} ms", (hi - lo) * 1000.0);
        }
    }
    server.shutdown().await;
    let report = report(&stats, options.quota, options.window);
    println!();
    println!("as measured by the server:");
    println!("  accepted                  {}", report.accepted);
    println!("  refused (429)             {}", report.refused);
    println!("  failed on the client      {failures}");
    println!(
        "  max accepted in any {:?}  {} (quota {})",
        options.window, report.max_in_window, options.quota
    );
    println!(
        "  span first..last accepted {:.3} s",
        report.span.as_secs_f64()
    );
    println!("  utilization               {:.4}", report.utilization);

    let compliant = report.refused == 0 && failures == 0 && report.max_in_window <= options.quota;
    Ok(if compliant {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
