//! Command connections: a few multiplexed connections, used round-robin, each
//! reconnected lazily after it fails; every call bounded by one deadline.
//! On a Redis Cluster, one cluster connection instead: it keeps a multiplexed
//! connection per node, routes each command by the slot of its first key,
//! follows `MOVED`/`ASK` and refreshes the slot map when the topology changes.
//!
//! A multiplexed connection pipelines every concurrent call on it (many
//! publishes in flight at once, answers matched in order), so there is no
//! one-round-trip-per-message serialization and no per-checkout `PING` as with a
//! classic pool.

use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, ProtocolVersion, PushInfo,
    PushKind, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
};
use scaled_sockets_scaler::{Result, ScalerError};
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::{Instant, timeout_at};

/// After a failed connect, calls on that slot fail at once for this long instead
/// of reconnecting again (no connect storm while Redis is down).
const RECONNECT_HOLDOFF: Duration = Duration::from_millis(100);

/// Maps a Redis client error to the scaler's error.
/// The client error is kept as the source.
pub(crate) fn map_error(err: RedisError, timeout: Duration) -> ScalerError {
    use redis::{ErrorKind, ServerErrorKind};
    if err.is_timeout() {
        return ScalerError::Timeout(timeout);
    }
    if err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_unrecoverable_error()
        || err.is_cluster_error()
    {
        return ScalerError::unavailable(err.to_string()).with_source(err);
    }
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown,
        ) => ScalerError::unavailable(err.to_string()).with_source(err),
        ErrorKind::AuthenticationFailed => {
            ScalerError::unavailable(err.to_string()).with_source(err)
        }
        _ => ScalerError::backend(err.to_string()).with_source(err),
    }
}

/// True when the connection an error came from should be replaced.
fn breaks_connection(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_unrecoverable_error()
}

#[derive(Default)]
struct SlotState {
    conn: Option<MultiplexedConnection>,
    /// Set by the connection itself when its socket closes (Redis restarted,
    /// connection killed), so the next call reconnects instead of failing.
    disconnected: Arc<AtomicBool>,
    generation: u64,
    failed_at: Option<Instant>,
}

#[derive(Default)]
struct Slot {
    /// Held only for short, non-awaiting updates.
    state: std::sync::Mutex<SlotState>,
    /// Serializes connection attempts on this slot.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current connection, or why none should be attempted now.
    fn current(&self, slot: usize) -> Option<Result<Lease>> {
        let mut state = self.state();
        if state.disconnected.load(Ordering::SeqCst) {
            state.conn = None;
        }
        if let Some(conn) = &state.conn {
            return Some(Ok(Lease {
                slot,
                generation: state.generation,
                conn: Conn::Single(conn.clone()),
            }));
        }
        if state
            .failed_at
            .is_some_and(|t| t.elapsed() < RECONNECT_HOLDOFF)
        {
            return Some(Err(ScalerError::unavailable(
                "redis connection failed moments ago",
            )));
        }
        None
    }
}

/// A connection a call runs on: one server's, or the cluster's (which routes
/// each command to the node serving its slot).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The settings every cluster client of a scaler is built with (command pool
/// and feeds).
pub(crate) fn cluster_builder(nodes: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // A few retries cover MOVED/ASK redirects and a refreshed slot map;
        // the command deadline bounds the rest.
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500)
}

/// The single cluster connection of a scaler in cluster mode.
struct ClusterSlot {
    client: ClusterClient,
    nodes: Vec<String>,
    /// Held only for short, non-awaiting updates.
    state: std::sync::Mutex<(Option<ClusterConnection>, u64, Option<Instant>)>,
    connecting: tokio::sync::Mutex<()>,
}

/// Where a Sentinel-watched primary is: asked of the Sentinels on every
/// connect, so connections made after a failover reach the new primary.
struct SentinelSource {
    /// `async_master_for` needs exclusive use (it caches Sentinel connections).
    sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
    service: String,
    /// The primary's credentials and database, RESP3 (command connections).
    commands: redis::sentinel::SentinelNodeConnectionInfo,
    /// The same with the URL's protocol (subscriber connections).
    subscribers: redis::sentinel::SentinelNodeConnectionInfo,
}

