//! Interactive latency under a saturating batch backlog: one FIFO queue
//! against priority classes (with and without a reserved share), through
//! the README stack against quota-mock's strict sliding log.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use quota_mock::{MockServer, Rule};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::replay::ReplayBody;
use tower_quota::sliding_window::{Place, PlaceFn, PlaceFromExtensions, Priority};
use tower_quota::{
    BoxError, HostKey, HttpFeedback, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer,
};

use crate::results;

const QUOTA: u64 = 20;
const WINDOW: Duration = Duration::from_secs(1);
/// Batch requests queued at the start: 15 s of the quota.
const BATCH: usize = 300;
/// Interactive requests, one every `EVERY` from `FIRST` on.
const INTERACTIVE: usize = 30;
const FIRST: Duration = Duration::from_millis(1000);
const EVERY: Duration = Duration::from_millis(370);

type Stack =
    BoxCloneService<http::Request<Empty<Bytes>>, http::Response<hyper::body::Incoming>, BoxError>;

#[derive(Clone, Copy)]
enum Mode {
    Fifo,
    Classes,
    Reserved,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fifo => "one FIFO queue (default)",
            Mode::Classes => "priority classes",
            Mode::Reserved => "priority classes, 10% reserved for interactive",
        }
    }
}

/// The README stack (as the README builds it, 30 s `max_wait`) with each
/// mode's place.
fn stack(mode: Mode) -> Result<Stack, BoxError> {
    type Inner = ReplayBody<ReplayBody<Empty<Bytes>>>;
    let client = Client::builder(TokioExecutor::new()).build_http::<Inner>();
    let pacing = SlidingWindowLayer::new(QUOTA, WINDOW)?
        .key_fn(HostKey)
        .usage_fn(HttpFeedback)
        .max_wait(Duration::from_secs(30));
    let place = move |request: &http::Request<Inner>| match mode {
        Mode::Fifo => Place::new(),
        Mode::Classes | Mode::Reserved => PlaceFromExtensions.place(request),
    };
    let pacing = pacing.place_fn(place);
    let pacing = match mode {
        Mode::Reserved => pacing.reserve(Priority::Interactive, 0.1)?,
        _ => pacing,
    };
    Ok(BoxCloneService::new(
        ServiceBuilder::new()
            .layer(JitterBackoffLayer::new())
            .layer(RetryAfterLayer::new().pace_by_quota_headers(false))
            .layer(pacing)
            .service(client)
            .map_err(Into::into),
    ))
}

struct Measured {
    interactive: Vec<Duration>,
    batch_done: Duration,
    refused: u64,
    arrivals: usize,
    max_in_window: usize,
}

async fn measure(mode: Mode) -> Result<Measured, BoxError> {
    let server = MockServer::builder()
        .rule(Rule::sliding_log(QUOTA, WINDOW))
        .start()
        .await?;
    let service = stack(mode)?;
    let url: http::Uri = format!("{}/v1/items", server.url()).parse()?;
    let start = Instant::now();
    let send = |priority: Priority| {
        let service = service.clone();
        let url = url.clone();
        async move {
            let mut request = http::Request::get(url).body(Empty::<Bytes>::new())?;
            request.extensions_mut().insert(priority);
            let sent = Instant::now();
            let response = service.oneshot(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            if !status.is_success() {
                return Err(format!("{status}").into());
            }
            Ok::<_, BoxError>(sent.elapsed())
        }
    };
    let batch: Vec<_> = (0..BATCH)
        .map(|_| tokio::spawn(send(Priority::Batch)))
        .collect();
    let mut interactive = Vec::new();
    for i in 0..INTERACTIVE {
        tokio::time::sleep_until(start + FIRST + EVERY * i as u32).await;
        interactive.push(tokio::spawn(send(Priority::Interactive)));
    }
    let mut latencies = Vec::new();
    for task in interactive {
        latencies.push(task.await??);
    }
    for task in batch {
        task.await??;
    }
    let batch_done = start.elapsed();
    let stats = server.stats();
    server.shutdown().await;
    let mut times: Vec<Duration> = stats.arrivals.iter().map(|a| a.at).collect();
    times.sort();
    let mut max_in_window = 0;
    let mut first = 0;
    for last in 0..times.len() {
        while times[first] + WINDOW <= times[last] {
            first += 1;
        }
        max_in_window = max_in_window.max(last - first + 1);
    }
    latencies.sort();
    Ok(Measured {
        interactive: latencies,
        batch_done,
        refused: stats.arrivals.iter().filter(|a| a.status == 429).count() as u64,
        arrivals: stats.arrivals.len(),
        max_in_window,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Runs the three modes, one after the other; writes the section.
pub(crate) async fn run() -> Result<(), BoxError> {
    let mut body = String::new();
    writeln!(
        body,
        "{BATCH} batch requests are queued at once through the README stack \
         (`SlidingWindowLayer` {QUOTA}/{WINDOW:?}, defaults, 30 s `max_wait`) against \
         quota-mock's strict sliding log of the same quota: {} s of work. From {FIRST:?} \
         on, an interactive request arrives every {EVERY:?} ({INTERACTIVE} in all). \
         Latency is the interactive request's, at the client, from its call to its \
         response; 429s and the busiest window are quota-mock's count of every arrival.\n",
        BATCH as u64 / QUOTA
    )?;
    writeln!(
        body,
        "| queue | interactive p50 | p99 | max | batch done after | arrivals | 429s | max in any window |"
    )?;
    writeln!(body, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for mode in [Mode::Fifo, Mode::Classes, Mode::Reserved] {
        println!("priority: {}", mode.name());
        let m = measure(mode).await?;
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        writeln!(
            body,
            "| {} | {} | {} | {} | {:.1} s | {} | {} | {} |",
            mode.name(),
            ms(percentile(&m.interactive, 0.5)),
            ms(percentile(&m.interactive, 0.99)),
            ms(m.interactive.last().copied().unwrap_or_default()),
            m.batch_done.as_secs_f64(),
            m.arrivals,
            m.refused,
            m.max_in_window,
        )?;
    }
    writeln!(
        body,
        "\nWith one FIFO queue an interactive request waits behind the whole backlog \
         queued before it. With classes it goes at the next slot that frees (slots of a \
         saturated sliding log free in bursts, up to a window apart). With a share \
         reserved, batch leaves two slots of each window free and an interactive request \
         finds one at once; batch then runs at up to 18/s while interactive leaves the \
         reserve unused, so it finishes a little later.\n"
    )?;
    results::write_section("priority", &body)
}
