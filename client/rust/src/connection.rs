//! The background task that owns the WebSocket: handshake, command routing,
//! subscriptions, liveness and reconnection.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, trace, warn};

use crate::backoff::Backoff;
use crate::error::{Error, ErrorCode};
use crate::position::Position;
use crate::protocol::{self, Incoming, Outgoing, Reply, SubPos, Welcome};
use crate::types::{AskError, AskRequest, ConnectionInfo, Event, Message};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type TokenProvider = Arc<dyn Fn() -> BoxFuture<Result<String, BoxError>> + Send + Sync>;
pub(crate) type AskHandler =
    Arc<dyn Fn(AskRequest) -> BoxFuture<Result<Box<RawValue>, AskError>> + Send + Sync>;

/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Bound on writing one frame; a stuck socket counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the closing handshake after `close()`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Close codes after which reconnecting would only repeat the failure.
const FATAL_CLOSE_CODES: [u16; 3] = [4000, 1003, 1009];
/// Close code reported when the socket dropped without a close frame.
const ABNORMAL: u16 = 1006;

pub(crate) enum TokenSource {
    None,
    Static(String),
    Provider(TokenProvider),
}

pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) token: TokenSource,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect: bool,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) ws_config: WebSocketConfig,
}

impl Config {
    fn has_provider(&self) -> bool {
        matches!(self.token, TokenSource::Provider(_))
    }
}

/// State shared between the handles and the task.
pub(crate) struct Shared {
    pub(crate) handlers: Mutex<HashMap<String, AskHandler>>,
    pub(crate) events: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
    pub(crate) info: Mutex<Option<ConnectionInfo>>,
    /// Set once the task has stopped: what later calls fail with.
    pub(crate) terminal: Mutex<Option<Error>>,
    pub(crate) connected: AtomicBool,
    pub(crate) next_sub_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            handlers: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            info: Mutex::new(None),
            terminal: Mutex::new(None),
            connected: AtomicBool::new(false),
            next_sub_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn terminal_error(&self) -> Error {
        lock(&self.terminal).clone().unwrap_or(Error::Closed)
    }

