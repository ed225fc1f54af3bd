//! One WebSocket connection: handshake, commands, and ordered delivery.
//!
//! Each connection is ONE task that owns its socket and reads from ONE bounded
//! queue ([`Outbound`]). Everything that wants to reach the socket goes through
//! that queue with a non-blocking `try_send`: publications (a shared,
//! pre-encoded frame), tells, results of commands that ran in their own task.
//! A full queue means the client does not keep up; it is closed with 4008 rather
//! than allowed to stall the dispatcher or grow memory without bound.
//!
//! Ordering and recovery are per subscription: the connection remembers the last
//! `(epoch, offset)` it delivered on each channel, drops duplicates, and when it
//! sees a gap (an offset jump, an epoch change, or a gap check after the scaler
//! feed was interrupted) it buffers live publications, replays the missing ones
//! from history, then releases the buffer. If history no longer holds them, the
//! client gets `subscribed` with `recovered:false`. Nothing is skipped silently.
//!
//! Why so little per connection: an idle socket should cost a few KiB, so the
//! task holds small buffers, empty maps, and no timer of its own (one node-wide
//! timer pings everybody).

use crate::{
    app::{Context, Data},
    auth::Identity,
    error::{CommandError, ErrorCode},
    metrics::Metrics,
    node::{Node, Sockets, bounded},
    protocol::{self, ClientFrame, SubscriptionRequest, close},
    rate_limit::TokenBucket,
    shutdown::DrainGuard,
};
use futures_util::task::AtomicWaker;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use scaled_sockets_scaler::{HistoryPage, HistoryRequest, PresenceEntry, StreamPosition, Topic};
use serde::{Deserialize, Serialize};
use std::{
    borrow::Cow,
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use std::{pin::Pin, task::Poll};
use tokio::sync::oneshot;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message, Utf8Bytes,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

/// The socket type after a hyper upgrade.
pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A publication as received from the feed, encoded once for every local
/// subscriber.
#[derive(Debug)]
pub(crate) struct SharedPublication {
    pub channel: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
    pub frame: Utf8Bytes,
}

/// What can be queued to a connection. Every variant is one pointer wide, so the
/// queue's blocks stay small.
#[derive(Debug)]
pub(crate) enum Outbound {
    Publication(Arc<SharedPublication>),
    Frame(Box<Utf8Bytes>),
    Shared(Arc<Utf8Bytes>),
    Ping,
    Event(Box<ConnEvent>),
}

/// Results and requests addressed to the connection task itself.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A command that ran in its own task finished; `frame` answers it.
    Done { id: u64, frame: Utf8Bytes },
    /// A subscription is in place (or failed).
    Subscribed {
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        recovering: bool,
        result: Result<HistoryPage, CommandError>,
    },
    /// Missing publications were read from history (or could not be).
    Repaired {
        channel: Arc<str>,
        generation: u64,
        result: Result<HistoryPage, CommandError>,
    },
    /// The feed may have missed publications: compare with the stream's top.
    GapCheck {
        channel: Arc<str>,
        top: StreamPosition,
    },
    /// App code asks this client something.
    ServerAsk {
        event: String,
        data: Data,
        reply: oneshot::Sender<Result<Data, CommandError>>,
    },
    /// App code subscribes this client.
    ServerSubscribe { channel: String },
    /// App code unsubscribes this client.
    ServerUnsubscribe { channel: String },
}

/// The outbound queue's contents.
#[derive(Debug, Default)]
struct OutQueue {
    items: VecDeque<Outbound>,
    closed: bool,
}

/// The shared half of a connection: what the node and other tasks hold.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub key: u64,
    pub client: Arc<str>,
    pub user: Option<Arc<str>>,
    pub session: Arc<str>,
    /// Wall-clock ms when the credentials expire (0 = never).
    pub expires_at_ms: u64,
    /// Node clock ms of the last frame from the client.
    pub last_seen_ms: AtomicU64,
    /// The bounded outbound queue. A plain locked deque rather than a channel:
    /// an idle connection's empty deque allocates nothing, where a channel
    /// allocates its first block up front (about 1 KiB per connection). The
    /// lock is held only to push or pop one item.
    queue: Mutex<OutQueue>,
    queue_limit: usize,
    /// Set once the connection must close. `waker` wakes the connection task
    /// for a kill or a queued item. (A flag and a waker cost less per
    /// connection than a `Notify` and its future.)
    killed: AtomicBool,
    waker: AtomicWaker,
    kill_reason: Mutex<Option<(u16, Cow<'static, str>, bool)>>,
}

