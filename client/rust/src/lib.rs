//! Rust client for **Scaled Sockets**, a WebSocket middleware whose server runs
//! as many instances behind a load balancer.
//!
//! One [`Client`] is a cheap-to-clone handle to one background task that owns
//! the WebSocket. The task answers pings, reconnects with exponential backoff
//! and jitter when the connection is lost, resumes the session, and
//! re-subscribes every channel from the last message it delivered, so the
//! server replays what was missed; duplicates are dropped by offset. It also
//! joins its cores again after a reconnect or when a core moves.
//!
//! # Quick start
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use scaled_sockets_client::{AskError, AskRequest, Client, Error, Event};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Error> {
//! let client = Client::builder("ws://127.0.0.1:8080/ws")
//!     .token("eyJhbGciOiJIUzI1NiJ9…")
//!     .connect()
//!     .await?; // resolves after the server's `welcome`
//!
//! // Publish/subscribe. Dropping the subscription unsubscribes.
//! let mut news = client.subscribe("news").await?;
//! let offset = client.publish("news", &json!({"title": "hello"})).await?;
//! while let Some(msg) = news.next().await {
//!     let value: serde_json::Value = msg.data()?;
//!     println!("{} #{}: {value}", msg.channel, msg.offset);
//!     if msg.offset >= offset {
//!         break;
//!     }
//! }
//!
//! // Request/response with the server's handlers and cores.
//! let answer = client.ask("echo", &json!({"n": 1})).await?;
//! println!("echo answered {}", answer.get());
//! client.join("match-42", &json!({})).await?;
//! client.tell_core("match-42", "incr", &json!(null)).await?;
//!
//! // Answer the server's questions.
//! client.on_ask("confirm", |req: AskRequest| async move {
//!     let question: String = req.data()?;
//!     Ok::<_, AskError>(json!({ "yes": !question.is_empty() }))
//! });
//!
//! // Connection events, tells from the server, recovery signals.
//! let mut events = client.events();
//! tokio::spawn(async move {
//!     while let Some(event) = events.next().await {
//!         match event {
//!             Event::Tell { event, data, .. } => println!("tell {event}: {}", data.get()),
//!             Event::Subscribed { channel, recovered: false, .. } => {
//!                 println!("missed messages on {channel}: reload its state")
//!             }
//!             other => println!("{other:?}"),
//!         }
//!     }
//! });
//!
//! client.close().await; // close code 1000
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! * **Commands** carry ids unique per connection; each waits for its `reply`
//!   or `error` up to [`ClientBuilder::ask_timeout`] (default 10 s, queueing
//!   included) and fails with [`Error::Timeout`] past it. Server errors map to
//!   [`Error::Server`] with an [`ErrorCode`].
//! * **Lost connections** (socket dropped, silence longer than two ping
//!   intervals plus slack, close 1012, a `disconnect` push with
//!   `reconnect: true`, …) are re-established after a random delay. Commands
//!   waiting for an answer at that moment fail with [`Error::Disconnected`]
//!   (they are not retried: an `ask` or `publish` may or may not have been
//!   processed); commands issued while reconnecting wait for the new
//!   connection.
//! * The client **gives up** after close codes 4000, 1003 and 1009 (protocol
//!   errors, reported as [`Error::ConnectionClosed`]), after 4001 (rejected
//!   token) unless a [token provider](ClientBuilder::token_provider) can fetch
//!   a new token, and after a `disconnect` push with `reconnect: false`. It
//!   then emits [`Event::Closed`] and every call fails with that error.
//! * **Data** is relayed as [`RawValue`]: values
//!   arrive exactly as sent, integers beyond 64 bits included.
//! * `wss://` URLs are not supported yet (no TLS in this build).

#![warn(missing_docs)]

// Module map:
// - `builder`: `ClientBuilder`, configuration and the first connection.
// - `client`: `Client`, the cheap-to-clone handle and its commands.
// - `streams`: `Subscription` and `Events` streams.
// - `connection`: the background task owning the WebSocket (handshake,
//   serving, reconnecting, channel state and recovery).
// - `position`: stream positions (epoch, offset) and duplicate/gap checks.
// - `backoff`: reconnect delays with jitter.
// - `types`: public data types (`Message`, `Event`, `AskRequest`, …).
// - `error`: `Error`; `ErrorCode` comes from `scaled-sockets-protocol`, which
//   also encodes and decodes every frame.

mod backoff;
mod builder;
mod client;
mod connection;
mod error;
mod position;
mod streams;
mod types;

pub use builder::ClientBuilder;
pub use client::Client;
pub use error::{Error, ErrorCode, Result};
pub use streams::{Events, Subscription};
pub use types::{AskError, AskRequest, ConnectionInfo, Event, Message, PresenceEntry};

/// Re-exported so callers can name [`RawValue`]
/// without depending on the same `serde_json` version.
pub use serde_json::value::RawValue;
