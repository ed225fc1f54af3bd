//! What an application plugs into the server: `ask` and `tell` handlers by event
//! name, the authenticator, and connect/disconnect hooks.
//!
//! Handlers are plain async functions (or closures) taking a [`Context`] and the
//! frame's [`Data`]:
//!
//! ```
//! use scaled_sockets::{App, AllowAnonymous, Context, Data, CommandError};
//!
//! async fn echo(_cx: Context, data: Data) -> Result<Data, CommandError> {
//!     Ok(data)
//! }
//!
//! let app = App::new()
//!     .authenticator(AllowAnonymous)
//!     .ask("echo", echo)
//!     .tell("move", |cx: Context, data: Data| async move {
//!         tracing::info!(client = %cx.client, "move {}", data.get());
//!     });
//! ```

use crate::{auth::Authenticator, error::CommandError, node::Sockets};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use std::{collections::HashMap, fmt, future::Future, sync::Arc};

/// A JSON value relayed exactly as it was sent (integers beyond 64 bits and all).
#[derive(Clone)]
pub struct Data(Box<RawValue>);

impl Data {
    /// JSON `null`.
    pub fn null() -> Self {
        Self::from_json_str("null").unwrap_or_else(|_| unreachable!("null is valid JSON"))
    }

    /// Wraps raw JSON.
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// Parses JSON text (it is checked, not re-formatted).
    pub fn from_json_str(json: &str) -> Result<Self, CommandError> {
        RawValue::from_string(json.to_owned())
            .map(Self)
            .map_err(|e| CommandError::bad_request(format!("invalid JSON: {e}")))
    }

    /// Serializes a value.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, CommandError> {
        serde_json::value::to_raw_value(value)
            .map(Self)
            .map_err(|e| CommandError::internal(format!("cannot encode reply: {e}")))
    }

    /// Deserializes into `T`; a mismatch is a `bad_request`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, CommandError> {
        serde_json::from_str(self.0.get())
            .map_err(|e| CommandError::bad_request(format!("unexpected data: {e}")))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl From<&RawValue> for Data {
    fn from(raw: &RawValue) -> Self {
        Self(raw.to_owned())
    }
}

/// Who sent a frame, and a handle to the cluster.
#[derive(Clone, Debug)]
pub struct Context {
    /// The connection id.
    pub client: Arc<str>,
    /// The user id, `None` when anonymous.
    pub user: Option<Arc<str>>,
    /// The session id.
    pub session: Arc<str>,
    /// Publish, tell, ask... anywhere in the cluster.
    pub sockets: Sockets,
}

impl Context {
    /// The id of the instance hosting this connection.
    pub fn instance(&self) -> &str {
        self.sockets.instance_id()
    }
}

/// Result of an `ask` handler.
pub type AskResult = Result<Data, CommandError>;

type AskFn = dyn Fn(Context, Data) -> BoxFuture<'static, AskResult> + Send + Sync;
type TellFn = dyn Fn(Context, Data) -> BoxFuture<'static, ()> + Send + Sync;
type HookFn = dyn Fn(Context) -> BoxFuture<'static, ()> + Send + Sync;

/// Refuses every connection: the default until an authenticator is set, so a
/// forgotten one fails closed.
#[derive(Debug, Clone, Default)]
pub struct DenyAll;

#[async_trait]
impl Authenticator for DenyAll {
    async fn authenticate(
        &self,
        _token: Option<&str>,
    ) -> Result<crate::auth::Identity, CommandError> {
        Err(CommandError::new(
            crate::ErrorCode::Unauthorized,
            "no authenticator configured on this server",
        ))
    }
}

/// The application: handlers, authenticator and hooks. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(crate) asks: HashMap<Arc<str>, Arc<AskFn>>,
    pub(crate) tells: HashMap<Arc<str>, Arc<TellFn>>,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) on_connect: Option<Arc<HookFn>>,
    pub(crate) on_disconnect: Option<Arc<HookFn>>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("asks", &self.asks.keys().collect::<Vec<_>>())
            .field("tells", &self.tells.keys().collect::<Vec<_>>())
            .field("authenticator", &self.authenticator)
            .finish_non_exhaustive()
    }
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An app with no handlers that refuses every connection until an
    /// authenticator is set.
    pub fn new() -> Self {
        Self {
            asks: HashMap::new(),
            tells: HashMap::new(),
            authenticator: Arc::new(DenyAll),
            on_connect: None,
            on_disconnect: None,
        }
    }

    /// Sets who may connect.
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.authenticator = Arc::new(auth);
        self
    }

    /// Sets who may connect, shared.
    pub fn authenticator_arc(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.authenticator = auth;
        self
    }

    /// Handles `ask` frames for `event`; the handler's value is the reply's `data`.
    pub fn ask<F, Fut>(mut self, event: &str, handler: F) -> Self
    where
        F: Fn(Context, Data) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AskResult> + Send + 'static,
    {
        self.asks.insert(
            event.into(),
            Arc::new(move |cx, data| Box::pin(handler(cx, data))),
        );
        self
    }

    /// Handles `tell` frames for `event`.
    pub fn tell<F, Fut>(mut self, event: &str, handler: F) -> Self
    where
        F: Fn(Context, Data) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tells.insert(
            event.into(),
            Arc::new(move |cx, data| Box::pin(handler(cx, data))),
        );
        self
    }

    /// Runs after a connection is welcomed.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |cx| Box::pin(hook(cx))));
        self
    }

    /// Runs after a connection closed.
    pub fn on_disconnect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_disconnect = Some(Arc::new(move |cx| Box::pin(hook(cx))));
        self
    }
}
