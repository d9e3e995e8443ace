//! The README stack across quota-mock's simulated network, for each
//! admission mode of `SlidingWindowLayer`: the fixed margin of old, the
//! default (a slot is held a window after the answer or after the
//! `sent_within` bound), and strict mode. Everything is counted where the
//! provider counts it: at the server, every arrival, refused ones included.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, NetworkProxy, Rule, Stats};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::circuit_breaker::CircuitBreakerLayer;
use tower_quota::replay::ReplayBody;
use tower_quota::sliding_window::{
    Admission, Completion, Limits, MemoryStore, Quota, Store, default_safety_margin,
    default_sent_within,
};
use tower_quota::{
    BoxError, HostKey, HttpFeedback, JitterBackoffLayer, Key, RetryAfterLayer, SlidingWindowLayer,
};

use crate::limiters::Limited;
use crate::results;

/// How `SlidingWindowLayer` decides when an admission leaves the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The earlier behaviour: an admission leaves a window plus the
    /// old default margin (0.5% of the window) after it was admitted,
    /// whatever happens to the request, and 429s teach nothing. Emulated by
    /// [`FixedMarginStore`].
    FixedMargin,
    /// The defaults: a window after the answer or after
    /// `admission + sent_within`, whichever is first (a cold key's first
    /// window waits for answers).
    Default,
    /// `.strict()`: a window after the answer, however long it takes.
    Strict,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::FixedMargin, Mode::Default, Mode::Strict];

    fn name(self) -> &'static str {
        match self {
            Mode::FixedMargin => "fixed margin (old)",
            Mode::Default => "default (answer or sent_within)",
            Mode::Strict => "strict",
        }
    }
}

/// The earlier default safety margin: 0.5% of the window, between
/// 1 ms and 25 ms.
fn old_safety_margin(window: Duration) -> Duration {
    (window / 200).clamp(ms(1), ms(25))
}

/// A [`MemoryStore`] that behaves as the store did earlier: every
/// admission is marked answered the moment it is admitted, so it leaves the
/// window a window plus the margin after its admission, whether the request
/// is still in flight, was answered, or was dropped; the real answers and
/// refusals are ignored (no drift learning).
///
/// `.sent_within(1 ms)` alone no longer reproduces this: a cold key's first
/// window now holds every slot until its answer, whatever `sent_within` says.
#[derive(Clone, Default)]
struct FixedMarginStore(MemoryStore);

impl Store for FixedMarginStore {
    type Acquire = Pin<Box<dyn Future<Output = Result<Admission, BoxError>> + Send>>;

    fn acquire(&self, key: Key, cost: u64, limits: &Limits) -> Self::Acquire {
        let store = self.0.clone();
        let limits = limits.clone();
        let admitted = self.0.acquire(key, cost, &limits);
        Box::pin(async move {
            let admission = admitted.await?;
            store.complete(&admission, Completion::Answered, &limits);
            Ok(admission)
        })
    }

    fn correct(&self, admission: &Admission, actual_cost: u64) {
        self.0.correct(admission, actual_cost);
    }
}

/// `server` behind the simulated `network` (a new connection's set-up
/// delay and the range of the one-way latency), if any: the proxy, to keep
/// while the server is used, and the base URL to send to.
pub(crate) async fn behind(
    server: &MockServer,
    network: Option<(Duration, Duration, Duration)>,
    seed: u64,
) -> Result<(Option<NetworkProxy>, String), BoxError> {
    let proxy = match network {
        Some((connect, min, max)) => Some(
            NetworkProxy::builder(server.addr())
                .connect_delay(connect)
                .latency(min, max)
                .seed(seed)
                .start()
                .await?,
        ),
        None => None,
    };
    let base = proxy
        .as_ref()
        .map_or_else(|| server.url(), NetworkProxy::url);
    Ok((proxy, base))
}

/// One network profile: the provider, the network in front of it, and the
/// load.
struct Profile {
    name: &'static str,
    quota: u64,
    window: Duration,
    requests: usize,
    concurrency: usize,
    /// Connect delay and one-way latency range of the proxy; `None` for
    /// plain loopback.
    network: Option<(Duration, Duration, Duration)>,
    /// The provider's processing time range after its quota decision.
    processing: Option<(Duration, Duration)>,
    /// Runs per mode, each with a fresh server, proxy, client and stack.
    runs: usize,
    /// Open the client's connections before the measured run (on a path
    /// the quota does not count), as the scenarios' warm baseline does.
    warm: bool,
}

