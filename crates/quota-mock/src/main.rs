//! `quota-mock`: run the simulated rate-limited API from the command line.
//!
//! ```text
//! quota-mock --addr 127.0.0.1:8080 --quota 10/1s --quota 100/1m:fixed \
//!     --key-by header:x-api-key --headers ietf --error-rate 0.05 --latency 10ms
//! ```
//!
//! An LLM-style provider: 500 requests and 200,000 tokens per minute, the
//! tokens declared in `x-tokens`, the amount charged echoed in `x-usage`:
//!
//! ```text
//! quota-mock --quota 500/1m --quota 200000/1m:cost --cost-header x-tokens \
//!     --usage-header x-usage --headers openai
//! ```
//!
//! A slow provider behind a simulated network: clients that connect to
//! port 8081 pay 30ms to set up each connection and 5 to 25ms each way, and
//! every admitted request takes 200 to 800ms to process:
//!
//! ```text
//! quota-mock --quota 20/1s --processing 200ms..800ms \
//!     --proxy-addr 127.0.0.1:8081 --connect-delay 30ms --net-latency 5ms..25ms
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use http::{HeaderName, StatusCode};
use quota_mock::{
    Fault, HeaderDialect, KeyBy, Latency, MockServer, NetworkProxy, RetryAfterFormat, Rule,
};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// A simulated rate-limited HTTP API (HTTP/1.1 and h2c) that enforces quotas
/// server-side and records every arrival (JSON at GET /__quota/stats).
#[derive(Debug, Parser)]
#[command(name = "quota-mock", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// A quota LIMIT/WINDOW[:MODE][:cost], e.g. 10/1s, 100/1m:fixed,
    /// 20/500ms:bucket, 20/1s:gcra, 100/1m:counter. Modes: sliding (exact
    /// sliding log, the default), fixed (windows reset at boundaries),
    /// bucket (token bucket), gcra or noburst (one request per
    /// WINDOW/LIMIT, no burst), counter (sliding window counter weighing the
    /// previous period; counts refused requests too); or LIMIT:concurrency
    /// for at most LIMIT requests in flight at once. With :cost each
    /// request spends its cost (see --cost-header) instead of 1, e.g.
    /// 200000/1m:cost for tokens per minute. Repeat for several quotas; all
    /// are enforced.
    #[arg(long = "quota", value_name = "RULE")]
    quotas: Vec<Rule>,

    /// The request header declaring a request's cost (default x-cost); a
    /// missing or non-numeric value means 1.
    #[arg(long, value_name = "NAME")]
    cost_header: Option<HeaderName>,

    /// The request header stating what an admitted request really cost, to
    /// charge instead of the declared cost (default x-actual-cost).
    #[arg(long, value_name = "NAME")]
    actual_cost_header: Option<HeaderName>,

    /// Echo the amount charged in this response header on admitted requests.
    #[arg(long, value_name = "NAME")]
    usage_header: Option<HeaderName>,

    /// How requests are grouped into quotas: global, path (first path
    /// segment) or header:NAME.
    #[arg(long, default_value = "global")]
    key_by: KeyBy,

    /// Fraction of admitted requests answered with 500, 502 or 503.
    #[arg(long, value_name = "FRACTION")]
    error_rate: Option<f64>,

    /// Delay added before every response, e.g. 10ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    latency: Option<Duration>,

    /// Processing time of every admitted request, after the quota decision:
    /// MIN..MAX drawn uniformly (e.g. 200ms..800ms) or one fixed duration.
    /// Refused requests are answered at once.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    processing: Option<(Duration, Duration)>,

    /// Also listen here through a simulated network (a TCP proxy in front
    /// of the server), e.g. 127.0.0.1:8081.
    #[arg(long, value_name = "ADDR")]
    proxy_addr: Option<SocketAddr>,

    /// Set-up delay of each new connection through the proxy, before any
    /// byte flows, e.g. 30ms.
    #[arg(long, value_name = "DELAY", value_parser = humantime::parse_duration, requires = "proxy_addr")]
    connect_delay: Option<Duration>,

    /// One-way latency through the proxy, drawn per chunk and direction:
    /// MIN..MAX (e.g. 5ms..25ms) or one fixed duration.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range, requires = "proxy_addr")]
    net_latency: Option<(Duration, Duration)>,

    /// Seed for the fault, processing and network RNGs, for repeatable runs.
    #[arg(long)]
    seed: Option<u64>,

    /// The quota header dialect: x-ratelimit, x-ratelimit-delta, ietf,
    /// ietf-legacy, discord, openai, anthropic, shopify or none.
    #[arg(long, value_name = "DIALECT", default_value = "x-ratelimit")]
    headers: HeaderDialect,

    /// Omit the quota headers (same as --headers none).
    #[arg(long, conflicts_with = "headers")]
    no_quota_headers: bool,

    /// Send 429s without Retry-After: clients must read the quota headers.
    #[arg(long)]
    no_retry_after: bool,

    /// Send Retry-After as an HTTP-date instead of delay-seconds.
    #[arg(long)]
    retry_after_date: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // RUST_LOG as `target=level,...` (errors only when unset or unreadable).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::ERROR));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(filter))
        .init();
    let args = Args::parse();

    // A process of its own: the server serves from this runtime's threads.
    let mut builder = MockServer::builder()
        .on_caller_runtime()
        .addr(args.addr)
        .key_by(args.key_by)
        .headers(args.headers)
        .retry_after(!args.no_retry_after);
    for rule in args.quotas {
        builder = builder.rule(rule);
    }
    if let Some(fraction) = args.error_rate {
        builder = builder.fault(Fault::ErrorRate {
            fraction,
            statuses: vec![
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
            ],
        });
    }
    if let Some(latency) = args.latency {
        builder = builder.fault(Fault::Latency(Latency::Fixed(latency)));
    }
    if let Some((min, max)) = args.processing {
        builder = builder.processing(min, max);
    }
    if let Some(name) = args.cost_header {
        builder = builder.cost_header(name);
    }
    if let Some(name) = args.actual_cost_header {
        builder = builder.actual_cost_header(name);
    }
    if let Some(name) = args.usage_header {
        builder = builder.usage_header(name);
    }
    if let Some(seed) = args.seed {
        builder = builder.seed(seed);
    }
    if args.no_quota_headers {
        builder = builder.headers(HeaderDialect::None);
    }
    if args.retry_after_date {
        builder = builder.retry_after_format(RetryAfterFormat::HttpDate);
    }

    let server = builder.start().await?;
    println!("quota-mock listening on {}", server.url());
    let proxy = match args.proxy_addr {
        Some(addr) => {
            let mut proxy = NetworkProxy::builder(server.addr())
                .on_caller_runtime()
                .addr(addr);
            if let Some(delay) = args.connect_delay {
                proxy = proxy.connect_delay(delay);
            }
            if let Some((min, max)) = args.net_latency {
                proxy = proxy.latency(min, max);
            }
            if let Some(seed) = args.seed {
                proxy = proxy.seed(seed);
            }
            let proxy = proxy.start().await?;
            println!("quota-mock network proxy listening on {}", proxy.url());
            Some(proxy)
        }
        None => None,
    };
    tokio::signal::ctrl_c().await?;
    println!("quota-mock shutting down");
    drop(proxy);
    server.shutdown().await;
    Ok(())
}

