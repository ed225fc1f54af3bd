//! The server crate's error types.

use scaled_sockets_scaler::ScalerError;

/// Error codes of the wire protocol (docs/protocol.md), sent in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed or unknown frame, wrong field types.
    BadRequest,
    /// No or invalid credentials.
    Unauthorized,
    /// Not allowed for this user.
    Forbidden,
    /// No such handler, core or client.
    NotFound,
    /// A per-connection limit was reached.
    LimitExceeded,
    /// Too many publishes.
    RateLimited,
    /// The answer did not come in time.
    Timeout,
    /// The scaler backend is unreachable: nothing was done.
    Unavailable,
    /// A bug or unexpected failure on the server.
    Internal,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::LimitExceeded => "limit_exceeded",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(code: &str) -> Option<Self> {
        Some(match code {
            "bad_request" => Self::BadRequest,
            "unauthorized" => Self::Unauthorized,
            "forbidden" => Self::Forbidden,
            "not_found" => Self::NotFound,
            "limit_exceeded" => Self::LimitExceeded,
            "rate_limited" => Self::RateLimited,
            "timeout" => Self::Timeout,
            "unavailable" => Self::Unavailable,
            "internal" => Self::Internal,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to a client command: a protocol code plus human text.
/// Handlers return it; every server failure is mapped to one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    /// The protocol error code.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
}

impl CommandError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<ScalerError> for CommandError {
    fn from(e: ScalerError) -> Self {
        if e.is_unavailable() {
            Self::new(ErrorCode::Unavailable, e.to_string())
        } else {
            Self::new(ErrorCode::Internal, e.to_string())
        }
    }
}

/// Errors of the server library itself (start-up, configuration, serving).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The scaler backend failed.
    #[error(transparent)]
    Scaler(#[from] ScalerError),
    /// Binding or serving failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
