//! One client connection: from its HTTP upgrade to its close.
//!
//! Each connection is ONE task that owns its socket and reads from ONE bounded
//! queue, its [`Mailbox`]. Everything else that wants to reach the client
//! (publications fanned out by the hub, tells, results of commands that ran in
//! their own task) pushes to that queue without waiting.
//!
//! - [`handshake`]: `connect`, authentication, session resume, `welcome`.
//! - [`commands`]: one function per client frame.
//! - [`subscriptions`]: positions, ordered delivery, buffering and gap repair.
//! - [`sub_table`]: the connection's subscriptions by channel.
//! - [`session`]: the session record saved for resumption.
//! - [`io`]: WebSocket settings, the read/write loop, closing.
//! - [`sse`]: the HTTP fallback's loop: the same connection, its frames sent
//!   as an event stream and its commands received from POSTs.
//! - [`transport`]: what the handshake needs from either transport.

mod commands;
mod handshake;
mod io;
mod session;
mod sse;
mod sub_table;
mod subscriptions;
mod transport;

pub(crate) use io::websocket_config;
pub(crate) use sse::serve_sse;

use crate::{
    app::{App, Context},
    auth::Identity,
    cores::Cores,
    data::Data,
    error::CommandError,
    hub::Hub,
    mailbox::{ConnEvent, Mailbox, Outbound},
    metrics::Metrics,
    protocol::{self, SubscriptionRequest},
    rate_limit::TokenBucket,
    shutdown::DrainGuard,
    sockets::Sockets,
};
use io::Socket;
use scaled_sockets_scaler::Topic;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Instant,
};
use sub_table::SubTable;
use subscriptions::rolled_back;
use tokio::sync::oneshot::{self, error::TryRecvError};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Utf8Bytes, protocol::Role},
};

/// What every connection of an instance shares: the hub and the app.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) hub: Arc<Hub>,
    pub(crate) cores: Arc<Cores>,
    pub(crate) app: Arc<App>,
}

/// The connection task's private state.
struct Conn {
    hub: Arc<Hub>,
    cores: Arc<Cores>,
    app: Arc<App>,
    handle: Arc<Mailbox>,
    identity: Identity,
    /// Looked up for every delivered publication (see `sub_table`).
    subs: SubTable,
    pending: HashSet<u64>,
    /// What few connections ever need; `None` (8 bytes) until one does.
    rare: Option<Box<Rare>>,
    next_generation: u64,
    bucket: TokenBucket,
    /// Rate limit of subscribe, unsubscribe and presence.
    command_bucket: TokenBucket,
    /// This connection's publishes waiting for the backend, sent in order in
    /// batches (`commands::send_publishes`); `None` while nothing is pending.
    publishes: Option<commands::PublishQueue>,
    /// Completion of this connection's latest presence write (see
    /// `Conn::presence_turn`); `None` once it is done.
    presence_chain: Option<oneshot::Receiver<()>>,
    /// Completion of this connection's latest session write.
    session_chain: Option<oneshot::Receiver<()>>,
    /// `positions_fingerprint` and hub clock of the last session save (0: no
    /// record written yet, see `Conn::has_record`).
    saved_fingerprint: u64,
    saved_at_ms: u64,
    /// Hub clock when the session's data was last renewed.
    data_touched_at_ms: u64,
}

/// The part of a connection's state that most connections never use: boxed
/// on first use, so an idle connection carries a pointer instead of ~110
/// bytes of empty tables.
#[derive(Default)]
struct Rare {
    /// The server's asks waiting for the client's answer, by id.
    server_asks: HashMap<u64, oneshot::Sender<Result<Data, CommandError>>>,
    /// The id of the last server ask (the first is 1).
    last_server_ask: u64,
    /// Subscribes of a channel whose subscription was still being set up:
    /// (channel, id), answered when it completes.
    waiting_subscribes: Vec<(Arc<str>, u64)>,
    /// When the recent bad frames came (a sliding 10 s window).
    bad: VecDeque<Instant>,
}