impl ConnHandle {
    /// Queues without waiting. A full queue marks a slow consumer, which is
    /// closed with 4008. Returns false when the item was not queued.
    pub(crate) fn push(&self, item: Outbound) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.closed {
            return false;
        }
        if queue.items.len() >= self.queue_limit {
            drop(queue);
            self.kill(close::POLICY, "slow consumer: outbound queue full", true);
            return false;
        }
        queue.items.push_back(item);
        drop(queue);
        self.waker.wake();
        true
    }

    /// The next queued item, or `Pending` with the task registered for a wake.
    fn poll_pop(&self, cx: &mut std::task::Context<'_>) -> Poll<Outbound> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        match queue.items.pop_front() {
            Some(item) => Poll::Ready(item),
            None => {
                // Registered while holding the lock: a push after this point
                // wakes the registered waker, so no wake-up is lost.
                self.waker.register(cx.waker());
                if queue.items.capacity() > 64 {
                    // A burst is over: give its memory back.
                    queue.items = VecDeque::new();
                }
                Poll::Pending
            }
        }
    }

    /// The next queued item, if one is ready.
    fn try_pop(&self) -> Option<Outbound> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .pop_front()
    }

    /// Refuses further items and drops the queued ones.
    fn close_queue(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.closed = true;
        queue.items = VecDeque::new();
    }

    /// Asks the connection task to close with `code` (the first reason wins).
    pub(crate) fn kill(&self, code: u16, reason: &'static str, reconnect: bool) {
        self.kill_with(code, Cow::Borrowed(reason), reconnect);
    }

    pub(crate) fn kill_owned(&self, code: u16, reason: String, reconnect: bool) {
        self.kill_with(code, Cow::Owned(reason), reconnect);
    }

    fn kill_with(&self, code: u16, reason: Cow<'static, str>, reconnect: bool) {
        let mut slot = self.kill_reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((code, reason, reconnect));
        }
        drop(slot);
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once killed; registers the task to be woken otherwise.
    fn poll_killed(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.killed.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.killed.load(Ordering::Acquire)
    }

    fn take_kill_reason(&self) -> (u16, Cow<'static, str>, bool) {
        self.kill_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or((close::NORMAL, Cow::Borrowed(""), false))
    }

    /// Sends a server `ask` to this client and waits for its answer.
    pub(crate) async fn ask(
        &self,
        event: &str,
        data: Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        let (reply, rx) = oneshot::channel();
        let queued = self.push(Outbound::Event(Box::new(ConnEvent::ServerAsk {
            event: event.to_owned(),
            data,
            reply,
        })));
        if !queued {
            return Err(CommandError::not_found("the client is gone"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommandError::not_found(
                "the client disconnected before answering",
            )),
            Err(_) => Err(CommandError::new(
                ErrorCode::Timeout,
                "the client did not answer in time",
            )),
        }
    }
}

/// WebSocket settings for server sockets: small buffers for idle sockets (the
/// library defaults hold 128 KiB per socket), frames capped at the limit.
pub(crate) fn websocket_config(config: &crate::Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_frame_bytes.saturating_mul(4).max(1 << 20))
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

/// What a session record keeps between connections.
#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    user: Option<String>,
    subscriptions: Vec<SubscriptionRequest>,
}

/// One channel subscription of this connection.
#[derive(Debug)]
struct ChannelSub {
    generation: u64,
    /// Last position delivered to the client; `None` until subscribed.
    position: Option<StreamPosition>,
    /// `Some` while subscribing or repairing a gap: live publications wait here.
    // Boxed on purpose: `None` (the usual case) then costs 8 bytes, not 24.
    #[allow(clippy::box_collection)]
    buffer: Option<Box<Vec<Arc<SharedPublication>>>>,
    /// Check for a gap again once the current repair is done.
    recheck: bool,
}

/// The connection task's private state.
struct Conn {
    node: Arc<Node>,
    handle: Arc<ConnHandle>,
    identity: Identity,
    subs: HashMap<Arc<str>, ChannelSub>,
    pending: HashSet<u64>,
    server_asks: HashMap<u64, oneshot::Sender<Result<Data, CommandError>>>,
    next_server_ask: u64,
    next_generation: u64,
    bucket: TokenBucket,
    /// Completion of this connection's latest publish: the next one waits for
    /// it, which keeps each connection's publications in its send order.
    last_publish: Option<oneshot::Receiver<()>>,
    /// When the recent bad frames came (a sliding 10 s window; empty, and so
    /// unallocated, for well-behaved clients).
    bad: std::collections::VecDeque<Instant>,
}

/// Why the main loop ended.
enum Exit {
    /// The client closed or the socket failed: nothing to send.
    Gone,
    /// Close with this code after a `disconnect` push.
    Close(u16, Cow<'static, str>, bool),
}

/// Serves one connection from its HTTP upgrade to its end.
///
/// Everything before the main loop (waiting for the upgrade, the handshake,
/// authentication, the welcome) runs in one boxed future that is freed when it
/// is done: an unboxed state machine would keep its size for the whole life of
/// the connection, and an idle socket should cost as little as possible.
pub(crate) async fn serve_upgrade(
    node: Arc<Node>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    guard: DrainGuard,
) {
    let Some((conn, ws)) = Box::pin(set_up(node, on_upgrade)).await else {
        return;
    };
    let (mut conn, mut ws) = (conn, ws);
    // By reference: rustc keeps an async fn's arguments in its state twice
    // (as passed, and as moved into locals), which would double the biggest
    // part of every idle connection.
    run(&mut conn, &mut ws).await;
    drop(guard);
}

async fn set_up(node: Arc<Node>, on_upgrade: hyper::upgrade::OnUpgrade) -> Option<(Conn, Socket)> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    let config = websocket_config(&node.config);
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (identity, connect) = handshake(&node, &mut ws).await?;
    let conn = welcome(node, &mut ws, identity, connect).await?;
    Some((conn, ws))
}

struct ConnectRequest {
    session: Option<String>,
    subscriptions: Vec<SubscriptionRequest>,
}

