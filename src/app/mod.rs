//! What an application plugs into the server: `ask` and `tell` handlers by event
//! name, shared state, the authenticator, and connect/disconnect hooks.
//!
//! Handlers are plain async functions (or closures) taking a [`Context`], and
//! optionally the app's [`State`], and the frame's data as [`Data`] (raw JSON)
//! or [`Json<T>`] (typed):
//!
//! ```
//! use scaled_sockets::{App, AllowAnonymous, CommandError, Context, Data, Json, State};
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//!
//! #[derive(serde::Deserialize)]
//! struct Add { n: u64 }
//!
//! async fn echo(_cx: Context, data: Data) -> Result<Data, CommandError> {
//!     Ok(data)
//! }
//!
//! async fn add(
//!     _cx: Context,
//!     State(total): State<Arc<AtomicU64>>,
//!     Json(add): Json<Add>,
//! ) -> Result<u64, CommandError> {
//!     Ok(total.fetch_add(add.n, Ordering::Relaxed) + add.n)
//! }
//!
//! let app = App::new()
//!     .with_state(Arc::new(AtomicU64::new(0)))
//!     .authenticator(AllowAnonymous)
//!     .ask("echo", echo)
//!     .ask("add", add)
//!     .tell("move", |cx: Context, data: Data| async move {
//!         tracing::info!(client = %cx.client, "move {}", data.get());
//!     });
//! ```

mod context;
mod handler;

pub use context::Context;
pub(crate) use context::SharedState;
pub use handler::{AskHandler, FromData, Json, State, TellHandler};

use crate::{
    auth::{Authenticator, DenyAll},
    cores::{Candidate, CoreFactory, CoreKinds},
    data::Data,
    error::{CommandError, Error},
};
use futures_util::future::BoxFuture;
use handler::StateNeed;
use std::{any::TypeId, collections::HashMap, fmt, future::Future, sync::Arc};

/// Result of an `ask` handler on raw [`Data`].
pub type AskResult = Result<Data, CommandError>;

type AskFn = dyn Fn(Context, Data) -> BoxFuture<'static, AskResult> + Send + Sync;
type TellFn = dyn Fn(Context, Data) -> Result<BoxFuture<'static, ()>, CommandError> + Send + Sync;
type HookFn = dyn Fn(Context) -> BoxFuture<'static, ()> + Send + Sync;

/// The application: handlers, state, authenticator and hooks. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(crate) asks: HashMap<Arc<str>, Arc<AskFn>>,
    pub(crate) tells: HashMap<Arc<str>, Arc<TellFn>>,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) on_connect: Option<Arc<HookFn>>,
    pub(crate) on_disconnect: Option<Arc<HookFn>>,
    pub(crate) state: SharedState,
    /// Static pages served at `GET <path>`: (content type, body).
    pub(crate) pages: HashMap<&'static str, (&'static str, &'static str)>,
    state_type: Option<TypeId>,
    /// State types handlers read, by event, checked by [`App::validate`].
    needs: Vec<(String, TypeId, &'static str)>,
    /// Core kinds this instance offers, and the placement.
    pub(crate) cores: CoreKinds,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("asks", &self.asks.keys().collect::<Vec<_>>())
            .field("tells", &self.tells.keys().collect::<Vec<_>>())
            .field("authenticator", &self.authenticator)
            .field("has_state", &self.state.is_some())
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
            state: None,
            pages: HashMap::new(),
            state_type: None,
            needs: Vec::new(),
            cores: CoreKinds::default(),
        }
    }

    /// Shared state for handlers, read with the [`State`] input or
    /// [`Context::state`]. Use a cheap-to-clone type (an `Arc`): each call
    /// clones it.
    pub fn with_state<S: Clone + Send + Sync + 'static>(mut self, state: S) -> Self {
        self.state = Some(Arc::new(state));
        self.state_type = Some(TypeId::of::<S>());
        self
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

    fn note_need(&mut self, event: &str, need: StateNeed) {
        if let Some((type_id, name)) = need {
            self.needs.push((event.to_owned(), type_id, name));
        }
    }

    /// Handles `ask` frames for `event`; the handler's output is the reply's
    /// `data`.
    pub fn ask<H, M>(mut self, event: &str, handler: H) -> Self
    where
        H: AskHandler<M>,
    {
        self.note_need(event, handler.state_need());
        self.asks.insert(
            event.into(),
            Arc::new(move |cx, data| handler.call(cx, data)),
        );
        self
    }

    /// Handles `tell` frames for `event`.
    pub fn tell<H, M>(mut self, event: &str, handler: H) -> Self
    where
        H: TellHandler<M>,
    {
        self.note_need(event, handler.state_need());
        self.tells.insert(
            event.into(),
            Arc::new(move |cx, data| handler.call(cx, data)),
        );
        self
    }

    /// Offers core kind `kind` on this instance: `factory` makes a fresh
    /// [`crate::Core`] for every core of that kind started here (e.g.
    /// `App::new().core("counter", Counter::default)`). Instances may offer
    /// different kinds; a core is only placed on an instance offering its kind.
    pub fn core(mut self, kind: &str, factory: impl CoreFactory) -> Self {
        self.cores.kinds.insert(kind.into(), Arc::new(factory));
        self
    }

    /// Replaces the default placement of new cores ([`crate::cores::least_loaded`]:
    /// fewest connections plus cores). `place(kind, candidates)` returns the
    /// id of one of the candidates (live, not draining, offering the kind).
    pub fn core_placement<F>(mut self, place: F) -> Self
    where
        F: Fn(&str, &[Candidate]) -> Option<String> + Send + Sync + 'static,
    {
        self.cores.placement = Some(Arc::new(place));
        self
    }

    /// Serves a static page at `GET path` (an HTML page for the browser client,
    /// say). Built-in routes (`/ws`, probes, `/api/*`, `/scaled-sockets.js`)
    /// take precedence.
    pub fn page(
        mut self,
        path: &'static str,
        content_type: &'static str,
        body: &'static str,
    ) -> Self {
        self.pages.insert(path, (content_type, body));
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

    /// Refuses an app whose handlers read a state type it was not given, so
    /// the mistake shows when the server starts, not on the first frame.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        for (event, type_id, name) in &self.needs {
            if self.state_type != Some(*type_id) {
                return Err(Error::Config(format!(
                    "handler `{event}` reads State<{name}>, but App::with_state was not given a {name}"
                )));
            }
        }
        Ok(())
    }
}