/// Serves one connection from its HTTP upgrade to its end.
///
/// Everything before the main loop (waiting for the upgrade, the handshake,
/// authentication, the welcome) runs in one boxed future that is freed when it
/// is done: an unboxed state machine would keep its size for the whole life of
/// the connection, and an idle socket should cost as little as possible.
pub(crate) async fn serve_upgrade(
    endpoint: Endpoint,
    on_upgrade: hyper::upgrade::OnUpgrade,
    guard: DrainGuard,
    slot: Option<crate::admission::Slot>,
) {
    let mut set_up = Box::pin(set_up(endpoint, on_upgrade)).await;
    // The handshake is over (welcomed or failed): the next one may start.
    drop(slot);
    // Borrowed where it lies, never moved: rustc gives a moved-to binding its
    // own slot in the task's state, beside the moved-from one, so moving the
    // connection and its socket out of `set_up` kept them twice (a debug
    // build's task state: 2,040 bytes, 1,240 borrowed). Likewise `io::run` takes them by
    // reference: an async fn's arguments are kept twice too (as passed, and
    // as moved into locals).
    let Some((conn, ws)) = &mut set_up else {
        return;
    };
    io::run(conn, ws).await;
    drop(guard);
}

async fn set_up(
    endpoint: Endpoint,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<(Conn, Socket)> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    let Endpoint { hub, cores, app } = endpoint;
    let config = websocket_config(&hub.config);
    let (io, read_ahead) = io::Io::from_upgrade(upgraded);
    let mut ws =
        WebSocketStream::from_partially_read(io, read_ahead, Role::Server, Some(config)).await;
    let (identity, connect) = handshake::handshake(&hub, &app, &mut ws).await?;
    let conn = handshake::welcome(hub, app, cores, &mut ws, identity, connect).await?;
    Some((conn, ws))
}