async fn send_close(ws: &mut Socket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.chars().take(100).collect::<String>().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
    // Give the client a moment to answer the close, then drop the socket.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

async fn send_frame(ws: &mut Socket, frame: Utf8Bytes) -> bool {
    tokio::time::timeout(Duration::from_secs(5), ws.send(Message::Text(frame)))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Waits for `connect` and authenticates it.
async fn handshake(node: &Arc<Node>, ws: &mut Socket) -> Option<(Identity, ConnectRequest)> {
    let deadline = tokio::time::Instant::now() + node.config.handshake_timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                send_close(
                    ws,
                    close::HANDSHAKE_TIMEOUT,
                    "no connect within the handshake timeout",
                )
                .await;
                return None;
            }
            Ok(None) | Ok(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                return None;
            }
            Ok(Some(Err(WsError::Capacity(_)))) => {
                send_close(ws, close::TOO_LARGE, "frame too large").await;
                return None;
            }
            Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(Message::Binary(_)))) => {
                send_close(ws, close::BINARY, "binary frames are not accepted").await;
                return None;
            }
            Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    };
    let (token, session, subscriptions) = match protocol::parse_client_frame(&text) {
        Ok(ClientFrame::Connect {
            id: _,
            token,
            session,
            subscriptions,
        }) => (
            token.map(Cow::into_owned),
            session.map(Cow::into_owned),
            subscriptions,
        ),
        Ok(_) => {
            send_frame(
                ws,
                protocol::error(
                    None,
                    ErrorCode::BadRequest,
                    "the first frame must be `connect`",
                ),
            )
            .await;
            send_close(ws, close::PROTOCOL, "the first frame must be connect").await;
            return None;
        }
        Err(bad) => {
            let message = if bad.was_connect {
                bad.message
            } else {
                format!("the first frame must be `connect`: {}", bad.message)
            };
            send_frame(ws, protocol::error(bad.id, ErrorCode::BadRequest, &message)).await;
            send_close(
                ws,
                close::PROTOCOL,
                "the first frame must be a valid connect",
            )
            .await;
            return None;
        }
    };
    let auth = node.app.authenticator.clone();
    let identity =
        match tokio::time::timeout_at(deadline, auth.authenticate(token.as_deref())).await {
            Ok(Ok(identity)) => identity,
            Ok(Err(e)) => {
                let code = if e.code == ErrorCode::Unauthorized || e.code == ErrorCode::Forbidden {
                    ErrorCode::Unauthorized
                } else {
                    e.code
                };
                send_frame(ws, protocol::error(None, code, &e.message)).await;
                send_close(ws, close::UNAUTHORIZED, "unauthorized").await;
                return None;
            }
            Err(_) => {
                send_close(
                    ws,
                    close::HANDSHAKE_TIMEOUT,
                    "authentication did not finish in time",
                )
                .await;
                return None;
            }
        };
    Some((
        identity,
        ConnectRequest {
            session,
            subscriptions,
        },
    ))
}

/// Resumes or creates the session, registers the connection and sends `welcome`.
async fn welcome(
    node: Arc<Node>,
    ws: &mut Socket,
    identity: Identity,
    connect: ConnectRequest,
) -> Option<Conn> {
    let timeout = node.config.scaler_timeout;
    let mut restored = Vec::new();
    let mut session_id = None;
    if let Some(requested) = connect.session.as_deref() {
        match bounded(timeout, node.scaler.session_get(requested)).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<SessionRecord>(&bytes) {
                // A session resumes only for the same user: knowing an id is not
                // enough to take over someone else's session.
                Ok(record) if record.user == identity.user => {
                    restored = record.subscriptions;
                    session_id = Some(requested.to_owned());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable session record ignored"),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "session lookup failed; starting a new session");
            }
        }
    }
    let resumed = session_id.is_some();
    let session: Arc<str> = session_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        .into();
    let expires_at_ms = identity
        .expires_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let handle = Arc::new(ConnHandle {
        key: node.next_id(),
        client: node.new_client_id(),
        user: identity.user.as_deref().map(Arc::from),
        session: session.clone(),
        expires_at_ms,
        last_seen_ms: AtomicU64::new(node.clock_ms()),
        queue: Mutex::new(OutQueue::default()),
        queue_limit: node.config.outbound_queue,
        killed: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        kill_reason: Mutex::new(None),
    });
    // Join the user's topic before welcoming, so a tell sent right after the
    // welcome is not missed. (Sessions need no topic: see Sockets::tell_session.)
    let topics: Vec<Topic> = handle
        .user
        .iter()
        .map(|user| Topic::User(user.clone()))
        .collect();
    for topic in &topics {
        if let Err(e) = node.join_topic(topic, &handle).await {
            for t in &topics {
                node.leave_topic(t, handle.key);
            }
            tracing::warn!(error = %e, "cannot register connection with the scaler");
            send_frame(
                ws,
                protocol::error(
                    None,
                    ErrorCode::Unavailable,
                    "the cluster backend is unavailable",
                ),
            )
            .await;
            send_close(
                ws,
                close::RESTARTING,
                "backend unavailable: reconnect later",
            )
            .await;
            return None;
        }
    }
    node.register(&handle);
    // The session is live (resumable by another tab) from now on, not only
    // after this connection closes; the close rewrites it with positions.
    {
        let record = SessionRecord {
            user: identity.user.clone(),
            subscriptions: Vec::new(),
        };
        let node = node.clone();
        let session = session.clone();
        tokio::spawn(async move {
            if let Ok(bytes) = serde_json::to_vec(&record) {
                let put =
                    node.scaler
                        .session_put(&session, bytes.into(), node.config.resume_window);
                if let Err(e) = bounded(node.config.scaler_timeout, put).await {
                    tracing::debug!(error = %e, "could not record the session");
                }
            }
        });
    }
    let frame = protocol::FrameWriter::new("welcome")
        .str("session", &session)
        .str("client", &handle.client)
        .str("instance", &node.id)
        .opt_str("user", handle.user.as_deref())
        .u64(
            "ping_interval",
            node.config.ping_interval.as_millis() as u64,
        )
        .bool("resumed", resumed)
        .finish();
    let publish_rate = node.config.publish_rate;
    let mut conn = Conn {
        handle: handle.clone(),
        identity,
        subs: HashMap::new(),
        pending: HashSet::new(),
        server_asks: HashMap::new(),
        next_server_ask: 1,
        next_generation: 1,
        bucket: TokenBucket::new(publish_rate, publish_rate.saturating_mul(2)),
        bad: std::collections::VecDeque::new(),
        last_publish: None,
        node,
    };
    if !send_frame(ws, frame).await {
        conn.cleanup();
        return None;
    }
    if let Some(hook) = conn.node.app.on_connect.clone() {
        tokio::spawn(hook(conn.context()));
    }
    // Restored subscriptions first, then the client's own list, which wins for
    // channels in both (it knows what it last saw).
    let mut wanted: Vec<SubscriptionRequest> = Vec::new();
    for request in restored.into_iter().chain(connect.subscriptions) {
        if let Some(existing) = wanted.iter_mut().find(|r| r.channel == request.channel) {
            *existing = request;
        } else {
            wanted.push(request);
        }
    }
    let mut out = Vec::new();
    for request in wanted {
        conn.server_subscribe(request, &mut out);
    }
    for frame in out {
        if !send_frame(ws, frame).await {
            conn.cleanup();
            return None;
        }
    }
    Some(conn)
}

