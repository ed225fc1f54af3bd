//! The task: connect, serve the connection, reconnect with backoff, stop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scaled_sockets_protocol::{Welcome, decode_server_frame};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, trace, warn};

use super::channels::{ChanState, Channel};
use super::conn::{Conn, Exit, Pending};
use super::cores::Joined;
use super::handshake::{close_error, establish, retryable};
use super::{
    ABNORMAL, CLOSE_TIMEOUT, Command, Config, Control, FATAL_CLOSE_CODES, STABLE_AFTER, Shared, Ws,
    lock,
};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::types::{ConnectionInfo, Event};

/// Why the task stops for good.
enum Stop {
    User(oneshot::Sender<()>),
    Dropped,
    Fatal(Error),
}

/// One thing that happened while serving a connection.
enum Ev {
    Ws(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Ctl(Control),
    Cmd(Option<Command>),
    Tick,
}

/// The background task owning the connection; one per [`Client`](crate::Client).
pub(crate) struct Task {
    pub(super) cfg: Arc<Config>,
    pub(super) shared: Arc<Shared>,
    pub(super) cmd_rx: mpsc::Receiver<Command>,
    pub(super) ctl_rx: mpsc::UnboundedReceiver<Control>,
    /// Kept so `ctl_rx` never reports closed; given to ask-handler tasks.
    pub(super) ctl_tx: mpsc::UnboundedSender<Control>,
    pub(super) session: Option<String>,
    pub(super) channels: HashMap<String, Channel>,
    /// Channels an `unsubscribe` is in flight for.
    pub(super) unsubscribing: HashSet<String>,
    /// Channels dropped while disconnected: unsubscribed if the session resumes.
    pub(super) offline_unsubs: HashSet<String>,
    pub(super) generation: u64,
    pub(super) backoff: Backoff,
    /// Cores joined, by id: joined again after a reconnect or a `left`
    /// with `rejoin`.
    pub(super) cores: HashMap<String, Joined>,
    /// Last rejoin sequence number handed out (see [`Joined`]).
    pub(super) core_seq: u64,
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
            cores: HashMap::new(),
            core_seq: 0,
        }
    }

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
            // The next connection joins every remembered core anyway.
            Control::Rejoin { .. } => {}
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

    /// Serves one connection. `Ok(())`: lost, reconnect. `Err`: stop.
    async fn run_connection(&mut self, ws: Ws, welcome: Welcome) -> Result<(), Stop> {
        let mut conn = Conn::new(ws, &welcome);
        let offline = std::mem::take(&mut self.offline_unsubs);
        let exit = if welcome.resumed {
            self.unsubscribe_stale(&mut conn, offline).await
        } else {
            Ok(())
        };
        // The old connection's memberships ended with it, resumed session
        // or not.
        let exit = match exit {
            Ok(()) => self.rejoin_all(&mut conn).await,
            Err(exit) => Err(exit),
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
                Pending::Request(tx) | Pending::Join { reply: tx, .. } => {
                    let _ = tx.send(Err(failure.clone()));
                }
                Pending::Unsubscribe { done: Some(d), .. } => {
                    let _ = d.send(Ok(()));
                }
                // A rejoin is started again on the next connection.
                Pending::Unsubscribe { done: None, .. }
                | Pending::Subscribe { .. }
                | Pending::Rejoin { .. } => {}
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
                match decode_server_frame(text.as_str()) {
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
}
