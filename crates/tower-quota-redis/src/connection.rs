//! The connection to Redis: one server (redis-rs's connection manager), a
//! Redis Cluster (redis-rs's cluster-async connection), or the master a set
//! of Sentinels names (a multiplexed connection to it, found again through
//! the Sentinels after a failure). The scripts see one `ConnectionLike`.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to a single server, a cluster or a Sentinel-managed master.
/// Cloning shares it.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One server; the manager reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster: redis-rs routes each script call to its key's slot,
    /// follows `MOVED`/`ASK` and refreshes the slot map after a failover.
    #[cfg(feature = "cluster")]
    Cluster(cluster::LazyCluster),
    /// The master the Sentinels name, asked again after a failure.
    #[cfg(feature = "sentinel")]
    Sentinel(sentinel::SentinelConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            #[cfg(feature = "cluster")]
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            #[cfg(feature = "cluster")]
            Connection::Cluster(_) => 0,
            #[cfg(feature = "sentinel")]
            Connection::Sentinel(connection) => connection.get_db(),
        }
    }
}

/// Whether `error` may mean the master of a key moved: the connection
/// failed or timed out, or the server says it is no longer a writable
/// master, or the cluster cannot serve the slot now.
#[cfg(any(feature = "cluster", feature = "sentinel"))]
fn may_have_failed_over(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ReadOnly
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                )
        )
}

#[cfg(feature = "cluster")]
pub(crate) mod cluster {
    //! A cluster connection, made on first use (so that a store that fails
    //! open or falls back starts while the cluster is down), and made again
    //! in the background after a failure that may mean a failover.
    //!
    //! redis-rs follows `MOVED` and `ASK` and refreshes its slot map when a
    //! node answers with one, but a master that died answers nothing: its
    //! slots would keep pointing at it after its replica took over. A new
    //! connection reads the slot map again from the nodes that answer.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use redis::aio::ConnectionLike;
    use redis::cluster::ClusterClient;
    use redis::cluster_async::ClusterConnection;
    use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

    use super::may_have_failed_over;
    use crate::store::lock;

    #[derive(Clone)]
    pub(crate) struct LazyCluster {
        shared: Arc<Shared>,
    }

    struct Shared {
        client: ClusterClient,
        current: Mutex<Option<ClusterConnection>>,
        /// Serializes the first connection.
        connecting: tokio::sync::Mutex<()>,
        /// Whether a new connection is being made in the background.
        rebuilding: AtomicBool,
    }

    impl LazyCluster {
        pub(crate) fn new(client: ClusterClient) -> Self {
            LazyCluster {
                shared: Arc::new(Shared {
                    client,
                    current: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    rebuilding: AtomicBool::new(false),
                }),
            }
        }

        /// The connection, made now if there is none yet. A failed attempt
        /// is not remembered: the next call tries again.
        pub(crate) async fn connection(&self) -> RedisResult<ClusterConnection> {
            if let Some(connection) = lock(&self.shared.current).clone() {
                return Ok(connection);
            }
            let _connecting = self.shared.connecting.lock().await;
            if let Some(connection) = lock(&self.shared.current).clone() {
                return Ok(connection);
            }
            let connection = self.shared.client.get_async_connection().await?;
            *lock(&self.shared.current) = Some(connection.clone());
            Ok(connection)
        }

        /// Makes a new connection in the background (one at a time), and
        /// uses it once it is made; calls meanwhile use the old one. In the
        /// background, so that it completes even when every call is cut
        /// short by the store's timeout.
        fn rebuild(&self) {
            if self.shared.rebuilding.swap(true, Ordering::AcqRel) {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                self.shared.rebuilding.store(false, Ordering::Release);
                return;
            };
            let shared = self.shared.clone();
            runtime.spawn(async move {
                if let Ok(connection) = shared.client.get_async_connection().await {
                    *lock(&shared.current) = Some(connection);
                }
                shared.rebuilding.store(false, Ordering::Release);
            });
        }
    }