impl Conn {
    fn context(&self) -> Context {
        Context {
            client: self.handle.client.clone(),
            user: self.handle.user.clone(),
            session: self.handle.session.clone(),
            sockets: Sockets {
                node: self.node.clone(),
            },
        }
    }

    /// Records a bad frame; true when the connection must close (4000).
    fn bad_frame(&mut self, id: Option<u64>, message: &str, out: &mut Vec<Utf8Bytes>) -> bool {
        Metrics::inc(&self.node.metrics.bad_frames_total);
        out.push(protocol::error(id, ErrorCode::BadRequest, message));
        let now = Instant::now();
        while self
            .bad
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(10))
        {
            self.bad.pop_front();
        }
        self.bad.push_back(now);
        self.bad.len() > self.node.config.max_bad_frames as usize
    }

    /// Claims a command id; a duplicate of a pending one is a bad frame.
    fn claim(&mut self, id: u64, out: &mut Vec<Utf8Bytes>) -> Result<(), bool> {
        if self.pending.insert(id) {
            Ok(())
        } else {
            Err(self.bad_frame(Some(id), &format!("id {id} is already pending"), out))
        }
    }

    /// Runs `work` in its own task; its answer comes back as `ConnEvent::Done`.
    fn spawn_command<F>(&self, id: u64, work: F)
    where
        F: Future<Output = Utf8Bytes> + Send + 'static,
    {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let frame = work.await;
            handle.push(Outbound::Event(Box::new(ConnEvent::Done { id, frame })));
        });
    }

    /// Handles one text frame. Returns an exit when the connection must close.
    fn on_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Option<Exit> {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(bad) => {
                return self
                    .bad_frame(bad.id, &bad.message, out)
                    .then(|| Exit::Close(close::PROTOCOL, "too many bad frames".into(), false));
            }
        };
        let too_many_bad = || {
            Some(Exit::Close(
                close::PROTOCOL,
                "too many bad frames".into(),
                false,
            ))
        };
        match frame {
            ClientFrame::Connect { id, .. } => {
                if self.bad_frame(id, "already connected", out) {
                    return too_many_bad();
                }
            }
            ClientFrame::Subscribe { id, request } => {
                if let Err(fatal) = self.claim(id, out) {
                    return fatal.then(too_many_bad).flatten();
                }
                if let Err(e) = self.check_subscribe(&request.channel) {
                    self.pending.remove(&id);
                    out.push(protocol::error(Some(id), e.code, &e.message));
                } else if let Some(sub) = self.subs.get(request.channel.as_str()) {
                    self.pending.remove(&id);
                    match &sub.position {
                        Some(pos) => out.push(
                            protocol::reply(id)
                                .u64("offset", pos.offset)
                                .str("epoch", &pos.epoch)
                                .finish(),
                        ),
                        None => out.push(protocol::error(
                            Some(id),
                            ErrorCode::BadRequest,
                            "a subscription to this channel is in progress",
                        )),
                    }
                } else {
                    self.start_subscription(Some(id), request);
                }
            }
            ClientFrame::Unsubscribe { id, channel } => {
                if let Err(fatal) = self.claim(id, out) {
                    return fatal.then(too_many_bad).flatten();
                }
                self.pending.remove(&id);
                self.end_subscription(&channel);
                out.push(protocol::reply(id).finish());
            }
            ClientFrame::Publish { id, channel, data } => {
                if let Err(fatal) = self.claim(id, out) {
                    return fatal.then(too_many_bad).flatten();
                }
                if !self.identity.publish.allows(&channel) {
                    self.pending.remove(&id);
                    out.push(protocol::error(
                        Some(id),
                        ErrorCode::Forbidden,
                        "you may not publish to this channel",
                    ));
                } else if !self.bucket.try_take() {
                    self.pending.remove(&id);
                    out.push(protocol::error(
                        Some(id),
                        ErrorCode::RateLimited,
                        "publish rate limit exceeded",
                    ));
                } else {
                    let node = self.node.clone();
                    let channel = channel.into_owned();
                    let data = data.get().to_owned();
                    // Publishes of one connection reach the backend in the order
                    // they were sent: each waits for the previous one. (Tasks
                    // on a multi-threaded runtime start in no particular order.)
                    let previous = self.last_publish.take();
                    let (done, next) = oneshot::channel::<()>();
                    self.last_publish = Some(next);
                    self.spawn_command(id, async move {
                        if let Some(previous) = previous {
                            let _ = previous.await;
                        }
                        let result = node.publish(&channel, &data).await;
                        let _ = done.send(());
                        match result {
                            Ok(pos) => protocol::reply(id)
                                .u64("offset", pos.offset)
                                .str("epoch", &pos.epoch)
                                .finish(),
                            Err(e) => protocol::error(Some(id), e.code, &e.message),
                        }
                    });
                }
            }
            ClientFrame::Ask {
                id,
                event,
                data,
                core,
            } => {
                if let Err(fatal) = self.claim(id, out) {
                    return fatal.then(too_many_bad).flatten();
                }
                if let Some(core) = core {
                    self.pending.remove(&id);
                    out.push(protocol::error(
                        Some(id),
                        ErrorCode::NotFound,
                        &format!("no core `{core}`"),
                    ));
                    return None;
                }
                let Some(handler) = self.node.app.asks.get(event.as_ref()).cloned() else {
                    self.pending.remove(&id);
                    out.push(protocol::error(
                        Some(id),
                        ErrorCode::NotFound,
                        &format!("no ask handler for `{event}`"),
                    ));
                    return None;
                };
                let cx = self.context();
                let data = Data::from(data);
                let limit = self.node.config.ask_timeout;
                self.spawn_command(id, async move {
                    match tokio::time::timeout(limit, handler(cx, data)).await {
                        Ok(Ok(data)) => protocol::reply_data(id, data.get()),
                        Ok(Err(e)) => protocol::error(Some(id), e.code, &e.message),
                        Err(_) => protocol::error(
                            Some(id),
                            ErrorCode::Timeout,
                            "the handler did not answer in time",
                        ),
                    }
                });
            }
            ClientFrame::Tell { event, data, core } => {
                if let Some(core) = core {
                    out.push(protocol::error(
                        None,
                        ErrorCode::NotFound,
                        &format!("no core `{core}`"),
                    ));
                    return None;
                }
                match self.node.app.tells.get(event.as_ref()).cloned() {
                    Some(handler) => {
                        tokio::spawn(handler(self.context(), Data::from(data)));
                    }
                    None => out.push(protocol::error(
                        None,
                        ErrorCode::NotFound,
                        &format!("no tell handler for `{event}`"),
                    )),
                }
            }
            ClientFrame::Join { id, core, .. } | ClientFrame::Leave { id, core } => {
                if let Err(fatal) = self.claim(id, out) {
                    return fatal.then(too_many_bad).flatten();
                }
                self.pending.remove(&id);
                out.push(protocol::error(
                    Some(id),
                    ErrorCode::NotFound,
                    &format!("no core `{core}`"),
                ));
            }
            ClientFrame::Presence { id, channel } => {
                if let Err(fatal) = self.claim(id, out) {
                    return fatal.then(too_many_bad).flatten();
                }
                if !self.identity.subscribe.allows(&channel) {
                    self.pending.remove(&id);
                    out.push(protocol::error(
                        Some(id),
                        ErrorCode::Forbidden,
                        "you may not see this channel",
                    ));
                    return None;
                }
                let node = self.node.clone();
                let channel = channel.into_owned();
                self.spawn_command(id, async move {
                    match bounded(node.config.scaler_timeout, node.scaler.presence(&channel)).await
                    {
                        Ok(entries) => {
                            #[derive(Serialize)]
                            struct Client<'a> {
                                client: &'a str,
                                user: Option<&'a str>,
                            }
                            #[derive(Serialize)]
                            struct Clients<'a> {
                                clients: Vec<Client<'a>>,
                            }
                            let clients = Clients {
                                clients: entries
                                    .iter()
                                    .map(|e| Client {
                                        client: &e.client,
                                        user: e.user.as_deref(),
                                    })
                                    .collect(),
                            };
                            protocol::reply(id).json("data", &clients).finish()
                        }
                        Err(e) => {
                            let e = CommandError::from(e);
                            protocol::error(Some(id), e.code, &e.message)
                        }
                    }
                });
            }
            ClientFrame::Reply { id, data } => {
                if let Some(tx) = self.server_asks.remove(&id) {
                    let _ = tx.send(Ok(Data::from(data)));
                }
            }
            ClientFrame::Error { id, code, message } => {
                if let Some(tx) = self.server_asks.remove(&id) {
                    let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal);
                    let _ = tx.send(Err(CommandError::new(code, message)));
                }
            }
            ClientFrame::Pong => {}
        }
        None
    }

    fn check_subscribe(&self, channel: &str) -> Result<(), CommandError> {
        if !self.identity.subscribe.allows(channel) {
            return Err(CommandError::forbidden(
                "you may not subscribe to this channel",
            ));
        }
        if !self.subs.contains_key(channel) && self.subs.len() >= self.node.config.max_subscriptions
        {
            return Err(CommandError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    self.node.config.max_subscriptions
                ),
            ));
        }
        Ok(())
    }

    /// A subscription the server makes (connect list, session restore, app code):
    /// answered with a `subscribed` push, or `unsubscribed` with the reason.
    fn server_subscribe(&mut self, request: SubscriptionRequest, out: &mut Vec<Utf8Bytes>) {
        if let Err(e) = protocol::validate_name(&request.channel, "channel") {
            out.push(protocol::unsubscribed(
                &request.channel,
                &format!("bad_request: {e}"),
            ));
            return;
        }
        if self.subs.contains_key(request.channel.as_str()) {
            return;
        }
        match self.check_subscribe(&request.channel) {
            Ok(()) => self.start_subscription(None, request),
            Err(e) => out.push(protocol::unsubscribed(
                &request.channel,
                &format!("{}: {}", e.code, e.message),
            )),
        }
    }

    fn start_subscription(&mut self, id: Option<u64>, request: SubscriptionRequest) {
        let channel: Arc<str> = request.channel.as_str().into();
        let generation = self.next_generation;
        self.next_generation += 1;
        self.subs.insert(
            channel.clone(),
            ChannelSub {
                generation,
                position: None,
                buffer: Some(Box::default()),
                recheck: false,
            },
        );
        // A recovery position: offset with its epoch (an offset without an epoch
        // cannot be checked, so it recovers nothing: `recovered:false`).
        let since = match (request.offset, request.epoch) {
            (None, None) => None,
            (offset, epoch) => Some(StreamPosition::new(
                offset.unwrap_or(0),
                epoch.unwrap_or_default(),
            )),
        };
        let node = self.node.clone();
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let recovering = since.is_some();
            let timeout = node.config.scaler_timeout;
            // One bound for the whole subscription (not per call), so a dead
            // backend is answered `unavailable` within the documented 5 s.
            let steps = async {
                node.join_topic(&Topic::Channel(channel.clone()), &handle)
                    .await?;
                let entry = PresenceEntry {
                    client: handle.client.to_string(),
                    user: handle.user.as_deref().map(str::to_owned),
                    instance: node.id.to_string(),
                };
                bounded(timeout, node.scaler.presence_add(&channel, &entry)).await?;
                let request = HistoryRequest {
                    since,
                    limit: node.config.recovery_limit,
                };
                bounded(timeout, node.scaler.history(&channel, &request)).await
            };
            let result = bounded(timeout, steps).await.map_err(CommandError::from);
            handle.push(Outbound::Event(Box::new(ConnEvent::Subscribed {
                id,
                channel,
                generation,
                recovering,
                result,
            })));
        });
    }

    fn end_subscription(&mut self, channel: &str) {
        if self.subs.remove(channel).is_some() {
            self.leave_channel(channel);
        }
    }

    fn leave_channel(&self, channel: &str) {
        self.node
            .leave_topic(&Topic::channel(channel), self.handle.key);
        let node = self.node.clone();
        let channel = channel.to_owned();
        let client = self.handle.client.clone();
        tokio::spawn(async move {
            if let Err(e) = bounded(
                node.config.scaler_timeout,
                node.scaler.presence_remove(&channel, &client),
            )
            .await
            {
                tracing::debug!(error = %e, "presence remove failed; the entry expires with the instance");
            }
        });
    }

    /// Handles one queued item.
    fn on_outbound(&mut self, item: Outbound, out: &mut Vec<Utf8Bytes>) {
        match item {
            Outbound::Publication(p) => self.on_publication(p, out),
            Outbound::Frame(frame) => out.push(*frame),
            Outbound::Shared(frame) => out.push((*frame).clone()),
            Outbound::Ping => out.push(protocol::ping()),
            Outbound::Event(event) => self.on_event(*event, out),
        }
    }

    fn on_publication(&mut self, p: Arc<SharedPublication>, out: &mut Vec<Utf8Bytes>) {
        let limit = self.node.config.outbound_queue;
        let Some(sub) = self.subs.get_mut(&p.channel) else {
            return;
        };
        if let Some(buffer) = &mut sub.buffer {
            if buffer.len() < limit {
                buffer.push(p);
            } else {
                // Too far behind to buffer: drop and repair again from history.
                sub.recheck = true;
            }
            return;
        }
        if !deliver_live(sub, &p, out) {
            self.start_repair(p.channel.clone(), Some(p));
        }
    }

    fn start_repair(&mut self, channel: Arc<str>, first: Option<Arc<SharedPublication>>) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        let Some(since) = sub.position.clone() else {
            return;
        };
        sub.buffer = Some(Box::new(first.into_iter().collect()));
        sub.recheck = false;
        let generation = sub.generation;
        let node = self.node.clone();
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let request = HistoryRequest {
                since: Some(since),
                limit: node.config.recovery_limit,
            };
            let result = bounded(
                node.config.scaler_timeout,
                node.scaler.history(&channel, &request),
            )
            .await
            .map_err(CommandError::from);
            handle.push(Outbound::Event(Box::new(ConnEvent::Repaired {
                channel,
                generation,
                result,
            })));
        });
    }

    fn on_event(&mut self, event: ConnEvent, out: &mut Vec<Utf8Bytes>) {
        match event {
            ConnEvent::Done { id, frame } => {
                self.pending.remove(&id);
                out.push(frame);
            }
            ConnEvent::Subscribed {
                id,
                channel,
                generation,
                recovering,
                result,
            } => self.on_subscribed(id, channel, generation, recovering, result, out),
            ConnEvent::Repaired {
                channel,
                generation,
                result,
            } => self.on_repaired(channel, generation, result, out),
            ConnEvent::GapCheck { channel, top } => {
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                if sub.buffer.is_some() {
                    sub.recheck = true;
                    return;
                }
                let behind = sub
                    .position
                    .as_ref()
                    .is_some_and(|pos| top.epoch != pos.epoch || top.offset > pos.offset);
                if behind {
                    self.start_repair(channel, None);
                }
            }
            ConnEvent::ServerAsk { event, data, reply } => {
                let id = self.next_server_ask;
                self.next_server_ask += 1;
                self.server_asks.retain(|_, tx| !tx.is_closed());
                self.server_asks.insert(id, reply);
                out.push(
                    protocol::FrameWriter::new("ask")
                        .u64("id", id)
                        .str("event", &event)
                        .raw("data", data.get())
                        .finish(),
                );
            }
            ConnEvent::ServerSubscribe { channel } => {
                self.server_subscribe(
                    SubscriptionRequest {
                        channel,
                        offset: None,
                        epoch: None,
                    },
                    out,
                );
            }
            ConnEvent::ServerUnsubscribe { channel } => {
                if self.subs.contains_key(channel.as_str()) {
                    self.end_subscription(&channel);
                    out.push(protocol::unsubscribed(
                        &channel,
                        "unsubscribed by the server",
                    ));
                }
            }
        }
    }

    fn on_subscribed(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        recovering: bool,
        result: Result<HistoryPage, CommandError>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if let Some(id) = id {
            self.pending.remove(&id);
        }
        let current = self.subs.get(&channel).map(|s| s.generation);
        if current != Some(generation) {
            // Unsubscribed meanwhile. Undo what the task did, unless a newer
            // subscription to the channel now relies on it.
            if current.is_none() {
                self.leave_channel(&channel);
            }
            if let Some(id) = id {
                out.push(protocol::error(
                    Some(id),
                    ErrorCode::NotFound,
                    "unsubscribed before the subscription completed",
                ));
            }
            return;
        }
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                self.subs.remove(&channel);
                self.leave_channel(&channel);
                match id {
                    Some(id) => out.push(protocol::error(Some(id), e.code, &e.message)),
                    None => out.push(protocol::unsubscribed(
                        &channel,
                        &format!("{}: {}", e.code, e.message),
                    )),
                }
                return;
            }
        };
        let recovered = !recovering || page.recovered;
        if recovering {
            if page.recovered {
                Metrics::inc(&self.node.metrics.recoveries_total);
            } else {
                Metrics::inc(&self.node.metrics.recovery_failures_total);
            }
        }
        out.push(match id {
            Some(id) => {
                let mut reply = protocol::reply(id)
                    .u64("offset", page.top.offset)
                    .str("epoch", &page.top.epoch);
                if recovering {
                    reply = reply.bool("recovered", page.recovered);
                }
                reply.finish()
            }
            None => protocol::subscribed(&channel, page.top.offset, &page.top.epoch, recovered),
        });
        if recovering && page.recovered {
            for p in &page.publications {
                out.push(encode_replayed(p));
            }
        }
        self.finish_buffering(&channel, page.top, out);
    }

    fn on_repaired(
        &mut self,
        channel: Arc<str>,
        generation: u64,
        result: Result<HistoryPage, CommandError>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if sub.generation != generation || sub.buffer.is_none() {
            return;
        }
        let Some(from) = sub.position.clone() else {
            return;
        };
        let position = match result {
            Ok(page) if page.recovered => {
                Metrics::inc(&self.node.metrics.recoveries_total);
                for p in page.publications.iter().filter(|p| p.offset > from.offset) {
                    out.push(encode_replayed(p));
                }
                page.top
            }
            Ok(page) => {
                Metrics::inc(&self.node.metrics.recovery_failures_total);
                out.push(protocol::subscribed(
                    &channel,
                    page.top.offset,
                    &page.top.epoch,
                    false,
                ));
                page.top
            }
            Err(e) => {
                // History is unreachable. If live publications are waiting, the
                // ones before them are lost for this client: say so, then go on
                // from the first waiting one.
                let first = sub
                    .buffer
                    .as_ref()
                    .and_then(|b| b.first())
                    .map(|p| (p.offset, p.epoch.clone()));
                match first {
                    Some((offset, epoch)) => {
                        tracing::warn!(%channel, error = %e, "gap repair failed; telling the client recovered:false");
                        Metrics::inc(&self.node.metrics.recovery_failures_total);
                        let position = StreamPosition::new(offset - 1, epoch);
                        out.push(protocol::subscribed(
                            &channel,
                            position.offset,
                            &position.epoch,
                            false,
                        ));
                        position
                    }
                    None => {
                        // No gap proven yet; the next publication or gap check
                        // will try again.
                        sub.recheck = false;
                        from
                    }
                }
            }
        };
        self.finish_buffering(&channel, position, out);
    }

    /// Ends buffering at `position`: releases the waiting live publications in
    /// order (dropping what the client already has) and repairs any further gap.
    fn finish_buffering(
        &mut self,
        channel: &Arc<str>,
        position: StreamPosition,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        sub.position = Some(position);
        let buffered = sub.buffer.take().map(|b| *b).unwrap_or_default();
        let mut gap_at = None;
        for (i, p) in buffered.iter().enumerate() {
            if !deliver_live(sub, p, out) {
                gap_at = Some(i);
                break;
            }
        }
        if let Some(i) = gap_at {
            let mut rest = buffered.into_iter().skip(i);
            let first = rest.next();
            self.start_repair(channel.clone(), first);
            if let Some(sub) = self.subs.get_mut(channel) {
                if let Some(buffer) = &mut sub.buffer {
                    buffer.extend(rest);
                }
            }
        } else if sub.recheck {
            self.start_repair(channel.clone(), None);
        }
    }

    /// Unregisters everywhere and saves the session for resumption.
    fn cleanup(&mut self) {
        self.handle.close_queue();
        self.node.unregister(&self.handle);
        for channel in self.subs.keys() {
            self.leave_channel(channel);
        }
        self.node.leave_topic(
            &Topic::Session(self.handle.session.clone()),
            self.handle.key,
        );
        if let Some(user) = &self.handle.user {
            self.node
                .leave_topic(&Topic::User(user.clone()), self.handle.key);
        }
        for (_, tx) in self.server_asks.drain() {
            let _ = tx.send(Err(CommandError::not_found("the client disconnected")));
        }
        let record = SessionRecord {
            user: self.identity.user.clone(),
            subscriptions: self
                .subs
                .iter()
                .filter_map(|(channel, sub)| {
                    sub.position.as_ref().map(|pos| SubscriptionRequest {
                        channel: channel.to_string(),
                        offset: Some(pos.offset),
                        epoch: Some(pos.epoch.to_string()),
                    })
                })
                .collect(),
        };
        let node = self.node.clone();
        let session = self.handle.session.clone();
        let hook = node
            .app
            .on_disconnect
            .clone()
            .map(|hook| hook(self.context()));
        tokio::spawn(async move {
            if let Ok(bytes) = serde_json::to_vec(&record) {
                let put =
                    node.scaler
                        .session_put(&session, bytes.into(), node.config.resume_window);
                if let Err(e) = bounded(node.config.scaler_timeout, put).await {
                    tracing::warn!(error = %e, "could not save the session; it will not be resumable");
                }
            }
            if let Some(hook) = hook {
                hook.await;
            }
        });
    }
}