/// The command connections of one scaler.
pub(crate) struct Pool {
    /// RESP3, so a connection reports its own disconnection.
    client: Client,
    /// For subscriber connections (as configured, RESP2 by default).
    pubsub_client: Client,
    slots: Vec<Slot>,
    next: AtomicUsize,
    timeout: Duration,
    /// Set on a Redis Cluster: then `slots` is unused.
    cluster: Option<ClusterSlot>,
    /// Set for a Sentinel URL: `client` and `pubsub_client` are unused, each
    /// connect asks the Sentinels for the primary.
    sentinel: Option<SentinelSource>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.slots.len())
            .field("cluster", &self.cluster.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A connection handed out for one call, with where it came from.
struct Lease {
    slot: usize,
    generation: u64,
    conn: Conn,
}

impl Pool {
    /// A pool for this client; command connections are switched to RESP3.
    pub(crate) fn new(client: Client, size: usize, timeout: Duration) -> Result<Self> {
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let command_client = Client::open(info.set_redis_settings(resp3))
            .map_err(|e| ScalerError::InvalidArgument(format!("redis connection info: {e}")))?;
        Ok(Self {
            client: command_client,
            pubsub_client: client,
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            timeout,
            cluster: None,
            sentinel: None,
        })
    }

    /// A pool on the primary a set of Sentinels watches.
    pub(crate) fn new_sentinel(
        spec: crate::config::SentinelSpec,
        size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        use redis::{IntoConnectionInfo, sentinel::SentinelNodeConnectionInfo};
        let invalid =
            |e: RedisError| ScalerError::InvalidArgument(format!("redis sentinel settings: {e}"));
        let primary = spec
            .primary
            .as_str()
            .into_connection_info()
            .map_err(invalid)?;
        let settings = primary.redis_settings().clone();
        let sentinel = redis::sentinel::Sentinel::build(spec.sentinels.clone()).map_err(invalid)?;
        let mut pool = Self::new(Client::open(primary).map_err(invalid)?, size, timeout)?;
        pool.sentinel = Some(SentinelSource {
            sentinel: tokio::sync::Mutex::new(sentinel),
            service: spec.service,
            commands: SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(settings.clone().set_protocol(ProtocolVersion::RESP3)),
            subscribers: SentinelNodeConnectionInfo::default().set_redis_connection_info(settings),
        });
        Ok(pool)
    }

    /// True when the primary is found through Sentinel.
    pub(crate) fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// The client a feed opens its subscriber connection with: the one of the
    /// URL, or, with Sentinel, one for the primary the Sentinels name now.
    pub(crate) async fn subscriber_client(&self) -> Result<Client> {
        let Some(source) = &self.sentinel else {
            return Ok(self.pubsub_client.clone());
        };
        let lookup = async {
            let mut sentinel = source.sentinel.lock().await;
            sentinel
                .async_master_for(&source.service, Some(&source.subscribers))
                .await
        };
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(map_error(e, self.timeout).into_unavailable()),
            Err(_) => Err(ScalerError::Timeout(self.timeout)),
        }
    }

    /// The client command connections are opened with (see
    /// [`Pool::subscriber_client`]).
    async fn command_client(&self) -> redis::RedisResult<Client> {
        let Some(source) = &self.sentinel else {
            return Ok(self.client.clone());
        };
        let mut sentinel = source.sentinel.lock().await;
        sentinel
            .async_master_for(&source.service, Some(&source.commands))
            .await
    }

    /// A pool on a Redis Cluster reached through these seed nodes.
    pub(crate) fn new_cluster(nodes: Vec<String>, timeout: Duration) -> Result<Self> {
        let invalid = |e: RedisError| {
            ScalerError::InvalidArgument(format!("redis cluster connection info: {e}"))
        };
        let client = cluster_builder(&nodes, timeout).build().map_err(invalid)?;
        // Unused in cluster mode (feeds build their own cluster clients), but
        // keeps one type for both modes.
        let first = nodes
            .first()
            .ok_or_else(|| ScalerError::InvalidArgument("no redis cluster node".into()))?;
        let single = Client::open(first.as_str()).map_err(invalid)?;
        Ok(Self {
            client: single.clone(),
            pubsub_client: single,
            slots: vec![Slot::default()],
            next: AtomicUsize::new(0),
            timeout,
            cluster: Some(ClusterSlot {
                client,
                nodes,
                state: std::sync::Mutex::new((None, 0, None)),
                connecting: tokio::sync::Mutex::new(()),
            }),
            sentinel: None,
        })
    }

    /// The seed nodes when on a Redis Cluster.
    pub(crate) fn cluster_nodes(&self) -> Option<&[String]> {
        self.cluster.as_ref().map(|c| c.nodes.as_slice())
    }

    /// The cluster connection, connecting it first when there is none.
    async fn checkout_cluster(&self, cluster: &ClusterSlot, deadline: Instant) -> Result<Lease> {
        let current = |cluster: &ClusterSlot| -> Option<Result<Lease>> {
            let state = cluster.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(conn) = &state.0 {
                return Some(Ok(Lease {
                    slot: 0,
                    generation: state.1,
                    conn: Conn::Cluster(conn.clone()),
                }));
            }
            if state.2.is_some_and(|t| t.elapsed() < RECONNECT_HOLDOFF) {
                return Some(Err(ScalerError::unavailable(
                    "redis cluster connection failed moments ago",
                )));
            }
            None
        };
        if let Some(ready) = current(cluster) {
            return ready;
        }
        let _connecting = timeout_at(deadline, cluster.connecting.lock())
            .await
            .map_err(|_| ScalerError::Timeout(self.timeout))?;
        if let Some(ready) = current(cluster) {
            return ready;
        }
        let connected = timeout_at(deadline, cluster.client.get_async_connection()).await;
        let mut state = cluster.state.lock().unwrap_or_else(|p| p.into_inner());
        match connected {
            Ok(Ok(conn)) => {
                state.1 += 1;
                state.2 = None;
                state.0 = Some(conn.clone());
                Ok(Lease {
                    slot: 0,
                    generation: state.1,
                    conn: Conn::Cluster(conn),
                })
            }
            Ok(Err(e)) => {
                state.2 = Some(Instant::now());
                tracing::debug!(error = %e, "redis cluster connect failed");
                Err(map_error(e, self.timeout).into_unavailable())
            }
            Err(_) => {
                state.2 = Some(Instant::now());
                Err(ScalerError::Timeout(self.timeout))
            }
        }
    }

    /// Opens the first connection now (so `connect` reports an unreachable Redis).
    pub(crate) async fn warm_up(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        self.checkout(0, deadline).await.map(drop)
    }

    async fn checkout(&self, index: usize, deadline: Instant) -> Result<Lease> {
        if let Some(cluster) = &self.cluster {
            return self.checkout_cluster(cluster, deadline).await;
        }
        let timeout = self.timeout;
        let slot = &self.slots[index];
        if let Some(ready) = slot.current(index) {
            return ready;
        }
        let _connecting = timeout_at(deadline, slot.connecting.lock())
            .await
            .map_err(|_| ScalerError::Timeout(timeout))?;
        // Someone else may have connected (or failed) while we waited.
        if let Some(ready) = slot.current(index) {
            return ready;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let disconnected = Arc::new(AtomicBool::new(false));
        let flag = disconnected.clone();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(left))
            .set_response_timeout(Some(timeout))
            .set_push_sender(move |info: PushInfo| {
                if info.kind == PushKind::Disconnection {
                    flag.store(true, Ordering::SeqCst);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let connected = timeout_at(deadline, async {
            self.command_client()
                .await?
                .get_multiplexed_async_connection_with_config(&config)
                .await
        })
        .await;
        let mut state = slot.state();
        match connected {
            Ok(Ok(conn)) => {
                state.generation += 1;
                state.failed_at = None;
                state.disconnected = disconnected;
                state.conn = Some(conn.clone());
                Ok(Lease {
                    slot: index,
                    generation: state.generation,
                    conn: Conn::Single(conn),
                })
            }
            Ok(Err(e)) => {
                state.failed_at = Some(Instant::now());
                tracing::debug!(error = %e, "redis connect failed");
                Err(map_error(e, timeout).into_unavailable())
            }
            Err(_) => {
                state.failed_at = Some(Instant::now());
                Err(ScalerError::Timeout(timeout))
            }
        }
    }

    /// Forgets a broken connection (unless it was already replaced).
    fn discard(&self, lease: &Lease) {
        if let Some(cluster) = &self.cluster {
            // The cluster connection reconnects its nodes by itself; it is
            // replaced only when it stopped answering altogether (a timeout),
            // which a fresh discovery from the seed nodes may cure.
            let mut state = cluster.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.1 == lease.generation {
                state.0 = None;
            }
            return;
        }
        let mut state = self.slots[lease.slot].state();
        if state.generation == lease.generation {
            state.conn = None;
        }
    }

    /// Runs one call on a pooled connection within the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = Instant::now() + self.timeout;
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let lease = self.checkout(slot, deadline).await?;
        match timeout_at(deadline, call(lease.conn.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                // With Sentinel, a `READONLY` answer means the connection
                // reaches a demoted primary: reconnect through the Sentinels.
                let demoted = self.sentinel.is_some()
                    && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                if (breaks_connection(&e) || demoted) && self.cluster.is_none() {
                    self.discard(&lease);
                }
                Err(map_error(e, self.timeout))
            }
            Err(_) => {
                // A connection that does not answer in time may be silently dead
                // (no RST ever comes): replace it rather than wait forever.
                self.discard(&lease);
                Err(ScalerError::Timeout(self.timeout))
            }
        }
    }

    /// Runs one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline (one round trip).
    pub(crate) async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs one script: `EVALSHA`, then `EVAL` with its source on `NOSCRIPT`
    /// (which loads it on that node).
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        invocation: &crate::scripts::Invocation<'_>,
    ) -> Result<T> {
        self.run(|mut conn| async move {
            match invocation.cmd(false).query_async(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    invocation.cmd(true).query_async(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }
}
