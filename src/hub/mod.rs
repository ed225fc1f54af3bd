//! The hub: one instance's local state and its link to the cluster.
//!
//! The hub keeps only what it can rebuild: its own connections (their
//! [`Mailbox`]es), and which of them want which topic. Everything shared lives
//! in the scaler.
//!
//! - [`interest`]: local members per topic, the one backend subscription per
//!   topic, and fan-out of a frame to every local member.
//! - [`dispatch`]: reads the scaler feed; publications are encoded once and
//!   fanned out.
//! - [`gaps`]: coalesced checks of every subscribed channel against its
//!   stream's top, after an interruption and periodically.
//! - [`recovery`]: history reads shared by the connections of the instance.
//! - [`peers`]: messages between instances (routed tells, asks and their
//!   replies, server-side subscribe, disconnect).
//! - [`directory`]: the connections of a user or session on every instance
//!   (lookups answered by each instance), and asking or disconnecting them.
//! - [`registry`]: this instance's heartbeat in the scaler's registry and a
//!   cached view of the live instances.
//! - [`uploads`]: frames POSTed by HTTP-fallback clients, routed to the
//!   instance holding the client's stream.
//! - [`liveness`]: one timer for all connections: pings, idle and expiry closes.
//!
//! Lifecycle: [`Hub::start`] spawns the background tasks (feed, heartbeat,
//! pinger). They stop when the hub's shutdown token is cancelled, by
//! [`Hub::drain`] or by the [`ShutdownGuard`] the server holds (a server
//! dropped without draining closes its connections and leaves the registry
//! rather than staying there as a ghost instance).

mod directory;
mod dispatch;
mod gaps;
mod interest;
mod liveness;
mod peers;
mod recovery;
mod registry;
mod uploads;

use crate::{
    config::Config,
    error::{CommandError, ErrorCode},
    mailbox::Mailbox,
    metrics::Metrics,
    protocol,
    shutdown::{DrainGuard, DrainWaiter, drain_pair},
};
use bytes::Bytes;
use interest::TopicEntry;
use scaled_sockets_scaler::{FeedControl, Scaler, ScalerError, StreamPosition, Topic};
use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use directory::Whose;
pub use directory::{ConnectionInfo, ConnectionList, MAX_LISTED_PER_INSTANCE};
use gaps::GapChecks;
pub(crate) use peers::{CoreSink, PeerMessage, RemoteAsks};
use recovery::HistoryReads;
pub(crate) use recovery::ReadTicket;
pub(crate) use uploads::Upload;
use uploads::Uploads;

