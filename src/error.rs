//! The server crate's error types.

use scaled_sockets_scaler::ScalerError;

pub use scaled_sockets_protocol::ErrorCode;

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
