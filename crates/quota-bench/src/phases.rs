//! `quota-bench phases`: a provider whose undisclosed rate changes under a
//! key configured for more, against runs configured with the right rate.
//!
//! The provider is a strict sliding log that sends no quota headers (only
//! `Retry-After` on its 429s): 30, then 15, then 45 per second, 30 s each.
//! The README stack with its defaults, configured for 50 per second, keeps
//! 32 requests in flight through all three phases. Beside it, three runs of
//! 30 s each are configured with the phase's own rate: what a user who knew
//! the provider's rate would get. Per phase: the 429s and the accepted rate
//! over the provider's, over the phase's second half (the steady state),
//! and when the run converged: the first second from which the rest of the
//! phase meets both goals (at most 1 % refused, at least 0.85 of the rate).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use quota_mock::{HeaderDialect, MockServer, Rule, Stats};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_quota::BoxError;

use crate::limiters::Limited;
use crate::results;
use crate::shapes::{load_average, readme_stack_for};

/// How long each phase lasts.
const PHASE: Duration = Duration::from_secs(30);
/// The provider's rate in each phase, per second.
const RATES: [u64; 3] = [30, 15, 45];
/// The rate the adaptive run is configured for, per second.
const CONFIGURED: u64 = 50;
/// Requests in flight.
const CONCURRENCY: usize = 32;
/// The goals: at most this share of a phase's steady-state arrivals
/// refused, and at least this share of the provider's rate accepted.
const MAX_REFUSED: f64 = 0.01;
const MIN_GOODPUT: f64 = 0.85;

/// One phase of one run, as the provider counted it.
struct Phase {
    rate: u64,
    arrivals: usize,
    refused: usize,
    goodput: f64,
    converged: Option<u64>,
}

pub(crate) async fn run() -> Result<(), BoxError> {
    let load_before = load_average();
    let started = Instant::now();
    println!("adaptive: configured {CONFIGURED}/s, provider {RATES:?}/s, {PHASE:?} each");
    let adaptive = adaptive_run().await?;
    let mut fixed = Vec::new();
    for rate in RATES {
        println!("fixed: configured {rate}/s, provider {rate}/s");
        fixed.push(fixed_run(rate).await?);
    }
    for (adaptive, fixed) in adaptive.iter().zip(&fixed) {
        println!(
            "{:>2}/s  adaptive {:.2} % refused, goodput {:.3}, converged {}  |  fixed {:.2} %, {:.3}, {}",
            adaptive.rate,
            share(adaptive) * 100.0,
            adaptive.goodput,
            converged(adaptive),
            share(fixed) * 100.0,
            fixed.goodput,
            converged(fixed),
        );
    }
    let body = report(
        &adaptive,
        &fixed,
        started.elapsed(),
        &load_before,
        &load_average(),
    )?;
    results::write_section("phases", &body)
}

/// The README stack configured for [`CONFIGURED`] through the three phases.
async fn adaptive_run() -> Result<Vec<Phase>, BoxError> {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(RATES[0], Duration::from_secs(1)))
        .headers(HeaderDialect::None)
        .start()
        .await?;
    let service = readme_stack_for(CONFIGURED, Duration::from_secs(1))?;
    let base = server.url();
    let sending = tokio::spawn(keep_busy(service, base));
    for (index, rate) in RATES.iter().enumerate().skip(1) {
        tokio::time::sleep(PHASE).await;
        server.set_limit(0, *rate)?;
        println!("  phase {index}: the provider now takes {rate}/s");
    }
    tokio::time::sleep(PHASE).await;
    let stats = server.stats();
    sending.abort();
    server.shutdown().await;
    Ok(RATES
        .iter()
        .enumerate()
        .map(|(index, rate)| phase(&stats, *rate, PHASE * index as u32))
        .collect())
}

/// The README stack configured for the provider's own `rate`, for a phase.
async fn fixed_run(rate: u64) -> Result<Phase, BoxError> {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(rate, Duration::from_secs(1)))
        .headers(HeaderDialect::None)
        .start()
        .await?;
    let service = readme_stack_for(rate, Duration::from_secs(1))?;
    let sending = tokio::spawn(keep_busy(service, server.url()));
    tokio::time::sleep(PHASE).await;
    let stats = server.stats();
    sending.abort();
    server.shutdown().await;
    Ok(phase(&stats, rate, Duration::ZERO))
}