/// One instance: its connections, their interest in topics, and its link to
/// the cluster through the scaler.
pub(crate) struct Hub {
    pub(crate) id: Arc<str>,
    pub(crate) config: Config,
    pub(crate) scaler: Arc<dyn Scaler>,
    pub(crate) metrics: Metrics,
    feed: Arc<dyn FeedControl>,
    /// Serialises feed subscribe/unsubscribe calls so an unsubscribe of a topic
    /// that emptied can never overtake a newer subscribe of the same topic;
    /// holds the topics the feed is subscribed to (what `backend_topics`
    /// counts), so one whose members all left while it was being subscribed
    /// is still unsubscribed.
    feed_ops: tokio::sync::Mutex<HashSet<Topic>>,
    /// Topics waiting for their feed subscribe, with whom to tell the result:
    /// the next holder of `feed_ops` subscribes them all in one call.
    pending_subscribes: Mutex<Vec<interest::PendingSubscribe>>,
    topics: Mutex<HashMap<Topic, TopicEntry>>,
    conns: Mutex<HashMap<Arc<str>, Arc<Mailbox>>>,
    remote_asks: RemoteAsks,
    /// Connection lookups sent to other instances, awaiting their answers.
    lookups: directory::Lookups,
    /// Inboxes of this instance's SSE streams, for POSTed frames.
    uploads: Uploads,
    gap_checks: GapChecks,
    history_reads: HistoryReads,
    next_id: AtomicU64,
    draining: AtomicBool,
    shutdown: CancellationToken,
    /// Cloned into every connection task; taken (dropped) when draining starts.
    drain_root: Mutex<Option<DrainGuard>>,
    drain_waiter: Mutex<Option<DrainWaiter>>,
    /// Recently read ids of the live instances, so routing a message to a
    /// connection on another instance does not list the registry every time.
    live_instances: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
    /// The heartbeat task, which also leaves the registry when it stops: drain
    /// waits for it, so no heartbeat can re-register the instance after.
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    started: Instant,
    /// The cores layer's inbox for core messages (see [`CoreSink`]).
    core_sink: std::sync::OnceLock<std::sync::Weak<dyn CoreSink>>,
    /// Cores hosted here, maintained by the cores layer, reported in the
    /// heartbeat (placement reads it as part of an instance's load).
    pub(crate) cores_hosted: AtomicU64,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("id", &self.id)
            .field("scaler", &self.scaler.name())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the maps
    // half-updated in a way that matters more than losing the instance.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The instance id part of a connection id (`<instance>.<unique>`).
pub(crate) fn instance_of(client: &str) -> Option<&str> {
    client.rsplit_once('.').map(|(instance, _)| instance)
}

/// Stops a hub's background tasks when dropped (the server holds it), so a
/// server dropped without [`Hub::drain`] leaves no ghost instance behind.
#[derive(Debug)]
pub(crate) struct ShutdownGuard(CancellationToken);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Hub {
    /// Opens the feed, registers the instance and starts the background tasks.
    pub(crate) async fn start(
        config: Config,
        scaler: Arc<dyn Scaler>,
    ) -> Result<(Arc<Self>, ShutdownGuard), crate::Error> {
        if config.instance_id.is_empty() || config.instance_id.chars().any(char::is_control) {
            return Err(crate::Error::Config(
                "instance id must be a non-empty printable string".into(),
            ));
        }
        let id: Arc<str> = config.instance_id.as_str().into();
        let feed = scaler.open_feed(&id).await?;
        feed.control
            .subscribe(&[Topic::Instance(id.clone())])
            .await?;
        let (drain_root, drain_waiter) = drain_pair();
        let hub = Arc::new(Self {
            id,
            config,
            scaler,
            metrics: Metrics::default(),
            feed: feed.control,
            feed_ops: tokio::sync::Mutex::new(HashSet::new()),
            pending_subscribes: Mutex::new(Vec::new()),
            topics: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            remote_asks: RemoteAsks::default(),
            lookups: directory::Lookups::default(),
            uploads: Uploads::default(),
            gap_checks: GapChecks::default(),
            history_reads: HistoryReads::default(),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            drain_root: Mutex::new(Some(drain_root)),
            drain_waiter: Mutex::new(Some(drain_waiter)),
            live_instances: Mutex::new(None),
            heartbeat: Mutex::new(None),
            started: Instant::now(),
            core_sink: std::sync::OnceLock::new(),
            cores_hosted: AtomicU64::new(0),
        });
        hub.heartbeat().await?;
        tokio::spawn(dispatch::run_feed(
            Arc::downgrade(&hub),
            feed.events,
            hub.shutdown.clone(),
        ));
        *lock(&hub.heartbeat) = Some(tokio::spawn(registry::run_heartbeat(hub.clone())));
        tokio::spawn(every(
            hub.clone(),
            hub.config.ping_interval,
            liveness::ping_all,
        ));
        let mut slice = 0;
        tokio::spawn(every(
            hub.clone(),
            hub.config.session_save_interval / liveness::SESSION_SAVE_SLICES as u32,
            move |hub| {
                liveness::ask_slice_to_save_sessions(hub, slice);
                slice = (slice + 1) % liveness::SESSION_SAVE_SLICES;
            },
        ));
        // Live delivery may lose a publication without a signal: check
        // every subscribed channel's top now and then.
        tokio::spawn(every(hub.clone(), hub.config.gap_check_interval, |hub| {
            hub.request_gap_check(false, false)
        }));
        Ok((hub.clone(), ShutdownGuard(hub.shutdown.clone())))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the hub started: a cheap monotonic clock for
    /// last-seen stamps.
    pub(crate) fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A new connection id that routes back to this instance.
    pub(crate) fn new_client_id(&self) -> Arc<str> {
        format!("{}.{}", self.id, uuid::Uuid::new_v4().simple()).into()
    }

    /// True once draining started or the hub was shut down.
    pub(crate) fn is_stopping(&self) -> bool {
        self.draining.load(Ordering::SeqCst) || self.shutdown.is_cancelled()
    }

    /// Cancelled when the hub's background tasks must stop (drain, drop).
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub(crate) fn connection_count(&self) -> usize {
        lock(&self.conns).len()
    }

    /// True while the backend answers and the feed is live (and not draining).
    pub(crate) async fn ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && self.feed.is_live()
            && tokio::time::timeout(Duration::from_secs(2), self.scaler.ping())
                .await
                .is_ok_and(|r| r.is_ok())
    }

    // ----- lifecycle -------------------------------------------------------------

    /// A guard for a new connection task; `None` once draining started (new
    /// upgrades are then refused with 503).
    pub(crate) fn drain_guard(&self) -> Option<DrainGuard> {
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.drain_root).clone()
    }

    /// Drains: refuses new upgrades, tells every client to reconnect elsewhere
    /// (1012), waits for the connections to end, then leaves the cluster and
    /// stops background tasks. The whole of it fits in `drain_timeout`.
    pub(crate) async fn drain(&self) {
        let started = tokio::time::Instant::now();
        let budget = self.config.drain_timeout;
        self.draining.store(true, Ordering::SeqCst);
        lock(&self.drain_root).take();
        self.close_all(protocol::close::RESTARTING, "instance restarting");
        // Leave room for unregistering and for the HTTP server to stop.
        let wait = budget
            .saturating_sub(Duration::from_millis(1500))
            .max(budget / 2);
        let waiter = lock(&self.drain_waiter).take();
        if let Some(waiter) = waiter {
            if tokio::time::timeout(wait, waiter.wait()).await.is_err() {
                tracing::warn!("drain timeout reached with connections still open");
            }
        }
        // Stops the background tasks; the heartbeat task leaves the registry
        // as its last act.
        self.shutdown.cancel();
        let left = budget
            .saturating_sub(started.elapsed())
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let heartbeat = lock(&self.heartbeat).take();
        if let Some(heartbeat) = heartbeat {
            if tokio::time::timeout(left, heartbeat).await.is_err() {
                tracing::warn!(
                    "could not leave the cluster registry in time; the entry will expire"
                );
            }
        }
    }

