//! One live WebSocket connection: command ids, answers it waits for,
//! liveness, writing frames and the closing handshake.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scaled_sockets_protocol::{ClientFrame, Reply, Welcome};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::trace;

use super::{ABNORMAL, CLOSE_TIMEOUT, WRITE_TIMEOUT, Ws};
use crate::error::Error;

/// What an answer (`reply` or `error` with an id) is for.
pub(super) enum Pending {
    Request(oneshot::Sender<Result<Reply, Error>>),
    /// The caller's `join`: remembered for rejoining once it succeeds.
    Join {
        core: String,
        data: Box<RawValue>,
        reply: oneshot::Sender<Result<Reply, Error>>,
    },
    /// A `join` the client sent by itself; `seq` tells a stale answer apart.
    Rejoin {
        core: String,
        seq: u64,
    },
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
}

/// Why one connection ended.
pub(super) enum Exit {
    User(oneshot::Sender<()>),
    Dropped,
    Lost { code: u16, reason: String },
}

/// One live WebSocket and the commands waiting for its answers.
pub(super) struct Conn {
    pub(super) ws: Ws,
    pub(super) next_id: u64,
    pub(super) pending: HashMap<u64, Pending>,
    pub(super) last_rx: Instant,
    pub(super) silence_limit: Option<Duration>,
    pub(super) tick: Duration,
    /// From a `disconnect` push: (code, reason, reconnect).
    pub(super) disconnect: Option<(u16, String, bool)>,
    pub(super) close: Option<(u16, String)>,
    pub(super) last_error: Option<String>,
}

impl Conn {
    pub(super) fn new(ws: Ws, welcome: &Welcome) -> Self {
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

    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) async fn send(&mut self, frame: &ClientFrame<'_>) -> Result<(), Exit> {
        self.send_text(frame.encode()).await
    }

    pub(super) async fn send_text(&mut self, text: String) -> Result<(), Exit> {
        trace!(frame = %text, "send");
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(WsMessage::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lost(Some(e.to_string()))),
            Err(_) => Err(self.lost(Some("write timed out".into()))),
        }
    }

    pub(super) fn lost(&mut self, error: Option<String>) -> Exit {
        match self.close.take() {
            Some((code, reason)) => Exit::Lost { code, reason },
            None => Exit::Lost {
                code: ABNORMAL,
                reason: error.unwrap_or_else(|| "connection lost".into()),
            },
        }
    }

    pub(super) async fn graceful_close(&mut self) {
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
