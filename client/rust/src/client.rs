//! The public handle, its builder, and subscription/event streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::connection::{
    self, AskHandler, BoxError, Command, Config, Control, Request, Shared, SubInfo, Task,
    TokenSource, lock,
};
use crate::error::{Error, Result};
use crate::position::Position;
use crate::protocol::Reply;
use crate::types::{AskError, AskRequest, ConnectionInfo, Event, Message, PresenceEntry};

/// Commands queued while the connection is down (or busy) before callers wait.
const COMMAND_QUEUE: usize = 256;

/// Configures and opens a [`Client`]. Created by [`Client::builder`].
pub struct ClientBuilder {
    url: String,
    token: TokenSource,
    session: Option<String>,
    ask_timeout: Duration,
    connect_timeout: Duration,
    reconnect: bool,
    backoff_min: Duration,
    backoff_max: Duration,
    max_message_size: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field(
                "token",
                &match self.token {
                    TokenSource::None => "none",
                    TokenSource::Static(_) => "static",
                    TokenSource::Provider(_) => "provider",
                },
            )
            .field("session", &self.session)
            .field("ask_timeout", &self.ask_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl ClientBuilder {
    fn new(url: String) -> Self {
        ClientBuilder {
            url,
            token: TokenSource::None,
            session: None,
            ask_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_message_size: 16 << 20,
        }
    }

    /// Connects with this token (a JWT). Without a token the client connects
    /// anonymously.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenSource::Static(token.into());
        self
    }

    /// Fetches a fresh token before every connection attempt (the first one
    /// and each reconnect). With a provider, a connection closed with 4001
    /// (token expired) is reconnected with a new token instead of giving up.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), scaled_sockets_client::Error> {
    /// use scaled_sockets_client::Client;
    /// let client = Client::builder("ws://127.0.0.1:8080/ws")
    ///     .token_provider(|| async {
    ///         // e.g. ask your auth service
    ///         Ok::<_, std::io::Error>("eyJ…".to_string())
    ///     })
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let provider = Arc::new(provider);
        self.token = TokenSource::Provider(Arc::new(move || {
            let fut = provider();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Resumes this session (from [`ConnectionInfo::session`] of an earlier
    /// client) if the server still holds it.
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// How long a command waits for its answer, queueing included (default
    /// 10 s). Applies to every command with an answer: `ask`, `publish`,
    /// `subscribe`, `join`, … Past it the call fails with [`Error::Timeout`].
    pub fn ask_timeout(mut self, timeout: Duration) -> Self {
        self.ask_timeout = timeout;
        self
    }

    /// Bound on one connection attempt: TCP, WebSocket upgrade and `connect`
    /// → `welcome` (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnect delays: the first retry waits between `min` and `2·min`,
    /// the ceiling doubles on each failure up to `max`, and each delay is
    /// drawn at random below the ceiling (default 100 ms .. 10 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Whether to reconnect after a lost connection (default true). With
    /// `false` the client stops at the first disconnect.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Largest incoming message accepted (default 16 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Connects and waits for the server's `welcome`.
    ///
    /// Fails with the server's error (e.g. [`Error::Server`] with
    /// [`ErrorCode::Unauthorized`](crate::ErrorCode::Unauthorized) for a
    /// rejected token) or the transport's; the first connection is not
    /// retried. Must be called within a Tokio runtime.
    pub async fn connect(self) -> Result<Client> {
        if self.url.starts_with("wss://") {
            return Err(Error::Config(
                "wss:// URLs need TLS support, which this build does not include".into(),
            ));
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size));
        let cfg = Arc::new(Config {
            url: self.url,
            token: self.token,
            connect_timeout: self.connect_timeout,
            reconnect: self.reconnect,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            ws_config,
        });
        let (ws, welcome) = connection::establish(&cfg, self.session, Vec::new()).await?;
        let shared = Arc::new(Shared::new());
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let mut task = Task::new(cfg, shared.clone(), cmd_rx, ctl_rx, ctl_tx.clone());
        task.announce(&welcome, false);
        tokio::spawn(task.run(ws, welcome));
        Ok(Client {
            cmd: cmd_tx,
            ctl: ctl_tx,
            shared,
            ask_timeout: self.ask_timeout,
        })
    }
}

/// A handle to one connection, cheap to clone: every clone talks to the same
/// background task, which owns the WebSocket and reconnects as needed.
///
/// The connection closes when [`Client::close`] is called, or when every
/// `Client` and [`Subscription`] is dropped.
#[derive(Clone)]
pub struct Client {
    cmd: mpsc::Sender<Command>,
    ctl: mpsc::UnboundedSender<Control>,
    shared: Arc<Shared>,
    ask_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connection", &*lock(&self.shared.info))
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>> {
    Ok(serde_json::value::to_raw_value(data)?)
}

impl Client {
    /// Starts configuring a client for `url`, the server's WebSocket endpoint
    /// (e.g. `ws://127.0.0.1:8080/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// Connects anonymously with default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        Client::builder(url).connect().await
    }

    async fn with_timeout<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.ask_timeout, fut)
            .await
            .map_err(|_| Error::Timeout)?
    }

    async fn enqueue(&self, cmd: Command) -> Result<()> {
        self.cmd
            .send(cmd)
            .await
            .map_err(|_| self.shared.terminal_error())
    }

    async fn request(&self, req: Request) -> Result<Reply> {
        self.with_timeout(async {
            let (tx, rx) = oneshot::channel();
            self.enqueue(Command::Request { req, reply: tx }).await?;
            rx.await.map_err(|_| self.shared.terminal_error())?
        })
        .await
    }

    /// Subscribes to `channel`. The returned [`Subscription`] is a stream of
    /// its messages, published after the subscription was made; dropping it
    /// unsubscribes. After a reconnect, missed messages are replayed and
    /// duplicates dropped; a gap that cannot be replayed is reported as
    /// [`Event::Subscribed`] with `recovered: false`.
    ///
    /// Subscribing again to a channel this client is already subscribed to
    /// adds another stream of the same messages.
    pub async fn subscribe(&self, channel: impl Into<String>) -> Result<Subscription> {
        self.subscribe_inner(channel.into(), None).await
    }

    /// Subscribes to `channel`, starting right after the message at
    /// (`epoch`, `offset`) — e.g. a position saved by an earlier process. The
    /// messages published since are replayed first; check
    /// [`Subscription::recovered`] to know whether none was lost.
    pub async fn subscribe_from(
        &self,
        channel: impl Into<String>,
        offset: u64,
        epoch: impl Into<String>,
    ) -> Result<Subscription> {
        self.subscribe_inner(channel.into(), Some(Position::new(epoch, offset)))
            .await
    }

    async fn subscribe_inner(
        &self,
        channel: String,
        from: Option<Position>,
    ) -> Result<Subscription> {
        let sub_id = self.shared.next_sub_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let info: SubInfo = self
            .with_timeout(async {
                let (reply_tx, reply_rx) = oneshot::channel();
                self.enqueue(Command::Subscribe {
                    channel: channel.clone(),
                    from,
                    sub_id,
                    tx,
                    reply: reply_tx,
                })
                .await?;
                reply_rx.await.map_err(|_| self.shared.terminal_error())?
            })
            .await?;
        Ok(Subscription {
            channel,
            sub_id,
            rx,
            offset: info.offset,
            epoch: info.epoch,
            recovered: info.recovered,
            ctl: self.ctl.clone(),
            _keep_alive: self.cmd.clone(),
            detached: false,
        })
    }

    /// Publishes `data` on `channel`; returns the publication's offset.
    ///
    /// `data` is serialized at the call: the returned future does not borrow
    /// it (same for [`ask`](Client::ask), [`tell`](Client::tell), …), so
    /// `tokio::join!(client.publish("c", &json!(1)), …)` works.
    pub fn publish<C, T>(
        &self,
        channel: C,
        data: &T,
    ) -> impl Future<Output = Result<u64>> + Send + use<'_, C, T>
    where
        C: Into<String>,
        T: Serialize + ?Sized,
    {
        let req = to_raw(data).map(|data| Request::Publish {
            channel: channel.into(),
            data,
        });
        async move {
            let reply = self.request(req?).await?;
            reply
                .offset
                .ok_or_else(|| Error::Protocol("publish reply without offset".into()))
        }
    }

    /// Asks the server's handler for `event`; returns its answer's data.
    pub fn ask<E, T>(
        &self,
        event: E,
        data: &T,
    ) -> impl Future<Output = Result<Box<RawValue>>> + Send + use<'_, E, T>
    where
        E: Into<String>,
        T: Serialize + ?Sized,
    {
        let req = to_raw(data).map(|data| Request::Ask {
            event: event.into(),
            core: None,
            data,
        });
        async move { Ok(reply_data(self.request(req?).await?)) }
    }

    /// Asks core `core` (e.g. a game match) about `event`.
    pub fn ask_core<K, E, T>(
        &self,
        core: K,
        event: E,
        data: &T,
    ) -> impl Future<Output = Result<Box<RawValue>>> + Send + use<'_, K, E, T>
    where
        K: Into<String>,
        E: Into<String>,
        T: Serialize + ?Sized,
    {
        let req = to_raw(data).map(|data| Request::Ask {
            event: event.into(),
            core: Some(core.into()),
            data,
        });
        async move { Ok(reply_data(self.request(req?).await?)) }
    }

    /// Sends a one-way event to the server's handler for `event`. Resolves
    /// once queued for sending.
    pub fn tell<E, T>(
        &self,
        event: E,
        data: &T,
    ) -> impl Future<Output = Result<()>> + Send + use<'_, E, T>
    where
        E: Into<String>,
        T: Serialize + ?Sized,
    {
        let cmd = to_raw(data).map(|data| Command::Tell {
            event: event.into(),
            core: None,
            data,
        });
        async move { self.with_timeout(self.enqueue(cmd?)).await }
    }

    /// Sends a one-way event to core `core`.
    pub fn tell_core<K, E, T>(
        &self,
        core: K,
        event: E,
        data: &T,
    ) -> impl Future<Output = Result<()>> + Send + use<'_, K, E, T>
    where
        K: Into<String>,
        E: Into<String>,
        T: Serialize + ?Sized,
    {
        let cmd = to_raw(data).map(|data| Command::Tell {
            event: event.into(),
            core: Some(core.into()),
            data,
        });
        async move { self.with_timeout(self.enqueue(cmd?)).await }
    }

    /// Joins core `core`; returns the core's answer.
    pub fn join<K, T>(
        &self,
        core: K,
        data: &T,
    ) -> impl Future<Output = Result<Box<RawValue>>> + Send + use<'_, K, T>
    where
        K: Into<String>,
        T: Serialize + ?Sized,
    {
        let req = to_raw(data).map(|data| Request::Join {
            core: core.into(),
            data,
        });
        async move { Ok(reply_data(self.request(req?).await?)) }
    }

    /// Leaves core `core`.
    pub async fn leave(&self, core: impl Into<String>) -> Result<()> {
        self.request(Request::Leave { core: core.into() }).await?;
        Ok(())
    }

    /// Lists the connections subscribed to `channel`, on every instance.
    pub async fn presence(&self, channel: impl Into<String>) -> Result<Vec<PresenceEntry>> {
        #[derive(Deserialize)]
        struct Presence {
            clients: Vec<PresenceEntry>,
        }
        let reply = self
            .request(Request::Presence {
                channel: channel.into(),
            })
            .await?;
        let data = reply_data(reply);
        let presence: Presence = serde_json::from_str(data.get())?;
        Ok(presence.clients)
    }

    /// Answers the server's `ask` frames for `event` with `handler` (replacing
    /// any earlier one). Each ask runs in its own task; `Ok` is sent as
    /// `reply`, `Err` as `error` with the [`AskError`]'s code. Asks for events
    /// without a handler are answered `not_found`.
    ///
    /// ```no_run
    /// # fn f(client: &scaled_sockets_client::Client) {
    /// use scaled_sockets_client::{AskError, AskRequest};
    /// client.on_ask("confirm", |req: AskRequest| async move {
    ///     let question: String = req.data()?;
    ///     Ok::<_, AskError>(serde_json::json!({ "ok": !question.is_empty() }))
    /// });
    /// # }
    /// ```
    pub fn on_ask<F, Fut, T>(&self, event: impl Into<String>, handler: F)
    where
        F: Fn(AskRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, AskError>> + Send + 'static,
        T: Serialize,
    {
        let handler: AskHandler = Arc::new(move |req| {
            let fut = handler(req);
            Box::pin(async move {
                let value = fut.await?;
                serde_json::value::to_raw_value(&value)
                    .map_err(|e| AskError::internal(e.to_string()))
            })
        });
        lock(&self.shared.handlers).insert(event.into(), handler);
    }

    /// Removes the handler for `event`; returns whether there was one.
    pub fn off_ask(&self, event: &str) -> bool {
        lock(&self.shared.handlers).remove(event).is_some()
    }

    /// A stream of the connection's [`Event`]s from now on. Each call gives
    /// an independent stream; it ends after [`Event::Closed`]. Events are
    /// buffered until read, so keep reading (or drop the stream).
    ///
    /// The first connection, made by [`ClientBuilder::connect`], is not
    /// reported ([`Client::connection_info`] has it); every reconnection is
    /// ([`Event::Connected`]).
    pub fn events(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut senders = lock(&self.shared.events);
        // Once stopped, the stream is empty (holding the lock orders this
        // check with the task's final clear).
        if lock(&self.shared.terminal).is_none() {
            senders.push(tx);
        }
        Events { rx }
    }

    /// The current connection's details; `None` while disconnected.
    pub fn connection_info(&self) -> Option<ConnectionInfo> {
        lock(&self.shared.info).clone()
    }

    /// Whether a connection is currently established.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Whether the client has stopped for good (closed, or gave up).
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.terminal).is_some()
    }

    /// Closes the connection cleanly (close code 1000) and stops
    /// reconnecting. Pending commands fail with [`Error::Closed`], as do later
    /// calls. Returns once the connection is closed.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Control::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn reply_data(reply: Reply) -> Box<RawValue> {
    reply
        .data
        .unwrap_or_else(|| RawValue::from_string("null".into()).expect("valid JSON"))
}

/// The messages of one channel, in offset order. Created by
/// [`Client::subscribe`]; dropping it unsubscribes (in the background).
///
/// Implements [`Stream`]; [`Subscription::recv`] is the same without
/// importing `StreamExt`. The stream ends when the server ends the
/// subscription ([`Event::Unsubscribed`]) or the client stops.
pub struct Subscription {
    channel: String,
    sub_id: u64,
    rx: mpsc::UnboundedReceiver<Message>,
    offset: u64,
    epoch: String,
    recovered: Option<bool>,
    ctl: mpsc::UnboundedSender<Control>,
    /// Keeps the connection open while the subscription lives.
    _keep_alive: mpsc::Sender<Command>,
    detached: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
            .field("recovered", &self.recovered)
            .finish()
    }
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Offset of the channel's latest publication when subscribing.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The channel's epoch when subscribing.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// For [`Client::subscribe_from`]: whether every message since the given
    /// position is replayed. `None` for plain subscriptions.
    pub fn recovered(&self) -> Option<bool> {
        self.recovered
    }

    /// The next message; `None` once the subscription ended.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Unsubscribes and waits for the server's answer (dropping the
    /// subscription does the same in the background).
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.detached = true;
        let (tx, rx) = oneshot::channel();
        let sent = self.ctl.send(Control::Unsubscribe {
            channel: self.channel.clone(),
            sub_id: self.sub_id,
            done: Some(tx),
        });
        if sent.is_err() {
            return Ok(()); // the client has stopped: nothing to undo
        }
        rx.await.unwrap_or(Ok(()))
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.ctl.send(Control::Unsubscribe {
                channel: std::mem::take(&mut self.channel),
                sub_id: self.sub_id,
                done: None,
            });
        }
    }
}

/// A stream of [`Event`]s, from [`Client::events`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` after the client stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().rx.poll_recv(cx)
    }
}