/// The request body the stack hands its innermost service: the two retrying
/// layers (`JitterBackoffLayer`, `RetryAfterLayer`) each wrap it to replay
/// it.
type InnerBody = ReplayBody<ReplayBody<Empty<Bytes>>>;

const fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The connect delay and one-way latency of the simulated network: a
/// TLS-like handshake and 5–25 ms each way.
pub(crate) const NETWORK: Option<(Duration, Duration, Duration)> = Some((ms(30), ms(5), ms(25)));

const PROFILES: [Profile; 4] = [
    Profile {
        name: "cold start across a network",
        quota: 20,
        window: ms(1_000),
        requests: 200,
        concurrency: 32,
        network: NETWORK,
        processing: None,
        runs: 5,
        warm: false,
    },
    Profile {
        name: "1,000 in flight on loopback",
        quota: 5_000,
        window: ms(1_000),
        requests: 100_000,
        concurrency: 1_000,
        network: None,
        processing: None,
        runs: 1,
        warm: false,
    },
    Profile {
        name: "slow provider across a network",
        quota: 30,
        window: ms(3_000),
        requests: 150,
        concurrency: 32,
        network: NETWORK,
        processing: Some((ms(200), ms(800))),
        runs: 1,
        warm: false,
    },
    Profile {
        name: "warm loopback",
        quota: 20,
        window: ms(1_000),
        requests: 200,
        concurrency: 32,
        network: None,
        processing: None,
        runs: 1,
        warm: true,
    },
];

/// One run as the server and the client saw it.
struct Run {
    stats: Stats,
    /// Per logical request, from the call into the stack to the last byte
    /// of the body.
    latencies: Vec<Duration>,
    /// Logical requests that ended in an error or a non-2xx status.
    failed: usize,
    wall: Duration,
}

impl Run {
    /// accepted ÷ (quota × (span + window) ÷ window), span being the first
    /// to the last accepted arrival.
    fn utilization(&self, quota: u64, window: Duration) -> f64 {
        self.stats.utilization(quota, window)
    }

    /// How long the server went without room, on average, each time the
    /// quota rolled over: the span of accepted arrivals beyond the least a
    /// saturating client needs (`turnovers × window`, with `turnovers =
    /// ⌈accepted ÷ quota⌉ − 1`), divided by the turnovers. `None` when the
    /// run fit in one window.
    fn lost_per_turnover(&self, quota: u64, window: Duration) -> Option<Duration> {
        let accepted = self.stats.accepted();
        let turnovers = accepted.div_ceil(quota).checked_sub(1).filter(|&t| t > 0)?;
        let times = self
            .stats
            .arrivals
            .iter()
            .filter(|a| a.is_accepted())
            .map(|a| a.at);
        let span = times.clone().max()? - times.min()?;
        let least = window.checked_mul(u32::try_from(turnovers).ok()?)?;
        Some(span.saturating_sub(least) / u32::try_from(turnovers).ok()?)
    }
}

/// The runs of one profile in one mode, summarized.
struct Row {
    profile: &'static str,
    mode: Mode,
    runs: usize,
    refused: u64,
    arrivals: u64,
    max_arrived_ratio: f64,
    utilization_min: f64,
    utilization_median: f64,
    lost_per_turnover: Option<Duration>,
    p50: Duration,
    p99: Duration,
    failed: usize,
    wall_median: Duration,
}

impl Row {
    fn new(profile: &Profile, mode: Mode, runs: &[Run]) -> Row {
        let mut utilizations: Vec<f64> = runs
            .iter()
            .map(|run| run.utilization(profile.quota, profile.window))
            .collect();
        utilizations.sort_by(f64::total_cmp);
        let mut latencies: Vec<Duration> = runs
            .iter()
            .flat_map(|run| run.latencies.iter().copied())
            .collect();
        latencies.sort();
        let mut lost: Vec<Duration> = runs
            .iter()
            .filter_map(|run| run.lost_per_turnover(profile.quota, profile.window))
            .collect();
        lost.sort();
        let mut walls: Vec<Duration> = runs.iter().map(|run| run.wall).collect();
        walls.sort();
        let most = runs
            .iter()
            .map(|run| run.stats.max_arrivals_in_any_window(profile.window))
            .max()
            .unwrap_or(0);
        Row {
            profile: profile.name,
            mode,
            runs: runs.len(),
            refused: runs.iter().map(|run| run.stats.count(429)).sum(),
            arrivals: runs.iter().map(|run| run.stats.total).sum(),
            max_arrived_ratio: most as f64 / profile.quota as f64,
            utilization_min: utilizations.first().copied().unwrap_or(0.0),
            utilization_median: median(&utilizations).unwrap_or(0.0),
            lost_per_turnover: median(&lost),
            p50: quantile(&latencies, 0.50),
            p99: quantile(&latencies, 0.99),
            failed: runs.iter().map(|run| run.failed).sum(),
            wall_median: median(&walls).unwrap_or_default(),
        }
    }
}

