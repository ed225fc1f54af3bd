//! Public data types: messages, events, ask requests.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::{Error, ErrorCode};

/// A publication received on a subscribed channel.
#[derive(Debug, Clone)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// The published value, exactly as sent (see [`Message::data`] to decode it).
    pub data: Box<RawValue>,
    /// Its offset in the channel's stream (increments by one per publication).
    pub offset: u64,
    /// The channel's stream epoch (changes when its history is reset).
    pub epoch: String,
}

impl Message {
    /// Decodes [`Message::data`] (the field) into `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_str(self.data.get())?)
    }
}

/// Details of the current connection, from the server's `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The session id (resumable for a while after a disconnect).
    pub session: String,
    /// This connection's id.
    pub client: String,
    /// The server instance the client is connected to.
    pub instance: String,
    /// The user id from the token; `None` when anonymous.
    pub user: Option<String>,
    /// Whether an earlier session was resumed.
    pub resumed: bool,
    /// The server's ping period, when it announced one.
    pub ping_interval: Option<Duration>,
}

/// One connection subscribed to a channel, as returned by
/// [`Client::presence`](crate::Client::presence).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PresenceEntry {
    /// The connection id.
    pub client: String,
    /// Its user id; `None` when anonymous.
    #[serde(default)]
    pub user: Option<String>,
}

/// Something that happened on the connection, delivered by
/// [`Client::events`](crate::Client::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connection was established (`welcome` received). After a reconnect,
    /// `resumed` says whether the previous session was resumed.
    Connected {
        /// The session id.
        session: String,
        /// The connection id.
        client: String,
        /// The instance serving this connection.
        instance: String,
        /// The user id; `None` when anonymous.
        user: Option<String>,
        /// Whether the previous session was resumed.
        resumed: bool,
    },
    /// The connection was lost or closed. `code` is the WebSocket close code
    /// (1006 when the socket dropped without one).
    Disconnected {
        /// The close code.
        code: u16,
        /// The close reason, or what went wrong.
        reason: String,
    },
    /// The server sent a `tell` (from a handler, or from core `core`).
    Tell {
        /// The event name.
        event: String,
        /// The event data, exactly as sent.
        data: Box<RawValue>,
        /// The core that sent it, if any.
        core: Option<String>,
    },
    /// The server made or restored a subscription (e.g. after a reconnect).
    /// `recovered: false` means messages were missed and could not be
    /// replayed: reload the channel's state. The subscription keeps working.
    Subscribed {
        /// The channel.
        channel: String,
        /// Offset of the channel's latest publication.
        offset: u64,
        /// The channel's epoch.
        epoch: String,
        /// Whether every missed message is being replayed.
        recovered: bool,
    },
    /// The server ended a subscription; its [`Subscription`](crate::Subscription)
    /// streams end.
    Unsubscribed {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
    /// The client is no longer a member of core `core`. With `rejoin` (the
    /// core restarted or moved) the client joins it again by itself
    /// ([`Rejoined`](Event::Rejoined) follows); without, it forgets the core.
    Left {
        /// The core id.
        core: String,
        /// Why.
        reason: String,
        /// Whether to join again.
        rejoin: bool,
    },
    /// The client joined core `core` again by itself, after a
    /// [`Left`](Event::Left) with `rejoin: true` or after a reconnect;
    /// `data` is the core's answer to the join.
    Rejoined {
        /// The core id.
        core: String,
        /// The core's answer, exactly as sent.
        data: Box<RawValue>,
    },
    /// The client stopped trying to join core `core` again: the core
    /// refused, or stayed unreachable for a minute. It is no longer a member.
    RejoinFailed {
        /// The core id.
        core: String,
        /// The last answer.
        error: Error,
    },
    /// The server announced it is about to close the connection.
    Disconnect {
        /// The close code that follows.
        code: u16,
        /// Why.
        reason: String,
        /// Whether the client may reconnect (it does so automatically).
        reconnect: bool,
    },
    /// An `error` frame that answers no command (no `id`).
    ServerError {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's text.
        message: String,
    },
    /// The client stopped for good: `error` is `None` after
    /// [`Client::close`](crate::Client::close) or when every handle was
    /// dropped, otherwise the reason it gave up (e.g. a rejected token).
    /// No event follows.
    Closed {
        /// Why the client stopped, unless it was asked to.
        error: Option<Error>,
    },
}

/// A server `ask`, handed to a handler registered with
/// [`Client::on_ask`](crate::Client::on_ask).
#[derive(Debug, Clone)]
pub struct AskRequest {
    /// The event name.
    pub event: String,
    /// The core that asks, if the server said so.
    pub core: Option<String>,
    /// The data, exactly as sent.
    pub data: Box<RawValue>,
}

impl AskRequest {
    /// Decodes [`AskRequest::data`] (the field) into `T`; a failure is a
    /// `bad_request` answer when returned from the handler with `?`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, AskError> {
        serde_json::from_str(self.data.get())
            .map_err(|e| AskError::new(ErrorCode::BadRequest, e.to_string()))
    }
}

/// The failure an ask handler answers with: sent as
/// `{"type":"error","id":…,"code":…,"message":…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskError {
    /// The protocol error code.
    pub code: ErrorCode,
    /// A human-readable text.
    pub message: String,
}

impl AskError {
    /// An error with the given code and text.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AskError {
            code,
            message: message.into(),
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        AskError::new(ErrorCode::BadRequest, message)
    }

    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> Self {
        AskError::new(ErrorCode::Internal, message)
    }
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for AskError {}

impl From<Error> for AskError {
    fn from(err: Error) -> Self {
        match err {
            Error::Server { code, message } => AskError { code, message },
            Error::Json(e) => AskError::bad_request(e.to_string()),
            other => AskError::internal(other.to_string()),
        }
    }
}