    /// Rebuilds the connection when dropped armed: made armed before a
    /// call, so that a call dropped before its answer (the store's timeout)
    /// rebuilds it too; disarmed by an answer, or an error that says
    /// nothing of a failover.
    struct Rebuild<'a> {
        cluster: &'a LazyCluster,
        armed: bool,
    }

    impl Drop for Rebuild<'_> {
        fn drop(&mut self) {
            if self.armed {
                self.cluster.rebuild();
            }
        }
    }

    impl ConnectionLike for LazyCluster {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
            Box::pin(async move {
                let connection = self.connection().await?;
                let mut rebuild = Rebuild {
                    cluster: self,
                    armed: true,
                };
                let mut connection = connection;
                let result = connection.req_packed_command(cmd).await;
                rebuild.armed = matches!(&result, Err(error) if may_have_failed_over(error));
                result
            })
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            pipeline: &'a Pipeline,
            offset: usize,
            count: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            Box::pin(async move {
                let mut connection = self.connection().await?;
                let mut rebuild = Rebuild {
                    cluster: self,
                    armed: true,
                };
                let result = connection
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                rebuild.armed = matches!(&result, Err(error) if may_have_failed_over(error));
                result
            })
        }

        fn get_db(&self) -> i64 {
            0
        }
    }
}

#[cfg(feature = "sentinel")]
pub(crate) mod sentinel {
    //! The master named by Sentinels. redis-rs finds it (`SENTINEL
    //! get-master-addr-by-name`, then `ROLE` on the address to check it is a
    //! master); this module keeps the connection to it and forgets it after
    //! any failure that may mean a failover, so that the next call asks the
    //! Sentinels again.

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use redis::aio::{ConnectionLike, MultiplexedConnection};
    use redis::sentinel::SentinelClient;
    use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

    use super::may_have_failed_over;
    use crate::store::lock;

    #[derive(Clone)]
    pub(crate) struct SentinelConnection {
        shared: Arc<Shared>,
    }

    struct Shared {
        client: tokio::sync::Mutex<SentinelClient>,
        config: AsyncConnectionConfig,
        db: i64,
        /// The connection to the master, with the generation it was made in.
        current: Mutex<Option<(u64, MultiplexedConnection)>>,
        generations: AtomicU64,
    }

    impl SentinelConnection {
        pub(crate) fn new(client: SentinelClient, config: AsyncConnectionConfig, db: i64) -> Self {
            SentinelConnection {
                shared: Arc::new(Shared {
                    client: tokio::sync::Mutex::new(client),
                    config,
                    db,
                    current: Mutex::new(None),
                    generations: AtomicU64::new(0),
                }),
            }
        }

        /// The connection to the master, found through the Sentinels if
        /// there is none.
        pub(crate) async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
            if let Some(current) = lock(&self.shared.current).clone() {
                return Ok(current);
            }
            // One discovery at a time; those waiting use its connection.
            let mut client = self.shared.client.lock().await;
            if let Some(current) = lock(&self.shared.current).clone() {
                return Ok(current);
            }
            let master = client.async_get_client().await?;
            let connection = master
                .get_multiplexed_async_connection_with_config(&self.shared.config)
                .await?;
            let generation = self.shared.generations.fetch_add(1, Ordering::Relaxed);
            *lock(&self.shared.current) = Some((generation, connection.clone()));
            Ok((generation, connection))
        }
    }

    /// Forgets the connection of `generation` when dropped armed: made
    /// armed before a call, so that a call dropped before its answer (the
    /// store's timeout: the master may be hung or partitioned away) forgets
    /// it too; disarmed by an answer, or an error that says nothing of a
    /// failover.
    struct Forget<'a> {
        shared: &'a Shared,
        generation: u64,
        armed: bool,
    }

    impl<'a> Forget<'a> {
        fn new(shared: &'a Shared, generation: u64) -> Self {
            Forget {
                shared,
                generation,
                armed: true,
            }
        }

        fn settle<T>(&mut self, result: &RedisResult<T>) {
            self.armed = matches!(result, Err(error) if may_have_failed_over(error));
        }
    }

    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            if !self.armed {
                return;
            }
            let mut current = lock(&self.shared.current);
            if current
                .as_ref()
                .is_some_and(|(generation, _)| *generation == self.generation)
            {
                *current = None;
            }
        }
    }

    impl ConnectionLike for SentinelConnection {
        fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
            Box::pin(async move {
                let (generation, mut connection) = self.connection().await?;
                let mut forget = Forget::new(&self.shared, generation);
                let result = connection.req_packed_command(cmd).await;
                forget.settle(&result);
                result
            })
        }

        fn req_packed_commands<'a>(
            &'a mut self,
            pipeline: &'a Pipeline,
            offset: usize,
            count: usize,
        ) -> RedisFuture<'a, Vec<Value>> {
            Box::pin(async move {
                let (generation, mut connection) = self.connection().await?;
                let mut forget = Forget::new(&self.shared, generation);
                let result = connection
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                forget.settle(&result);
                result
            })
        }

        fn get_db(&self) -> i64 {
            self.shared.db
        }
    }
}