/// Writes a live publication if it is the next one. Returns false on a gap
/// (offset jump or epoch change): the caller repairs from history.
fn deliver_live(
    sub: &mut ChannelSub,
    p: &Arc<SharedPublication>,
    out: &mut Vec<Utf8Bytes>,
) -> bool {
    let Some(pos) = sub.position.as_mut() else {
        return true;
    };
    if p.epoch != pos.epoch {
        return false;
    }
    if p.offset <= pos.offset {
        return true; // already delivered (replayed from history): drop the duplicate
    }
    if p.offset != pos.offset + 1 {
        return false;
    }
    pos.offset = p.offset;
    out.push(p.frame.clone());
    true
}

fn encode_replayed(p: &scaled_sockets_scaler::Publication) -> Utf8Bytes {
    let data = std::str::from_utf8(&p.payload).unwrap_or("null");
    protocol::message(&p.channel, data, p.offset, &p.epoch)
}

/// Writes the frames collected in `out` (one flush for the batch).
async fn write_all(ws: &mut Socket, out: &mut Vec<Utf8Bytes>) -> Result<(), WsError> {
    for frame in out.drain(..) {
        ws.feed(Message::Text(frame)).await?;
    }
    ws.flush().await
}

/// What woke the main loop.
enum Wake {
    Killed,
    Queued(Outbound),
    Incoming(Option<Result<Message, WsError>>),
}

