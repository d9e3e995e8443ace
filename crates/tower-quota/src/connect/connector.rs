use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::io::TrackedConnection;
use super::{ConnectionInfo, ConnectionStats, events};

/// Numbers connections, unique in the process.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Wraps a hyper-util connector and counts the connections it opens; see
/// the [module docs](super).
///
/// Every clone shares one [`ConnectionStats`].
#[derive(Debug, Clone)]
pub struct TrackConnections<C> {
    inner: C,
    stats: ConnectionStats,
}

impl<C> TrackConnections<C> {
    /// Counts the connections `inner` opens.
    pub fn new(inner: C) -> Self {
        TrackConnections {
            inner,
            stats: ConnectionStats::default(),
        }
    }

    /// The counts, shared by every clone.
    pub fn stats(&self) -> ConnectionStats {
        self.stats.clone()
    }

    /// The inner connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The inner connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the inner connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C> Service<Uri> for TrackConnections<C>
where
    C: Service<Uri>,
{
    type Response = TrackedConnection<C::Response>;
    type Error = C::Error;
    type Future = ConnectFuture<C::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The host alone: never the user info, path or query of the URI.
        let host = uri.host().unwrap_or("").to_owned();
        ConnectFuture {
            inner: self.inner.call(uri),
            started: Instant::now(),
            host,
            stats: self.stats.clone(),
        }
    }
}

pin_project! {
    /// A connection being opened by a [`TrackConnections`].
    #[derive(Debug)]
    pub struct ConnectFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        host: String,
        stats: ConnectionStats,
    }
}

impl<F, T, E> Future for ConnectFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<TrackedConnection<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let setup = this.started.elapsed();
        Poll::Ready(match result {
            Ok(io) => {
                let open = this.stats.opened_one(setup);
                events::opened(this.host, setup, open);
                let info =
                    ConnectionInfo::new(NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed), setup);
                Ok(TrackedConnection::new(io, info, this.stats.clone()))
            }
            Err(error) => {
                this.stats.failed_one();
                events::failed(this.host, setup);
                Err(error)
            }
        })
    }
}
