//! The public handle: [`Client`] and its commands.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{AskHandler, Command, Control, Request, Shared, SubInfo, lock};
use crate::error::{Error, Result};
use crate::position::Position;
use crate::types::{AskError, AskRequest, ConnectionInfo, PresenceEntry};
use crate::{ClientBuilder, Events, Subscription};
use scaled_sockets_protocol::Reply;

/// A handle to one connection, cheap to clone: every clone talks to the same
/// background task, which owns the WebSocket and reconnects as needed.
///
/// The connection closes when [`Client::close`] is called, or when every
/// `Client` and [`Subscription`] is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) cmd: mpsc::Sender<Command>,
    pub(crate) ctl: mpsc::UnboundedSender<Control>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ask_timeout: Duration,
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
    /// [`Event::Subscribed`](crate::Event::Subscribed) with `recovered: false`.
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
    ///
    /// Once joined, the client stays a member by itself: after a
    /// [`Left`](crate::Event::Left) with `rejoin: true` (the core restarted or
    /// moved) and after every reconnect, it joins again with the same `data`,
    /// retrying with backoff while the core is being respawned, and emits
    /// [`Rejoined`](crate::Event::Rejoined) (or
    /// [`RejoinFailed`](crate::Event::RejoinFailed) when it gives up).
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

    /// Leaves core `core` (and stops rejoining it).
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

    /// A stream of the connection's [`Event`](crate::Event)s from now on. Each call gives
    /// an independent stream; it ends after [`Event::Closed`](crate::Event::Closed). Events are
    /// buffered until read, so keep reading (or drop the stream).
    ///
    /// The first connection, made by [`ClientBuilder::connect`], is not
    /// reported ([`Client::connection_info`] has it); every reconnection is
    /// ([`Event::Connected`](crate::Event::Connected)).
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