    fn emit(&self, event: Event) {
        lock(&self.events).retain(|tx| tx.send(event.clone()).is_ok());
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `subscribe` resolves with.
#[derive(Debug)]
pub(crate) struct SubInfo {
    pub(crate) offset: u64,
    pub(crate) epoch: String,
    pub(crate) recovered: Option<bool>,
}

/// Commands from the handles, read only while connected (so commands issued
/// during a reconnect wait for the next connection).
pub(crate) enum Command {
    Subscribe {
        channel: String,
        from: Option<Position>,
        sub_id: u64,
        tx: mpsc::UnboundedSender<Message>,
        reply: oneshot::Sender<Result<SubInfo, Error>>,
    },
    Request {
        req: Request,
        reply: oneshot::Sender<Result<Reply, Error>>,
    },
    Tell {
        event: String,
        core: Option<String>,
        data: Box<RawValue>,
    },
}

pub(crate) enum Request {
    Publish {
        channel: String,
        data: Box<RawValue>,
    },
    Ask {
        event: String,
        core: Option<String>,
        data: Box<RawValue>,
    },
    Join {
        core: String,
        data: Box<RawValue>,
    },
    Leave {
        core: String,
    },
    Presence {
        channel: String,
    },
}

/// Control messages, read at all times (also while reconnecting).
pub(crate) enum Control {
    Unsubscribe {
        channel: String,
        sub_id: u64,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
    AskReply {
        generation: u64,
        text: String,
    },
    Close(oneshot::Sender<()>),
}

enum Pending {
    Request(oneshot::Sender<Result<Reply, Error>>),
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
}

struct Subscriber {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
}

enum ChanState {
    /// A `subscribe` is in flight.
    Pending {
        id: u64,
        waiters: Vec<oneshot::Sender<Result<SubInfo, Error>>>,
        /// Messages that arrived before the answer.
        buffer: Vec<Message>,
        requested: Option<Position>,
    },
    Active {
        last: Position,
    },
}

struct Channel {
    subscribers: Vec<Subscriber>,
    state: ChanState,
}

impl Channel {
    /// Hands `msg` to every live subscriber. Returns true when the last
    /// subscriber turned out to be gone.
    fn fanout(&mut self, msg: Message) -> bool {
        if self.subscribers.is_empty() {
            return false;
        }
        let last = self.subscribers.len() - 1;
        let mut msg = Some(msg);
        let mut i = 0;
        self.subscribers.retain(|s| {
            let m = if i == last {
                msg.take().expect("taken once")
            } else {
                msg.clone().expect("present until last")
            };
            i += 1;
            s.tx.send(m).is_ok()
        });
        self.subscribers.is_empty()
    }
}

/// Why the task stops for good.
enum Stop {
    User(oneshot::Sender<()>),
    Dropped,
    Fatal(Error),
}

/// Why one connection ended.
enum Exit {
    User(oneshot::Sender<()>),
    Dropped,
    Lost { code: u16, reason: String },
}

struct Conn {
    ws: Ws,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    last_rx: Instant,
    silence_limit: Option<Duration>,
    tick: Duration,
    /// From a `disconnect` push: (code, reason, reconnect).
    disconnect: Option<(u16, String, bool)>,
    close: Option<(u16, String)>,
    last_error: Option<String>,
}

impl Conn {
    fn new(ws: Ws, welcome: &Welcome) -> Self {
        let ping = welcome
            .ping_interval
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        Conn {
            ws,
            next_id: 1,
            pending: HashMap::new(),
            last_rx: Instant::now(),
            // The server pings every interval; allow two missed pings plus slack.
            silence_limit: ping.map(|p| p * 2 + p.min(Duration::from_secs(5))),
            tick: ping
                .map(|p| (p / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
                .unwrap_or(Duration::from_secs(1)),
            disconnect: None,
            close: None,
            last_error: None,
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn send(&mut self, frame: &Outgoing<'_>) -> Result<(), Exit> {
        self.send_text(frame.encode()).await
    }

    async fn send_text(&mut self, text: String) -> Result<(), Exit> {
        trace!(frame = %text, "send");
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(WsMessage::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lost(Some(e.to_string()))),
            Err(_) => Err(self.lost(Some("write timed out".into()))),
        }
    }

    fn lost(&mut self, error: Option<String>) -> Exit {
        match self.close.take() {
            Some((code, reason)) => Exit::Lost { code, reason },
            None => Exit::Lost {
                code: ABNORMAL,
                reason: error.unwrap_or_else(|| "connection lost".into()),
            },
        }
    }

    async fn graceful_close(&mut self) {
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }
}

/// Opens a WebSocket, sends `connect` and waits for `welcome`.
pub(crate) async fn establish(
    cfg: &Config,
    session: Option<String>,
    subscriptions: Vec<SubPos>,
) -> Result<(Ws, Welcome), Error> {
    let token = match &cfg.token {
        TokenSource::None => None,
        TokenSource::Static(t) => Some(t.clone()),
        TokenSource::Provider(provider) => {
            Some(provider().await.map_err(|e| Error::Token(e.to_string()))?)
        }
    };
    let handshake = async {
        let (mut ws, _response) = tokio_tungstenite::connect_async_with_config(
            cfg.url.as_str(),
            Some(cfg.ws_config),
            true,
        )
        .await?;
        let connect = Outgoing::Connect {
            token: token.as_deref(),
            session: session.as_deref(),
            subscriptions: &subscriptions,
        };
        ws.send(WsMessage::text(connect.encode())).await?;
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => match protocol::decode(text.as_str())? {
                    Incoming::Welcome(welcome) => return Ok((ws, welcome)),
                    Incoming::Error { code, message, .. } => {
                        return Err(Error::Server { code, message });
                    }
                    Incoming::Ping => ws.send(WsMessage::text(Outgoing::Pong.encode())).await?,
                    other => debug!(frame = ?other, "frame before welcome ignored"),
                },
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => close_error(f.code.into(), f.reason.to_string()),
                        None => close_error(1005, String::new()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(Error::ConnectionClosed {
                        code: ABNORMAL,
                        reason: "closed during the handshake".into(),
                    });
                }
            }
        }
    };
    tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout)?
}

fn close_error(code: u16, reason: String) -> Error {
    if code == 4001 {
        Error::Server {
            code: ErrorCode::Unauthorized,
            message: reason,
        }
    } else {
        Error::ConnectionClosed { code, reason }
    }
}

/// Whether a failed reconnect attempt is worth repeating.
fn retryable(err: &Error, has_provider: bool) -> bool {
    match err {
        Error::Server {
            code: ErrorCode::Unauthorized,
            ..
        } => has_provider,
        Error::ConnectionClosed { code, .. } => !FATAL_CLOSE_CODES.contains(code),
        Error::Config(_) | Error::Closed => false,
        _ => true,
    }
}

enum Ev {
    Ws(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Ctl(Control),
    Cmd(Option<Command>),
    Tick,
}

pub(crate) struct Task {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    ctl_rx: mpsc::UnboundedReceiver<Control>,
    /// Kept so `ctl_rx` never reports closed; given to ask-handler tasks.
    ctl_tx: mpsc::UnboundedSender<Control>,
    session: Option<String>,
    channels: HashMap<String, Channel>,
    /// Channels an `unsubscribe` is in flight for.
    unsubscribing: HashSet<String>,
    /// Channels dropped while disconnected: unsubscribed if the session resumes.
    offline_unsubs: HashSet<String>,
    generation: u64,
    backoff: Backoff,
}

impl Task {
    pub(crate) fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        cmd_rx: mpsc::Receiver<Command>,
        ctl_rx: mpsc::UnboundedReceiver<Control>,
        ctl_tx: mpsc::UnboundedSender<Control>,
    ) -> Self {
        let backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
        Task {
            cfg,
            shared,
            cmd_rx,
            ctl_rx,
            ctl_tx,
            session: None,
            channels: HashMap::new(),
            unsubscribing: HashSet::new(),
            offline_unsubs: HashSet::new(),
            generation: 0,
            backoff,
        }
    }

    /// Runs until the client is closed, dropped, or gives up.
    /// Records a new connection's details. The first connection is
    /// announced by `connect()` before it returns (no `Connected` event:
    /// nobody can be listening yet); reconnections emit `Connected`.
    pub(crate) fn announce(&mut self, welcome: &Welcome, emit: bool) {
        self.generation += 1;
        let info = ConnectionInfo {
            session: welcome.session.clone(),
            client: welcome.client.clone(),
            instance: welcome.instance.clone(),
            user: welcome.user.clone(),
            resumed: welcome.resumed,
            ping_interval: welcome.ping_interval.map(Duration::from_millis),
        };
        debug!(?info, "connected");
        self.session = Some(welcome.session.clone());
        *lock(&self.shared.info) = Some(info);
        self.shared.connected.store(true, Ordering::SeqCst);
        if emit {
            self.shared.emit(Event::Connected {
                session: welcome.session.clone(),
                client: welcome.client.clone(),
                instance: welcome.instance.clone(),
                user: welcome.user.clone(),
                resumed: welcome.resumed,
            });
        }
    }

    /// Runs until the client is closed, dropped, or gives up. The first
    /// connection must have been [announced](Task::announce).
    pub(crate) async fn run(mut self, mut ws: Ws, mut welcome: Welcome) {
        let stop = loop {
            let started = Instant::now();
            match self.run_connection(ws, welcome).await {
                Ok(()) => {}
                Err(stop) => break stop,
            }
            if started.elapsed() >= STABLE_AFTER {
                self.backoff.reset();
            }
            match self.reconnect().await {
                Ok((w, wl)) => {
                    self.announce(&wl, true);
                    (ws, welcome) = (w, wl);
                }
                Err(stop) => break stop,
            }
        };
        self.finish(stop);
    }

    fn finish(&mut self, stop: Stop) {
        let (error, done) = match stop {
            Stop::User(done) => (None, Some(done)),
            Stop::Dropped => (None, None),
            Stop::Fatal(e) => (Some(e), None),
        };
        debug!(?error, "client stopped");
        *lock(&self.shared.terminal) = Some(error.clone().unwrap_or(Error::Closed));
        self.shared.connected.store(false, Ordering::SeqCst);
        *lock(&self.shared.info) = None;
        // Ends every subscription stream.
        self.channels.clear();
        self.shared.emit(Event::Closed { error });
        // Ends every event stream.
        lock(&self.shared.events).clear();
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn subscription_positions(&self) -> Vec<SubPos> {
        self.channels
            .iter()
            .filter_map(|(channel, ch)| match &ch.state {
                ChanState::Active { last } => Some(SubPos {
                    channel: channel.clone(),
                    offset: last.offset,
                    epoch: last.epoch.clone(),
                }),
                ChanState::Pending { .. } => None,
            })
            .collect()
    }

    /// Waits out the backoff and retries until connected.
    async fn reconnect(&mut self) -> Result<(Ws, Welcome), Stop> {
        loop {
            if self.cmd_rx.is_closed() {
                return Err(Stop::Dropped);
            }
            let delay = self.backoff.next_delay();
            debug!(?delay, "reconnecting after delay");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    Some(ctl) = self.ctl_rx.recv() => self.offline_control(ctl)?,
                }
            }
            if self.cmd_rx.is_closed() {
                return Err(Stop::Dropped);
            }
            let cfg = self.cfg.clone();
            let session = self.session.clone();
            let subs = self.subscription_positions();
            let attempt = async move { establish(&cfg, session, subs).await };
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    result = &mut attempt => break result,
                    Some(ctl) = self.ctl_rx.recv() => self.offline_control(ctl)?,
                }
            };
            match result {
                Ok(connected) => return Ok(connected),
                Err(e) if retryable(&e, self.cfg.has_provider()) => {
                    debug!(error = %e, "reconnect attempt failed");
                }
                Err(e) => {
                    warn!(error = %e, "giving up reconnecting");
                    return Err(Stop::Fatal(e));
                }
            }
        }
    }

