use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{ConnectionInfo, ConnectionStats, events};

pin_project! {
    /// A connection opened through a
    /// [`TrackConnections`](super::TrackConnections): the inner I/O, which
    /// adds its [`ConnectionInfo`] to the connection's extras and counts
    /// itself closed when dropped.
    pub struct TrackedConnection<T> {
        #[pin]
        io: T,
        info: ConnectionInfo,
        open: OpenGuard,
    }
}

/// Counts the connection closed when it is dropped.
struct OpenGuard {
    stats: ConnectionStats,
    opened_at: Instant,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let open = self.stats.closed_one();
        events::closed(self.opened_at.elapsed(), open);
    }
}

impl<T> TrackedConnection<T> {
    pub(super) fn new(io: T, info: ConnectionInfo, stats: ConnectionStats) -> Self {
        TrackedConnection {
            io,
            info,
            open: OpenGuard {
                stats,
                opened_at: Instant::now(),
            },
        }
    }

    /// What the connection's responses carry.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The inner I/O.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: fmt::Debug> fmt::Debug for TrackedConnection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedConnection")
            .field("io", &self.io)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<T: Connection> Connection for TrackedConnection<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.info.clone())
    }
}

impl<T: Read> Read for TrackedConnection<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: Write> Write for TrackedConnection<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}
