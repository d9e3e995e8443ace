//! A simulated rate-limited HTTP API, for testing the clients that call one.
//!
//! `quota-mock` serves any path over HTTP/1.1 and h2c, enforces quotas on the
//! server side, and records every arrival. A client's compliance is measured
//! where a real provider measures it: at the server, with the server's
//! clock, after the network has added its jitter.
//!
//! - **Quotas** ([`Rule`], [`Mode`]): an exact sliding log (the default and
//!   the strictest), fixed windows that reset at boundaries (GitHub-style),
//!   a continuously refilled token bucket (nginx-style), GCRA without burst
//!   (one request per `window / limit`), a sliding window counter that
//!   weighs the previous period (Cloudflare-style), or a cap on requests
//!   in flight ([`Rule::concurrency`]). Several rules are all
//!   enforced; a refused request consumes nothing, except in a sliding
//!   window counter, which like such gateways counts refused requests too.
//!   Quotas are global, per first path segment, or per header value
//!   ([`KeyBy`]).
//! - **Costs** ([`Rule::weighted`]): a weighted rule counts units, not
//!   requests — tokens per minute beside requests per minute. Each request
//!   declares its cost in a header
//!   ([`cost_header`](MockServerBuilder::cost_header), `x-cost` by
//!   default) and may state what it really cost
//!   ([`actual_cost_header`](MockServerBuilder::actual_cost_header)), to be
//!   charged instead and echoed back
//!   ([`usage_header`](MockServerBuilder::usage_header)), so a client's
//!   estimate-then-correct accounting is tested end to end.
//! - **Responses**: 200 with quota headers in the dialect of your choice,
//!   per key ([`HeaderDialect`]: `X-RateLimit-*` with epoch or delta
//!   resets, the IETF `RateLimit` fields current and legacy, Discord,
//!   OpenAI, Anthropic, Shopify), or 429 with `Retry-After` in
//!   delay-seconds rounded *up* (or an HTTP-date, or left out), so a client
//!   that obeys it is never early. Every response carries `Date`, so
//!   clients can correct for clock skew.
//! - **Faults** ([`Fault`], [`Scripted`]): error statuses, 503 with
//!   `Retry-After`, latency, reset connections, and scripted responses.
//!   Faults are drawn from a seedable RNG.
//! - **Time** ([`processing`](MockServerBuilder::processing),
//!   [`NetworkProxy`]): admitted requests can take a processing time, and a
//!   TCP proxy in front of the server plays the network — a set-up delay
//!   for each new connection and a jittered one-way latency per direction —
//!   so arrivals are as late and uneven as a real provider sees them.
//! - **Records** ([`Stats`], [`Arrival`]): every arrival with its time, key,
//!   status, retry attempt, body hash and cost, plus the exact maximum
//!   number (or, for weighted rules, total cost) of admitted requests in
//!   any window. Also served as JSON at
//!   `GET /__quota/stats`; `POST /__quota/reset` forgets everything. Paths
//!   under `/__quota/` are never rate limited or recorded.
//! - **Run-time changes**: [`MockServer::set_limit`] (or
//!   `POST /__quota/limit?rule=INDEX&limit=LIMIT`) raises or lowers a
//!   rule's limit while clients run, and [`MockServer::set_faults`]
//!   replaces the faults.
//!
//! # Order of decisions
//!
//! When a request head arrives the server takes the instant (on tokio's
//! clock; a server started
//! [`on_caller_runtime`](MockServerBuilder::on_caller_runtime) follows a
//! paused clock too) and, in this order:
//!
//! 1. serves a queued [`Scripted`] response if there is one — *before* the
//!    quota check, so scripted responses consume no quota
//!    ([`Outcome::Scripted`]);
//! 2. runs the quota check at that instant, for the declared cost; a
//!    refusal is a 429 ([`Outcome::Refused`]), without `Retry-After` when
//!    the cost exceeds a weighted rule's whole limit or when only
//!    concurrency rules refused; sliding window counters count the request
//!    whatever the decision;
//! 3. otherwise the request is admitted and consumes quota, its actual
//!    cost if it states one ([`Outcome::Admitted`]), like at a real provider that counts every
//!    request it processes; faults may then replace the 200 with an error
//!    status or a reset connection.
//!
//! It then reads the whole body (to hash it), records the arrival, waits
//! for any [`Fault::Latency`] and, for an admitted request, its
//! [processing time](MockServerBuilder::processing), and responds.
//! Concurrency rules hold an admitted request in flight until its response
//! is handed over, or the client hangs up.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use quota_mock::{MockServer, Rule};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = MockServer::builder()
//!     .rule(Rule::sliding_log(3, Duration::from_secs(60)))
//!     .start()
//!     .await?;
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
//! let mut statuses = Vec::new();
//! for _ in 0..5 {
//!     let response = client.get(format!("{}/items", server.url()).parse()?).await?;
//!     statuses.push(response.status().as_u16());
//! }
//! assert_eq!(statuses, [200, 200, 200, 429, 429]);
//!
//! let stats = server.stats();
//! assert_eq!(stats.count(429), 2);
//! assert_eq!(stats.rules[0].max_accepted_in_any_window, 3);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cost;
mod fault;
mod handler;
mod headers;
mod host;
mod key;
mod network;
mod quota;
mod rule;
mod server;
mod stats;

pub use fault::{Fault, Latency, Scripted};
pub use headers::{HeaderDialect, ParseHeaderDialectError, RetryAfterFormat};
pub use key::{KeyBy, ParseKeyByError};
pub use network::{NetworkProxy, NetworkProxyBuilder};
pub use rule::{Mode, ParseRuleError, Rule};
pub use server::{MockServer, MockServerBuilder};
pub use stats::{Arrival, Outcome, RuleStats, Stats, fnv1a64};