/// Parses `MIN..MAX` (e.g. `5ms..25ms`) or a single duration (`MIN..MIN`).
fn parse_range(text: &str) -> Result<(Duration, Duration), String> {
    let duration = |part: &str| {
        humantime::parse_duration(part.trim()).map_err(|e| format!("bad duration {part:?}: {e}"))
    };
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (duration(min)?, duration(max)?),
        None => {
            let fixed = duration(text)?;
            (fixed, fixed)
        }
    };
    if min > max {
        return Err(format!("{text:?}: the minimum exceeds the maximum"));
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_min_max_or_one_duration() {
        let ms = Duration::from_millis;
        assert_eq!(parse_range("5ms..25ms"), Ok((ms(5), ms(25))));
        assert_eq!(parse_range(" 200ms .. 1s "), Ok((ms(200), ms(1000))));
        assert_eq!(parse_range("30ms"), Ok((ms(30), ms(30))));
        for bad in ["", "..", "5ms..", "..5ms", "25ms..5ms", "5..25", "fast"] {
            assert!(parse_range(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn network_flags_need_a_proxy_address() {
        assert!(Args::try_parse_from(["quota-mock", "--connect-delay", "30ms"]).is_err());
        assert!(Args::try_parse_from(["quota-mock", "--net-latency", "5ms..25ms"]).is_err());
        let args = Args::try_parse_from([
            "quota-mock",
            "--proxy-addr",
            "127.0.0.1:8081",
            "--connect-delay",
            "30ms",
            "--net-latency",
            "5ms..25ms",
            "--processing",
            "200ms..800ms",
        ])
        .unwrap();
        assert_eq!(args.connect_delay, Some(Duration::from_millis(30)));
        assert_eq!(
            args.net_latency,
            Some((Duration::from_millis(5), Duration::from_millis(25)))
        );
        assert_eq!(
            args.processing,
            Some((Duration::from_millis(200), Duration::from_millis(800)))
        );
    }
}