    // ----- connections -----------------------------------------------------------

    pub(crate) fn register(&self, conn: &Arc<Mailbox>) {
        lock(&self.conns).insert(conn.client.clone(), conn.clone());
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.connections_total);
        // Finished its handshake after draining began: it must go too.
        if self.draining.load(Ordering::SeqCst) || self.shutdown.is_cancelled() {
            conn.kill(protocol::close::RESTARTING, "instance restarting", true);
        }
    }

    pub(crate) fn unregister(&self, conn: &Mailbox) {
        if lock(&self.conns).remove(&conn.client).is_some() {
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn local(&self, client: &str) -> Option<Arc<Mailbox>> {
        lock(&self.conns).get(client).cloned()
    }

    /// Closes every connection with `code` (draining, or a dropped server).
    pub(crate) fn close_all(&self, code: u16, reason: &'static str) {
        for conn in lock(&self.conns).values() {
            conn.kill(code, reason, true);
        }
    }

    // ----- publishing ------------------------------------------------------------

    /// Refuses `data` too large for any frame the server sends: refused here,
    /// at the source, a client never meets a frame it cannot receive (and
    /// recovery never replays one).
    pub(crate) fn check_data_size(&self, data: &str) -> Result<(), CommandError> {
        let limit = self.config.max_data_bytes;
        if data.len() > limit {
            return Err(CommandError::new(
                ErrorCode::LimitExceeded,
                format!("data is {} bytes; at most {limit} are allowed", data.len()),
            ));
        }
        Ok(())
    }

    /// Publishes on a channel through the scaler.
    pub(crate) async fn publish(
        &self,
        channel: &str,
        data: &str,
    ) -> Result<StreamPosition, CommandError> {
        protocol::validate_name(channel, "channel").map_err(CommandError::bad_request)?;
        self.check_data_size(data)?;
        let payload = Bytes::copy_from_slice(data.as_bytes());
        let result = self
            .scaler
            .publish(channel, payload, &self.config.history)
            .await;
        self.published(result)
    }

    /// Publishes a connection's queued publishes in their order, as few
    /// backend round trips as the scaler allows (`Scaler::publish_ordered`).
    /// One answer per item, in order. Items refused here (name, size) are not
    /// sent and do not stop the others.
    pub(crate) async fn publish_ordered(
        &self,
        items: &[(&str, &str)],
    ) -> Vec<Result<StreamPosition, CommandError>> {
        let mut answers: Vec<Option<Result<StreamPosition, CommandError>>> = Vec::new();
        let mut batch = Vec::with_capacity(items.len());
        for (channel, data) in items {
            let checked = protocol::validate_name(channel, "channel")
                .map_err(CommandError::bad_request)
                .and_then(|()| self.check_data_size(data));
            match checked {
                Ok(()) => {
                    batch.push((
                        (*channel).to_owned(),
                        Bytes::copy_from_slice(data.as_bytes()),
                    ));
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut results = self
            .scaler
            .publish_ordered(&batch, &self.config.history)
            .await
            .into_iter();
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    self.published(results.next().unwrap_or_else(|| {
                        Err(ScalerError::backend("the scaler answered fewer publishes"))
                    }))
                })
            })
            .collect()
    }

    fn published(
        &self,
        result: Result<StreamPosition, ScalerError>,
    ) -> Result<StreamPosition, CommandError> {
        match result {
            Ok(pos) => {
                Metrics::inc(&self.metrics.publications_total);
                Ok(pos)
            }
            // Sent but not confirmed in time: it may have been applied, so
            // `unavailable` ("nothing was published") would be a lie.
            Err(ScalerError::Timeout(limit)) => Err(CommandError::new(
                ErrorCode::Timeout,
                format!(
                    "the backend did not confirm within {limit:?}; the publication may or may not have been made"
                ),
            )),
            Err(e) => {
                if e.is_unavailable() {
                    Metrics::inc(&self.metrics.unavailable_total);
                }
                Err(e.into())
            }
        }
    }
}

/// Calls `chore` every `interval` (first after one interval) until the hub
/// shuts down. Missed ticks are delayed, not bunched up.
pub(super) async fn every(hub: Arc<Hub>, interval: Duration, mut chore: impl FnMut(&Arc<Hub>)) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub.shutdown.cancelled() => return,
            _ = tick.tick() => chore(&hub),
        }
    }
}

/// Runs a scaler call with a bound, so nothing waits forever on a dead backend.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, ScalerError>>,
) -> Result<T, ScalerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ScalerError::Timeout(limit)),
    }
}
