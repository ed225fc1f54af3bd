//! Scaled Sockets wire protocol v1 (docs/protocol.md): the one definition of
//! its frames, shared by the server and the Rust client.
//!
//! Every frame is a UTF-8 text frame holding one JSON object. `data` fields
//! are relayed as raw JSON text ([`RawValue`]), never re-interpreted, so
//! every value (integers beyond 64 bits included) arrives as it was sent.
//! This crate does no I/O and does not depend on a WebSocket library.
//!
//! # Modules
//! - [`codes`]: [`ErrorCode`] (the codes of `error` frames) and the
//!   [`close`] codes.
//! - [`client_frame`]: [`parse_client_frame`] turns a client's text frame into
//!   a type-checked [`ClientFrame`] borrowing from the text, or a [`BadFrame`]
//!   to answer `bad_request`; [`validate_name`] checks channel, event, core
//!   and session names.
//! - [`client_encode`]: [`ClientFrame::encode`], the client's side of the same
//!   frames.
//! - [`server_frame`]: builders of every server frame ([`reply`], [`error`],
//!   [`message`], [`welcome`], …) returning JSON text.
//! - [`server_decode`]: [`decode_server_frame`] turns a server's text frame
//!   into a typed [`ServerFrame`] (the client's side).
//! - [`writer`]: [`FrameWriter`], the field-by-field JSON object writer the
//!   builders and the encoder use.
//!
//! The test vectors in `protocol/vectors/` (format in its README) pin the
//! frames down for every implementation, this crate's tests run them all.

#![warn(missing_docs)]

pub mod client_encode;
pub mod client_frame;
pub mod codes;
pub mod server_decode;
pub mod server_frame;
pub mod writer;

pub use client_frame::{
    BadFrame, ClientFrame, MAX_NAME_BYTES, SubscriptionRequest, parse_client_frame, validate_name,
};
pub use codes::{ErrorCode, close};
pub use server_decode::{DecodeError, Reply, ServerFrame, Welcome, decode_server_frame};
pub use server_frame::{
    PING, ask, disconnect, error, left, message, ping, reply, reply_data, reply_position,
    subscribed, tell, unsubscribed, welcome,
};
pub use writer::FrameWriter;

/// Re-exported so users can name [`RawValue`] without depending on the same
/// `serde_json` version.
pub use serde_json::value::RawValue;
