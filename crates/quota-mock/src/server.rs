//! The server handle, its builder, and the accept loop.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderName;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cost::CostConfig;
use crate::fault::{Fault, Latency, Scripted};
use crate::handler::{Shared, handle};
use crate::headers::{HeaderConfig, HeaderDialect, RetryAfterFormat};
use crate::host::Host;
use crate::key::KeyBy;
use crate::rule::Rule;
use crate::stats::Stats;

/// How long [`MockServer::shutdown`] lets in-flight requests finish before
/// cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Configures and starts a [`MockServer`]; see [`MockServer::builder`].
#[derive(Debug, Clone)]
pub struct MockServerBuilder {
    rules: Vec<Rule>,
    key_by: KeyBy,
    headers: HeaderConfig,
    costs: CostConfig,
    faults: Vec<Fault>,
    scripted: Vec<Scripted>,
    processing: Option<Latency>,
    addr: SocketAddr,
    seed: Option<u64>,
    host: Host,
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        MockServerBuilder {
            rules: Vec::new(),
            key_by: KeyBy::default(),
            headers: HeaderConfig::default(),
            costs: CostConfig::default(),
            faults: Vec::new(),
            scripted: Vec::new(),
            processing: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: None,
            host: Host::Own,
        }
    }
}

impl MockServerBuilder {
    /// Adds a quota rule. Every rule is enforced; without rules every
    /// request is admitted.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// How requests are grouped into separate quotas (default
    /// [`KeyBy::Global`]).
    pub fn key_by(mut self, key_by: KeyBy) -> Self {
        self.key_by = key_by;
        self
    }

    /// Which quota headers responses carry (default
    /// [`HeaderDialect::XRateLimit`]), for every key without its own
    /// dialect.
    pub fn headers(mut self, dialect: HeaderDialect) -> Self {
        self.headers.dialect = dialect;
        self
    }

    /// Which quota headers responses to one quota key carry (see
    /// [`KeyBy`] for what the key is), overriding
    /// [`headers`](Self::headers) for that key. Lets one server play several
    /// providers at once.
    ///
    /// ```
    /// use http::HeaderName;
    /// use quota_mock::{HeaderDialect, KeyBy, MockServer};
    ///
    /// let builder = MockServer::builder()
    ///     .key_by(KeyBy::Header(HeaderName::from_static("x-api-key")))
    ///     .headers(HeaderDialect::XRateLimit)
    ///     .headers_for_key("openai-tenant", HeaderDialect::OpenAi);
    /// # drop(builder);
    /// ```
    pub fn headers_for_key(mut self, key: impl Into<String>, dialect: HeaderDialect) -> Self {
        self.headers.per_key.insert(key.into(), dialect);
        self
    }

    /// Whether quota 429s carry `Retry-After` (default `true`).
    ///
    /// With `false` a refused client learns when to retry only from the
    /// quota headers (`Remaining: 0` and the reset), like a provider that
    /// sends only `X-RateLimit-*` or IETF `RateLimit` fields. Scripted and
    /// fault responses keep the `Retry-After` they were configured with.
    pub fn retry_after(mut self, enabled: bool) -> Self {
        self.headers.omit_retry_after_on_429 = !enabled;
        self
    }

    /// How every `Retry-After` the server sends states its delay (default
    /// [`RetryAfterFormat::Seconds`]).
    pub fn retry_after_format(mut self, format: RetryAfterFormat) -> Self {
        self.headers.retry_after_format = format;
        self
    }

    /// The request header that declares a request's cost (default
    /// `x-cost`), spent by [weighted](Rule#weighted-rules) rules.
    ///
    /// A missing header, or one that is not a whole number, means cost 1.
    /// A cost of 0 is admitted by every weighted rule, even an overdrawn
    /// one, and spends nothing. A cost above a weighted rule's whole limit
    /// could never be admitted: it is refused with 429 *without*
    /// `Retry-After` (and the body's `error` is `cost_exceeds_limit`), since
    /// no wait would help; it consumes nothing (but is counted by
    /// [sliding window counters](crate::Mode::SlidingWindowCounter), which
    /// count every request) and is recorded as
    /// [`Outcome::Refused`](crate::Outcome::Refused). Quota headers still
    /// describe the rules. A client should refuse such a request itself
    /// rather than send it.
    pub fn cost_header(mut self, name: HeaderName) -> Self {
        self.costs.cost_header = name;
        self
    }