/// Keeps [`CONCURRENCY`] GETs in flight until aborted.
async fn keep_busy(service: Limited, base: String) {
    let in_flight = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0.. {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let service = service.clone();
        let Ok(uri) = format!("{base}/v1/items/{i}").parse::<http::Uri>() else {
            return;
        };
        tasks.spawn(async move {
            let request = http::Request::get(uri).body(Empty::<Bytes>::new());
            if let Ok(request) = request
                && let Ok(response) = service.oneshot(request).await
            {
                let _ = response.into_body().collect().await;
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
}

/// What the provider saw of the phase that starts at `start`.
fn phase(stats: &Stats, rate: u64, start: Duration) -> Phase {
    let second = Duration::from_secs(1);
    let in_range = |from: Duration, to: Duration| {
        stats
            .arrivals
            .iter()
            .filter(move |arrival| arrival.at >= from && arrival.at < to)
    };
    let from = start + PHASE / 2;
    let to = start + PHASE;
    let arrivals = in_range(from, to).count();
    let refused = in_range(from, to)
        .filter(|arrival| arrival.status == 429)
        .count();
    let goodput = (arrivals - refused) as f64 / (to - from).as_secs_f64() / rate as f64;
    // Converged: the first second from which the rest of the phase (at
    // least its last five seconds) meets both goals.
    let meets = |from: Duration| {
        let arrivals = in_range(from, start + PHASE).count();
        let refused = in_range(from, start + PHASE)
            .filter(|arrival| arrival.status == 429)
            .count();
        let seconds = (start + PHASE - from).as_secs_f64();
        refused as f64 <= MAX_REFUSED * arrivals as f64
            && (arrivals - refused) as f64 >= MIN_GOODPUT * seconds * rate as f64
    };
    let converged = (0..PHASE.as_secs() - 5).find(|first| meets(start + second * *first as u32));
    Phase {
        rate,
        arrivals,
        refused,
        goodput,
        converged,
    }
}

fn share(phase: &Phase) -> f64 {
    phase.refused as f64 / phase.arrivals.max(1) as f64
}

fn converged(phase: &Phase) -> String {
    phase
        .converged
        .map_or("not within the phase".to_owned(), |second| {
            format!("{second} s")
        })
}

fn report(
    adaptive: &[Phase],
    fixed: &[Phase],
    wall: Duration,
    load_before: &str,
    load_after: &str,
) -> Result<String, BoxError> {
    let mut body = String::new();
    writeln!(
        body,
        "A strict sliding log that sends no quota headers (only `Retry-After` \
         on its 429s) takes 30, then 15, then 45 requests per second, {} s each; \
         the README stack with its defaults, configured for {CONFIGURED}/s, keeps \
         {CONCURRENCY} requests in flight through all three phases (*adaptive*). \
         Beside it, one run of {} s per phase configured with the phase's own rate \
         (*fixed*): what a user who knew the provider's rate would get. Counted at \
         the provider over each phase's second half (the steady state); \
         *converged* is the first second of the phase from which the rest of \
         it meets both goals below. \
         {:.0} s in all; load average {load_before} before, {load_after} after.\n",
        PHASE.as_secs(),
        PHASE.as_secs(),
        wall.as_secs_f64(),
    )?;
    writeln!(
        body,
        "| provider's rate | adaptive: 429s | adaptive: goodput ÷ rate | adaptive: converged | fixed: 429s | fixed: goodput ÷ rate | fixed: converged |"
    )?;
    writeln!(body, "|---|---|---|---|---|---|---|")?;
    for (adaptive, fixed) in adaptive.iter().zip(fixed) {
        writeln!(
            body,
            "| {}/s | {} of {} ({:.2} %) | {:.3} | {} | {} of {} ({:.2} %) | {:.3} | {} |",
            adaptive.rate,
            adaptive.refused,
            adaptive.arrivals,
            share(adaptive) * 100.0,
            adaptive.goodput,
            converged(adaptive),
            fixed.refused,
            fixed.arrivals,
            share(fixed) * 100.0,
            fixed.goodput,
            converged(fixed),
        )?;
    }
    writeln!(body)?;
    writeln!(
        body,
        "Goal (adaptive, every phase): at most {:.0} % of arrivals refused and at \
         least {MIN_GOODPUT} of the provider's rate accepted in the steady state.\n",
        MAX_REFUSED * 100.0
    )?;
    for phase in adaptive {
        let refused_ok = share(phase) <= MAX_REFUSED;
        let goodput_ok = phase.goodput >= MIN_GOODPUT;
        writeln!(
            body,
            "- {}/s: {:.2} % refused ({}), goodput {:.3} ({}).",
            phase.rate,
            share(phase) * 100.0,
            if refused_ok { "met" } else { "missed" },
            phase.goodput,
            if goodput_ok {
                format!("met by {:.3}", phase.goodput - MIN_GOODPUT)
            } else {
                format!("missed by {:.3}", MIN_GOODPUT - phase.goodput)
            },
        )?;
    }
    writeln!(
        body,
        "\nA lower rate is found from the first refusals at once; a higher one \
         only by probes, which a provider that stays where it is refuses, so they \
         come at most every 16 windows (every 32 to 64 near the configured rate): \
         that is the convergence time of a rise."
    )?;
    Ok(body)
}
