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
//! - [`app`]: what an application plugs in: `ask`/`tell` handlers, the
//!   authenticator, connect/disconnect hooks; [`Data`] and [`Context`].
//! - [`auth`]: [`Authenticator`], [`Identity`], the HS256 [`JwtAuthenticator`].
//! - [`server`]: [`Server`]: start, serve with graceful drain, or mount as a
//!   service.
//! - [`http`]: the routes (`/ws`, `/healthz`, `/readyz`, `/metrics`, `/api/*`)
//!   as a hyper/tower service.
//! - `node` (private, exposed as [`Sockets`]): one instance's local state, the
//!   scaler feed dispatcher, cross-instance routing.
//! - `connection` (private): one socket's task: handshake, commands, ordered
//!   delivery with gap repair, bounded outbound queue.
//! - [`protocol`]: wire protocol v1 parsing and encoding, close codes.
//! - [`config`]: limits and timeouts with their defaults.
//! - [`cli`]: the standalone server's flags, env and TOML config.
//! - [`metrics`], [`pattern`], [`rate_limit`], `shutdown`: small helpers.
//! - [`error`]: [`Error`], [`CommandError`] and the protocol [`ErrorCode`]s.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
mod connection;
pub mod error;
pub mod http;
pub mod metrics;
mod node;
pub mod pattern;
pub mod protocol;
pub mod rate_limit;
pub mod server;
mod shutdown;

pub use app::{App, AskResult, Context, Data};
pub use auth::{AllowAnonymous, Authenticator, Identity, JwtAuthenticator};
pub use config::Config;
pub use error::{CommandError, Error, ErrorCode};
pub use http::ScaledSocketsService;
pub use node::Sockets;
pub use pattern::Permission;
pub use scaled_sockets_scaler::{self as scaler, MemoryScaler, Scaler, StreamPosition};
pub use server::Server;
