//! The shape matrix: every provider shape quota-mock offers (an exact
//! sliding log, fixed windows, a token bucket, GCRA without burst, a
//! sliding-window counter), at 20/s and 100/s, against every client
//! limiter, each under the same retrying stack; and every shape again
//! across quota-mock's simulated network, where the order and spacing a
//! client sends in are not the ones its provider sees. Counted at the
//! server, refused arrivals included; latency per logical request at the
//! client.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use quota_mock::{MockServer, Rule, Stats};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::replay::ReplayBody;
use tower_quota::{
    BoxError, HostKey, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer,
};

use crate::limiters::{Limited, Limiter, http_client};
use crate::results;

/// How a provider counts its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SlidingLog,
    FixedWindow,
    TokenBucket,
    NoBurst,
    SlidingWindowCounter,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::SlidingLog,
        Kind::FixedWindow,
        Kind::TokenBucket,
        Kind::NoBurst,
        Kind::SlidingWindowCounter,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::SlidingLog => "strict sliding log",
            Kind::FixedWindow => "fixed window",
            Kind::TokenBucket => "token bucket, burst = N",
            Kind::NoBurst => "no burst (GCRA)",
            Kind::SlidingWindowCounter => "sliding-window counter",
        }
    }

    fn rule(self, quota: u64, window: Duration) -> Rule {
        match self {
            Kind::SlidingLog => Rule::sliding_log(quota, window),
            Kind::FixedWindow => Rule::fixed_window(quota, window),
            // quota-mock's bucket holds `limit` tokens: the burst is N.
            Kind::TokenBucket => Rule::token_bucket(quota, window),
            Kind::NoBurst => Rule::no_burst(quota, window),
            Kind::SlidingWindowCounter => Rule::sliding_window_counter(quota, window),
        }
    }
}

/// A provider: how it counts, and whether quota-mock's `NetworkProxy`
/// stands between it and the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    kind: Kind,
    across: bool,
}

impl Shape {
    /// Every kind over loopback, then every kind across the network.
    const ALL: [Shape; 2 * Kind::ALL.len()] = {
        let kinds = Kind::ALL.len();
        let mut all = [Shape {
            kind: Kind::SlidingLog,
            across: false,
        }; 2 * Kind::ALL.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = Shape {
                kind: Kind::ALL[i % kinds],
                across: i >= kinds,
            };
            i += 1;
        }
        all
    };

    /// Whether the provider keeps an exact sliding log.
    fn strict(self) -> bool {
        self.kind == Kind::SlidingLog
    }

    /// Whether the goals of the matrix hold for the shape: for every one
    /// but GCRA without burst across the network, where the network's
    /// jitter (20 ms of spread against a 10 or 50 ms interval) brings a
    /// third of evenly spaced requests closer than the provider allows, so
    /// that no client gets both 429s ≤ 2 % and 0.9 of the rate.
    fn graded(self) -> bool {
        !(self.kind == Kind::NoBurst && self.across)
    }

    fn name(self) -> String {
        if self.across {
            format!("{}, across a network", self.kind.name())
        } else {
            self.kind.name().to_owned()
        }
    }

    /// The simulated network in front of the provider, if any: a new
    /// connection's set-up delay and the range of the one-way latency,
    /// drawn per chunk and direction (the network benchmark's).
    fn network(self) -> Option<(Duration, Duration, Duration)> {
        crate::network::NETWORK.filter(|_| self.across)
    }

    fn rule(self, quota: u64, window: Duration) -> Rule {
        self.kind.rule(quota, window)
    }
}

/// A provider's documented rate and the load sent to it.
#[derive(Debug, Clone, Copy)]
struct Load {
    quota: u64,
    window: Duration,
    requests: usize,
    concurrency: usize,
}

impl Load {
    fn name(self) -> String {
        format!("{}/s", self.per_second())
    }

    fn per_second(self) -> f64 {
        self.quota as f64 / self.window.as_secs_f64()
    }
}

const LOADS: [Load; 2] = [
    Load {
        quota: 20,
        window: Duration::from_secs(1),
        requests: 200,
        concurrency: 32,
    },
    Load {
        quota: 100,
        window: Duration::from_secs(1),
        requests: 1_000,
        concurrency: 64,
    },
];

/// `SHAPES_RATE=<n>`: the matrix at `n` per second instead (10 s of
/// requests, an eighth of a second's in flight, 32 at least), printed
/// only. Above 100/s, tokio's millisecond timer is most of a no-burst
/// provider's interval: where spacing needs a finer one.
fn custom_load() -> Option<Load> {
    let quota = std::env::var("SHAPES_RATE")
        .ok()?
        .parse::<u64>()
        .ok()?
        .max(1);
    Some(Load {
        quota,
        window: Duration::from_secs(1),
        requests: usize::try_from(quota.saturating_mul(10)).unwrap_or(usize::MAX),
        concurrency: usize::try_from(quota / 8).unwrap_or(usize::MAX).max(32),
    })
}