/// The lower median of a sorted slice.
fn median<T: Copy>(sorted: &[T]) -> Option<T> {
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// The `q` quantile of a sorted slice (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The README stack (as in `tests/tests/network_e2e.rs`) over `client`,
/// with the admission mode `mode`.
fn readme_stack(
    mode: Mode,
    quota: u64,
    window: Duration,
    client: Client<HttpConnector, InnerBody>,
) -> Result<Limited, BoxError> {
    let pacing = SlidingWindowLayer::new(quota, window)?
        .key_fn(HostKey)
        .usage_fn(HttpFeedback)
        .max_wait(Duration::from_secs(30));
    let stack = ServiceBuilder::new()
        .layer(JitterBackoffLayer::new().max_attempts(4)?)
        .layer(CircuitBreakerLayer::new())
        .layer(RetryAfterLayer::new().pace_by_quota_headers(false));
    Ok(match mode {
        Mode::FixedMargin => Limited::new(
            stack
                .layer(
                    pacing
                        .safety_margin(old_safety_margin(window))?
                        .store(FixedMarginStore::default()),
                )
                .timeout(Duration::from_secs(10))
                .service(client),
        ),
        Mode::Default => Limited::new(
            stack
                .layer(pacing)
                .timeout(Duration::from_secs(10))
                .service(client),
        ),
        Mode::Strict => Limited::new(
            stack
                .layer(pacing.strict())
                .timeout(Duration::from_secs(10))
                .service(client),
        ),
    })
}

/// One run of `profile` in `mode`: a fresh provider, network, client and
/// stack.
async fn run_once(profile: &Profile, mode: Mode, seed: u64) -> Result<Run, BoxError> {
    let mut server = MockServer::builder()
        .rule(Rule::sliding_log(profile.quota, profile.window))
        .seed(seed);
    if let Some((min, max)) = profile.processing {
        server = server.processing(min, max);
    }
    let server = server.start().await?;
    let (network, base) = behind(&server, profile.network, seed).await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<InnerBody>();
    if profile.warm {
        // Opens the pooled connections first, on a path the server's quota
        // does not count, and around the limiter, which never sees them.
        let url: http::Uri = format!("{base}/__quota/stats").parse()?;
        let raw = client
            .clone()
            .map_request(|request: http::Request<Empty<Bytes>>| {
                request.map(|body| ReplayBody::once(ReplayBody::once(body)))
            })
            .map_err(BoxError::from);
        let open = profile.quota as usize;
        drive(&raw, |_| url.clone(), open, open).await;
    }
    let service = readme_stack(mode, profile.quota, profile.window, client)?;
    let started = Instant::now();
    let (latencies, failed) = drive(
        &service,
        |i| format!("{base}/v1/items/{i}").parse().expect("a valid URI"),
        profile.requests,
        profile.concurrency,
    )
    .await;
    let wall = started.elapsed();
    let stats = server.stats();
    drop(network);
    server.shutdown().await;
    Ok(Run {
        stats,
        latencies,
        failed,
        wall,
    })
}

/// Sends `count` GETs through `service`, `concurrency` at a time; returns
/// each one's latency and how many failed.
async fn drive<S>(
    service: &S,
    url: impl Fn(usize) -> http::Uri,
    count: usize,
    concurrency: usize,
) -> (Vec<Duration>, usize)
where
    S: tower::Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
            Future: Send,
        > + Clone
        + Send
        + 'static,
{
    let in_flight = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let service = service.clone();
        let uri = url(i);
        tasks.spawn(async move {
            let sent = Instant::now();
            let ok = async {
                let request = http::Request::get(uri).body(Empty::<Bytes>::new())?;
                let response = service.oneshot(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok::<_, BoxError>(ok)
            }
            .await;
            drop(permit);
            (sent.elapsed(), matches!(ok, Ok(true)))
        });
    }
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    while let Some(outcome) = tasks.join_next().await {
        match outcome {
            Ok((latency, ok)) => {
                latencies.push(latency);
                failed += usize::from(!ok);
            }
            Err(_) => failed += 1,
        }
    }
    (latencies, failed)
}

fn show_ms(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if millis >= 10_000.0 {
        format!("{:.1} s", millis / 1000.0)
    } else {
        format!("{millis:.0} ms")
    }
}

/// A goal of the exactness work, measured.
fn goal(body: &mut String, name: &str, shown: String, met: bool, by: String) -> std::fmt::Result {
    let verdict = if met {
        "yes".to_owned()
    } else {
        format!("**no**: {by}")
    };
    writeln!(body, "| {name} | {shown} | {verdict} |")
}

/// `quota-bench network`: every profile × every mode, in one run.
pub(crate) async fn run() -> Result<(), BoxError> {
    let started = Instant::now();
    let load_before = load_average();
    let mut rows = Vec::new();
    for profile in &PROFILES {
        for mode in Mode::ALL {
            let mut runs = Vec::new();
            for seed in 0..profile.runs as u64 {
                let run = run_once(profile, mode, seed).await?;
                println!(
                    "{} / {} / run {}: {} × 429, max arrived {} (quota {}), utilization {:.3}, wall {}",
                    profile.name,
                    mode.name(),
                    seed + 1,
                    run.stats.count(429),
                    run.stats.max_arrivals_in_any_window(profile.window),
                    profile.quota,
                    run.utilization(profile.quota, profile.window),
                    show_ms(run.wall),
                );
                runs.push(run);
            }
            rows.push(Row::new(profile, mode, &runs));
        }
    }
    let wall = started.elapsed();
    let load = format!("{load_before} at the start, {} at the end", load_average());
    results::write_section("network", &report(&rows, wall, &load)?)
}

/// The machine's 1-minute load average, from /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The section's text: the modes, the profiles, the table and the goals.
fn report(rows: &[Row], wall: Duration, load: &str) -> Result<String, BoxError> {
    let one_second = [Quota::new(20, ms(1_000))?];
    let three_seconds = [Quota::new(30, ms(3_000))?];
    let mut body = String::new();
    writeln!(
        body,
        "The README stack (`JitterBackoffLayer` max_attempts 4 → `CircuitBreakerLayer` → \
         `RetryAfterLayer` pace_by_quota_headers(false) → `SlidingWindowLayer` keyed by host \
         with `usage_fn(HttpFeedback)` and max_wait 30 s → tower timeout 10 s → a fresh \
         hyper-util legacy `Client` per run), as in `tests/tests/network_e2e.rs`, against \
         quota-mock's strict sliding log, measured at the server. Only the admission mode of \
         `SlidingWindowLayer` differs between rows:\n"
    )?;
    writeln!(
        body,
        "- **fixed margin (old)**: the earlier behaviour — an admission leaves the \
         window a window plus the safety margin after it was *admitted*, whatever happens to \
         the request, with the old default margin (0.5% of the window: {} for 1 s, {} for \
         3 s) and no learning from 429s. Emulated by a store around `MemoryStore` that marks \
         each admission answered the moment it is admitted and ignores the real answers and \
         refusals (`FixedMarginStore` in `src/network.rs`). `.sent_within(1 ms)` alone no \
         longer reproduces it: a cold key's first window holds every slot until its \
         answer or three times `sent_within`, whatever the bound is.\n\
         - **default (answer or sent_within)**: the defaults — held until a window (plus the \
         margin) after the answer, or after `admission + sent_within` ({} for a 1 s window, \
         {} for 3 s) if no answer came back by then; during a key's first window, three \
         times that; a 429 the log had room for widens the key's margin.\n\
         - **strict**: `.strict()` — held until a window after the answer, with no time \
         bound; the provider provably never counts more than N in a window (module docs of \
         `sliding_window`).\n",
        show_ms(old_safety_margin(ms(1_000))),
        show_ms(old_safety_margin(ms(3_000))),
        show_ms(default_sent_within(&one_second)),
        show_ms(default_sent_within(&three_seconds)),
    )?;
    writeln!(
        body,
        "The default and strict rows use the default safety margin: {} for 1 s and {} for \
         3 s. Profiles: **cold start across a network** — quota-mock's \
         `NetworkProxy` with a 30 ms connect delay (a TLS handshake) and 5–25 ms one-way \
         latency, 20 per 1 s, 200 requests at 32 in flight, a fresh server, proxy, client \
         and stack for each of 5 cold starts (seeds 0–4); **1,000 in flight on loopback** — \
         100,000 requests at 1,000 in flight, 5,000 per 1 s, one run, a cold pool; **slow \
         provider across a network** — the same proxy, server processing 0.2–0.8 s after \
         its quota decision, 30 per 3 s, 150 requests at 32 in flight; **warm loopback** — \
         20 per 1 s, 200 requests at 32 in flight, the client's connections opened first on \
         a path outside the quota (the old baseline of `scenarios`).\n",
        show_ms(default_safety_margin(&one_second)),
        show_ms(default_safety_margin(&three_seconds)),
    )?;
    writeln!(
        body,
        "429s are counted at the server over all runs of the row (retries included: each \
         attempt is an arrival). \"Max arrived ÷ N\" is the most arrivals, accepted or \
         refused, in any window of the quota's length, worst run. Utilization is accepted ÷ \
         (quota × (span + window) ÷ window), span being the first to the last accepted \
         arrival, per run (min and median over the runs). \"Lost per turnover\" says where \
         utilization goes: each time the quota rolled over, how long the server went \
         without room on average, that is the span of accepted arrivals beyond \
         (⌈accepted ÷ N⌉ − 1) windows, divided by those turnovers (median run); a slot \
         held a window after its answer costs about one round trip plus the safety margin \
         there. Latency is per logical request, \
         from the call into the stack to the end of its body, over all runs of the row. \
         \"Failed\" counts logical requests that ended in an error or a non-2xx status. \
         Wall time is the median run's.\n"
    )?;
    writeln!(
        body,
        "| profile | mode | runs | arrivals | 429s | max arrived ÷ N | utilization min | utilization median | lost per turnover | p50 | p99 | failed | wall time |"
    )?;
    writeln!(
        body,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for row in rows {
        writeln!(
            body,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            row.profile,
            row.mode.name(),
            row.runs,
            row.arrivals,
            row.refused,
            row.max_arrived_ratio,
            row.utilization_min,
            row.utilization_median,
            row.lost_per_turnover
                .map_or_else(|| "—".to_owned(), show_ms),
            show_ms(row.p50),
            show_ms(row.p99),
            row.failed,
            show_ms(row.wall_median),
        )?;
    }
    writeln!(body)?;

    // The acceptance that these profiles measure: the default
    // mode, and strict mode's guarantee.
    writeln!(body, "| goal | measured | met? |")?;
    writeln!(body, "|---|---:|---|")?;
    let find = |profile: &str, mode: Mode| {
        rows.iter()
            .find(|row| row.profile == profile && row.mode == mode)
    };
    let targets = [
        (PROFILES[0].name, 0.95),
        (PROFILES[1].name, 0.97),
        (PROFILES[2].name, 0.95),
    ];
    for (profile, target) in targets {
        let Some(row) = find(profile, Mode::Default) else {
            continue;
        };
        let runs = if row.runs > 1 {
            format!(" ({} runs)", row.runs)
        } else {
            String::new()
        };
        goal(
            &mut body,
            &format!("{profile}, default mode: 0 × 429{runs}"),
            row.refused.to_string(),
            row.refused == 0,
            format!("{} × 429 in {} arrivals", row.refused, row.arrivals),
        )?;
        goal(
            &mut body,
            &format!("{profile}, default mode: utilization ≥ {target:.2}{runs}"),
            format!("{:.3} (min)", row.utilization_min),
            row.utilization_min >= target,
            format!("{:.3} below", target - row.utilization_min),
        )?;
    }
    for row in rows.iter().filter(|row| row.mode != Mode::FixedMargin) {
        goal(
            &mut body,
            &format!(
                "{}, {}: max arrived in any window ≤ N",
                row.profile,
                row.mode.name()
            ),
            format!("{:.3}", row.max_arrived_ratio),
            row.max_arrived_ratio <= 1.0,
            format!("{:.1}% over", (row.max_arrived_ratio - 1.0) * 100.0),
        )?;
    }
    writeln!(body)?;
    writeln!(
        body,
        "The goal is 20 of 20 clean cold starts; this command runs 5 per mode (the 20 run \
         in `tests/tests/network_e2e.rs`). The client, the proxy and the server share one \
         process and one machine, so the 1,000-in-flight profile also measures how late the \
         scheduler lets admitted tasks reach the server: under load (other builds on the \
         same 2 cores) its utilization drops, and the load average below says how busy the \
         machine was.\n"
    )?;
    writeln!(
        body,
        "Wall time of `network`: {:.0} s. Load average (1 min) of the machine: {load}.",
        wall.as_secs_f64()
    )?;
    Ok(body)
}
