//! One instance's local state and its link to the cluster.
//!
//! The node keeps only what it can rebuild: its own connections, and which of
//! them want which topic. Everything shared lives in the scaler.
//!
//! Hot path: the scaler feed delivers a publication once per instance; the feed
//! dispatcher encodes its frame once and queues the same buffer (an `Arc`) to
//! every local subscriber with a non-blocking `try_send`. A subscriber whose queue
//! is full is a slow consumer and is closed with 4008: one slow client never
//! stalls the others, and memory stays bounded.
//!
//! Interest is counted per topic: the node subscribes its feed to a topic when the
//! first local connection wants it and unsubscribes after the last leaves, so an
//! instance holds one backend subscription per channel and only receives traffic
//! for channels it has subscribers for.

use crate::{
    app::{App, Data},
    config::Config,
    connection::{ConnEvent, ConnHandle, Outbound, SharedPublication},
    error::{CommandError, ErrorCode},
    metrics::Metrics,
    protocol,
    shutdown::{DrainGuard, DrainWaiter, drain_pair},
};
use bytes::Bytes;
use scaled_sockets_scaler::{
    FeedControl, FeedEvent, InstanceInfo, PresenceEntry, Scaler, ScalerError, ScalerExt,
    StreamPosition, Topic, types::now_ms,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Local members of one topic, and whether the feed is subscribed to it.
struct TopicEntry {
    members: HashMap<u64, Arc<ConnHandle>>,
    /// Initialised once the feed confirmed the subscription. Concurrent joiners
    /// all wait on the same cell, so the backend sees one subscribe per topic.
    subscribed: Arc<OnceCell<()>>,
}

/// A message between instances, sent to an instance's inbox topic.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")] // externally tagged: RawValue cannot pass through an internally tagged enum
enum Direct {
    Tell {
        client: String,
        frame: String,
    },
    TellSession {
        session: String,
        frame: String,
    },
    Ask {
        client: String,
        event: String,
        data: Box<RawValue>,
        request: u64,
        reply_to: String,
    },
    AskReply {
        request: u64,
        #[serde(default)]
        data: Option<Box<RawValue>>,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    Subscribe {
        client: String,
        channel: String,
    },
    Unsubscribe {
        client: String,
        channel: String,
    },
    Disconnect {
        client: String,
        code: u16,
        reason: String,
        reconnect: bool,
    },
}

pub(crate) struct Node {
    pub(crate) id: Arc<str>,
    pub(crate) config: Config,
    pub(crate) scaler: Arc<dyn Scaler>,
    pub(crate) app: App,
    pub(crate) metrics: Metrics,
    feed: Arc<dyn FeedControl>,
    /// Serialises feed subscribe/unsubscribe calls so an unsubscribe of a topic
    /// that emptied can never overtake a newer subscribe of the same topic.
    feed_ops: tokio::sync::Mutex<()>,
    topics: Mutex<HashMap<Topic, TopicEntry>>,
    conns: Mutex<HashMap<Arc<str>, Arc<ConnHandle>>>,
    remote_asks: Mutex<HashMap<u64, oneshot::Sender<Result<Data, CommandError>>>>,
    next_id: AtomicU64,
    pub(crate) draining: AtomicBool,
    pub(crate) shutdown: CancellationToken,
    /// Cloned into every connection task; taken (dropped) when draining starts.
    drain_root: Mutex<Option<DrainGuard>>,
    /// Recently read ids of the live instances, so routing a message to a
    /// connection on another instance does not list the registry every time.
    live_instances: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
    drain_waiter: Mutex<Option<DrainWaiter>>,
    started: Instant,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("scaler", &self.scaler.name())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the maps
    // half-updated in a way that matters more than losing the instance.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The instance id part of a connection id (`<instance>.<unique>`).
pub(crate) fn instance_of(client: &str) -> Option<&str> {
    client.rsplit_once('.').map(|(instance, _)| instance)
}

impl Node {
    /// Opens the feed, registers the instance and starts the background tasks.
    pub(crate) async fn start(
        config: Config,
        scaler: Arc<dyn Scaler>,
        app: App,
    ) -> Result<Arc<Self>, crate::Error> {
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
        let node = Arc::new(Self {
            id,
            config,
            scaler,
            app,
            metrics: Metrics::default(),
            feed: feed.control,
            feed_ops: tokio::sync::Mutex::new(()),
            topics: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            remote_asks: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            drain_root: Mutex::new(Some(drain_root)),
            live_instances: Mutex::new(None),
            drain_waiter: Mutex::new(Some(drain_waiter)),
            started: Instant::now(),
        });
        node.heartbeat().await?;
        tokio::spawn(run_feed(Arc::downgrade(&node), feed.events));
        tokio::spawn(run_heartbeat(node.clone()));
        tokio::spawn(run_pinger(node.clone()));
        Ok(node)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the node started: a cheap monotonic clock for
    /// last-seen stamps.
    pub(crate) fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A new connection id that routes back to this instance.
    pub(crate) fn new_client_id(&self) -> Arc<str> {
        format!("{}.{}", self.id, uuid::Uuid::new_v4().simple()).into()
    }

    pub(crate) fn connection_count(&self) -> usize {
        lock(&self.conns).len()
    }

    async fn heartbeat(&self) -> Result<(), ScalerError> {
        let info = InstanceInfo {
            id: self.id.to_string(),
            address: self.config.advertised_address.clone(),
            connections: self.connection_count() as u64,
            cores: 0,
            updated_at_ms: now_ms(),
        };
        let ttl = self.config.heartbeat_interval * 5;
        bounded(
            self.config.scaler_timeout,
            self.scaler.register_instance(&info, ttl),
        )
        .await
    }

    /// True while the backend answers and the feed is live (and not draining).
    pub(crate) async fn ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && self.feed.is_live()
            && bounded(Duration::from_secs(2), self.scaler.ping())
                .await
                .is_ok()
    }

    // ----- connections ---------------------------------------------------------

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
        self.shutdown.cancel();
        let left = budget
            .saturating_sub(started.elapsed())
            .min(Duration::from_secs(1));
        if let Err(e) = bounded(
            left.max(Duration::from_millis(100)),
            self.scaler.unregister_instance(&self.id),
        )
        .await
        {
            tracing::warn!(error = %e, "could not leave the cluster registry; the entry will expire");
        }
    }

    pub(crate) fn register(&self, conn: &Arc<ConnHandle>) {
        lock(&self.conns).insert(conn.client.clone(), conn.clone());
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.connections_total);
        // Finished its handshake after draining began: it must go too.
        if self.draining.load(Ordering::SeqCst) {
            conn.kill(protocol::close::RESTARTING, "instance restarting", true);
        }
    }

    pub(crate) fn unregister(&self, conn: &ConnHandle) {
        if lock(&self.conns).remove(&conn.client).is_some() {
            self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn local(&self, client: &str) -> Option<Arc<ConnHandle>> {
        lock(&self.conns).get(client).cloned()
    }

    /// Closes every connection with `code` (used when draining).
    pub(crate) fn close_all(&self, code: u16, reason: &'static str) {
        for conn in lock(&self.conns).values() {
            conn.kill(code, reason, true);
        }
    }

    // ----- topic interest ------------------------------------------------------

    /// Adds `conn` to the local members of `topic`, subscribing the feed if it is
    /// the first. Resolves once the feed is subscribed: from then on every
    /// publication on the topic reaches `conn`.
    pub(crate) async fn join_topic(
        self: &Arc<Self>,
        topic: &Topic,
        conn: &Arc<ConnHandle>,
    ) -> Result<(), ScalerError> {
        let cell = {
            let mut topics = lock(&self.topics);
            let entry = topics.entry(topic.clone()).or_insert_with(|| TopicEntry {
                members: HashMap::new(),
                subscribed: Arc::new(OnceCell::new()),
            });
            entry.members.insert(conn.key, conn.clone());
            entry.subscribed.clone()
        };
        let result = cell
            .get_or_try_init(|| async {
                let _ops = self.feed_ops.lock().await;
                bounded(
                    self.config.scaler_timeout,
                    self.feed.subscribe(std::slice::from_ref(topic)),
                )
                .await?;
                self.metrics.backend_topics.fetch_add(1, Ordering::Relaxed);
                Ok::<(), ScalerError>(())
            })
            .await;
        if let Err(e) = result {
            self.leave_topic(topic, conn.key);
            return Err(e);
        }
        Ok(())
    }

    /// Removes a member; the feed unsubscribes once nobody local wants the topic.
    pub(crate) fn leave_topic(self: &Arc<Self>, topic: &Topic, key: u64) {
        let now_empty = {
            let mut topics = lock(&self.topics);
            match topics.get_mut(topic) {
                Some(entry) => entry.members.remove(&key).is_some() && entry.members.is_empty(),
                None => false,
            }
        };
        if !now_empty {
            return;
        }
        let node = self.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let _ops = node.feed_ops.lock().await;
            // Re-check under the ops lock: somebody may have joined meanwhile.
            let was_subscribed = {
                let mut topics = lock(&node.topics);
                match topics.get(&topic) {
                    Some(entry) if entry.members.is_empty() => {
                        let subscribed = entry.subscribed.initialized();
                        topics.remove(&topic);
                        subscribed
                    }
                    _ => return,
                }
            };
            if was_subscribed {
                node.metrics.backend_topics.fetch_sub(1, Ordering::Relaxed);
                let unsub = node.feed.unsubscribe(std::slice::from_ref(&topic));
                if let Err(e) = bounded(node.config.scaler_timeout, unsub).await {
                    // The feed forgets it on reconnect at the latest; a stale
                    // subscription costs traffic, not correctness.
                    tracing::warn!(?topic, error = %e, "feed unsubscribe failed");
                }
            }
        });
    }

    /// Queues to every local member of `topic`.
    fn fan_out(&self, topic: &Topic, make: impl Fn() -> Outbound) {
        let topics = lock(&self.topics);
        let Some(entry) = topics.get(topic) else {
            return;
        };
        for conn in entry.members.values() {
            if conn.push(make()) {
                Metrics::inc(&self.metrics.frames_queued_total);
            }
        }
    }

    fn channel_topics(&self) -> Vec<Arc<str>> {
        lock(&self.topics)
            .iter()
            .filter(|(_, e)| !e.members.is_empty())
            .filter_map(|(t, _)| match t {
                Topic::Channel(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    // ----- cluster-wide operations (behind `Sockets`) ---------------------------

    pub(crate) async fn publish(
        &self,
        channel: &str,
        data: &str,
    ) -> Result<StreamPosition, CommandError> {
        protocol::validate_name(channel, "channel").map_err(CommandError::bad_request)?;
        let payload = Bytes::copy_from_slice(data.as_bytes());
        let result = bounded(
            self.config.scaler_timeout,
            self.scaler.publish(channel, payload, &self.config.history),
        )
        .await;
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

    async fn send_direct(&self, instance: &str, message: &Direct) -> Result<(), CommandError> {
        let payload = serde_json::to_vec(message)
            .map_err(|e| CommandError::internal(format!("encode: {e}")))?;
        bounded(
            self.config.scaler_timeout,
            self.scaler.send(&Topic::instance(instance), payload.into()),
        )
        .await
        .map_err(Into::into)
    }

    async fn route(&self, client: &str, message: Direct) -> Result<(), CommandError> {
        let Some(instance) = instance_of(client) else {
            return Err(CommandError::not_found(format!("no client `{client}`")));
        };
        if instance == &*self.id {
            // Checked before handling: a disconnect may end the connection
            // (and unregister it) before we could look afterwards.
            if self.local(client).is_none() {
                return Err(CommandError::not_found(format!("no client `{client}`")));
            }
            self.handle_direct(message).await;
            return Ok(());
        }
        if !self
            .live_instance_ids(Some(instance))
            .await?
            .contains(instance)
        {
            return Err(CommandError::not_found(format!(
                "client `{client}`: its instance is gone"
            )));
        }
        self.send_direct(instance, &message).await
    }

    /// The ids of the live instances, read from the registry at most once per
    /// heartbeat interval. When `expecting` is absent from a cached view that
    /// is not brand new, the registry is read again: it may have just joined.
    async fn live_instance_ids(
        &self,
        expecting: Option<&str>,
    ) -> Result<Arc<HashSet<String>>, ScalerError> {
        let max_age = self.config.heartbeat_interval;
        let cached = lock(&self.live_instances).clone();
        if let Some((read_at, ids)) = cached {
            let fresh = read_at.elapsed() < max_age;
            let recent = read_at.elapsed() < Duration::from_millis(100);
            if fresh && (recent || expecting.is_none_or(|id| ids.contains(id))) {
                return Ok(ids);
            }
        }
        let list = bounded(self.config.scaler_timeout, self.scaler.instances()).await?;
        let ids: Arc<HashSet<String>> = Arc::new(list.into_iter().map(|i| i.id).collect());
        *lock(&self.live_instances) = Some((Instant::now(), ids.clone()));
        Ok(ids)
    }

    async fn handle_direct(&self, message: Direct) {
        match message {
            Direct::Tell { client, frame } => {
                if let (Some(conn), Ok(frame)) =
                    (self.local(&client), Bytes::from(frame).try_into())
                {
                    conn.push(Outbound::Frame(Box::new(frame)));
                }
            }
            Direct::TellSession { session, frame } => {
                let Ok(frame) =
                    tokio_tungstenite::tungstenite::Utf8Bytes::try_from(Bytes::from(frame))
                else {
                    return;
                };
                let frame = Arc::new(frame);
                // A scan, not an index: session tells are rare, and an index
                // would cost memory on every idle connection.
                let conns: Vec<Arc<ConnHandle>> = lock(&self.conns)
                    .values()
                    .filter(|c| *c.session == *session)
                    .cloned()
                    .collect();
                for conn in conns {
                    conn.push(Outbound::Shared(frame.clone()));
                }
            }
            Direct::Ask {
                client,
                event,
                data,
                request,
                reply_to,
            } => {
                let result = match self.local(&client) {
                    Some(conn) => {
                        conn.ask(&event, Data::from_raw(data), self.config.ask_timeout)
                            .await
                    }
                    None => Err(CommandError::not_found(format!("no client `{client}`"))),
                };
                let reply = match result {
                    Ok(data) => Direct::AskReply {
                        request,
                        data: Some(data.get().to_owned())
                            .and_then(|s| RawValue::from_string(s).ok()),
                        code: None,
                        message: None,
                    },
                    Err(e) => Direct::AskReply {
                        request,
                        data: None,
                        code: Some(e.code.as_str().to_owned()),
                        message: Some(e.message),
                    },
                };
                if reply_to == *self.id {
                    self.complete_remote_ask(reply);
                } else if let Err(e) = self.send_direct(&reply_to, &reply).await {
                    tracing::warn!(error = %e, "could not return an ask reply");
                }
            }
            reply @ Direct::AskReply { .. } => self.complete_remote_ask(reply),
            Direct::Subscribe { client, channel } => {
                if let Some(conn) = self.local(&client) {
                    conn.push(Outbound::Event(Box::new(ConnEvent::ServerSubscribe {
                        channel,
                    })));
                }
            }
            Direct::Unsubscribe { client, channel } => {
                if let Some(conn) = self.local(&client) {
                    conn.push(Outbound::Event(Box::new(ConnEvent::ServerUnsubscribe {
                        channel,
                    })));
                }
            }
            Direct::Disconnect {
                client,
                code,
                reason,
                reconnect,
            } => {
                if let Some(conn) = self.local(&client) {
                    conn.kill_owned(code, reason, reconnect);
                }
            }
        }
    }

    fn complete_remote_ask(&self, reply: Direct) {
        let Direct::AskReply {
            request,
            data,
            code,
            message,
        } = reply
        else {
            return;
        };
        let Some(tx) = lock(&self.remote_asks).remove(&request) else {
            return;
        };
        let result = match (data, code) {
            (Some(data), None) => Ok(Data::from_raw(data)),
            (_, code) => Err(CommandError::new(
                code.as_deref()
                    .and_then(ErrorCode::parse)
                    .unwrap_or(ErrorCode::Internal),
                message.unwrap_or_default(),
            )),
        };
        let _ = tx.send(result);
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

/// Reads the feed and dispatches: publications and user/session frames to local
/// members, instance messages to their handler, and after an interruption a gap
/// check of every subscribed channel.
async fn run_feed(node: std::sync::Weak<Node>, mut events: mpsc::Receiver<FeedEvent>) {
    while let Some(event) = events.recv().await {
        let Some(node) = node.upgrade() else {
            return;
        };
        match event {
            FeedEvent::Publication(p) => {
                Metrics::inc(&node.metrics.feed_publications_total);
                let Ok(data) = std::str::from_utf8(&p.payload) else {
                    tracing::error!(channel = %p.channel, "publication payload is not UTF-8 JSON; dropped");
                    continue;
                };
                // Encoded once, shared by every local subscriber.
                let shared = Arc::new(SharedPublication {
                    frame: protocol::message(&p.channel, data, p.offset, &p.epoch),
                    channel: p.channel.clone(),
                    offset: p.offset,
                    epoch: p.epoch,
                });
                let topic = Topic::Channel(p.channel);
                node.fan_out(&topic, || Outbound::Publication(shared.clone()));
            }
            FeedEvent::Message { topic, payload } => match &topic {
                Topic::Instance(_) => match serde_json::from_slice::<Direct>(&payload) {
                    // Handled off the dispatcher: an ask may wait for a client.
                    Ok(message) => {
                        tokio::spawn(async move { node.handle_direct(message).await });
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable instance message dropped"),
                },
                Topic::User(_) | Topic::Session(_) => {
                    let Ok(frame) = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(payload)
                    else {
                        tracing::warn!(?topic, "non-UTF-8 frame dropped");
                        continue;
                    };
                    let frame = Arc::new(frame);
                    node.fan_out(&topic, || Outbound::Shared(frame.clone()));
                }
                Topic::Channel(_) => {}
            },
            FeedEvent::Interrupted => {
                Metrics::inc(&node.metrics.feed_interruptions_total);
                tracing::warn!("scaler feed interrupted; live delivery paused until it resumes");
            }
            FeedEvent::Resumed | FeedEvent::Overflowed { .. } => {
                if let FeedEvent::Overflowed { dropped } = event {
                    node.metrics
                        .feed_dropped_total
                        .fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(dropped, "scaler feed overflowed; repairing from history");
                } else {
                    tracing::info!("scaler feed resumed; checking channels for gaps");
                }
                let restarted = matches!(event, FeedEvent::Resumed);
                tokio::spawn(check_gaps(node.clone(), restarted));
            }
        }
    }
}

/// After the feed may have missed publications: reads each subscribed channel's
/// top once and lets every local subscriber compare it with what it delivered.
/// Subscribers behind the top replay from history (or are told
/// `recovered:false`): a gap is never silent.
async fn check_gaps(node: Arc<Node>, backend_restarted: bool) {
    for channel in node.channel_topics() {
        if backend_restarted {
            // A backend that restarted empty lost our presence entries: write
            // them again (idempotent when it kept them).
            let members: Vec<Arc<ConnHandle>> = lock(&node.topics)
                .get(&Topic::Channel(channel.clone()))
                .map(|e| e.members.values().cloned().collect())
                .unwrap_or_default();
            for conn in members {
                let entry = PresenceEntry {
                    client: conn.client.to_string(),
                    user: conn.user.as_deref().map(str::to_owned),
                    instance: node.id.to_string(),
                };
                let add = node.scaler.presence_add(&channel, &entry);
                if let Err(e) = bounded(node.config.scaler_timeout, add).await {
                    tracing::warn!(%channel, error = %e, "could not restore presence");
                    break;
                }
                // Left meanwhile? Then take the entry back out.
                let still = lock(&node.topics)
                    .get(&Topic::Channel(channel.clone()))
                    .is_some_and(|e| e.members.contains_key(&conn.key));
                if !still {
                    let _ = bounded(
                        node.config.scaler_timeout,
                        node.scaler.presence_remove(&channel, &conn.client),
                    )
                    .await;
                }
            }
        }
        let top = bounded(node.config.scaler_timeout, node.scaler.stream_top(&channel)).await;
        let top = match top {
            Ok(top) => top,
            Err(e) => {
                // Without a top we cannot tell who missed what: check from each
                // subscriber's own position instead.
                tracing::warn!(%channel, error = %e, "gap check could not read the stream top");
                StreamPosition::new(u64::MAX, "")
            }
        };
        let topic = Topic::Channel(channel.clone());
        node.fan_out(&topic, || {
            Outbound::Event(Box::new(ConnEvent::GapCheck {
                channel: channel.clone(),
                top: top.clone(),
            }))
        });
    }
}

async fn run_heartbeat(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = node.heartbeat().await {
            tracing::warn!(error = %e, "instance heartbeat failed");
        }
    }
}

/// One timer for all connections: pings them and closes those silent for two
/// intervals (4010) or whose token expired (4001). A timer per socket would
/// cost memory on every idle connection.
async fn run_pinger(node: Arc<Node>) {
    let interval = node.config.ping_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = node.clock_ms();
        let silent_limit = 2 * interval.as_millis() as u64;
        let wall = now_ms();
        let conns: Vec<Arc<ConnHandle>> = lock(&node.conns).values().cloned().collect();
        for conn in conns {
            if conn.expires_at_ms != 0 && wall > conn.expires_at_ms {
                conn.kill(protocol::close::UNAUTHORIZED, "token expired", true);
            } else if now.saturating_sub(conn.last_seen_ms.load(Ordering::Relaxed)) > silent_limit {
                conn.kill(
                    protocol::close::NO_PONG,
                    "no sign of life for 2 ping intervals",
                    true,
                );
            } else {
                conn.push(Outbound::Ping);
            }
        }
    }
}

/// The application's handle on the cluster: publish, tell, ask, subscribe and
/// disconnect anywhere, from anywhere. Cheap to clone.
#[derive(Clone)]
pub struct Sockets {
    pub(crate) node: Arc<Node>,
}

impl fmt::Debug for Sockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sockets")
            .field("instance", &self.node.id)
            .finish()
    }
}

impl Sockets {
    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.node.id
    }

    /// The scaler this instance uses.
    pub fn scaler(&self) -> &Arc<dyn Scaler> {
        &self.node.scaler
    }

    /// Publishes `data` on `channel` to subscribers on every instance; returns the
    /// publication's position. `unavailable` when the backend is down (nothing was
    /// published).
    pub async fn publish(
        &self,
        channel: &str,
        data: &Data,
    ) -> Result<StreamPosition, CommandError> {
        self.node.publish(channel, data.get()).await
    }

    /// Sends a `tell` to one connection, wherever it is.
    pub async fn tell_client(
        &self,
        client: &str,
        event: &str,
        data: &Data,
    ) -> Result<(), CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        let frame = protocol::tell(event, data.get(), None);
        self.node
            .route(
                client,
                Direct::Tell {
                    client: client.to_owned(),
                    frame: frame.as_str().to_owned(),
                },
            )
            .await
    }

    /// Asks one connection, wherever it is, and waits for its answer (at most
    /// `timeout`, then `timeout`).
    pub async fn ask_client(
        &self,
        client: &str,
        event: &str,
        data: &Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        if let Some(conn) = self.node.local(client) {
            return conn.ask(event, data.clone(), timeout).await;
        }
        let request = self.node.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.node.remote_asks).insert(request, tx);
        let sent = self
            .node
            .route(
                client,
                Direct::Ask {
                    client: client.to_owned(),
                    event: event.to_owned(),
                    data: RawValue::from_string(data.get().to_owned())
                        .map_err(|e| CommandError::bad_request(e.to_string()))?,
                    request,
                    reply_to: self.node.id.to_string(),
                },
            )
            .await;
        let result = match sent {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CommandError::internal("ask dropped")),
                Err(_) => Err(CommandError::new(
                    ErrorCode::Timeout,
                    "the client did not answer in time",
                )),
            },
            Err(e) => Err(e),
        };
        lock(&self.node.remote_asks).remove(&request);
        result
    }

    /// Sends a `tell` to every connection of a user, on every instance.
    pub async fn tell_user(
        &self,
        user: &str,
        event: &str,
        data: &Data,
    ) -> Result<(), CommandError> {
        self.tell_topic(Topic::user(user), event, data).await
    }

    /// Sends a `tell` to every connection of a session, on every instance.
    ///
    /// Sessions have no backend subscription of their own (that would cost
    /// every connection a topic): the tell goes to each live instance's inbox,
    /// and each instance delivers it to its connections of that session.
    pub async fn tell_session(
        &self,
        session: &str,
        event: &str,
        data: &Data,
    ) -> Result<(), CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        let frame = protocol::tell(event, data.get(), None).as_str().to_owned();
        let instances = self.node.live_instance_ids(None).await?;
        for instance in instances.iter() {
            let message = Direct::TellSession {
                session: session.to_owned(),
                frame: frame.clone(),
            };
            if **instance == *self.node.id {
                self.node.handle_direct(message).await;
            } else {
                self.node.send_direct(instance, &message).await?;
            }
        }
        Ok(())
    }

    async fn tell_topic(&self, topic: Topic, event: &str, data: &Data) -> Result<(), CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        // Encoded once here; every instance forwards the same bytes.
        let frame = protocol::tell(event, data.get(), None);
        let payload = Bytes::copy_from_slice(frame.as_str().as_bytes());
        bounded(
            self.node.config.scaler_timeout,
            self.node.scaler.send(&topic, payload),
        )
        .await
        .map_err(Into::into)
    }

    /// Subscribes a connection to a channel server-side; it gets a `subscribed`
    /// push (permissions are the app's business here: none are checked).
    pub async fn subscribe_client(&self, client: &str, channel: &str) -> Result<(), CommandError> {
        protocol::validate_name(channel, "channel").map_err(CommandError::bad_request)?;
        self.node
            .route(
                client,
                Direct::Subscribe {
                    client: client.to_owned(),
                    channel: channel.to_owned(),
                },
            )
            .await
    }

    /// Ends a connection's subscription server-side; it gets an `unsubscribed` push.
    pub async fn unsubscribe_client(
        &self,
        client: &str,
        channel: &str,
    ) -> Result<(), CommandError> {
        self.node
            .route(
                client,
                Direct::Unsubscribe {
                    client: client.to_owned(),
                    channel: channel.to_owned(),
                },
            )
            .await
    }

    /// Closes a connection with `code` after a `disconnect` push.
    pub async fn disconnect_client(
        &self,
        client: &str,
        code: u16,
        reason: &str,
        reconnect: bool,
    ) -> Result<(), CommandError> {
        self.node
            .route(
                client,
                Direct::Disconnect {
                    client: client.to_owned(),
                    code,
                    reason: reason.to_owned(),
                    reconnect,
                },
            )
            .await
    }

    /// Who is subscribed to a channel, on every instance.
    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, CommandError> {
        bounded(
            self.node.config.scaler_timeout,
            self.node.scaler.presence(channel),
        )
        .await
        .map_err(Into::into)
    }

    /// Live instances of the cluster.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, CommandError> {
        bounded(
            self.node.config.scaler_timeout,
            self.node.scaler.instances(),
        )
        .await
        .map_err(Into::into)
    }
}