impl Conn {
    /// The rarely used state, allocated on first use.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    fn context(&self) -> Context {
        Context {
            client: self.handle.client.clone(),
            user: self.handle.user.clone(),
            session: self.handle.session.clone(),
            sockets: Sockets::new(self.hub.clone(), self.cores.clone()),
            state: self.app.state.clone(),
        }
    }

    /// Handles one queued item.
    pub(super) fn on_outbound(&mut self, item: Outbound, out: &mut Vec<Utf8Bytes>) {
        match item {
            Outbound::Publication(p) => self.on_publication(p, out),
            Outbound::Frame(frame) => out.push(*frame),
            Outbound::Shared(frame) => out.push((*frame).clone()),
            // A static frame: pinging every connection allocates nothing.
            Outbound::Ping => out.push(Utf8Bytes::from_static(protocol::PING)),
            Outbound::Event(event) => self.on_event(*event, out),
        }
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
                since,
                result,
            } => self.on_subscribed(id, channel, generation, since, result, out),
            ConnEvent::Repaired {
                channel,
                generation,
                result,
            } => self.on_repaired(channel, generation, result, out),
            ConnEvent::SaveSession => self.save_session_if_changed(),
            ConnEvent::Hold => {
                for sub in self.subs.values_mut() {
                    if sub.position.is_some() && sub.buffer.is_none() {
                        sub.buffer = Some(Box::default());
                        sub.held = true;
                    }
                }
            }
            ConnEvent::GapCheck { channel, top } => {
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                if sub.buffer.is_some() && !sub.held {
                    sub.recheck = true;
                    return;
                }
                // Only a held subscription can judge a top behind it: its
                // position was frozen before the top was read. Otherwise
                // live delivery may simply have moved past a top read a
                // moment ago.
                let held = std::mem::take(&mut sub.held);
                let Some(pos) = sub.position.clone() else {
                    return;
                };
                if held && rolled_back(&top, &pos) {
                    // The backend lost publications this client already has
                    // (restarted from a snapshot, a lagging replica promoted):
                    // their offsets will be used again. Say so, and go on
                    // from the stream's top, rather than drop the new ones
                    // as duplicates.
                    Metrics::inc(&self.hub.metrics.recovery_failures_total);
                    out.push(protocol::subscribed(&channel, top.offset, &top.epoch, false).into());
                    self.finish_buffering(&channel, top, out);
                } else if top.epoch != pos.epoch || top.offset > pos.offset {
                    self.start_repair(channel, None);
                } else if sub.buffer.is_some() {
                    self.finish_buffering(&channel, pos, out);
                }
            }
            ConnEvent::ServerAsk { event, data, reply } => {
                let rare = self.rare();
                rare.last_server_ask += 1;
                let id = rare.last_server_ask;
                rare.server_asks.retain(|_, tx| !tx.is_closed());
                rare.server_asks.insert(id, reply);
                out.push(protocol::ask(id, &event, data.get(), None).into());
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
                    out.push(protocol::unsubscribed(&channel, "unsubscribed by the server").into());
                }
            }
        }
    }

    /// After each turn of a transport's loop: an idle connection keeps no id
    /// table, no publish chain and no completion signal of finished writes.
    pub(super) fn tidy_idle(&mut self) {
        if self.pending.is_empty() {
            if self.pending.capacity() > 0 {
                self.pending = HashSet::new();
            }
            self.publishes = None;
        }
        for chain in [&mut self.presence_chain, &mut self.session_chain] {
            if chain
                .as_mut()
                .is_some_and(|rx| !matches!(rx.try_recv(), Err(TryRecvError::Empty)))
            {
                *chain = None;
            }
        }
    }

    /// Unregisters everywhere and saves the session for resumption.
    pub(super) fn cleanup(&mut self) {
        self.handle.close_queue();
        self.hub.unregister(&self.handle);
        self.cores.client_gone(&self.handle.client);
        let channels: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for channel in &channels {
            self.leave_channel(channel);
        }
        if let Some(user) = &self.handle.user {
            self.hub
                .leave_topic(&Topic::User(user.clone()), self.handle.key);
        }
        if let Some(rare) = &mut self.rare {
            for (_, tx) in rare.server_asks.drain() {
                let _ = tx.send(Err(CommandError::not_found("the client disconnected")));
            }
        }
        let record = self.closing_record();
        let hook = self
            .app
            .on_disconnect
            .clone()
            .map(|hook| hook(self.context()));
        // The session's data lives a whole resume window after its last
        // connection closed, like the record.
        let data = self.session_data();
        let after: futures_util::future::BoxFuture<'static, ()> = Box::pin(async move {
            if let Err(e) = data.touch().await {
                tracing::debug!(error = %e, "could not renew session data");
            }
            if let Some(hook) = hook {
                hook.await;
            }
        });
        match record {
            Some(record) => self.write_session(record, Some(after)),
            None => {
                tokio::spawn(after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns (a future), without calling `f`.
    fn run_size<'a, R>(_f: impl FnOnce(&'a mut Conn, &'a mut Socket) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn serve_size<R>(
        _f: impl FnOnce(
            Endpoint,
            hyper::upgrade::OnUpgrade,
            DrainGuard,
            Option<crate::admission::Slot>,
        ) -> R,
    ) -> usize {
        std::mem::size_of::<R>()
    }

    /// The connection task's state is what every idle connection keeps: the
    /// connection, its socket and the main loop's state, each once (moving
    /// the connection between bindings used to keep it twice).
    #[test]
    fn an_idle_connection_task_holds_its_state_once() {
        let once = std::mem::size_of::<Option<(Conn, Socket)>>() + run_size(io::run);
        let task = serve_size(serve_upgrade);
        assert!(
            task <= once + 128,
            "connection task state {task} bytes, its parts once {once}"
        );
    }
}
