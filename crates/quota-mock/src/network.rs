//! A simulated network between a client and a server: a TCP proxy that
//! holds a new connection's bytes for a set-up delay and delays every chunk
//! in each direction.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};

use crate::fault::Latency;
use crate::host::Host;

/// The most bytes one read takes off a socket: one chunk, delayed as a unit.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks read but not yet delivered, per direction. When they are all in
/// flight the proxy stops reading, as a sender stops at a full TCP window.
const CHUNKS_IN_FLIGHT: usize = 64;

/// Configures and starts a [`NetworkProxy`]; see [`NetworkProxy::builder`].
#[derive(Debug, Clone)]
pub struct NetworkProxyBuilder {
    upstream: SocketAddr,
    addr: SocketAddr,
    connect_delay: Duration,
    latency: Latency,
    seed: Option<u64>,
    host: Host,
}

impl NetworkProxyBuilder {
    /// How long a new connection waits, from the moment the proxy accepts
    /// it, before any byte flows in either direction (default zero).
    ///
    /// The upstream connection is opened at once; bytes the client sends in
    /// the meantime wait in the socket. This is what TCP and TLS set-up cost
    /// a cold connection: its first request arrives at least
    /// `connect_delay` plus one latency after the client sent it, while a
    /// request on a kept-alive connection pays only the latency.
    pub fn connect_delay(mut self, delay: Duration) -> Self {
        self.connect_delay = delay;
        self
    }

    /// One-way latency per direction, drawn uniformly from `[min, max]` for
    /// each chunk the proxy reads (default zero).
    ///
    /// Each direction of a connection stays a FIFO: a chunk read at `t` is
    /// delivered at `t + drawn` or when the chunk before it was delivered,
    /// whichever is later, so bytes are never reordered. A request and its
    /// response each cross once, so a round trip takes at least `2 * min`.
    /// `min > max` makes [`start`](Self::start) fail with
    /// [`io::ErrorKind::InvalidInput`].
    pub fn latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency = Latency::Uniform { min, max };
        self
    }

    /// Seeds the latency RNG (each connection and direction draws from its
    /// own stream derived from it). Unseeded proxies draw a seed from the
    /// OS. The chunking of a byte stream depends on the operating system,
    /// so a seed repeats the delays drawn, not necessarily every timing.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The address to listen on (default `127.0.0.1:0`, a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Relays from the runtime that calls [`start`](Self::start) instead of
    /// quota-mock's own (where the delays it adds are the network's, not
    /// those of a client whose tasks keep its runtime busy); needed under
    /// tokio's paused clock, as
    /// [`MockServerBuilder::on_caller_runtime`](crate::MockServerBuilder::on_caller_runtime).
    pub fn on_caller_runtime(mut self) -> Self {
        self.host = Host::Caller;
        self
    }

    /// Binds the listener and starts relaying connections to the upstream.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] when the latency's `min`
    /// exceeds its `max`; otherwise with the bind error. A connection whose
    /// upstream cannot be reached is closed once the connect delay is over.
    pub async fn start(self) -> io::Result<NetworkProxy> {
        if let Latency::Uniform { min, max } = self.latency
            && min > max
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("network latency: min {min:?} exceeds max {max:?}"),
            ));
        }
        let handle = self.host.handle()?;
        let listener = Host::listen(&handle, self.addr)?;
        let addr = listener.local_addr()?;
        let rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let link = Link {
            upstream: self.upstream,
            connect_delay: self.connect_delay,
            latency: self.latency,
        };
        let accept_task = handle.spawn(accept_loop(listener, link, rng));
        tracing::debug!(%addr, upstream = %self.upstream, "quota-mock network proxy listening");
        Ok(NetworkProxy {
            addr,
            upstream: self.upstream,
            accept_task,
        })
    }
}