    /// The request header that states what a request *really* cost (default
    /// `x-actual-cost`).
    ///
    /// Admission is decided on the declared cost; an admitted request that
    /// carries this header (a whole number) is then charged its value
    /// instead, in the window where it was admitted, as a provider bills the
    /// tokens a reply really used. This lets a test play the provider whose
    /// usage differs from the client's estimate: an actual cost above the
    /// estimate can overdraw a rule (it then admits nothing until the excess
    /// has left), one below it frees the difference. The charge is recorded
    /// as [`Arrival::cost`](crate::Arrival::cost) and echoed in the
    /// [`usage_header`](Self::usage_header).
    pub fn actual_cost_header(mut self, name: HeaderName) -> Self {
        self.costs.actual_cost_header = name;
        self
    }

    /// Makes every admitted response state the amount it was charged (the
    /// actual cost if given, else the declared cost) in header `name`, e.g.
    /// `x-usage: 180`, so a client can correct its estimate from the
    /// response. Off by default; refused, scripted and reset requests were
    /// charged nothing and carry no such header.
    pub fn usage_header(mut self, name: HeaderName) -> Self {
        self.costs.usage_header = Some(name);
        self
    }

    /// Adds a fault; may be called several times.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Queues a scripted response for the first requests after start.
    pub fn scripted(mut self, scripted: Scripted) -> Self {
        self.scripted.push(scripted);
        self
    }

    /// Makes every admitted request take a processing time drawn uniformly
    /// from `[min, max]`, as a provider spends time doing the work: the
    /// response is sent that long after the request was read. Refused and
    /// scripted requests are answered without it. The arrival is still
    /// recorded at the instant the request head arrived, and the quota
    /// decision is taken at that instant, before the processing time.
    ///
    /// Unlike [`Fault::Latency`], which delays *every* response (429s and
    /// scripted ones included), this is what a successful call costs, so a
    /// client's concurrency, not only its pacing, decides its throughput.
    /// Both may be combined; the delays add up. `min == max` gives a fixed
    /// time; `min > max` makes [`start`](Self::start) fail with
    /// [`io::ErrorKind::InvalidInput`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use quota_mock::MockServer;
    ///
    /// let builder = MockServer::builder()
    ///     .processing(Duration::from_millis(200), Duration::from_millis(800));
    /// # drop(builder);
    /// ```
    pub fn processing(mut self, min: Duration, max: Duration) -> Self {
        self.processing = Some(Latency::Uniform { min, max });
        self
    }

    /// The address to listen on (default `127.0.0.1:0`, a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Seeds the fault RNG so a sequence of requests meets the same faults
    /// on every run. Unseeded servers draw a seed from the OS.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Serves from the runtime that calls [`start`](Self::start) instead of
    /// quota-mock's own.
    ///
    /// By default every server and [proxy](crate::NetworkProxy) of a
    /// process runs on one tokio runtime of quota-mock's own (a worker
    /// thread per core, at most four, started on first use), as a provider
    /// runs on another machine: its clock, its accept loop and its handlers
    /// do not wait for the client's tasks. On the client's runtime, a client
    /// that keeps a thousand requests in flight on two cores would delay
    /// the server's reading of them, and the server would count arrivals
    /// later than a provider does.
    ///
    /// Needed under tokio's paused clock (`#[tokio::test(start_paused =
    /// true)]`): the clock is paused per runtime, and the server then
    /// follows the test's clock.
    pub fn on_caller_runtime(mut self) -> Self {
        self.host = Host::Caller;
        self
    }

    /// Binds the listener and starts serving HTTP/1.1 and h2c.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] for a rule with a zero
    /// limit or window, a fault fraction outside `[0, 1]`, or a
    /// [processing](Self::processing) time whose `min` exceeds its `max`;
    /// otherwise with the bind error.
    pub async fn start(self) -> io::Result<MockServer> {
        for rule in &self.rules {
            rule.validate()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        validate_faults(&self.faults)?;
        if let Some(Latency::Uniform { min, max }) = self.processing
            && min > max
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("processing time: min {min:?} exceeds max {max:?}"),
            ));
        }
        let handle = self.host.handle()?;
        let listener = Host::listen(&handle, self.addr)?;
        let addr = listener.local_addr()?;
        let rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let shared = Arc::new(
            Shared::new(
                Instant::now(),
                self.rules,
                self.key_by,
                self.headers,
                self.faults,
                self.scripted,
                rng,
            )
            .with_costs(self.costs)
            .with_processing(self.processing),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let executor = TrackedExecutor::default();
        let connections = Arc::new(AtomicU64::new(0));
        let accept_task = handle.spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            shutdown_rx,
            executor.clone(),
            Arc::clone(&connections),
        ));
        tracing::debug!(%addr, "quota-mock listening");
        Ok(MockServer {
            addr,
            shared,
            shutdown,
            accept_task: Some(accept_task),
            executor,
            connections,
        })
    }
}