/// Cells run at once, each with its own server and client: one, so that
/// no cell's timing pays for another's load on the machine's cores (a
/// limiter that spaces requests a few milliseconds apart measures the
/// scheduler when another cell's 64 requests in flight share it).
/// `SHAPES_PARALLEL=<n>` runs n at once, for a quicker look.
const PARALLEL_CELLS: usize = 1;

/// The cells run at once: [`PARALLEL_CELLS`], or `SHAPES_PARALLEL`.
fn parallel_cells() -> usize {
    std::env::var("SHAPES_PARALLEL")
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .map_or(PARALLEL_CELLS, |cells| cells.max(1))
}

/// A cell ends this long after its first call, whatever is left: 2.5 times
/// the ~10 s a cell takes at the provider's rate. Limiters that collapse
/// against a shape (a burst at GCRA, refused, waits out a whole second of
/// `Retry-After`) would otherwise take minutes; their requests not done by
/// then count as unfinished, and their goodput is over the cutoff.
const CUTOFF: Duration = Duration::from_secs(25);

fn limiter_name(limiter: Limiter) -> &'static str {
    match limiter {
        Limiter::TowerQuota => "tower-quota (README stack)",
        other => other.name(),
    }
}

/// The body the innermost service sees: `JitterBackoffLayer` and
/// `RetryAfterLayer` each wrap it to replay it.
type InnerBody = ReplayBody<ReplayBody<Empty<Bytes>>>;

/// The README stack with its defaults, as `run_readme_stack` in
/// `tests/tests/support/mod.rs` builds it.
fn readme_stack(load: Load) -> Result<Limited, BoxError> {
    readme_stack_for(load.quota, load.window)
}

/// The README stack with its defaults, configured for `quota` per `window`.
pub(crate) fn readme_stack_for(quota: u64, window: Duration) -> Result<Limited, BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<InnerBody>();
    Ok(Limited::new(
        ServiceBuilder::new()
            .layer(JitterBackoffLayer::new().max_attempts(4)?)
            .layer(CircuitBreakerLayer::new())
            .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
            .layer(
                SlidingWindowLayer::new(quota, window)?
                    .key_fn(HostKey)
                    .usage_fn(HttpFeedback)
                    .max_wait(Duration::from_secs(30)),
            )
            .timeout(Duration::from_secs(10))
            .service(client),
    ))
}

/// A peer limiter (as `limiters.rs` builds it, over its own client) under
/// the same retry, breaker and `Retry-After` layers as the README stack.
/// The requests are body-less GETs, so the replay wrappers are dropped
/// before the peer, which takes plain `Empty` bodies.
fn peer_stack(limiter: Limiter, load: Load) -> Result<Limited, BoxError> {
    let peer = limiter.build(load.quota, load.window, http_client())?;
    Ok(Limited::new(
        ServiceBuilder::new()
            .layer(JitterBackoffLayer::new().max_attempts(4)?)
            .layer(CircuitBreakerLayer::new())
            .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
            .map_request(|request: http::Request<InnerBody>| request.map(|_| Empty::new()))
            .service(peer),
    ))
}

/// One cell of the matrix, as the server and the client saw it.
struct Cell {
    shape: Shape,
    load: Load,
    limiter: Limiter,
    stats: Stats,
    driven: Driven,
}

impl Cell {
    fn arrivals(&self) -> u64 {
        self.stats.total
    }

    fn refused(&self) -> u64 {
        self.stats.count(429)
    }

    /// 429s as a share of every arrival, in percent.
    fn refused_percent(&self) -> f64 {
        100.0 * self.refused() as f64 / self.arrivals().max(1) as f64
    }

    /// Accepted ÷ wall seconds ÷ the provider's rate.
    fn goodput(&self) -> f64 {
        self.stats.accepted() as f64 / self.driven.wall.as_secs_f64() / self.load.per_second()
    }

    fn utilization(&self) -> f64 {
        self.stats.utilization(self.load.quota, self.load.window)
    }

    /// The `q` quantile of the latencies, shown; `≥` when a request cut
    /// off could be at or below it, which makes it a lower bound; `—` when
    /// some requests were never sent, so have no latency at all.
    fn latency(&self, q: f64) -> String {
        if self.driven.unsent > 0 {
            return "—".to_owned();
        }
        let mut sorted = self.driven.latencies.clone();
        sorted.sort();
        let value = quantile(&sorted, q);
        let bound = if self.driven.cut_off.iter().any(|&cut| cut <= value) {
            "≥ "
        } else {
            ""
        };
        format!("{bound}{}", show_ms(value))
    }

