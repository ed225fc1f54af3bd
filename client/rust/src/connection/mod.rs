//! The background task that owns the WebSocket: handshake, command routing,
//! subscriptions, liveness and reconnection.
//!
//! - [`handshake`]: opening a WebSocket, `connect` / `welcome`, which
//!   failures are worth a reconnect.
//! - [`messages`]: what the handles send the task ([`Command`], [`Control`]).
//! - [`conn`]: one live WebSocket: command ids, pending answers, liveness,
//!   writing frames, closing.
//! - [`task`]: the [`Task`] itself: the connect / serve / reconnect loop and
//!   its event loop.
//! - [`dispatch`]: the task's handling of server frames, handle commands and
//!   control messages, and of the server's `ask`s.
//! - [`channels`]: per-channel subscription state, delivery without gaps or
//!   duplicates, and recovery positions.
//! - [`cores`]: the cores joined, and joining them again after a `left`
//!   with `rejoin` or a reconnect.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::Error;
use crate::types::{AskError, AskRequest, ConnectionInfo, Event};

mod channels;
mod conn;
mod cores;
mod dispatch;
mod handshake;
mod messages;
mod task;

pub(crate) use handshake::establish;
pub(crate) use messages::{Command, Control, Request, SubInfo};
pub(crate) use task::Task;

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
    pub(crate) fn has_provider(&self) -> bool {
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

    pub(crate) fn emit(&self, event: Event) {
        lock(&self.events).retain(|tx| tx.send(event.clone()).is_ok());
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
