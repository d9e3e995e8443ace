//! A tonic client whose `Channel` is wrapped by the stack, against a server
//! that pushes back with `RESOURCE_EXHAUSTED`.
//!
//! ```text
//! cargo run -p tower-quota-examples --example tonic_client
//! cargo run -p tower-quota-examples --example tonic_client -- --calls 20 --refuse-first 10 --pushback 500ms
//! ```
//!
//! A gRPC server that is out of quota answers `RESOURCE_EXHAUSTED` (status
//! 8) and may say when to come back in `grpc-retry-pushback-ms` (gRPC retry
//! design A6). tonic's `Channel` is a tower service of `http::Request`s, so
//! the tower-quota layers wrap it like any HTTP client; only the classifier
//! changes, to [`GrpcClassifier`], which reads the status of trailers-only
//! responses:
//!
//! ```text
//! JitterBackoffLayer(GrpcClassifier) → RetryAfterLayer → SlidingWindowLayer
//!     → timeout → map_request(tonic::body::Body::new) → Channel
//! ```
//!
//! The generated client (`HealthClient`, from tonic-health, so no protoc is
//! needed) takes the stack where it would take the `Channel`. The retrying
//! layers make the request body replayable (`ReplayBody`, which also makes
//! tonic's `!Sync` body `Sync`); `map_request` turns it back into a
//! `tonic::body::Body` for the `Channel`.
//!
//! The in-process server is tonic-health's, behind a middleware that refuses
//! the first calls with `RESOURCE_EXHAUSTED` and a 300 ms pushback and
//! records when each attempt arrived. Every call ends `SERVING`, and no
//! refused call came back before its pushback had passed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use tokio::time::Instant;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceBuilder};
use tower_quota::classify::GrpcClassifier;
use tower_quota::replay::ReplayBody;
use tower_quota::{BoxError, JitterBackoffLayer, RetryAfterLayer, SlidingWindowLayer};
use tower_quota_examples::common;
use tower_quota_quickstart::human;

/// The metadata key that tells the server which call an attempt belongs to.
const CALL_ID: &str = "x-call-id";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many unary `Check` calls to make, all at once.
    pub calls: usize,
    /// How many attempts the server refuses before it serves.
    pub refuse_first: usize,
    /// The pushback the server asks for when it refuses.
    pub pushback: Duration,
    /// The client's pacing quota: at most `quota` calls in any `window`.
    pub quota: u64,
    /// The length of the quota's window.
    pub window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            calls: 8,
            refuse_first: 4,
            pushback: Duration::from_millis(300),
            quota: 50,
            window: Duration::from_secs(1),
        }
    }
}