    /// The median gap between accepted arrivals from the fourth second on:
    /// the pace a limiter settled at.
    fn settled_gap(&self) -> Option<Duration> {
        let gaps = self.settled_gaps();
        gaps.get(gaps.len() / 2).copied()
    }

    /// The gaps between arrivals (refused ones included) from 3 s on,
    /// sorted.
    fn settled_gaps(&self) -> Vec<Duration> {
        let times: Vec<Duration> = self
            .stats
            .arrivals
            .iter()
            .filter(|arrival| arrival.at >= Duration::from_secs(3))
            .map(|arrival| arrival.at)
            .collect();
        let mut gaps: Vec<Duration> = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
        gaps.sort();
        gaps
    }

    /// Quantiles of the gaps between arrivals from 3 s on, for the
    /// console: how close the network brought requests together.
    fn gap_quantiles(&self) -> String {
        let gaps = self.settled_gaps();
        if gaps.is_empty() {
            return "—".to_owned();
        }
        [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95]
            .iter()
            .map(|q| {
                let index = ((gaps.len() - 1) as f64 * q).round() as usize;
                format!(
                    "p{}: {:.2} ms",
                    (q * 100.0) as u32,
                    gaps[index].as_secs_f64() * 1e3
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Each refused arrival, with the time since the accepted arrival
    /// before it, for the console.
    fn refusals(&self) -> String {
        let mut last_accepted = None;
        let mut shown = Vec::new();
        for arrival in &self.stats.arrivals {
            if arrival.is_accepted() {
                last_accepted = Some(arrival.at);
            } else if arrival.status == 429 {
                let since = last_accepted.map_or_else(
                    || "—".to_owned(),
                    |at| format!("{:.2} ms", (arrival.at - at).as_secs_f64() * 1e3),
                );
                shown.push(format!("{:.3} s ({since})", arrival.at.as_secs_f64()));
            }
        }
        shown.join(", ")
    }

    /// Accepted and refused arrivals per second of the run, for the
    /// console.
    fn timeline(&self) -> String {
        let last = self
            .stats
            .arrivals
            .last()
            .map_or(0, |arrival| arrival.at.as_secs());
        let first = self
            .stats
            .arrivals
            .first()
            .map_or(0, |arrival| arrival.at.as_secs());
        (first..=last)
            .map(|second| {
                let in_second = self
                    .stats
                    .arrivals
                    .iter()
                    .filter(|arrival| arrival.at.as_secs() == second);
                let (accepted, refused) = in_second.fold((0, 0), |(ok, no), arrival| {
                    if arrival.is_accepted() {
                        (ok + 1, no)
                    } else {
                        (ok, no + u64::from(arrival.status == 429))
                    }
                });
                format!("{accepted}/{refused}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The `q` quantile of a sorted slice (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One cell: a fresh provider of `shape`, a fresh client and stack.
async fn run_cell(shape: Shape, load: Load, limiter: Limiter) -> Result<Cell, BoxError> {
    let server = MockServer::builder()
        .rule(shape.rule(load.quota, load.window))
        .start()
        .await?;
    let service = match limiter {
        Limiter::TowerQuota => readme_stack(load)?,
        peer => peer_stack(peer, load)?,
    };
    let (network, base) = crate::network::behind(&server, shape.network(), 7).await?;
    let driven = drive(
        service,
        |i| format!("{base}/v1/items/{i}").parse().expect("a valid URI"),
        load.requests,
        load.concurrency,
    )
    .await;
    let stats = server.stats();
    drop(network);
    server.shutdown().await;
    Ok(Cell {
        shape,
        load,
        limiter,
        stats,
        driven,
    })
}

/// What the client saw of one cell's requests.
struct Driven {
    /// Per logical request, from the call into the stack to the end of its
    /// body (or its error); for one cut off, to the cutoff.
    latencies: Vec<Duration>,
    /// The latencies of the requests cut off: lower bounds.
    cut_off: Vec<Duration>,
    /// Logical requests that ended in an error or a non-2xx status.
    failed: usize,
    /// Logical requests not finished at the cutoff, started or not.
    unfinished: usize,
    /// Of those, the ones never sent into the stack.
    unsent: usize,
    /// From the first call to the last completion, or to the cutoff.
    wall: Duration,
}

/// How one logical request ended.
enum Ending {
    Succeeded,
    Failed,
    CutOff,
}

/// Sends `count` GETs through `service`, `concurrency` at a time, until
/// they are done or [`CUTOFF`] after the first call: what the client saw.
async fn drive(
    service: Limited,
    url: impl Fn(usize) -> http::Uri,
    count: usize,
    concurrency: usize,
) -> Driven {
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let deadline = started + CUTOFF;
    let mut sent = 0;
    for i in 0..count {
        let permit = tokio::time::timeout_at(deadline, in_flight.clone().acquire_owned()).await;
        let Ok(Ok(permit)) = permit else {
            break;
        };
        let service = service.clone();
        let uri = url(i);
        tasks.spawn(async move {
            let sent = Instant::now();
            let request = async {
                let request = http::Request::get(uri).body(Empty::<Bytes>::new())?;
                let response = service.oneshot(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok::<_, BoxError>(ok)
            };
            let ending = match tokio::time::timeout_at(deadline, request).await {
                Ok(Ok(true)) => Ending::Succeeded,
                Ok(_) => Ending::Failed,
                Err(_) => Ending::CutOff,
            };
            drop(permit);
            let done = Instant::now();
            (done - sent, done, ending)
        });
        sent += 1;
    }
    let mut driven = Driven {
        latencies: Vec::with_capacity(count),
        cut_off: Vec::new(),
        failed: 0,
        unfinished: 0,
        unsent: count - sent,
        wall: Duration::ZERO,
    };
    let mut last = started;
    while let Some(outcome) = tasks.join_next().await {
        match outcome {
            Ok((latency, done, ending)) => {
                driven.latencies.push(latency);
                last = last.max(done);
                match ending {
                    Ending::Succeeded => {}
                    Ending::Failed => driven.failed += 1,
                    Ending::CutOff => {
                        driven.unfinished += 1;
                        driven.cut_off.push(latency);
                    }
                }
            }
            Err(_) => driven.failed += 1,
        }
    }
    driven.unfinished += driven.unsent;
    driven.wall = if driven.unfinished > 0 {
        CUTOFF
    } else {
        last - started
    };
    driven
}

/// One line per cell on the console, and the tower-quota cells' timelines.
fn print_cell(cell: &Cell) {
    println!(
        "{} / {} / {}: {} arrivals, {} × 429 ({:.1}%), goodput {:.3} × rate, utilization \
         {:.3}, p50 {}, p99 {}, {} failed, {} unfinished, wall {}",
        cell.shape.name(),
        cell.load.name(),
        limiter_name(cell.limiter),
        cell.arrivals(),
        cell.refused(),
        cell.refused_percent(),
        cell.goodput(),
        cell.utilization(),
        cell.latency(0.50),
        cell.latency(0.99),
        cell.driven.failed,
        cell.driven.unfinished,
        show_ms(cell.driven.wall),
    );
    if cell.limiter == Limiter::TowerQuota {
        println!(
            "  accepted/429 per second: {}; median gap between arrivals from 3 s: {}",
            cell.timeline(),
            cell.settled_gap().map_or_else(
                || "—".to_owned(),
                |gap| format!("{:.2} ms", gap.as_secs_f64() * 1e3)
            ),
        );
        println!(
            "  429s (at, since the last accepted arrival): {}",
            cell.refusals()
        );
        println!("  gaps between arrivals from 3 s: {}", cell.gap_quantiles());
    }
}

/// `quota-bench shapes`: every load × shape × limiter, in one run,
/// [`parallel_cells`] at a time.
pub(crate) async fn run() -> Result<(), BoxError> {
    let started = Instant::now();
    let load_before = load_average();
    let parallel = parallel_cells();
    let slots = Arc::new(Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    // `SHAPES_OURS=1`: tower-quota's cells only, printed, RESULTS.md left
    // as it is (a quick look while tuning).
    let ours_only = std::env::var_os("SHAPES_OURS").is_some();
    // `SHAPES_ONLY=<text>`: only the cells whose shape and rate
    // (`no burst (GCRA) 100/s`) contain the text, printed, RESULTS.md left
    // as it is.
    let only = std::env::var("SHAPES_ONLY").ok();
    let custom = custom_load();
    let loads = custom.map_or_else(|| LOADS.to_vec(), |load| vec![load]);
    for load in loads {
        for shape in Shape::ALL {
            let cell_name = format!("{} {}", shape.name(), load.name());
            for limiter in Limiter::ALL {
                if ours_only && limiter != Limiter::ALL[0] {
                    continue;
                }
                if only
                    .as_ref()
                    .is_some_and(|only| !cell_name.contains(only.as_str()))
                {
                    continue;
                }
                // Taken here, so cells start in this order.
                let slot = slots.clone().acquire_owned().await?;
                tasks.spawn(async move {
                    let cell = run_cell(shape, load, limiter).await;
                    drop(slot);
                    if let Ok(cell) = &cell {
                        print_cell(cell);
                    }
                    cell
                });
            }
        }
    }
    let mut cells = Vec::new();
    while let Some(cell) = tasks.join_next().await {
        cells.push(cell??);
    }
    let index = |cell: &Cell| {
        let load = LOADS.iter().position(|load| load.quota == cell.load.quota);
        let shape = Shape::ALL.iter().position(|shape| *shape == cell.shape);
        let limiter = Limiter::ALL
            .iter()
            .position(|limiter| *limiter == cell.limiter);
        (load, shape, limiter)
    };
    cells.sort_by_key(index);
    if ours_only || only.is_some() || custom.is_some() {
        return Ok(());
    }
    let wall = started.elapsed();
    let load = format!("{load_before} at the start, {} at the end", load_average());
    plot(&cells, &results::crate_dir().join("shapes.svg"))?;
    results::write_section("shapes", &report(&cells, wall, &load, parallel)?)
}

/// The machine's 1-minute load average, from /proc/loadavg.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn show_ms(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if millis >= 1_000.0 {
        format!("{:.2} s", millis / 1000.0)
    } else {
        format!("{millis:.0} ms")
    }
}

/// The cell of `load`, `shape` and `limiter`.
fn find(cells: &[Cell], load: Load, shape: Shape, limiter: Limiter) -> Option<&Cell> {
    cells.iter().find(|cell| {
        cell.load.quota == load.quota && cell.shape == shape && cell.limiter == limiter
    })
}

/// A goal, measured: its line in the goals table.
fn goal(body: &mut String, name: &str, shown: String, met: bool, by: String) -> std::fmt::Result {
    let verdict = if met {
        "met".to_owned()
    } else {
        format!("**not met**: {by}")
    };
    writeln!(body, "| {name} | {shown} | {verdict} |")
}

/// The section's text: the setup, the matrix, the goals.
fn report(cells: &[Cell], wall: Duration, load: &str, parallel: usize) -> Result<String, BoxError> {
    let mut body = String::new();
    writeln!(
        body,
        "Each cell starts a fresh quota-mock server with one rule, a fresh client and a \
         fresh stack, and sends body-less GETs (one path per request, one key) to it, \
         {} requests at {} in flight for 20 per 1 s and {} requests at {} in flight for \
         100 per 1 s. Every limiter is configured with the provider's documented rate and \
         nothing else. The provider answers each refusal with 429 and `Retry-After` in \
         whole seconds, rounded up. One run per cell; {}, \
         each against its own server, in one process. A cell ends {} after its first call \
         at the latest: requests not done by then are counted as cut off (neither \
         succeeded nor failed), and the cell's wall time is the cutoff.\n",
        LOADS[0].requests,
        LOADS[0].concurrency,
        LOADS[1].requests,
        LOADS[1].concurrency,
        if parallel == 1 {
            "cells run one at a time".to_owned()
        } else {
            format!("cells run {parallel} at a time")
        },
        show_ms(CUTOFF),
    )?;
    writeln!(
        body,
        "The provider shapes (quota-mock `Rule` constructors):\n\n\
         - **strict sliding log** (`Rule::sliding_log`): at most N accepted in any \
         `[t, t + 1 s)`.\n\
         - **fixed window** (`Rule::fixed_window`): N per window, windows aligned to the \
         server's start (up to 2N around a boundary).\n\
         - **token bucket, burst = N** (`Rule::token_bucket`): a bucket of N tokens refilled \
         continuously at N per second. quota-mock's bucket always holds `limit` tokens, so \
         the burst is N: the closest the API offers to N − 1.\n\
         - **no burst (GCRA)** (`Rule::no_burst`): one request per 1 s ÷ N, with zero \
         tolerance.\n\
         - **sliding-window counter** (`Rule::sliding_window_counter`): the current \
         period's count plus the previous period's weighted by its overlap; refused requests \
         count too.\n\
         - **…, across a network**: each of them behind quota-mock's `NetworkProxy` \
         (30 ms to set up a connection, 5–25 ms one way, drawn per chunk and direction; the \
         network benchmark's): requests spaced evenly at the client arrive bunched, and in \
         another order, and a fresh client's first requests wait for their connections. \
         The README stack's utilization against the strict sliding log there has no goal \
         of its own: a client that cannot see when its requests arrive holds each slot \
         until a window after the answer, and the round trip (10 to 50 ms here, 30 on \
         average) is the part of each window it cannot use. That is also what it gives up \
         against a fixed window or a full bucket, to a limiter that sends a whole quota \
         every window (tower's `RateLimit`) and pays for it in 429s against the strict \
         sliding log.\n\
         - **no burst (GCRA), across a network**: the no-burst provider behind the \
         network. Its jitter (20 ms of spread) is wider than the interval at 100/s and \
         two fifths of it at 20/s: requests spaced evenly at the client reach the provider \
         closer together than it allows, a third of them at the rate. No client can keep \
         429s to 2 % and goodput at 0.9 here, so the row has no goal; it shows what each \
         limiter trades. The README stack learns the room from the refusals \
         (`sliding_window/pacer.rs`): fewer 429s for less goodput.\n"
    )?;
    writeln!(
        body,
        "The limiters:\n\n\
         - **tower-quota (README stack)**: `JitterBackoffLayer` max_attempts 4 → \
         `CircuitBreakerLayer` → `RetryAfterLayer` pace_by_quota_headers(false) → \
         `SlidingWindowLayer` keyed by `HostKey` with `usage_fn(HttpFeedback)` and max_wait \
         30 s → tower timeout 10 s → hyper-util client: the README stack with its defaults, \
         as `run_readme_stack` in `tests/tests/support/mod.rs` builds it. With \
         `HttpFeedback` the sliding window learns from 429s the burst a provider tolerates \
         (`sliding_window/pacer.rs`).\n\
         - **the peers** (tower `RateLimit` behind `Buffer`, governor's direct limiter with \
         burst = N and burst = 1 awaiting `until_ready`, tower-resilience's sliding log), \
         each built by `src/limiters.rs` over its own hyper-util client and put under the \
         same `JitterBackoffLayer` max_attempts 4 → `CircuitBreakerLayer` → \
         `RetryAfterLayer` pace_by_quota_headers(false), so a 429 is waited out and re-sent \
         exactly as in the README stack. The replay wrappers those layers put around the \
         (empty) body are dropped before the peer. The peers have no per-attempt timeout: \
         `limiters.rs` builds each directly over the client.\n\n\
         A logical request gets up to 3 attempts from `RetryAfterLayer`, each up to 4 times \
         from `JitterBackoffLayer`; one that still ends in an error or a non-2xx status \
         counts as failed.\n"
    )?;
    writeln!(
        body,
        "Measured at the server (quota-mock `Stats`): arrivals are every request that \
         reached it, retries and refused ones included; **429s** are shown as a share of \
         arrivals. **Goodput** is accepted ÷ (seconds from the first call to the last \
         completion) ÷ the rate; a limiter that spends the first window's quota at once \
         finishes {} requests in a little over {} s, so its goodput can exceed 1 \
         (utilization, in the list of every cell, corrects for that). **p50 / p99** are per \
         logical request, from the call into the stack to the end of its body, failed ones \
         included, at the client; a request cut off counts with its time until the cutoff, \
         and a quantile that such a time could change is shown as a lower bound (≥); where \
         some requests were never sent before the cutoff, none is shown (—). A p50 near \
         0 ms with a p99 near the whole run means that most requests passed without \
         waiting while a few, refused and re-sent, waited through most of it. Each cell \
         reads *429s · goodput ÷ rate · p50 / p99*, then failed and cut-off requests if \
         any; the best goodput of the row is in bold.\n",
        LOADS[0].requests,
        LOADS[0].requests as u64 / LOADS[0].quota - 1,
    )?;
    write!(body, "| shape | rate |")?;
    for limiter in Limiter::ALL {
        write!(body, " {} |", limiter_name(limiter))?;
    }
    writeln!(body)?;
    writeln!(body, "|---|---|{}", "---:|".repeat(Limiter::ALL.len()))?;
    for load in LOADS {
        for shape in Shape::ALL {
            let row: Vec<Option<&Cell>> = Limiter::ALL
                .iter()
                .map(|&limiter| find(cells, load, shape, limiter))
                .collect();
            let best = row
                .iter()
                .flatten()
                .map(|cell| cell.goodput())
                .fold(f64::NEG_INFINITY, f64::max);
            write!(body, "| {} | {} |", shape.name(), load.name())?;
            for cell in row {
                let Some(cell) = cell else {
                    write!(body, " not run |")?;
                    continue;
                };
                let goodput = format!("{:.3}", cell.goodput());
                let goodput = if cell.goodput() == best {
                    format!("**{goodput}**")
                } else {
                    goodput
                };
                let mut failed = String::new();
                if cell.driven.failed > 0 {
                    write!(failed, " · {} failed", cell.driven.failed)?;
                }
                if cell.driven.unfinished > 0 {
                    write!(failed, " · {} cut off", cell.driven.unfinished)?;
                }
                write!(
                    body,
                    " {:.1}% · {goodput} · {} / {}{failed} |",
                    cell.refused_percent(),
                    cell.latency(0.50),
                    cell.latency(0.99),
                )?;
            }
            writeln!(body)?;
        }
    }
    writeln!(body)?;
    let failed: usize = cells.iter().map(|cell| cell.driven.failed).sum();
    let unfinished: usize = cells.iter().map(|cell| cell.driven.unfinished).sum();
    let requests: usize = cells.iter().map(|cell| cell.load.requests).sum();
    let cut = cells
        .iter()
        .filter(|cell| cell.driven.unfinished > 0)
        .count();
    writeln!(
        body,
        "Of {requests} logical requests over {} cells, {failed} failed after every retry and \
         {unfinished} were cut off, in {cut} cells.\n",
        cells.len()
    )?;

    writeln!(body, "<details><summary>Every cell</summary>\n")?;
    writeln!(
        body,
        "| shape | rate | limiter | arrivals | accepted | 429s | failed | cut off | utilization | max arrived in 1 s ÷ N | wall |"
    )?;
    writeln!(
        body,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for cell in cells {
        writeln!(
            body,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {} |",
            cell.shape.name(),
            cell.load.name(),
            limiter_name(cell.limiter),
            cell.arrivals(),
            cell.stats.accepted(),
            cell.refused(),
            cell.driven.failed,
            cell.driven.unfinished,
            cell.utilization(),
            cell.stats.max_arrivals_in_any_window(cell.load.window) as f64 / cell.load.quota as f64,
            show_ms(cell.driven.wall),
        )?;
    }
    writeln!(body, "\n</details>\n")?;

    writeln!(
        body,
        "![goodput ÷ rate per provider shape, one bar per limiter](shapes.svg)\n"
    )?;

    goals(&mut body, cells)?;

    writeln!(
        body,
        "Wall time of `shapes`: {:.0} s. Load average (1 min) of the machine: {load}.",
        wall.as_secs_f64()
    )?;
    Ok(body)
}

/// The goals table, from the measurements.
fn goals(body: &mut String, cells: &[Cell]) -> Result<(), BoxError> {
    writeln!(body, "| goal | measured | met? |")?;
    writeln!(body, "|---|---:|---|")?;
    let mut met = 0;
    let mut total = 0;
    let mut tally = |ok: bool| {
        total += 1;
        met += usize::from(ok);
        ok
    };
    // The README stack with its defaults, every graded shape, both rates.
    for load in LOADS {
        for shape in Shape::ALL.into_iter().filter(|shape| shape.graded()) {
            let Some(ours) = find(cells, load, shape, Limiter::TowerQuota) else {
                continue;
            };
            let rate = load.name();
            let shape_name = shape.name();
            let percent = ours.refused_percent();
            goal(
                body,
                &format!("README stack, {shape_name}, {rate}: 429s ≤ 2% of arrivals"),
                format!("{percent:.1}% ({} of {})", ours.refused(), ours.arrivals()),
                tally(percent <= 2.0),
                format!("{:.1} points over", percent - 2.0),
            )?;
            let goodput = ours.goodput();
            goal(
                body,
                &format!("README stack, {shape_name}, {rate}: goodput ≥ 0.9 × rate"),
                format!("{goodput:.3}"),
                tally(goodput >= 0.9),
                format!("{:.3} below", 0.9 - goodput),
            )?;
            if shape.strict() {
                goal(
                    body,
                    &format!("README stack, {shape_name}, {rate}: 0 × 429"),
                    ours.refused().to_string(),
                    tally(ours.refused() == 0),
                    format!("{} × 429", ours.refused()),
                )?;
            }
            if shape.strict() && !shape.across {
                let utilization = ours.utilization();
                goal(
                    body,
                    &format!("README stack, {shape_name}, {rate}: utilization ≥ 0.97"),
                    format!("{utilization:.3}"),
                    tally(utilization >= 0.97),
                    format!("{:.3} below", 0.97 - utilization),
                )?;
            }
        }
    }
    // Ours against the best peer, row by row.
    for load in LOADS {
        for shape in Shape::ALL.into_iter().filter(|shape| shape.graded()) {
            let Some(ours) = find(cells, load, shape, Limiter::TowerQuota) else {
                continue;
            };
            let best = Limiter::ALL
                .iter()
                .filter(|&&limiter| limiter != Limiter::TowerQuota)
                .filter_map(|&limiter| find(cells, load, shape, limiter))
                .max_by(|a, b| a.goodput().total_cmp(&b.goodput()));
            let Some(best) = best else {
                continue;
            };
            let ratio = ours.goodput() / best.goodput();
            goal(
                body,
                &format!(
                    "{}, {}: goodput best or within 3% of the best peer",
                    shape.name(),
                    load.name()
                ),
                format!(
                    "{:.3} vs {:.3} ({}): {:+.1}%",
                    ours.goodput(),
                    best.goodput(),
                    limiter_name(best.limiter),
                    (ratio - 1.0) * 100.0
                ),
                tally(ratio >= 0.97),
                format!(
                    "{:.1}% below the best peer, {:.1} points beyond the 3% allowed",
                    (1.0 - ratio) * 100.0,
                    (0.97 - ratio) * 100.0
                ),
            )?;
        }
    }
    // The only limiter never refused by an exact sliding log.
    for load in LOADS {
        for shape in Shape::ALL.into_iter().filter(|shape| shape.strict()) {
            let clean: Vec<(Limiter, u64)> = Limiter::ALL
                .iter()
                .filter_map(|&limiter| find(cells, load, shape, limiter))
                .map(|cell| (cell.limiter, cell.refused()))
                .collect();
            let ours = clean
                .iter()
                .find(|(limiter, _)| *limiter == Limiter::TowerQuota)
                .map_or(u64::MAX, |(_, refused)| *refused);
            let clean_peers: Vec<&str> = clean
                .iter()
                .filter(|(limiter, refused)| *limiter != Limiter::TowerQuota && *refused == 0)
                .map(|(limiter, _)| limiter_name(*limiter))
                .collect();
            let shown = clean
                .iter()
                .map(|(limiter, refused)| format!("{}: {refused}", limiter_name(*limiter)))
                .collect::<Vec<_>>()
                .join("; ");
            let mut by = Vec::new();
            if ours > 0 {
                by.push(format!("tower-quota had {ours} × 429"));
            }
            if !clean_peers.is_empty() {
                by.push(format!("also 0 × 429: {}", clean_peers.join(", ")));
            }
            goal(
                body,
                &format!(
                    "{}, {}: tower-quota the only limiter with 0 × 429",
                    shape.name(),
                    load.name()
                ),
                shown,
                tally(ours == 0 && clean_peers.is_empty()),
                by.join("; "),
            )?;
        }
    }
    writeln!(body)?;
    writeln!(body, "Goals met: {met} of {total}.\n")?;
    Ok(())
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Goodput ÷ rate per shape, one bar per limiter, a panel per rate.
fn plot(cells: &[Cell], path: &std::path::Path) -> Result<(), BoxError> {
    let root = SVGBackend::new(path, (1700, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let (legend, charts) = root.split_vertically(40);
    draw_legend(&legend)?;
    let panels = charts.split_evenly((LOADS.len(), 1));
    let top = cells.iter().map(Cell::goodput).fold(1.2, f64::max) * 1.05;
    let centers: Vec<f64> = (0..Shape::ALL.len()).map(|i| i as f64 + 0.5).collect();
    let width = 0.8 / Limiter::ALL.len() as f64;
    let label = ("sans-serif", 14)
        .into_font()
        .into_text_style(&root)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (panel, load) in panels.iter().zip(LOADS) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "goodput ÷ rate at {} ({} requests, {} in flight); red: 0.9 × rate",
                    load.name(),
                    load.requests,
                    load.concurrency
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..Shape::ALL.len() as f64, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("goodput ÷ rate")
            .draw()?;
        for (index, limiter) in Limiter::ALL.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            let bars = Shape::ALL.iter().enumerate().filter_map(|(slot, &shape)| {
                let cell = find(cells, load, shape, *limiter)?;
                let left = slot as f64 + 0.1 + index as f64 * width;
                Some(Rectangle::new(
                    [(left, 0.0), (left + width * 0.9, cell.goodput())],
                    color.filled(),
                ))
            });
            chart.draw_series(bars)?;
        }
        chart.draw_series(LineSeries::new(
            [(0.0, 0.9), (Shape::ALL.len() as f64, 0.9)],
            RED.stroke_width(1),
        ))?;
        // The shapes' names under their groups, in the root's pixels; the
        // network on a second line.
        for (center, shape) in centers.iter().zip(Shape::ALL) {
            let (x, y) = chart.backend_coord(&(*center, 0.0));
            root.draw(&Text::new(shape.kind.name(), (x, y + 8), label.clone()))?;
            if shape.across {
                root.draw(&Text::new("across a network", (x, y + 24), label.clone()))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

/// One row of colour keys, one per limiter, above both panels.
fn draw_legend(area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), BoxError> {
    let style = ("sans-serif", 14)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut x = 20;
    for (index, limiter) in Limiter::ALL.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let name = limiter_name(*limiter);
        area.draw(&Rectangle::new([(x, 14), (x + 14, 28)], color.filled()))?;
        area.draw(&Text::new(name, (x + 20, 21), style.clone()))?;
        let (width, _) = area.estimate_text_size(name, &style)?;
        x += 20 + i32::try_from(width)? + 30;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_a_shape_over_loopback_and_across_the_network() {
        for kind in Kind::ALL {
            for across in [false, true] {
                let count = Shape::ALL
                    .iter()
                    .filter(|shape| shape.kind == kind && shape.across == across)
                    .count();
                assert_eq!(count, 1, "{kind:?}, across: {across}");
            }
        }
        // Loopback first: the tables list the shapes in this order.
        assert!(
            Shape::ALL[..Kind::ALL.len()]
                .iter()
                .all(|shape| !shape.across)
        );
        let graded: Vec<Shape> = Shape::ALL.into_iter().filter(|s| !s.graded()).collect();
        assert_eq!(
            graded,
            [Shape {
                kind: Kind::NoBurst,
                across: true
            }]
        );
    }
}
