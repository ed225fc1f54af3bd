//! Messages between instances: tells and asks routed to a connection on
//! another instance, ask replies, server-side subscribe and unsubscribe,
//! disconnects, session-wide tells, and connection lookups (`super::directory`).
//!
//! Each instance listens on its own inbox topic in the scaler feed. A
//! connection id names its instance (`<instance>.<unique>`), so a message for a
//! connection goes straight to that instance's inbox; asks are correlated by a
//! request number in [`RemoteAsks`] and answered to the asker's inbox.

use super::{Hub, instance_of, lock};
use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
    mailbox::{ConnEvent, Mailbox, Outbound},
};
use bytes::Bytes;
use scaled_sockets_scaler::Topic;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A message between instances, sent to an instance's inbox topic.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")] // externally tagged: RawValue cannot pass through an internally tagged enum
pub(crate) enum PeerMessage {
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
    /// Which connections of a user or session are here? (`super::directory`)
    Lookup {
        whose: super::Whose,
        request: u64,
        reply_to: String,
    },
    LookupReply {
        request: u64,
        instance: String,
        connections: Vec<super::ConnectionInfo>,
        #[serde(default)]
        truncated: bool,
    },
    /// Frames POSTed by an HTTP-fallback client, for the instance holding
    /// its stream; answered with an `AskReply` (`data` `true` when taken).
    Upload {
        session: String,
        client: String,
        seq: u64,
        frames: Vec<Box<RawValue>>,
        request: u64,
        reply_to: String,
    },
    /// A message of the cores layer (`crate::cores`), opaque to the hub: it
    /// is handed to the registered [`CoreSink`] in arrival order.
    Core {
        body: Box<RawValue>,
    },
}

impl PeerMessage {
    /// The answer to request `request`: its data (`None` reads as an
    /// error reply, so a success should carry some), or the error.
    pub(super) fn reply(request: u64, result: Result<Option<Box<RawValue>>, CommandError>) -> Self {
        match result {
            Ok(data) => Self::AskReply {
                request,
                data,
                code: None,
                message: None,
            },
            Err(e) => Self::AskReply {
                request,
                data: None,
                code: Some(e.code.as_str().to_owned()),
                message: Some(e.message),
            },
        }
    }
}

/// Where the hub hands core messages (implemented by the cores layer, which
/// sits above the hub and registers itself with [`Hub::set_core_sink`]).
///
/// Called on the feed dispatcher, in arrival order: it must not block. Order
/// matters (a core's broadcasts reach each member in the order it sent them),
/// which is why these messages are not spawned off like the others.
pub(crate) trait CoreSink: Send + Sync + 'static {
    fn deliver(&self, body: Box<RawValue>);
}

/// Asks this instance sent to connections on other instances, waiting for
/// their reply, by request number.
#[derive(Debug, Default)]
pub(crate) struct RemoteAsks(
    pub(super) Mutex<HashMap<u64, oneshot::Sender<Result<Data, CommandError>>>>,
);

impl Hub {
    /// Registers the cores layer as the receiver of core messages (once).
    pub(crate) fn set_core_sink(&self, sink: std::sync::Weak<dyn CoreSink>) {
        let _ = self.core_sink.set(sink);
    }

    /// Hands a core message to the cores layer, if one is registered.
    pub(crate) fn deliver_core(&self, body: Box<RawValue>) {
        if let Some(sink) = self.core_sink.get().and_then(std::sync::Weak::upgrade) {
            sink.deliver(body);
        }
    }

    pub(crate) async fn send_to_peer(
        &self,
        instance: &str,
        message: &PeerMessage,
    ) -> Result<(), CommandError> {
        let payload = serde_json::to_vec(message)
            .map_err(|e| CommandError::internal(format!("encode: {e}")))?;
        self.scaler
            .send(&Topic::instance(instance), payload.into())
            .await
            .map_err(Into::into)
    }

    pub(crate) async fn route(
        &self,
        client: &str,
        message: PeerMessage,
    ) -> Result<(), CommandError> {
        let Some(instance) = instance_of(client) else {
            return Err(CommandError::not_found(format!("no client `{client}`")));
        };
        if instance == &*self.id {
            // Checked before handling: a disconnect may end the connection
            // (and unregister it) before we could look afterwards.
            if self.local(client).is_none() {
                return Err(CommandError::not_found(format!("no client `{client}`")));
            }
            self.handle_peer_message(message).await;
            return Ok(());
        }
        self.send_to_live_instance(client, instance, message).await
    }

    /// Sends `message` (about `client`) to `instance` if it is live;
    /// `not_found` when it is gone.
    pub(super) async fn send_to_live_instance(
        &self,
        client: &str,
        instance: &str,
        message: PeerMessage,
    ) -> Result<(), CommandError> {
        if !self
            .live_instance_ids(Some(instance))
            .await?
            .contains(instance)
        {
            return Err(CommandError::not_found(format!(
                "client `{client}`: its instance is gone"
            )));
        }
        self.send_to_peer(instance, &message).await
    }

