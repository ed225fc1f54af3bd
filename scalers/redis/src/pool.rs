//! Command connections: a few multiplexed connections, used round-robin, each
//! reconnected lazily after it fails; every call bounded by one deadline.
//!
//! A multiplexed connection pipelines every concurrent call on it (many
//! publishes in flight at once, answers matched in order), so there is no
//! one-round-trip-per-message serialization and no per-checkout `PING` as with a
//! classic pool.

use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, ProtocolVersion, PushInfo,
    PushKind, RedisError, ScriptInvocation, aio::MultiplexedConnection,
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
                conn: conn.clone(),
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

/// The command connections of one scaler.
pub(crate) struct Pool {
    /// RESP3, so a connection reports its own disconnection.
    client: Client,
    /// For subscriber connections (as configured, RESP2 by default).
    pubsub_client: Client,
    slots: Vec<Slot>,
    next: AtomicUsize,
    timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.slots.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A connection handed out for one call, with where it came from.
struct Lease {
    slot: usize,
    generation: u64,
    conn: MultiplexedConnection,
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
        })
    }

    /// The client feeds open their subscriber connections with.
    pub(crate) fn pubsub_client(&self) -> &Client {
        &self.pubsub_client
    }

    /// Opens the first connection now (so `connect` reports an unreachable Redis).
    pub(crate) async fn warm_up(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        self.checkout(0, deadline).await.map(drop)
    }

    async fn checkout(&self, index: usize, deadline: Instant) -> Result<Lease> {
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
        let connected = timeout_at(
            deadline,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
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
                    conn,
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
        let mut state = self.slots[lease.slot].state();
        if state.generation == lease.generation {
            state.conn = None;
        }
    }

    /// Runs one call on a pooled connection within the command timeout.
    pub(crate) async fn run<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = Instant::now() + self.timeout;
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let lease = self.checkout(slot, deadline).await?;
        match timeout_at(deadline, call(lease.conn.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if breaks_connection(&e) {
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

    /// Runs one script (EVALSHA, loading it on `NOSCRIPT`).
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }
}
