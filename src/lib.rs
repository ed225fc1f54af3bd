//! Scaled Sockets: run a WebSocket application on many server instances as if
//! they were one.
//!
//! Clients connect to any instance (no sticky sessions). Channels, users,
//! sessions and presence span the cluster; cluster state lives in a
//! [`Scaler`](scaled_sockets_scaler::Scaler) backend (in-memory, Redis, NATS),
//! never in an instance.
//!
//! ```no_run
//! use scaled_sockets::{App, Config, Context, Data, JwtAuthenticator, MemoryScaler, Server};
//! use std::sync::Arc;
//!
//! # async fn run() -> Result<(), scaled_sockets::Error> {
//! let app = App::new()
//!     .authenticator(JwtAuthenticator::new(b"secret"))
//!     .ask("echo", |_cx: Context, data: Data| async move { Ok(data) });
//! let server = Server::start(Config::default(), Arc::new(MemoryScaler::new()), app).await?;
//! let sockets = server.sockets(); // publish, tell users... from anywhere
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, scaled_sockets::cli::shutdown_signal()).await
//! # }
//! ```
//!
//! # Module map
//! Dependencies point one way: `http` → `connection` → `hub` → scaler;
//! `app`, `auth`, `data`, `mailbox` and the small helpers are leaves that
//! know no layer above them.
//!
//! - [`server`]: [`Server`]: start, serve with graceful drain, or mount as a
//!   service; dropping it leaves the cluster.
//! - [`http`]: the routes (`/ws`, the HTTP fallback `/sse`, probes, `/metrics`,
//!   `/api/*`) as a hyper and tower service.
//! - `connection` (private): one client connection's task: handshake,
//!   commands, subscriptions with gap repair, the socket loop, and the same
//!   connection over the HTTP fallback.
//! - `hub` (private): one instance's local state and cluster link: interest
//!   and fan-out, the feed dispatcher, peer messages, registry, liveness.
//! - `mailbox` (private): a connection's shared handle and bounded outbound
//!   queue, what the hub and app code push to.
//! - [`sockets`]: [`Sockets`], the app's handle on the cluster (publish, tell,
//!   ask, subscribe, disconnect, presence, cores, anywhere).
//! - [`cores`]: stateful rooms ([`Core`]) hosted by one instance each, placed
//!   on the least-loaded one, reachable from all; leases, relaying, failover.
//! - [`app`]: what an application plugs in: `ask`/`tell` handlers (typed with
//!   [`Json`] and [`State`]), hooks, [`Context`].
//! - [`auth`]: [`Authenticator`], [`Identity`], the HS256 [`JwtAuthenticator`].
//! - [`data`]: [`Data`], JSON relayed untouched.
//! - [`session_data`]: [`SessionData`], a small key-value map per session
//!   kept in the scaler for the resume window.
//! - [`protocol`]: the `scaled-sockets-protocol` crate, shared with the
//!   clients: wire protocol v1 parsing and encoding, error and close codes.
//! - [`config`]: limits and timeouts with their defaults.
//! - [`cli`]: the standalone server's flags, env and TOML config.
//! - [`error`]: [`Error`], [`CommandError`] and the protocol [`ErrorCode`]s.
//! - `admission` (private): the accept-path gate (handshakes in flight and
//!   accepts per second) that makes a reconnect storm wait instead of fail.
//! - [`metrics`], [`pattern`], [`rate_limit`], `shutdown`: small helpers.

mod admission;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
mod connection;
pub mod cores;
pub mod data;
pub mod error;
pub mod http;
mod hub;
mod mailbox;
pub mod metrics;
pub mod pattern;
pub use scaled_sockets_protocol as protocol;
pub mod rate_limit;
pub mod server;
pub mod session_data;
mod shutdown;
pub mod sockets;

pub use app::{App, AskResult, Context, Json, State};
/// For implementing [`Core`]: `#[scaled_sockets::async_trait] impl Core for …`.
pub use async_trait::async_trait;
pub use auth::{AllowAnonymous, Authenticator, DenyAll, Identity, JwtAuthenticator};
pub use config::Config;
pub use cores::{Core, CoreContext, CoreInfo};
pub use data::Data;
pub use error::{CommandError, Error, ErrorCode};
pub use http::ScaledSocketsService;
pub use pattern::Permission;
pub use scaled_sockets_scaler::{self as scaler, MemoryScaler, Scaler, StreamPosition};
pub use server::Server;
pub use session_data::SessionData;
pub use sockets::{ConnectionInfo, ConnectionList, Sockets};
