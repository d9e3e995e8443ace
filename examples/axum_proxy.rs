//! An axum egress proxy that enforces each provider's quota for every client
//! behind it: the single-proxy pattern.
//!
//! ```text
//! cargo run -p tower-quota-examples --example axum_proxy
//! cargo run -p tower-quota-examples --example axum_proxy -- --clients 32 --requests-per-client 5
//! cargo run -p tower-quota-examples --example axum_proxy -- --serve     # then: curl http://ADDR/alpha/v1/items
//! ```
//!
//! When many processes (workers, jobs, services) call the same rate-limited
//! providers, a limiter in each of them cannot know what the others spend.
//! One egress proxy in front of the providers can: every outgoing call goes
//! through it, and it holds one tower-quota stack per provider, shared by all
//! incoming connections. Clients call `http://proxy/{provider}/{path}`; the
//! proxy strips the provider prefix, paces and retries the call with that
//! provider's settings, and forwards it upstream:
//!
//! ```text
//! client ─┐                       ┌─ /alpha/… → JitterBackoff → RetryAfter → SlidingWindow(20/s) → alpha
//! client ─┼─→ axum proxy (Router) ┤
//! client ─┘                       └─ /beta/…  → JitterBackoff → RetryAfter → SlidingWindow(10/s) → beta
//! ```
//!
//! The run starts two in-process `quota-mock` providers with different
//! quotas, the proxy, and many concurrent clients, each with its own
//! connections. The providers record every arrival: none is refused,
//! however the clients' calls interleave. A call that would wait longer than
//! `max_wait` for its provider's quota is answered at once with `503` and a
//! `Retry-After`, instead of piling up in the proxy.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use http::header::{self, HeaderName};
use http::{HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use quota_mock::{Fault, HeaderDialect, MockServer, Rule};
use tower::util::{BoxCloneSyncService, Either};
use tower::{ServiceBuilder, ServiceExt};
use tower_quota::replay::ReplayBody;
use tower_quota::sliding_window::Overloaded;
use tower_quota::{BoxError, JitterBackoffLayer, RetryAfterLayer};
use tower_quota_examples::common;
use tower_quota_quickstart::human;
use tower_quota_redis::RedisStore;

/// One upstream provider and the quota the proxy enforces for it.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The path prefix clients use: `/{name}/...`.
    pub name: String,
    /// At most `max_calls` calls in any `window`, for all clients together.
    pub max_calls: u64,
    /// The length of the quota's window.
    pub window: Duration,
    /// The most attempts per call, retries included.
    pub max_attempts: u32,
    /// The longest a call may wait for quota before the proxy answers `503`.
    pub max_wait: Duration,
    /// Extra time each admission is held past the window (`None`: the
    /// library's default). Loopback tests on a busy CI machine raise it, as
    /// a client should across a network with jitter.
    pub safety_margin: Option<Duration>,
}

impl Provider {
    /// A provider named `name` allowing `max_calls` per `window`, with the
    /// proxy's default retry settings.
    pub fn new(name: &str, max_calls: u64, window: Duration) -> Self {
        Provider {
            name: name.to_owned(),
            max_calls,
            window,
            max_attempts: 4,
            max_wait: Duration::from_secs(30),
            safety_margin: None,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The providers behind the proxy, each started as an in-process
    /// `quota-mock` enforcing the same quota.
    pub providers: Vec<Provider>,
    /// How many clients call through the proxy at once, each on its own
    /// connections.
    pub clients: usize,
    /// How many calls each client makes, one after another, to the
    /// providers in turn.
    pub requests_per_client: usize,
    /// The fraction of admitted calls the providers answer with `503`.
    pub error_rate: f64,
    /// The seed of the providers' fault injection.
    pub seed: u64,
    /// Keep the quotas in Redis at this URL, so that several proxies share
    /// them (`None`: in this process).
    pub redis: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            providers: vec![
                Provider::new("alpha", 20, Duration::from_secs(1)),
                Provider::new("beta", 10, Duration::from_secs(1)),
            ],
            clients: 16,
            requests_per_client: 6,
            error_rate: 0.02,
            seed: 3,
            redis: None,
        }
    }
}

