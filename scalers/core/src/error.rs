//! The one error type of the scaler crate.

/// What went wrong talking to a scaler backend.
///
/// The server maps [`ScalerError::Unavailable`] and [`ScalerError::Timeout`] to the
/// protocol error `unavailable` (nothing was published), the rest to `internal`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScalerError {
    /// The backend cannot be reached (connection refused or lost, not yet reconnected).
    #[error("scaler backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("scaler backend timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The caller passed a value the backend cannot store (empty name, reserved characters...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend answered, but with something unexpected (a script error, corrupt data).
    #[error("scaler backend error: {0}")]
    Backend(String),
    /// The backend cannot do this at all; see [`crate::Capabilities`].
    #[error("not supported by this scaler: {0}")]
    Unsupported(&'static str),
    /// The scaler was shut down.
    #[error("scaler closed")]
    Closed,
}

impl ScalerError {
    /// True when retrying later may succeed (the backend is down or slow), so callers
    /// answer `unavailable` rather than `internal`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout(_) | Self::Closed)
    }
}

/// Result alias of this crate.
pub type Result<T, E = ScalerError> = std::result::Result<T, E>;