/// A TCP proxy that plays the network between a client and a server.
///
/// Point the client at [`url`](NetworkProxy::url) instead of the server's:
/// each connection is relayed to the upstream address with a set-up delay
/// ([`connect_delay`](NetworkProxyBuilder::connect_delay)) and a jittered
/// one-way latency per direction
/// ([`latency`](NetworkProxyBuilder::latency)). Measured at a
/// [`MockServer`](crate::MockServer) behind it, arrivals then come as late
/// and as unevenly as across a real network: a cold connection's first
/// request much later than a warm one's.
///
/// Every delay follows tokio's clock (the proxy's own runtime's, or the
/// caller's with
/// [`on_caller_runtime`](NetworkProxyBuilder::on_caller_runtime)). The
/// relays run on quota-mock's own runtime by default, so a busy client
/// does not lengthen the delays. Dropping the proxy stops it at once:
/// its listener closes and every relayed connection is cut.
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use quota_mock::{MockServer, NetworkProxy};
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = MockServer::builder().start().await?;
/// let proxy = NetworkProxy::builder(server.addr())
///     .connect_delay(Duration::from_millis(30))
///     .latency(Duration::from_millis(5), Duration::from_millis(10))
///     .start()
///     .await?;
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
/// let sent = Instant::now();
/// let response = client.get(proxy.url().parse()?).await?;
/// assert_eq!(response.status(), 200);
/// // Set-up, then the request and the response each cross once.
/// assert!(sent.elapsed() >= Duration::from_millis(30 + 2 * 5));
/// let arrival = &server.stats().arrivals[0];
/// assert!(server.started_at() + arrival.at >= sent + Duration::from_millis(30 + 5));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NetworkProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl NetworkProxy {
    /// A builder for a proxy in front of `upstream`, listening on
    /// `127.0.0.1:0`, with no connect delay and no latency.
    pub fn builder(upstream: SocketAddr) -> NetworkProxyBuilder {
        NetworkProxyBuilder {
            upstream,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            connect_delay: Duration::ZERO,
            latency: Latency::Fixed(Duration::ZERO),
            seed: None,
            host: Host::Own,
        }
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address connections are relayed to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }
}

impl Drop for NetworkProxy {
    fn drop(&mut self) {
        // The accept loop owns the listener and the JoinSet of relayed
        // connections; aborting it drops both, which aborts every relay.
        self.accept_task.abort();
    }
}

/// What every relayed connection goes through.
#[derive(Debug, Clone, Copy)]
struct Link {
    upstream: SocketAddr,
    connect_delay: Duration,
    latency: Latency,
}

async fn accept_loop(listener: TcpListener, link: Link, mut rng: StdRng) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    let seed = rng.random();
                    connections.spawn(relay(client, link, seed));
                }
                Err(error) => {
                    // Usually running out of file descriptors: back off
                    // instead of spinning.
                    tracing::debug!(%error, "quota-mock network proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// One connection: open the upstream while the connect delay runs, then
/// pipe each direction until both have ended or either fails.
async fn relay(client: TcpStream, link: Link, seed: u64) {
    let open_at = after(Instant::now(), link.connect_delay);
    let (server, ()) = tokio::join!(TcpStream::connect(link.upstream), sleep_until(open_at));
    let server = match server {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%error, upstream = %link.upstream, "quota-mock network proxy could not reach the upstream");
            return;
        }
    };
    // Delays are the proxy's to add, not Nagle's.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut rng = StdRng::seed_from_u64(seed);
    let to_server = StdRng::seed_from_u64(rng.random());
    let to_client = StdRng::seed_from_u64(rng.random());
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let result = tokio::try_join!(
        pipe(client_read, server_write, link.latency, to_server),
        pipe(server_read, client_write, link.latency, to_client),
    );
    if let Err(error) = result {
        // Dropping both halves of both sockets closes the connection.
        tracing::debug!(%error, "quota-mock network proxy connection ended with an error");
    }
}

/// `delay` after `now`, or about thirty years for a delay too large to add.
fn after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// One direction: a reader that stamps each chunk with its delivery
/// instant, and a writer that delivers the chunks in order at those
/// instants, then passes the end of the stream on.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    latency: Latency,
    mut rng: StdRng,
) -> io::Result<()> {
    let (chunks, mut delivery) = mpsc::channel::<(Instant, Bytes)>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut previous_delivery = Instant::now();
        loop {
            let mut buffer = BytesMut::with_capacity(CHUNK_BYTES);
            if from.read_buf(&mut buffer).await? == 0 {
                // End of stream: dropping the sender lets the writer finish.
                return Ok::<(), io::Error>(());
            }
            let deliver_at = after(Instant::now(), latency.draw(&mut rng)).max(previous_delivery);
            previous_delivery = deliver_at;
            if chunks.send((deliver_at, buffer.freeze())).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((deliver_at, chunk)) = delivery.recv().await {
            sleep_until(deliver_at).await;
            to.write_all(&chunk).await?;
        }
        // The peer may be gone already; the other direction reports that.
        let _ = to.shutdown().await;
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inverted_latency_bounds_are_refused() {
        let upstream = SocketAddr::from(([127, 0, 0, 1], 9));
        let error = NetworkProxy::builder(upstream)
            .latency(Duration::from_millis(20), Duration::from_millis(10))
            .start()
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
