//! Messages from the [`Client`](crate::Client) handles to the task.

use scaled_sockets_protocol::Reply;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::position::Position;
use crate::types::Message;

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
    /// A backoff delay before joining `core` again is over (`seq`: which
    /// rejoin it belongs to; `generation`: on which connection).
    Rejoin {
        core: String,
        seq: u64,
        generation: u64,
    },
}