    /// Sends a message that expects an answer: `send` gets a fresh request
    /// id to put in it; the answer (matched by that id in `remote_asks`) is
    /// awaited at most `timeout`, past which the error says `late`.
    pub(super) async fn peer_request<Fut>(
        &self,
        send: impl FnOnce(u64) -> Fut,
        timeout: Duration,
        late: &'static str,
    ) -> Result<Data, CommandError>
    where
        Fut: std::future::Future<Output = Result<(), CommandError>>,
    {
        let request = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.remote_asks.0).insert(request, tx);
        let result = match send(request).await {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CommandError::internal("the answer was dropped")),
                Err(_) => Err(CommandError::new(ErrorCode::Timeout, late)),
            },
            Err(e) => Err(e),
        };
        // Whatever happened (sent or not, answered or timed out), the entry goes.
        lock(&self.remote_asks.0).remove(&request);
        result
    }

    pub(crate) async fn handle_peer_message(&self, message: PeerMessage) {
        match message {
            PeerMessage::Tell { client, frame } => {
                if let (Some(conn), Ok(frame)) =
                    (self.local(&client), Bytes::from(frame).try_into())
                {
                    conn.push(Outbound::Frame(Box::new(frame)));
                }
            }
            PeerMessage::TellSession { session, frame } => {
                let Ok(frame) = Utf8Bytes::try_from(Bytes::from(frame)) else {
                    return;
                };
                let frame = Arc::new(frame);
                // A scan, not an index: session tells are rare, and an index
                // would cost memory on every idle connection.
                let conns: Vec<Arc<Mailbox>> = lock(&self.conns)
                    .values()
                    .filter(|c| *c.session == *session)
                    .cloned()
                    .collect();
                for conn in conns {
                    conn.push(Outbound::Shared(frame.clone()));
                }
            }
            PeerMessage::Ask {
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
                let reply = PeerMessage::reply(
                    request,
                    result.map(|data| RawValue::from_string(data.get().to_owned()).ok()),
                );
                if reply_to == *self.id {
                    self.complete_remote_ask(reply);
                } else if let Err(e) = self.send_to_peer(&reply_to, &reply).await {
                    tracing::warn!(error = %e, "could not return an ask reply");
                }
            }
            reply @ PeerMessage::AskReply { .. } => self.complete_remote_ask(reply),
            PeerMessage::Subscribe { client, channel } => {
                if let Some(conn) = self.local(&client) {
                    conn.push(Outbound::Event(Box::new(ConnEvent::ServerSubscribe {
                        channel,
                    })));
                }
            }
            PeerMessage::Unsubscribe { client, channel } => {
                if let Some(conn) = self.local(&client) {
                    conn.push(Outbound::Event(Box::new(ConnEvent::ServerUnsubscribe {
                        channel,
                    })));
                }
            }
            PeerMessage::Disconnect {
                client,
                code,
                reason,
                reconnect,
            } => {
                if let Some(conn) = self.local(&client) {
                    conn.kill_owned(code, reason, reconnect);
                }
            }
            PeerMessage::Lookup {
                whose,
                request,
                reply_to,
            } => self.answer_lookup(whose, request, reply_to).await,
            reply @ PeerMessage::LookupReply { .. } => self.complete_lookup(reply),
            PeerMessage::Core { body } => self.deliver_core(body),
            upload @ PeerMessage::Upload { .. } => self.answer_upload(upload).await,
        }
    }

    fn complete_remote_ask(&self, reply: PeerMessage) {
        let PeerMessage::AskReply {
            request,
            data,
            code,
            message,
        } = reply
        else {
            return;
        };
        let Some(tx) = lock(&self.remote_asks.0).remove(&request) else {
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

    /// Asks a connection on any instance and waits at most `timeout` for its
    /// answer.
    pub(crate) async fn ask_client(
        &self,
        client: &str,
        event: &str,
        data: &Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        if let Some(conn) = self.local(client) {
            return conn.ask(event, data.clone(), timeout).await;
        }
        let raw = RawValue::from_string(data.get().to_owned())
            .map_err(|e| CommandError::bad_request(e.to_string()))?;
        let send = |request| {
            let message = PeerMessage::Ask {
                client: client.to_owned(),
                event: event.to_owned(),
                data: raw,
                request,
                reply_to: self.id.to_string(),
            };
            self.route(client, message)
        };
        self.peer_request(send, timeout, "the client did not answer in time")
            .await
    }

    /// Sends an encoded `tell` frame to every connection of a session.
    ///
    /// Sessions have no backend subscription of their own (that would cost
    /// every connection a topic): the frame goes to each live instance's inbox,
    /// and each instance delivers it to its connections of that session.
    pub(crate) async fn tell_session(
        &self,
        session: &str,
        frame: String,
    ) -> Result<(), CommandError> {
        let instances = self.live_instance_ids(None).await?;
        // Every instance gets its copy even when one cannot be reached: one
        // failing peer must not cut the delivery short for the others.
        let mut failed = None;
        for instance in instances.iter() {
            let message = PeerMessage::TellSession {
                session: session.to_owned(),
                frame: frame.clone(),
            };
            if **instance == *self.id {
                self.handle_peer_message(message).await;
            } else if let Err(e) = self.send_to_peer(instance, &message).await {
                tracing::warn!(%instance, error = %e, "session tell not delivered to an instance");
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