/// One attempt as the server saw it.
#[derive(Debug, Clone)]
pub struct ServerArrival {
    /// The call it belongs to (the client's `x-call-id`).
    pub call_id: String,
    /// When it arrived, from the server's start.
    pub at: Duration,
    /// Whether it was refused with `RESOURCE_EXHAUSTED`.
    pub refused: bool,
    /// The client's `grpc-previous-rpc-attempts`, if it sent one.
    pub previous_attempts: Option<u32>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Calls made.
    pub calls: usize,
    /// Calls that returned `SERVING`.
    pub serving: usize,
    /// Attempts the server refused with `RESOURCE_EXHAUSTED`.
    pub refused: usize,
    /// Calls refused at least once.
    pub refused_calls: usize,
    /// Refused calls whose last attempt was served.
    pub retried_to_success: usize,
    /// The shortest time, at the server, between a refusal and the next
    /// attempt of the same call.
    pub shortest_wait_after_refusal: Option<Duration>,
    /// Every attempt, in arrival order.
    pub arrivals: Vec<ServerArrival>,
    /// The options that were run.
    pub options: Options,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// Checks the outcome: every call ended `SERVING`, every refused call
    /// was retried to success, and never before the pushback had passed.
    pub fn verify(&self) -> Result<(), String> {
        if self.serving != self.calls {
            return Err(format!(
                "{} of {} calls were served",
                self.serving, self.calls
            ));
        }
        let expected_refusals = self.options.refuse_first.min(self.calls);
        if self.refused != expected_refusals {
            return Err(format!(
                "the server refused {} attempts, expected {expected_refusals}",
                self.refused
            ));
        }
        if self.retried_to_success != self.refused_calls {
            return Err(format!(
                "{} of {} refused calls were retried to success",
                self.retried_to_success, self.refused_calls
            ));
        }
        if let Some(wait) = self.shortest_wait_after_refusal
            && wait < self.options.pushback
        {
            return Err(format!(
                "a refused call came back after {}, before its pushback of {}",
                humantime::format_duration(wait),
                humantime::format_duration(self.options.pushback)
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "calls                     {}", self.calls)?;
        writeln!(f, "SERVING                   {}", self.serving)?;
        writeln!(
            f,
            "RESOURCE_EXHAUSTED        {} (pushback {})",
            self.refused,
            human(self.options.pushback)
        )?;
        writeln!(
            f,
            "refused calls             {} ({} retried to success)",
            self.refused_calls, self.retried_to_success
        )?;
        if let Some(wait) = self.shortest_wait_after_refusal {
            writeln!(f, "shortest wait at server   {}", human(wait))?;
        }
        writeln!(f, "attempts at the server:")?;
        for arrival in &self.arrivals {
            writeln!(
                f,
                "  {:>9.1?}  call {:<3} previous attempts {}  {}",
                arrival.at,
                arrival.call_id,
                arrival.previous_attempts.unwrap_or(0),
                if arrival.refused {
                    "RESOURCE_EXHAUSTED"
                } else {
                    "OK"
                }
            )?;
        }
        write!(f, "elapsed                   {}", human(self.elapsed))
    }
}

/// Server middleware: refuses the first `refuse_first` attempts with a
/// trailers-only `RESOURCE_EXHAUSTED` and `grpc-retry-pushback-ms`, then
/// passes calls through; records every attempt.
#[derive(Debug, Clone)]
pub struct PushbackLayer {
    shared: Arc<PushbackState>,
}

#[derive(Debug)]
struct PushbackState {
    refuse_first: usize,
    pushback: Duration,
    started: Instant,
    arrivals: Mutex<Vec<ServerArrival>>,
}

impl PushbackLayer {
    /// Refuses the first `refuse_first` attempts, asking for `pushback`.
    pub fn new(refuse_first: usize, pushback: Duration) -> Self {
        PushbackLayer {
            shared: Arc::new(PushbackState {
                refuse_first,
                pushback,
                started: Instant::now(),
                arrivals: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Every attempt so far, in arrival order.
    pub fn arrivals(&self) -> Vec<ServerArrival> {
        self.shared
            .arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<S> Layer<S> for PushbackLayer {
    type Service = Pushback<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pushback {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of [`PushbackLayer`].
#[derive(Debug, Clone)]
pub struct Pushback<S> {
    inner: S,
    shared: Arc<PushbackState>,
}

impl<S, B> Service<http::Request<B>> for Pushback<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let refused = {
            let mut arrivals = self
                .shared
                .arrivals
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let refused = arrivals.len() < self.shared.refuse_first;
            arrivals.push(ServerArrival {
                call_id: header(CALL_ID).unwrap_or_default(),
                at: self.shared.started.elapsed(),
                refused,
                previous_attempts: header("grpc-previous-rpc-attempts")
                    .and_then(|value| value.parse().ok()),
            });
            refused
        };
        if refused {
            // Trailers-only: the status is in the headers and the body is empty.
            let response = http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", "8")
                .header("grpc-message", "quota exhausted")
                .header(
                    "grpc-retry-pushback-ms",
                    self.shared.pushback.as_millis().to_string(),
                )
                .body(tonic::body::Body::empty())
                .expect("static headers are valid");
            return Box::pin(std::future::ready(Ok(response)));
        }
        Box::pin(self.inner.call(request))
    }
}

/// A running health server on a loopback port.
#[derive(Debug)]
pub struct RunningServer {
    /// The server's address.
    pub addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Serves tonic-health's service behind `pushback` on `127.0.0.1` at a
    /// free port.
    pub async fn start(pushback: PushbackLayer) -> Result<Self, BoxError> {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming =
            tonic::transport::server::TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = incoming.local_addr()?;
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .layer(pushback)
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.await;
                }),
        );
        Ok(RunningServer {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops the server.
    pub async fn stop(self) -> Result<(), BoxError> {
        let _ = self.shutdown.send(());
        self.task.await??;
        Ok(())
    }
}

/// Starts the server, makes `options.calls` unary calls at once through the
/// stack, and reports what the server saw.
pub async fn run(options: Options) -> Result<Summary, BoxError> {
    let pushback = PushbackLayer::new(options.refuse_first, options.pushback);
    let server = RunningServer::start(pushback.clone()).await?;

    let channel = Channel::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await?;
    let stack = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .classifier(GrpcClassifier)
                // Every gRPC call is a POST; Check is idempotent, so retry it.
                .retry_all_methods()
                .backoff(Duration::from_millis(50), Duration::from_secs(1))?
                .max_attempts(4)?,
        )
        .layer(RetryAfterLayer::new())
        .layer(SlidingWindowLayer::new(options.quota, options.window)?)
        .timeout(Duration::from_secs(5))
        .map_request(
            |request: http::Request<ReplayBody<ReplayBody<tonic::body::Body>>>| {
                request.map(tonic::body::Body::new)
            },
        )
        .service(channel);
    let client = HealthClient::new(stack);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for call in 0..options.calls {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            request.metadata_mut().insert(CALL_ID, call.into());
            client.check(request).await
        });
    }
    let mut serving = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(response) if response.get_ref().status() == ServingStatus::Serving => serving += 1,
            Ok(response) => tracing::warn!(status = ?response.get_ref().status(), "not serving"),
            Err(status) => tracing::warn!(%status, "call failed"),
        }
    }
    let elapsed = started.elapsed();
    server.stop().await?;

    let arrivals = pushback.arrivals();
    let mut by_call: BTreeMap<&str, Vec<&ServerArrival>> = BTreeMap::new();
    for arrival in &arrivals {
        by_call.entry(&arrival.call_id).or_default().push(arrival);
    }
    let mut refused_calls = 0;
    let mut retried_to_success = 0;
    let mut shortest_wait_after_refusal: Option<Duration> = None;
    for attempts in by_call.values() {
        if attempts.iter().any(|attempt| attempt.refused) {
            refused_calls += 1;
            if attempts.last().is_some_and(|last| !last.refused) {
                retried_to_success += 1;
            }
        }
        for pair in attempts.windows(2) {
            if pair[0].refused {
                let wait = pair[1].at.saturating_sub(pair[0].at);
                shortest_wait_after_refusal =
                    Some(shortest_wait_after_refusal.map_or(wait, |shortest| shortest.min(wait)));
            }
        }
    }
    Ok(Summary {
        calls: options.calls,
        serving,
        refused: arrivals.iter().filter(|arrival| arrival.refused).count(),
        refused_calls,
        retried_to_success,
        shortest_wait_after_refusal,
        arrivals,
        options,
        elapsed,
    })
}

/// A tonic client behind the stack, against a server that refuses its
/// first attempts with RESOURCE_EXHAUSTED; a flag left out keeps its default.
#[derive(Debug, Parser)]
#[command(name = "tonic_client")]
struct Flags {
    /// How many unary Check calls to make, all at once.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    calls: Option<usize>,
    /// How many attempts the server refuses before it serves.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    refuse_first: Option<usize>,
    /// The pushback the server asks for when it refuses, e.g. 300ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pushback: Option<Duration>,
}

impl From<Flags> for Options {
    fn from(flags: Flags) -> Self {
        let default = Options::default();
        Options {
            calls: flags.calls.unwrap_or(default.calls),
            refuse_first: flags.refuse_first.unwrap_or(default.refuse_first),
            pushback: flags.pushback.unwrap_or(default.pushback),
            ..default
        }
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    common::main(Flags::parse().into(), run, Summary::verify).await
}