/// What one provider saw.
#[derive(Debug, Clone)]
pub struct ProviderSummary {
    /// The provider's name.
    pub name: String,
    /// Its quota.
    pub max_calls: u64,
    /// Its window.
    pub window: Duration,
    /// Calls the clients sent to it through the proxy.
    pub calls: usize,
    /// Requests it received, retries included.
    pub attempts: u64,
    /// Requests it accepted.
    pub accepted: u64,
    /// `429`s: requests it refused for its quota.
    pub refused: u64,
    /// `503`s it injected (retried by the proxy).
    pub server_errors: u64,
    /// The most it accepted in any window.
    pub max_in_window: u64,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Calls the clients made.
    pub calls: usize,
    /// Calls answered `2xx` by the proxy.
    pub succeeded: usize,
    /// Each provider's records.
    pub providers: Vec<ProviderSummary>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// `GET /metrics` after the run: the layers' series, as Prometheus
    /// scrapes them.
    pub metrics: String,
}

impl Summary {
    /// Checks the outcome: every call succeeded, and no provider refused a
    /// request or accepted more than its quota in any window.
    pub fn verify(&self) -> Result<(), String> {
        if self.succeeded != self.calls {
            return Err(format!(
                "{} of {} calls succeeded",
                self.succeeded, self.calls
            ));
        }
        for provider in &self.providers {
            if provider.refused != 0 {
                return Err(format!(
                    "{} refused {} requests",
                    provider.name, provider.refused
                ));
            }
            if provider.max_in_window > provider.max_calls {
                return Err(format!(
                    "{} accepted {} in one window, over its quota of {}",
                    provider.name, provider.max_in_window, provider.max_calls
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "calls through the proxy  {} ({} succeeded)",
            self.calls, self.succeeded
        )?;
        writeln!(
            f,
            "provider  quota     calls  attempts  429s  503s retried  max in window"
        )?;
        for p in &self.providers {
            writeln!(
                f,
                "{:<9} {:>3}/{:<5} {:>5}  {:>8}  {:>4}  {:>12}  {:>13}",
                p.name,
                p.max_calls,
                human(p.window).to_string(),
                p.calls,
                p.attempts,
                p.refused,
                p.server_errors,
                p.max_in_window
            )?;
        }
        write!(f, "elapsed                  {}", human(self.elapsed))
    }
}

/// The body the proxy sends upstream: the client's body, made replayable
/// by the two retrying layers.
type UpstreamBody = ReplayBody<ReplayBody<axum::body::Body>>;

/// One provider's stack, boxed so that every provider has the same type.
type Upstream = BoxCloneSyncService<
    http::Request<axum::body::Body>,
    http::Response<hyper::body::Incoming>,
    BoxError,
>;

/// A provider's route: where it is, and the stack that paces calls to it.
#[derive(Clone)]
struct Route {
    upstream: String,
    service: Upstream,
}

/// The proxy's state, cloned into every connection: the stacks inside share
/// their limiters, so all clients spend one quota per provider.
#[derive(Clone)]
struct Proxy {
    routes: Arc<HashMap<String, Route>>,
}

/// The stack for one provider, around the proxy's shared client.
fn provider_stack(
    provider: &Provider,
    client: Client<HttpConnector, UpstreamBody>,
    store: Option<&RedisStore>,
) -> Result<Upstream, BoxError> {
    // Each provider's quota has its own key, so that providers never share
    // one even in a shared store.
    let name = provider.name.clone();
    let pacing = common::pacing(provider.max_calls, provider.window, provider.safety_margin)?
        .max_wait(provider.max_wait)
        .key_fn(move |_: &http::Request<_>| name.clone());
    let pacing = match store {
        Some(store) => Either::Left(pacing.store(store.clone())),
        None => Either::Right(pacing),
    };
    let stack = ServiceBuilder::new()
        .layer(
            JitterBackoffLayer::new()
                .backoff(Duration::from_millis(50), Duration::from_secs(1))?
                .max_attempts(provider.max_attempts)?,
        )
        .layer(RetryAfterLayer::new().max_wait(provider.max_wait))
        .layer(pacing)
        .timeout(Duration::from_secs(10))
        .service(client);
    Ok(BoxCloneSyncService::new(stack))
}

/// The proxy's router: `/{provider}/{*path}` goes to that provider's stack,
/// and `GET /metrics` serves every layer's metrics to Prometheus.
/// `upstreams` maps each provider's name to its base URL.
pub fn router(
    providers: &[Provider],
    upstreams: &HashMap<String, String>,
    store: Option<&RedisStore>,
) -> Result<Router, BoxError> {
    // The recorder goes in before the first request is counted.
    prometheus();
    // One connection pool for all providers; one limiter per provider.
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let mut routes = HashMap::new();
    for provider in providers {
        let upstream = upstreams
            .get(&provider.name)
            .ok_or_else(|| format!("no upstream URL for provider {}", provider.name))?;
        let route = Route {
            upstream: upstream.trim_end_matches('/').to_owned(),
            service: provider_stack(provider, client.clone(), store)?,
        };
        routes.insert(provider.name.clone(), route);
    }
    let proxy = Proxy {
        routes: Arc::new(routes),
    };
    Ok(Router::new()
        .route("/metrics", get(metrics))
        .route("/{provider}/{*path}", any(forward))
        .with_state(proxy))
}

/// The Prometheus handle of this process: the recorder every layer's
/// metrics go to, installed on first use (a process has one global
/// recorder; if another was installed first, the handle renders nothing).
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            tower_quota::metrics::describe();
        }
        handle
    })
}