/// How writing a batch ended.
enum Written {
    Done,
    Failed,
    Killed,
}

/// The connection's main loop.
///
/// Written with `poll_fn` rather than `select!`: the loop's state is what stays
/// allocated for every idle connection, and `poll_fn` keeps only a few
/// pointers in it where `select!` keeps every branch's future.
async fn run(conn: &mut Conn, ws: &mut Socket) {
    let handle = conn.handle.clone();
    let mut out: Vec<Utf8Bytes> = Vec::new();
    let exit = loop {
        // Kill first, then queued items (our own replies and pushes), then input.
        let wake = std::future::poll_fn(|cx| {
            if handle.poll_killed(cx) {
                return Poll::Ready(Wake::Killed);
            }
            if let Poll::Ready(item) = handle.poll_pop(cx) {
                return Poll::Ready(Wake::Queued(item));
            }
            if let Poll::Ready(msg) = Pin::new(&mut *ws).poll_next(cx) {
                return Poll::Ready(Wake::Incoming(msg));
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Killed => {
                let (code, reason, reconnect) = handle.take_kill_reason();
                break Exit::Close(code, reason, reconnect);
            }
            Wake::Queued(item) => {
                conn.on_outbound(item, &mut out);
                // Drain what else is ready, then write it with one flush.
                for _ in 0..64 {
                    match handle.try_pop() {
                        Some(item) => conn.on_outbound(item, &mut out),
                        None => break,
                    }
                }
            }
            Wake::Incoming(incoming) => {
                handle
                    .last_seen_ms
                    .store(conn.node.clock_ms(), Ordering::Relaxed);
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(exit) = conn.on_text(&text, &mut out) {
                            let _ = Box::pin(write_all(ws, &mut out)).await;
                            break exit;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break Exit::Close(
                            close::BINARY,
                            "binary frames are not accepted".into(),
                            false,
                        );
                    }
                    Some(Ok(Message::Close(_))) | None => break Exit::Gone,
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Capacity(_))) => {
                        break Exit::Close(close::TOO_LARGE, "frame too large".into(), false);
                    }
                    Some(Err(_)) => break Exit::Gone,
                }
            }
        }
        if conn.pending.is_empty() {
            // Idle sockets keep no id table and no publish chain.
            if conn.pending.capacity() > 0 {
                conn.pending = HashSet::new();
            }
            conn.last_publish = None;
        }
        if !out.is_empty() {
            // A write may wait on a slow socket; a kill must still get through.
            let mut next = 0;
            let written = std::future::poll_fn(|cx| {
                if handle.poll_killed(cx) {
                    return Poll::Ready(Written::Killed);
                }
                while next < out.len() {
                    match Pin::new(&mut *ws).poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(Written::Failed),
                        Poll::Pending => return Poll::Pending,
                    }
                    let frame = out[next].clone();
                    next += 1;
                    if Pin::new(&mut *ws).start_send(Message::Text(frame)).is_err() {
                        return Poll::Ready(Written::Failed);
                    }
                }
                match Pin::new(&mut *ws).poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Written::Done),
                    Poll::Ready(Err(_)) => Poll::Ready(Written::Failed),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            out.clear();
            match written {
                Written::Done => {}
                Written::Failed => break Exit::Gone,
                Written::Killed => {
                    let (code, reason, reconnect) = handle.take_kill_reason();
                    break Exit::Close(code, reason, reconnect);
                }
            }
            // Idle sockets keep no batch buffer.
            out = Vec::new();
        }
    };
    conn.cleanup();
    if let Exit::Close(code, reason, reconnect) = exit {
        if code == close::POLICY {
            Metrics::inc(&conn.node.metrics.slow_consumer_closes_total);
        }
        // Boxed: the closing handshake's futures would otherwise be part of
        // every idle connection's state.
        Box::pin(async move {
            out.clear();
            out.push(protocol::disconnect(code, &reason, reconnect));
            let _ = tokio::time::timeout(Duration::from_secs(1), write_all(ws, &mut out)).await;
            send_close(ws, code, &reason).await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle sockets must not hold the WebSocket library's default buffers
    /// (128 KiB each way): that is the difference between a few KiB and over
    /// 100 KiB per idle connection.
    #[test]
    fn idle_sockets_get_small_buffers() {
        let config = websocket_config(&crate::Config::default());
        assert!(
            config.read_buffer_size <= 4096,
            "read buffer {}",
            config.read_buffer_size
        );
        assert_eq!(
            config.write_buffer_size, 0,
            "frames are written, not buffered"
        );
        assert_eq!(config.max_message_size, Some(65_536));
        assert_eq!(config.max_frame_size, Some(65_536));
    }

    /// Every item of the outbound queue is one pointer plus a tag.
    #[test]
    fn outbound_items_are_small() {
        assert!(std::mem::size_of::<Outbound>() <= 16);
    }
}
