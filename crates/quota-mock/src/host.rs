//! Where a server's or a proxy's tasks run: quota-mock's own runtime (the
//! default), or the caller's.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::{Builder, Handle, Runtime};

/// Connections a listener queues before they are accepted: a cold pool of
/// a thousand connections opened at once does not overflow it (an
/// overflowed queue drops the handshake, and the client's retry comes a
/// second later). The kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// The most worker threads quota-mock's own runtime starts.
const MAX_THREADS: usize = 4;

/// Where tasks run: quota-mock's own runtime, or the caller's.
///
/// A provider is another machine: its clock, its accept loop and its
/// handlers do not wait for the client's tasks. On the caller's runtime a
/// client that keeps a thousand requests in flight delays the server's
/// reading of them, and the server counts arrivals later than a real one
/// would. Every server and proxy of a process shares one runtime of
/// quota-mock's own (one worker thread per core, at most four), started on
/// first use and kept for the life of the process; dropping a server
/// aborts its own tasks there. Tokio's paused clock is per runtime: a test
/// that pauses it needs the caller's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host {
    /// quota-mock's own runtime.
    Own,
    /// The runtime that starts the server.
    Caller,
}

impl Host {
    /// The handle tasks are spawned on.
    pub(crate) fn handle(self) -> io::Result<Handle> {
        match self {
            Host::Caller => Handle::try_current().map_err(io::Error::other),
            Host::Own => own_runtime().map(|runtime| runtime.handle().clone()),
        }
    }

    /// A listener on `addr`, registered with `handle`'s runtime.
    pub(crate) fn listen(handle: &Handle, addr: SocketAddr) -> io::Result<TcpListener> {
        let _entered = handle.enter();
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    }
}

fn own_runtime() -> io::Result<&'static Runtime> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS);
    let runtime = Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("quota-mock")
        .enable_all()
        .build()?;
    // Two first uses at once build two runtimes; the loser is shut down
    // without blocking (it may be dropped inside an async context).
    match RUNTIME.set(runtime) {
        Ok(()) => {}
        Err(spare) => spare.shutdown_background(),
    }
    Ok(RUNTIME.get().expect("the runtime was set just above"))
}
