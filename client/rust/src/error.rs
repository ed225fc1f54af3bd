//! The crate's error type and the protocol's error codes.

use std::sync::Arc;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error code of the wire protocol, as carried by `error` frames (defined
/// by the protocol crate; codes this version does not know are kept verbatim
/// in [`ErrorCode::Other`]).
pub use scaled_sockets_protocol::ErrorCode;

/// Everything that can go wrong in this crate.
///
/// `Error` is `Clone` so that one failure can be handed to several waiters
/// (e.g. every `subscribe` call waiting for the same channel).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given something unusable (e.g. a `wss://` URL while TLS
    /// support is not built in).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The WebSocket transport failed (DNS, TCP, upgrade, I/O).
    #[error("transport error: {0}")]
    Transport(#[source] Arc<tokio_tungstenite::tungstenite::Error>),
    /// The server answered with an `error` frame (or refused the handshake).
    #[error("server error {code}: {message}")]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's human-readable text.
        message: String,
    },
    /// The server closed the connection with a code after which the client
    /// does not reconnect (4000, 1003, 1009, or a `disconnect` push with
    /// `reconnect: false`).
    #[error("connection closed by the server (code {code}): {reason}")]
    ConnectionClosed {
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// No answer within the configured timeout.
    #[error("timed out")]
    Timeout,
    /// The connection was lost before the answer arrived. Commands are not
    /// retried automatically: the caller decides whether to send again.
    #[error("disconnected before the answer arrived")]
    Disconnected,
    /// The client was closed with [`Client::close`](crate::Client::close) or
    /// every handle was dropped.
    #[error("client closed")]
    Closed,
    /// The server sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Serializing or deserializing a `data` value failed.
    #[error("JSON error: {0}")]
    Json(#[source] Arc<serde_json::Error>),
    /// The token provider failed.
    #[error("token provider failed: {0}")]
    Token(String),
}

impl Error {
    /// The protocol error code, when the server answered with an `error` frame.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::Transport(Arc::new(err))
    }
}

impl From<scaled_sockets_protocol::DecodeError> for Error {
    fn from(err: scaled_sockets_protocol::DecodeError) -> Self {
        Error::Protocol(err.0)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Json(Arc::new(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for code in [
            "bad_request",
            "unauthorized",
            "forbidden",
            "not_found",
            "limit_exceeded",
            "rate_limited",
            "timeout",
            "unavailable",
            "internal",
            "brand_new",
        ] {
            let parsed = ErrorCode::from(code);
            assert_eq!(parsed.as_str(), code);
            assert_eq!(ErrorCode::from(code.to_owned()), parsed);
        }
        assert_eq!(ErrorCode::from("forbidden"), ErrorCode::Forbidden);
        assert_eq!(
            ErrorCode::from("brand_new"),
            ErrorCode::Other("brand_new".into())
        );
    }

    #[test]
    fn server_error_exposes_code() {
        let err = Error::Server {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        };
        assert_eq!(err.code(), Some(&ErrorCode::Forbidden));
        assert_eq!(err.to_string(), "server error forbidden: no");
        assert_eq!(Error::Timeout.code(), None);
    }
}