/// `GET /metrics`: every series of the proxy's layers, in Prometheus' text
/// format.
async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus().render(),
    )
        .into_response()
}

/// Headers that describe one hop, not the request: never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

async fn forward(
    State(proxy): State<Proxy>,
    Path((provider, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Some(route) = proxy.routes.get(&provider) else {
        return (StatusCode::NOT_FOUND, format!("no provider {provider}\n")).into_response();
    };
    let (mut parts, body) = request.into_parts();
    let query = parts
        .uri
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    parts.uri = match format!("{}/{path}{query}", route.upstream).parse::<Uri>() {
        Ok(uri) => uri,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad path\n").into_response(),
    };
    // The client sets Host from the upstream URI.
    parts.headers.remove(header::HOST);
    for name in &HOP_BY_HOP {
        parts.headers.remove(name);
    }

    match route
        .service
        .clone()
        .oneshot(http::Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response.map(axum::body::Body::new),
        Err(error) => {
            if let Some(overloaded) = error.downcast_ref::<Overloaded>() {
                // The quota is booked further ahead than max_wait: say when to come back.
                let seconds = overloaded.wait().as_secs_f64().ceil().max(1.0);
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "provider quota exhausted\n",
                )
                    .into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("{seconds}")) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
            tracing::warn!(provider, %error, "upstream call failed");
            (StatusCode::BAD_GATEWAY, "upstream call failed\n").into_response()
        }
    }
}

/// A running proxy on a loopback port.
#[derive(Debug)]
pub struct RunningProxy {
    /// The proxy's address.
    pub addr: std::net::SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningProxy {
    /// Serves `router` on `127.0.0.1` at a free port.
    pub async fn start(router: Router) -> Result<Self, BoxError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await
        });
        Ok(RunningProxy {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting connections and waits for the calls in flight.
    pub async fn stop(self) -> Result<(), BoxError> {
        let _ = self.shutdown.send(());
        self.task.await??;
        Ok(())
    }
}

/// Starts the providers and the proxy, lets `options.clients` clients call
/// through it at once, and reports what each provider saw.
pub async fn run(options: Options) -> Result<Summary, BoxError> {
    if options.providers.is_empty() {
        return Err("at least one provider is needed".into());
    }
    let (servers, upstreams) = start_providers(&options).await?;
    let store = redis_store(&options).await?;
    let proxy =
        RunningProxy::start(router(&options.providers, &upstreams, store.as_ref())?).await?;

    let started = tokio::time::Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client_number in 0..options.clients {
        let names: Vec<String> = options.providers.iter().map(|p| p.name.clone()).collect();
        let base = format!("http://{}", proxy.addr);
        let requests = options.requests_per_client;
        clients.spawn(async move {
            // Each client is its own program, with its own connections.
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let mut calls = Vec::with_capacity(requests);
            for call in 0..requests {
                let provider = &names[(client_number + call) % names.len()];
                let uri: Uri =
                    format!("{base}/{provider}/v1/items/{client_number}-{call}").parse()?;
                let response = client.get(uri).await?;
                let status = response.status();
                response.into_body().collect().await?;
                calls.push((provider.clone(), status));
            }
            Ok::<_, BoxError>(calls)
        });
    }
    let mut calls_by_provider: HashMap<String, usize> = HashMap::new();
    let mut calls = 0;
    let mut succeeded = 0;
    while let Some(joined) = clients.join_next().await {
        for (provider, status) in joined?? {
            calls += 1;
            *calls_by_provider.entry(provider).or_default() += 1;
            if status.is_success() {
                succeeded += 1;
            } else {
                tracing::warn!(%status, "call through the proxy failed");
            }
        }
    }
    let elapsed = started.elapsed();
    // What Prometheus would scrape after the run.
    let scrape = Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>()
        .get(format!("http://{}/metrics", proxy.addr).parse()?)
        .await?;
    let metrics = String::from_utf8(scrape.into_body().collect().await?.to_bytes().to_vec())?;
    proxy.stop().await?;
    flush(store.as_ref()).await;

    let mut providers = Vec::new();
    for (provider, server) in options.providers.iter().zip(servers) {
        let stats = server.stats();
        server.shutdown().await;
        providers.push(ProviderSummary {
            name: provider.name.clone(),
            max_calls: provider.max_calls,
            window: provider.window,
            calls: calls_by_provider.get(&provider.name).copied().unwrap_or(0),
            attempts: stats.total,
            accepted: stats.accepted(),
            refused: stats.count(429),
            server_errors: stats.count(503),
            max_in_window: stats.max_in_any_window(provider.window),
        });
    }
    Ok(Summary {
        calls,
        succeeded,
        providers,
        elapsed,
        metrics,
    })
}

/// One `quota-mock` per provider, enforcing the provider's quota.
async fn start_providers(
    options: &Options,
) -> Result<(Vec<MockServer>, HashMap<String, String>), BoxError> {
    let mut servers = Vec::new();
    let mut upstreams = HashMap::new();
    for (index, provider) in options.providers.iter().enumerate() {
        let server = MockServer::builder()
            .rule(Rule::sliding_log(provider.max_calls, provider.window))
            .headers(HeaderDialect::OpenAi)
            .fault(Fault::ErrorRate {
                fraction: options.error_rate,
                statuses: vec![StatusCode::SERVICE_UNAVAILABLE],
            })
            .seed(options.seed.wrapping_add(index as u64))
            .start()
            .await?;
        upstreams.insert(provider.name.clone(), server.url());
        servers.push(server);
    }
    Ok((servers, upstreams))
}

/// The Redis store the options ask for, if any.
async fn redis_store(options: &Options) -> Result<Option<RedisStore>, BoxError> {
    match &options.redis {
        Some(url) => Ok(Some(
            RedisStore::builder(url.as_str())
                .prefix("axum-proxy")
                .build()
                .await?,
        )),
        None => Ok(None),
    }
}

/// Once the proxy has stopped: its last answers reach Redis, so the
/// proxies that share the quotas get those slots back a window after them.
async fn flush(store: Option<&RedisStore>) {
    if let Some(store) = store {
        store.flush().await;
    }
}

/// Starts the providers and the proxy and serves until Ctrl-C.
async fn serve(options: &Options) -> Result<(), BoxError> {
    let (servers, upstreams) = start_providers(options).await?;
    let store = redis_store(options).await?;
    let proxy =
        RunningProxy::start(router(&options.providers, &upstreams, store.as_ref())?).await?;
    for provider in &options.providers {
        println!(
            "http://{}/{}/...  ->  {} ({} per {})",
            proxy.addr,
            provider.name,
            upstreams[&provider.name],
            provider.max_calls,
            human(provider.window)
        );
    }
    println!("serving; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    proxy.stop().await?;
    flush(store.as_ref()).await;
    for server in servers {
        server.shutdown().await;
    }
    Ok(())
}

/// An axum egress proxy that enforces each provider's quota for every client
/// behind it; a flag left out keeps its default.
#[derive(Debug, Parser)]
#[command(name = "axum_proxy")]
struct Flags {
    /// Keep the proxy serving for curl until Ctrl-C, instead of a measured run.
    #[arg(long, conflicts_with_all = ["clients", "requests_per_client"])]
    serve: bool,
    /// How many clients call through the proxy at once.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    clients: Option<usize>,
    /// How many calls each client makes, one after another.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    requests_per_client: Option<usize>,
    /// Keep the quotas in Redis at this URL, so that several proxies share them.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

impl From<Flags> for Options {
    fn from(flags: Flags) -> Self {
        let default = Options::default();
        Options {
            clients: flags.clients.unwrap_or(default.clients),
            requests_per_client: flags
                .requests_per_client
                .unwrap_or(default.requests_per_client),
            redis: flags.redis.or(default.redis),
            ..default
        }
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let flags = Flags::parse();
    if flags.serve {
        common::init_json_logging();
        serve(&flags.into()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    common::main(flags.into(), run, Summary::verify).await
}
