//! Client commands: one function per client frame.
//!
//! A command that needs the backend or app code runs in its own task
//! ([`Conn::spawn_command`]) and its answer comes back through the mailbox, so
//! the connection's loop never waits on anything but its socket and queue.

use super::{Conn, io::Exit};
use crate::{
    config::Config,
    data::Data,
    error::{CommandError, ErrorCode},
    hub::Hub,
    mailbox::{ConnEvent, Mailbox, Outbound},
    metrics::Metrics,
    protocol::{self, ClientFrame, SubscriptionRequest, close},
};
use scaled_sockets_scaler::{PresenceEntry, StreamPosition};
use serde::Serialize;
use serde_json::value::RawValue;
use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The answer of a command handled on the spot: frames to send, and whether
/// the connection must close.
type Handled = Option<Exit>;

fn too_many_bad_frames() -> Exit {
    Exit::Close(close::PROTOCOL, "too many bad frames".into(), false)
}

impl Conn {
    /// Records a bad frame; true when the connection must close (4000).
    fn bad_frame(&mut self, id: Option<u64>, message: &str, out: &mut Vec<Utf8Bytes>) -> bool {
        Metrics::inc(&self.hub.metrics.bad_frames_total);
        out.push(protocol::error(id, ErrorCode::BadRequest, message).into());
        let now = Instant::now();
        let max_bad_frames = self.hub.config.max_bad_frames as usize;
        let bad = &mut self.rare().bad;
        while bad
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(10))
        {
            bad.pop_front();
        }
        bad.push_back(now);
        bad.len() > max_bad_frames
    }

    /// Claims a command id; a duplicate of a pending one is a bad frame
    /// (`Err(true)` when the connection must close for it).
    ///
    /// A connection may have at most `max_in_flight` commands awaiting their
    /// answer; one more is answered `limit_exceeded` (and not run), so no
    /// client can queue unbounded work on the server or the backend.
    fn claim(&mut self, id: u64, out: &mut Vec<Utf8Bytes>) -> Result<(), bool> {
        if self.pending.contains(&id) {
            return Err(self.bad_frame(Some(id), &format!("id {id} is already pending"), out));
        }
        if self.pending.len() >= self.hub.config.max_in_flight {
            let message = format!(
                "at most {} commands in flight per connection",
                self.hub.config.max_in_flight
            );
            out.push(protocol::error(Some(id), ErrorCode::LimitExceeded, &message).into());
            return Err(false);
        }
        self.pending.insert(id);
        Ok(())
    }

    /// Takes a token for a command that reaches the backend's subscription
    /// or presence state; `rate_limited` when the connection has none left.
    fn take_backend_token(&mut self) -> Result<(), CommandError> {
        if self.command_bucket.try_take() {
            Ok(())
        } else {
            Err(CommandError::new(
                ErrorCode::RateLimited,
                "subscribe/unsubscribe/presence rate limit exceeded",
            ))
        }
    }

    /// Answers command `id` at once.
    fn answer(&mut self, id: u64, frame: impl Into<Utf8Bytes>, out: &mut Vec<Utf8Bytes>) {
        self.pending.remove(&id);
        out.push(frame.into());
    }

    /// Answers command `id` with an error at once.
    fn fail(&mut self, id: u64, e: CommandError, out: &mut Vec<Utf8Bytes>) {
        self.answer(id, protocol::error(Some(id), e.code, &e.message), out);
    }

    /// Runs `work` in its own task; its answer comes back as `ConnEvent::Done`.
    pub(super) fn spawn_command<F>(&self, id: u64, work: F)
    where
        F: Future<Output = String> + Send + 'static,
    {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let frame = Utf8Bytes::from(work.await);
            handle.push(Outbound::Event(Box::new(ConnEvent::Done { id, frame })));
        });
    }

    /// Handles one text frame. Returns an exit when the connection must close.
    pub(super) fn on_text(&mut self, text: &str, out: &mut Vec<Utf8Bytes>) -> Handled {
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(bad) => {
                return self
                    .bad_frame(bad.id, &bad.message, out)
                    .then(too_many_bad_frames);
            }
        };
        // Every command with an id claims it first: one answer per id.
        if let Some(id) = command_id(&frame) {
            if let Err(fatal) = self.claim(id, out) {
                return fatal.then(too_many_bad_frames);
            }
        }
        match frame {
            ClientFrame::Connect { id, .. } => {
                if self.bad_frame(id, "already connected", out) {
                    return Some(too_many_bad_frames());
                }
            }
            ClientFrame::Subscribe { id, request } => self.on_subscribe(id, request, out),
            ClientFrame::Unsubscribe { id, channel } => {
                if let Err(e) = self.take_backend_token() {
                    self.fail(id, e, out);
                } else {
                    self.end_subscription(&channel);
                    self.answer(id, protocol::reply(id).finish(), out);
                }
            }
            ClientFrame::Publish { id, channel, data } => self.on_publish(id, channel, data, out),
            ClientFrame::Ask {
                id,
                event,
                data,
                core,
            } => self.on_ask(id, &event, data, core, out),
            ClientFrame::Tell { event, data, core } => self.on_tell(&event, data, core, out),
            ClientFrame::Join {
                id,
                core,
                data,
                redirect,
            } => {
                let cores = self.cores.clone();
                let client = self.handle.client.clone();
                let (core, data) = (core.into_owned(), Data::from(data));
                let max_data = self.hub.config.max_data_bytes;
                self.spawn_command(id, async move {
                    if redirect {
                        // Latency-critical clients connect to the owner
                        // themselves rather than be relayed through here.
                        match cores.redirect(&core).await {
                            Ok(None) => {} // the core is here: join it
                            Ok(Some(to)) => return answer_data(id, Ok(to), max_data),
                            Err(e) => return answer_data(id, Err(e), max_data),
                        }
                    }
                    answer_data(id, cores.join(&client, &core, data).await, max_data)
                });
            }
            ClientFrame::Leave { id, core } => match self.cores.leave(&self.handle.client, &core) {
                Ok(()) => self.answer(id, protocol::reply(id).finish(), out),
                Err(e) => self.fail(id, e, out),
            },
            ClientFrame::Presence { id, channel } => self.on_presence(id, channel, out),
            ClientFrame::Reply { id, data } => {
                if let Some(tx) = self.rare.as_mut().and_then(|r| r.server_asks.remove(&id)) {
                    let _ = tx.send(Ok(Data::from(data)));
                }
            }
            ClientFrame::Error { id, code, message } => {
                if let Some(tx) = self.rare.as_mut().and_then(|r| r.server_asks.remove(&id)) {
                    let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal);
                    let _ = tx.send(Err(CommandError::new(code, message)));
                }
            }
            ClientFrame::Pong => {}
        }
        None
    }

    fn on_subscribe(&mut self, id: u64, request: SubscriptionRequest, out: &mut Vec<Utf8Bytes>) {
        if let Err(e) = self
            .check_subscribe(&request.channel)
            .and_then(|()| self.take_backend_token())
        {
            return self.fail(id, e, out);
        }
        let Some(sub) = self.subs.get(request.channel.as_str()) else {
            return self.start_subscription(Some(id), request);
        };
        match &sub.position {
            Some(pos) => {
                let frame = protocol::reply(id)
                    .u64("offset", pos.offset)
                    .str("epoch", &pos.epoch)
                    .finish();
                self.answer(id, frame, out);
            }
            // Being set up (say, restored from the session the client just
            // resumed): answered when that completes, with its position.
            None => self
                .rare()
                .waiting_subscribes
                .push((request.channel.as_str().into(), id)),
        }
    }

    fn on_publish(
        &mut self,
        id: u64,
        channel: Cow<'_, str>,
        data: &RawValue,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if !self.identity.publish.allows(&channel) {
            let e = CommandError::forbidden("you may not publish to this channel");
            return self.fail(id, e, out);
        }
        if !self.bucket.try_take() {
            let e = CommandError::new(ErrorCode::RateLimited, "publish rate limit exceeded");
            return self.fail(id, e, out);
        }
        // Publishes of one connection reach the backend in the order they were
        // sent: they are queued, and one task at a time sends everything
        // queued as one ordered batch (`Scaler::publish_ordered`: one round
        // trip for the Redis scaler), then the next batch. Each publish's
        // time counts from its frame's arrival; the queue is bounded by
        // `max_in_flight`. A backend failure fails the publishes queued
        // behind it: applying them later, after their predecessor was lost,
        // would break the connection's order.
        let item = QueuedPublish {
            id,
            channel: channel.into_owned(),
            data: data.get().to_owned(),
            deadline: tokio::time::Instant::now() + self.hub.config.scaler_timeout,
        };
        let queue = self.publishes.get_or_insert_with(Default::default).clone();
        let start = {
            let mut state = queue.lock().unwrap_or_else(|p| p.into_inner());
            state.items.push(item);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            tokio::spawn(send_publishes(self.hub.clone(), self.handle.clone(), queue));
        }
    }

    fn on_ask(
        &mut self,
        id: u64,
        event: &str,
        data: &RawValue,
        core: Option<Cow<'_, str>>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if let Some(core) = core {
            let cores = self.cores.clone();
            let client = self.handle.client.clone();
            let (core, event, data) = (core.into_owned(), event.to_owned(), Data::from(data));
            let max_data = self.hub.config.max_data_bytes;
            return self.spawn_command(id, async move {
                answer_data(id, cores.ask(&client, &core, &event, data).await, max_data)
            });
        }
        let Some(handler) = self.app.asks.get(event).cloned() else {
            let e = CommandError::not_found(format!("no ask handler for `{event}`"));
            return self.fail(id, e, out);
        };
        let cx = self.context();
        let data = Data::from(data);
        let limit = self.hub.config.ask_timeout;
        let max_data = self.hub.config.max_data_bytes;
        self.spawn_command(id, async move {
            match tokio::time::timeout(limit, handler(cx, data)).await {
                Ok(Ok(data)) if data.get().len() > max_data => protocol::error(
                    Some(id),
                    ErrorCode::LimitExceeded,
                    &format!("the handler's reply is over {max_data} bytes"),
                ),
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

    fn on_tell(
        &mut self,
        event: &str,
        data: &RawValue,
        core: Option<Cow<'_, str>>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if let Some(core) = core {
            return self.on_core_tell(&core, event, data, out);
        }
        let started = match self.app.tells.get(event) {
            None => Err(CommandError::not_found(format!(
                "no tell handler for `{event}`"
            ))),
            Some(handler) => handler(self.context(), Data::from(data)),
        };
        match started {
            Ok(task) => {
                tokio::spawn(task);
            }
            // A tell has no id: its error answers no frame.
            Err(e) => out.push(protocol::error(None, e.code, &e.message).into()),
        }
    }

    /// A tell to a core: a member's goes out at once (in send order); a
    /// non-member's needs the core's location first.
    fn on_core_tell(&mut self, core: &str, event: &str, data: &RawValue, out: &mut Vec<Utf8Bytes>) {
        let data = Data::from(data);
        let client = self.handle.client.clone();
        match self.cores.tell_member(&client, core, event, &data) {
            Ok(true) => {}
            Ok(false) => {
                let cores = self.cores.clone();
                let handle = self.handle.clone();
                let (core, event) = (core.to_owned(), event.to_owned());
                tokio::spawn(async move {
                    if let Err(e) = cores.tell(&client, &core, &event, data).await {
                        let frame = protocol::error(None, e.code, &e.message);
                        handle.push(Outbound::Frame(Box::new(frame.into())));
                    }
                });
            }
            Err(e) => out.push(protocol::error(None, e.code, &e.message).into()),
        }
    }

    fn on_presence(&mut self, id: u64, channel: Cow<'_, str>, out: &mut Vec<Utf8Bytes>) {
        if !self.identity.subscribe.allows(&channel) {
            let e = CommandError::forbidden("you may not see this channel");
            return self.fail(id, e, out);
        }
        if let Err(e) = self.take_backend_token() {
            return self.fail(id, e, out);
        }
        let hub = self.hub.clone();
        let channel = channel.into_owned();
        self.spawn_command(id, async move {
            let entries = hub.scaler.presence(&channel).await;
            match entries {
                Ok(entries) => presence_reply(id, &entries, &hub.config),
                Err(e) => {
                    let e = CommandError::from(e);
                    protocol::error(Some(id), e.code, &e.message)
                }
            }
        });
    }
}

/// The answer to a command whose result is data (core joins and asks).
fn answer_data(id: u64, result: Result<Data, CommandError>, max_data: usize) -> String {
    match result {
        Ok(data) if data.get().len() > max_data => protocol::error(
            Some(id),
            ErrorCode::LimitExceeded,
            &format!("the core's reply is over {max_data} bytes"),
        ),
        Ok(data) => protocol::reply_data(id, data.get()),
        Err(e) => protocol::error(Some(id), e.code, &e.message),
    }
}

/// The id a command must be answered with, for frames that are commands (not
/// answers to a server ask, not `connect`).
fn command_id(frame: &ClientFrame<'_>) -> Option<u64> {
    match frame {
        ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Publish { id, .. }
        | ClientFrame::Ask { id, .. }
        | ClientFrame::Join { id, .. }
        | ClientFrame::Leave { id, .. }
        | ClientFrame::Presence { id, .. } => Some(*id),
        ClientFrame::Connect { .. }
        | ClientFrame::Tell { .. }
        | ClientFrame::Reply { .. }
        | ClientFrame::Error { .. }
        | ClientFrame::Pong => None,
    }
}

/// The answer to `presence`: at most `max_presence` entries and at most
/// `max_data_bytes` of JSON, with `truncated: true` when entries were left out,
/// so the frame is always small enough to send.
fn presence_reply(id: u64, entries: &[PresenceEntry], config: &Config) -> String {
    #[derive(Serialize)]
    struct Client<'a> {
        client: &'a str,
        user: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Clients<'a> {
        clients: Vec<Client<'a>>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    }
    // Room for the envelope and the `truncated` flag.
    let budget = config.max_data_bytes.saturating_sub(64);
    let mut size = 0;
    let mut clients = Vec::with_capacity(entries.len().min(config.max_presence));
    for entry in entries.iter().take(config.max_presence) {
        // Each entry's JSON: its strings (escaping may add a little; the
        // margin above covers typical ids) plus punctuation.
        let entry_size = entry.client.len() + entry.user.as_deref().map_or(4, |u| u.len() + 2) + 24;
        if size + entry_size > budget {
            break;
        }
        size += entry_size;
        clients.push(Client {
            client: &entry.client,
            user: entry.user.as_deref(),
        });
    }
    let truncated = clients.len() < entries.len();
    protocol::reply(id)
        .json("data", &Clients { clients, truncated })
        .finish()
}

/// One publish of a connection's chain: waits for the previous one (failing
/// at once if it failed on the backend), then publishes, all by `deadline`.
/// A publish waiting for its turn.
pub(super) struct QueuedPublish {
    id: u64,
    channel: String,
    data: String,
    deadline: tokio::time::Instant,
}

/// A connection's publishes waiting for the backend.
#[derive(Default)]
pub(super) struct PublishState {
    items: Vec<QueuedPublish>,
    /// A task is sending (it takes new items as they come).
    running: bool,
    /// A publish failed on the backend: everything queued behind it fails.
    failed: bool,
}

pub(super) type PublishQueue = Arc<Mutex<PublishState>>;

/// Sends a connection's queued publishes, batch after batch, until the queue
/// is empty.
async fn send_publishes(hub: Arc<Hub>, handle: Arc<Mailbox>, queue: PublishQueue) {
    loop {
        let (batch, failed) = {
            let mut state = queue.lock().unwrap_or_else(|p| p.into_inner());
            if state.items.is_empty() {
                state.running = false;
                state.failed = false;
                return;
            }
            (std::mem::take(&mut state.items), state.failed)
        };
        let deadline = batch.iter().map(|p| p.deadline).min();
        let results: Vec<Result<StreamPosition, CommandError>> = if failed
            || deadline.is_some_and(|d| d <= tokio::time::Instant::now())
        {
            let e = CommandError::new(
                ErrorCode::Unavailable,
                "an earlier publish of this connection failed on the backend; this one was not sent",
            );
            batch.iter().map(|_| Err(e.clone())).collect()
        } else {
            let items: Vec<(&str, &str)> = batch
                .iter()
                .map(|p| (p.channel.as_str(), p.data.as_str()))
                .collect();
            let send = hub.publish_ordered(&items);
            match tokio::time::timeout_at(deadline.unwrap_or_else(tokio::time::Instant::now), send)
                .await
            {
                Ok(results) => results,
                Err(_) => {
                    let e = CommandError::new(
                        ErrorCode::Timeout,
                        "the backend did not confirm in time; the publication may or may not have been made",
                    );
                    batch.iter().map(|_| Err(e.clone())).collect()
                }
            }
        };
        if results
            .iter()
            .any(|r| matches!(r, Err(e) if is_backend_failure(e)))
        {
            queue.lock().unwrap_or_else(|p| p.into_inner()).failed = true;
        }
        for (p, result) in batch.iter().zip(results) {
            let frame = match result {
                Ok(pos) => protocol::reply(p.id)
                    .u64("offset", pos.offset)
                    .str("epoch", &pos.epoch)
                    .finish(),
                Err(e) => protocol::error(Some(p.id), e.code, &e.message),
            };
            let frame = Utf8Bytes::from(frame);
            handle.push(Outbound::Event(Box::new(ConnEvent::Done {
                id: p.id,
                frame,
            })));
        }
    }
}

fn is_backend_failure(e: &CommandError) -> bool {
    matches!(
        e.code,
        ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Internal
    )
}