    fn offline_control(&mut self, ctl: Control) -> Result<(), Stop> {
        match ctl {
            Control::Close(done) => return Err(Stop::User(done)),
            Control::AskReply { .. } => {} // its connection is gone
            Control::Unsubscribe {
                channel,
                sub_id,
                done,
            } => {
                if self.remove_subscriber(&channel, sub_id) {
                    self.channels.remove(&channel);
                    self.offline_unsubs.insert(channel);
                }
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
        }
        Ok(())
    }

    /// Removes one subscriber; true when it was the channel's last one.
    fn remove_subscriber(&mut self, channel: &str, sub_id: u64) -> bool {
        let Some(ch) = self.channels.get_mut(channel) else {
            return false;
        };
        let before = ch.subscribers.len();
        ch.subscribers.retain(|s| s.id != sub_id);
        before != ch.subscribers.len() && ch.subscribers.is_empty()
    }

    /// Serves one connection. `Ok(())`: lost, reconnect. `Err`: stop.
    async fn run_connection(&mut self, ws: Ws, welcome: Welcome) -> Result<(), Stop> {
        let mut conn = Conn::new(ws, &welcome);
        let offline = std::mem::take(&mut self.offline_unsubs);
        let exit = if welcome.resumed {
            self.unsubscribe_stale(&mut conn, offline).await
        } else {
            Ok(())
        };
        let exit = match exit {
            Ok(()) => self.serve(&mut conn).await,
            Err(exit) => exit,
        };

        // Tear down this connection's state.
        self.shared.connected.store(false, Ordering::SeqCst);
        *lock(&self.shared.info) = None;
        let failure = match exit {
            Exit::Lost { .. } => Error::Disconnected,
            _ => Error::Closed,
        };
        for (_, pending) in conn.pending.drain() {
            match pending {
                Pending::Request(tx) => {
                    let _ = tx.send(Err(failure.clone()));
                }
                Pending::Unsubscribe { done: Some(d), .. } => {
                    let _ = d.send(Ok(()));
                }
                Pending::Unsubscribe { done: None, .. } | Pending::Subscribe { .. } => {}
            }
        }
        self.channels.retain(|_, ch| match &mut ch.state {
            ChanState::Pending { waiters, .. } => {
                for w in waiters.drain(..) {
                    let _ = w.send(Err(failure.clone()));
                }
                false
            }
            ChanState::Active { .. } => true,
        });
        self.unsubscribing.clear();

        match exit {
            Exit::User(done) => {
                self.shared.emit(Event::Disconnected {
                    code: 1000,
                    reason: "closed by the client".into(),
                });
                Err(Stop::User(done))
            }
            Exit::Dropped => Err(Stop::Dropped),
            Exit::Lost { code, reason } => {
                let reason = if reason.is_empty() {
                    conn.disconnect
                        .as_ref()
                        .map(|d| d.1.clone())
                        .or(conn.last_error.take())
                        .unwrap_or_default()
                } else {
                    reason
                };
                debug!(code, %reason, "disconnected");
                self.shared.emit(Event::Disconnected {
                    code,
                    reason: reason.clone(),
                });
                match self.fatal(code, reason, conn.disconnect.as_ref()) {
                    Some(err) => Err(Stop::Fatal(err)),
                    None => Ok(()),
                }
            }
        }
    }

    /// Decides whether a lost connection ends the client.
    fn fatal(
        &self,
        code: u16,
        reason: String,
        disconnect: Option<&(u16, String, bool)>,
    ) -> Option<Error> {
        if code == 4001 {
            return (!self.cfg.has_provider()).then(|| close_error(code, reason));
        }
        let told_not_to = disconnect.is_some_and(|d| !d.2);
        if FATAL_CLOSE_CODES.contains(&code) || told_not_to || !self.cfg.reconnect {
            return Some(Error::ConnectionClosed { code, reason });
        }
        None
    }

    async fn unsubscribe_stale(
        &mut self,
        conn: &mut Conn,
        channels: HashSet<String>,
    ) -> Result<(), Exit> {
        for channel in channels {
            if self.channels.contains_key(&channel) {
                continue;
            }
            self.send_unsubscribe(conn, channel, None).await?;
        }
        Ok(())
    }

    async fn send_unsubscribe(
        &mut self,
        conn: &mut Conn,
        channel: String,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Result<(), Exit> {
        let id = conn.next_id();
        conn.send(&Outgoing::Unsubscribe {
            id,
            channel: &channel,
        })
        .await?;
        self.unsubscribing.insert(channel.clone());
        conn.pending
            .insert(id, Pending::Unsubscribe { channel, done });
        Ok(())
    }

    async fn serve(&mut self, conn: &mut Conn) -> Exit {
        let mut tick = tokio::time::interval(conn.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                msg = conn.ws.next() => Ev::Ws(msg),
                Some(ctl) = self.ctl_rx.recv() => Ev::Ctl(ctl),
                cmd = self.cmd_rx.recv() => Ev::Cmd(cmd),
                _ = tick.tick() => Ev::Tick,
            };
            let step = match ev {
                Ev::Ws(Some(Ok(msg))) => {
                    conn.last_rx = Instant::now();
                    self.on_ws_message(conn, msg).await
                }
                Ev::Ws(Some(Err(e))) => Err(conn.lost(Some(e.to_string()))),
                Ev::Ws(None) => Err(conn.lost(None)),
                Ev::Ctl(ctl) => self.on_control(conn, ctl).await,
                Ev::Cmd(Some(cmd)) => self.on_command(conn, cmd).await,
                Ev::Cmd(None) => {
                    conn.graceful_close().await;
                    Err(Exit::Dropped)
                }
                Ev::Tick => {
                    // Forget requests whose caller gave up (timeout, drop).
                    conn.pending
                        .retain(|_, p| !matches!(p, Pending::Request(tx) if tx.is_closed()));
                    match conn.silence_limit {
                        Some(limit) if conn.last_rx.elapsed() > limit => Err(Exit::Lost {
                            code: ABNORMAL,
                            reason: "no sign of life from the server".into(),
                        }),
                        _ => Ok(()),
                    }
                }
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    async fn on_ws_message(&mut self, conn: &mut Conn, msg: WsMessage) -> Result<(), Exit> {
        match msg {
            WsMessage::Text(text) => {
                trace!(frame = %text.as_str(), "recv");
                match protocol::decode(text.as_str()) {
                    Ok(frame) => self.on_frame(conn, frame).await,
                    Err(e) => {
                        warn!(error = %e, "ignoring undecodable frame");
                        Ok(())
                    }
                }
            }
            WsMessage::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (f.code.into(), f.reason.to_string()),
                    None => (1005, String::new()),
                };
                conn.close = Some((code, reason));
                // Let tungstenite send its answering close frame.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.ws.flush()).await;
                Err(conn.lost(None))
            }
            WsMessage::Binary(_) => {
                warn!("ignoring binary frame");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn on_frame(&mut self, conn: &mut Conn, frame: Incoming) -> Result<(), Exit> {
        match frame {
            Incoming::Ping => conn.send(&Outgoing::Pong).await?,
            Incoming::Reply(reply) => {
                let id = reply.id;
                self.on_answer(conn, id, Ok(reply)).await?;
            }
            Incoming::Error {
                id: Some(id),
                code,
                message,
            } => {
                self.on_answer(conn, id, Err(Error::Server { code, message }))
                    .await?
            }
            Incoming::Error {
                id: None,
                code,
                message,
            } => {
                warn!(%code, %message, "server error");
                conn.last_error = Some(format!("{code}: {message}"));
                self.shared.emit(Event::ServerError { code, message });
            }
            Incoming::Message {
                channel,
                data,
                offset,
                epoch,
            } => {
                self.deliver(
                    conn,
                    Message {
                        channel,
                        data,
                        offset,
                        epoch,
                    },
                )
                .await?
            }
            Incoming::Tell { event, data, core } => {
                self.shared.emit(Event::Tell { event, data, core });
            }
            Incoming::Ask {
                id,
                event,
                data,
                core,
            } => self.on_server_ask(conn, id, event, core, data).await?,
            Incoming::Subscribed {
                channel,
                offset,
                epoch,
                recovered,
            } => self.on_subscribed(channel, offset, epoch, recovered),
            Incoming::Unsubscribed { channel, reason } => {
                // Dropping the subscribers ends their streams.
                self.channels.remove(&channel);
                self.shared.emit(Event::Unsubscribed { channel, reason });
            }
            Incoming::Left {
                core,
                reason,
                rejoin,
            } => self.shared.emit(Event::Left {
                core,
                reason,
                rejoin,
            }),
            Incoming::Disconnect {
                code,
                reason,
                reconnect,
            } => {
                conn.disconnect = Some((code, reason.clone(), reconnect));
                self.shared.emit(Event::Disconnect {
                    code,
                    reason,
                    reconnect,
                });
            }
            Incoming::Welcome(_) => debug!("ignoring unexpected welcome"),
            Incoming::Unknown(ty) => debug!(%ty, "ignoring unknown frame type"),
        }
        Ok(())
    }

    async fn on_answer(
        &mut self,
        conn: &mut Conn,
        id: u64,
        answer: Result<Reply, Error>,
    ) -> Result<(), Exit> {
        let Some(pending) = conn.pending.remove(&id) else {
            debug!(id, "answer to no pending command");
            return Ok(());
        };
        match pending {
            Pending::Request(tx) => {
                let _ = tx.send(answer);
            }
            Pending::Subscribe { channel } => {
                self.on_subscribe_answer(conn, channel, id, answer).await?
            }
            Pending::Unsubscribe { channel, done } => {
                self.unsubscribing.remove(&channel);
                if let Some(done) = done {
                    let _ = done.send(answer.map(|_| ()));
                }
            }
        }
        Ok(())
    }

    async fn on_subscribe_answer(
        &mut self,
        conn: &mut Conn,
        channel: String,
        id: u64,
        answer: Result<Reply, Error>,
    ) -> Result<(), Exit> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        if !matches!(ch.state, ChanState::Pending { id: pid, .. } if pid == id) {
            return Ok(());
        }
        let answer = answer.and_then(|r| match (r.offset, r.epoch) {
            (Some(offset), Some(epoch)) => Ok((offset, epoch, r.recovered)),
            _ => Err(Error::Protocol(
                "subscribe reply without offset or epoch".into(),
            )),
        });
        let (offset, epoch, recovered) = match answer {
            Ok(v) => v,
            Err(e) => {
                if let Some(Channel {
                    state: ChanState::Pending { waiters, .. },
                    ..
                }) = self.channels.remove(&channel)
                {
                    for w in waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
                return Ok(());
            }
        };
        let placeholder = ChanState::Active {
            last: Position::new(epoch.clone(), offset),
        };
        let ChanState::Pending {
            waiters,
            buffer,
            requested,
            ..
        } = std::mem::replace(&mut ch.state, placeholder)
        else {
            unreachable!("checked above");
        };
        let mut last = Position::resync(requested, &epoch, offset, recovered);
        for w in waiters {
            let _ = w.send(Ok(SubInfo {
                offset,
                epoch: epoch.clone(),
                recovered,
            }));
        }
        // Messages that raced ahead of the answer: only those after the
        // position it establishes are new.
        for msg in buffer {
            if last.advance(&msg.epoch, msg.offset) {
                ch.fanout(msg);
            }
        }
        ch.state = ChanState::Active { last };
        ch.subscribers.retain(|s| !s.tx.is_closed());
        if ch.subscribers.is_empty() {
            // Every caller gave up (timeout, drop) before the answer.
            self.channels.remove(&channel);
            self.send_unsubscribe(conn, channel, None).await?;
        }
        Ok(())
    }

    fn on_subscribed(
        &mut self,
        channel: String,
        offset: u64,
        epoch: String,
        recovered: Option<bool>,
    ) {
        debug!(%channel, offset, %epoch, ?recovered, "subscribed");
        match self.channels.get_mut(&channel) {
            Some(ch) => {
                if let ChanState::Active { last } = &mut ch.state {
                    let old = last.clone();
                    *last = Position::resync(Some(old), &epoch, offset, recovered);
                }
            }
            None if self.unsubscribing.contains(&channel) => {}
            None => {
                // A subscription the server made: track it so it survives
                // reconnects; `subscribe` attaches a stream to it.
                self.channels.insert(
                    channel.clone(),
                    Channel {
                        subscribers: Vec::new(),
                        state: ChanState::Active {
                            last: Position::new(epoch.clone(), offset),
                        },
                    },
                );
            }
        }
        self.shared.emit(Event::Subscribed {
            channel,
            offset,
            epoch,
            recovered: recovered.unwrap_or(true),
        });
    }

    async fn deliver(&mut self, conn: &mut Conn, msg: Message) -> Result<(), Exit> {
        let Some(ch) = self.channels.get_mut(&msg.channel) else {
            if !self.unsubscribing.contains(&msg.channel) {
                // A subscription nobody here knows about (e.g. restored with
                // a resumed session after its stream was dropped).
                debug!(channel = %msg.channel, "message for an unknown channel: unsubscribing");
                self.send_unsubscribe(conn, msg.channel, None).await?;
            }
            return Ok(());
        };
        match &mut ch.state {
            ChanState::Pending { buffer, .. } => buffer.push(msg),
            ChanState::Active { last } => {
                if !last.advance(&msg.epoch, msg.offset) {
                    trace!(channel = %msg.channel, offset = msg.offset, "duplicate dropped");
                    return Ok(());
                }
                let channel = msg.channel.clone();
                if ch.fanout(msg) {
                    self.channels.remove(&channel);
                    self.send_unsubscribe(conn, channel, None).await?;
                }
            }
        }
        Ok(())
    }

    async fn on_server_ask(
        &mut self,
        conn: &mut Conn,
        id: u64,
        event: String,
        core: Option<String>,
        data: Box<RawValue>,
    ) -> Result<(), Exit> {
        let handler = lock(&self.shared.handlers).get(&event).cloned();
        let Some(handler) = handler else {
            let message = format!("no handler for ask event {event:?}");
            return conn
                .send(&Outgoing::Error {
                    id,
                    code: ErrorCode::NotFound.as_str(),
                    message: &message,
                })
                .await;
        };
        let ctl = self.ctl_tx.clone();
        let generation = self.generation;
        let request = AskRequest { event, core, data };
        tokio::spawn(async move {
            // The inner task isolates a panicking handler.
            let outcome = tokio::spawn(async move { handler(request).await }).await;
            let text = match outcome {
                Ok(Ok(data)) => Outgoing::Reply { id, data: &data }.encode(),
                Ok(Err(e)) => Outgoing::Error {
                    id,
                    code: e.code.as_str(),
                    message: &e.message,
                }
                .encode(),
                Err(_) => Outgoing::Error {
                    id,
                    code: ErrorCode::Internal.as_str(),
                    message: "ask handler failed",
                }
                .encode(),
            };
            let _ = ctl.send(Control::AskReply { generation, text });
        });
        Ok(())
    }

    async fn on_control(&mut self, conn: &mut Conn, ctl: Control) -> Result<(), Exit> {
        match ctl {
            Control::Close(done) => {
                conn.graceful_close().await;
                Err(Exit::User(done))
            }
            Control::AskReply { generation, text } => {
                if generation == self.generation {
                    conn.send_text(text).await?;
                }
                Ok(())
            }
            Control::Unsubscribe {
                channel,
                sub_id,
                done,
            } => {
                if !self.remove_subscriber(&channel, sub_id) {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                    return Ok(());
                }
                // Last local subscriber gone. A pending subscribe is dealt
                // with when its answer arrives.
                let active = self
                    .channels
                    .get(&channel)
                    .is_some_and(|ch| matches!(ch.state, ChanState::Active { .. }));
                if active {
                    self.channels.remove(&channel);
                    self.send_unsubscribe(conn, channel, done).await
                } else {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                    Ok(())
                }
            }
        }
    }

    async fn on_command(&mut self, conn: &mut Conn, cmd: Command) -> Result<(), Exit> {
        match cmd {
            Command::Subscribe {
                channel,
                from,
                sub_id,
                tx,
                reply,
            } => {
                let subscriber = Subscriber { id: sub_id, tx };
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.subscribers.push(subscriber);
                    match &mut ch.state {
                        ChanState::Active { last } => {
                            let _ = reply.send(Ok(SubInfo {
                                offset: last.offset,
                                epoch: last.epoch.clone(),
                                recovered: None,
                            }));
                        }
                        ChanState::Pending { waiters, .. } => waiters.push(reply),
                    }
                    return Ok(());
                }
                let id = conn.next_id();
                let frame = Outgoing::Subscribe {
                    id,
                    channel: &channel,
                    offset: from.as_ref().map(|p| p.offset),
                    epoch: from.as_ref().map(|p| p.epoch.as_str()),
                }
                .encode();
                conn.pending.insert(
                    id,
                    Pending::Subscribe {
                        channel: channel.clone(),
                    },
                );
                self.channels.insert(
                    channel,
                    Channel {
                        subscribers: vec![subscriber],
                        state: ChanState::Pending {
                            id,
                            waiters: vec![reply],
                            buffer: Vec::new(),
                            requested: from,
                        },
                    },
                );
                conn.send_text(frame).await
            }
            Command::Request { req, reply } => {
                if reply.is_closed() {
                    return Ok(()); // the caller gave up while it was queued
                }
                let id = conn.next_id();
                let text = match &req {
                    Request::Publish { channel, data } => Outgoing::Publish { id, channel, data },
                    Request::Ask { event, core, data } => Outgoing::Ask {
                        id,
                        event,
                        core: core.as_deref(),
                        data,
                    },
                    Request::Join { core, data } => Outgoing::Join { id, core, data },
                    Request::Leave { core } => Outgoing::Leave { id, core },
                    Request::Presence { channel } => Outgoing::Presence { id, channel },
                }
                .encode();
                conn.pending.insert(id, Pending::Request(reply));
                conn.send_text(text).await
            }
            Command::Tell { event, core, data } => {
                conn.send(&Outgoing::Tell {
                    event: &event,
                    core: core.as_deref(),
                    data: &data,
                })
                .await
            }
        }
    }
}
