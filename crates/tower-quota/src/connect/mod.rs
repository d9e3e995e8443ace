//! Connection telemetry for hyper-util's legacy client (feature
//! `hyper-util`).
//!
//! # The problem
//!
//! Opening connections is what makes a cold start slow (TCP, TLS, a proxy
//! each add round trips) and what exhausts file descriptors when clients
//! are not reused, yet the layers above a client only see requests.
//! [`TrackConnections`] wraps any hyper-util connector (a
//! `tower::Service<Uri>`, such as `HttpConnector` or an HTTPS connector)
//! and counts what it does: connections open now (decremented when hyper
//! drops the connection), connections opened, and each one's set-up time.
//! It reports them as [`ConnectionStats`], through the
//! [`metrics`](crate::metrics) facade (feature `metrics`), and as
//! `tracing` events (`connection_opened`, `connection_closed`,
//! `connection_failed`; see [`telemetry`](crate::telemetry)). Events carry
//! the host, never the path, query or credentials of the request.
//!
//! Every response of a tracked connection carries its [`ConnectionInfo`]
//! (hyper-util copies a connection's extras to each of its responses), and
//! [`MarkNewConnectionLayer`] marks the *first* response of each
//! connection with [`NewConnection`], so pacing and telemetry can tell a
//! cold request, which paid the set-up, from a warm one.
//!
//! # Where it goes
//!
//! The connector wrapper goes around the connector the client is built
//! with; the marking layer goes right above the client, below the timeout
//! and every retrying layer, so each attempt's response is marked.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_quota::connect::{MarkNewConnectionLayer, NewConnection, TrackConnections};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_quota::BoxError> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let url = format!("http://{}/", listener.local_addr()?);
//! # tokio::spawn(async move {
//! #     loop {
//! #         let Ok((stream, _)) = listener.accept().await else { return };
//! #         tokio::spawn(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
//! #             .serve_connection(hyper_util::rt::TokioIo::new(stream),
//! #                 hyper::service::service_fn(|_| async {
//! #                     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
//! #                 })).into_owned());
//! #     }
//! # });
//! let connector = TrackConnections::new(HttpConnector::new());
//! let stats = connector.stats();
//! let client = ServiceBuilder::new()
//!     .layer(MarkNewConnectionLayer::new())
//!     .service(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector));
//!
//! let first = client.clone().oneshot(http::Request::get(&url).body(Empty::new())?).await?;
//! assert!(first.extensions().get::<NewConnection>().is_some(), "the first request opened it");
//! drop(first); // the connection goes back to the pool
//! # tokio::task::yield_now().await;
//! let second = client.oneshot(http::Request::get(&url).body(Empty::new())?).await?;
//! assert!(second.extensions().get::<NewConnection>().is_none(), "a pooled connection");
//! assert_eq!(stats.opened(), 1);
//! assert_eq!(stats.open(), 1);
//! # Ok(())
//! # }
//! ```

mod connector;
mod events;
mod io;
mod mark;
mod stats;
#[cfg(test)]
mod tests;

pub use connector::{ConnectFuture, TrackConnections};
pub use io::TrackedConnection;
pub use mark::{MarkNewConnection, MarkNewConnectionFuture, MarkNewConnectionLayer};
pub use stats::{ConnectionInfo, ConnectionStats, NewConnection};