fn validate_faults(faults: &[Fault]) -> io::Result<()> {
    for fault in faults {
        fault
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    Ok(())
}

/// A running mock server. Dropping it stops the server at once (every task
/// it spawned is aborted); [`MockServer::shutdown`] stops it gracefully.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    executor: TrackedExecutor,
    connections: Arc<AtomicU64>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("key_by", &self.shared.key_by)
            .field("headers", self.shared.headers.config())
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// A builder with no rules, [`KeyBy::Global`], the
    /// [`HeaderDialect::XRateLimit`] headers, no faults, on `127.0.0.1:0`.
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder::default()
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The instant (on tokio's clock) that [`Arrival::at`](crate::Arrival::at)
    /// counts from: an arrival happened at `started_at() + arrival.at`, so
    /// it can be compared with instants a client took.
    pub fn started_at(&self) -> Instant {
        self.shared.start
    }

    /// A snapshot of every recorded arrival and the compliance numbers.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// How many TCP connections the server has accepted since it started
    /// (not reset by [`reset`](Self::reset)): what a client's connection
    /// count can be checked against.
    pub fn connections_accepted(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Queues scripted responses; they are served, in order, before any
    /// quota check.
    pub fn script(&self, scripted: Scripted) {
        self.shared.script(scripted);
    }

    /// Replaces the faults for requests that arrive from now on. Fails with
    /// [`io::ErrorKind::InvalidInput`] (and changes nothing) for a fraction
    /// outside `[0, 1]`.
    pub fn set_faults(&self, faults: Vec<Fault>) -> io::Result<()> {
        validate_faults(&faults)?;
        self.shared.set_faults(faults);
        Ok(())
    }

    /// Changes the limit of the rule at `rule` (its position in
    /// configuration order) for requests that arrive from now on, as a
    /// provider that raises or lowers a quota at run time; returns the
    /// changed rule. Also served as
    /// `POST /__quota/limit?rule=INDEX&limit=LIMIT`.
    ///
    /// What is in use stays in use: a raised limit admits the difference at
    /// once, a lowered one refuses until enough use has left. A token
    /// bucket keeps the tokens it lacks, refills at the old rate until now
    /// and at the new one after;
    /// GCRA's next interval is the new `window / limit`. [`Stats`] report
    /// the rule with its current limit. Fails with
    /// [`io::ErrorKind::InvalidInput`], changing nothing, for an index out
    /// of range or a zero limit.
    pub fn set_limit(&self, rule: usize, limit: u64) -> io::Result<Rule> {
        self.shared
            .set_limit(rule, limit)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    /// Forgets every arrival and all quota state (as `POST /__quota/reset`).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting connections, lets in-flight requests finish (for up
    /// to a few seconds), closes idle connections, and waits until every
    /// task has ended.
    pub async fn shutdown(mut self) {
        // A send error means the accept loop is gone already.
        let _ = self.shutdown.send(true);
        if let Some(task) = self.accept_task.take() {
            // The accept loop never panics on network input; a join error
            // can only be a cancellation, which also means it stopped.
            let _ = task.await;
        }
        self.executor.abort_all();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            // Aborting the accept loop drops the listener and its JoinSet of
            // connection tasks, which aborts them too.
            task.abort();
        }
        self.executor.abort_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    executor: TrackedExecutor,
    connections_accepted: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections_accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(serve_connection(
                        stream,
                        Arc::clone(&shared),
                        shutdown.clone(),
                        executor.clone(),
                    ));
                }
                Err(error) => {
                    // Usually running out of file descriptors: back off
                    // instead of spinning.
                    tracing::debug!(%error, "quota-mock accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    executor: TrackedExecutor,
) {
    // Latency matters more than throughput for a test server.
    let _ = stream.set_nodelay(true);
    let builder = auto::Builder::new(executor);
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Client hang-ups and injected resets end up here.
        tracing::debug!(%error, "quota-mock connection ended with an error");
    }
}

/// Spawns hyper's HTTP/2 stream tasks into a set the server owns, so that
/// dropping the server leaves no task behind.
#[derive(Debug, Clone, Default)]
struct TrackedExecutor {
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl TrackedExecutor {
    fn lock(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn abort_all(&self) {
        self.lock().abort_all();
    }
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let mut tasks = self.lock();
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(future);
    }
}
