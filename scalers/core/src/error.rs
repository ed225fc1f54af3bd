//! The one error type of the scaler crate.

use std::{error::Error as StdError, fmt, sync::Arc, time::Duration};

/// The underlying error a [`ScalerError`] was raised from (a Redis or NATS client
/// error, an I/O error...). Shared, so that `ScalerError` stays `Clone`.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What went wrong talking to a scaler backend.
///
/// The server maps [`ScalerError::is_unavailable`] errors to the protocol error
/// `unavailable` (nothing was published), [`ScalerError::Conflict`] to whatever
/// the caller's precondition meant, the rest to `internal`.
///
/// `#[non_exhaustive]`: match with a wildcard arm. Build the variants that carry a
/// source with [`ScalerError::unavailable`] / [`ScalerError::backend`] and
/// [`ScalerError::with_source`]. Equality compares the variant and its message,
/// not the source.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ScalerError {
    /// The backend cannot be reached (connection refused or lost, not yet reconnected).
    #[error("scaler backend unavailable: {message}")]
    Unavailable {
        /// What failed, for logs.
        message: String,
        /// The client error behind it, if any.
        #[source]
        source: Option<Source>,
    },
    /// The backend did not answer in time.
    #[error("scaler backend timed out after {0:?}")]
    Timeout(Duration),
    /// The caller passed a value the backend cannot store (empty name, reserved characters...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A precondition did not hold: a create-only put found the key, a revision or
    /// fencing token did not match. Nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend answered, but with something unexpected (a script error, corrupt data).
    #[error("scaler backend error: {message}")]
    Backend {
        /// What failed, for logs.
        message: String,
        /// The client error behind it, if any.
        #[source]
        source: Option<Source>,
    },
    /// The backend cannot do this at all; see [`crate::Capabilities`].
    #[error("not supported by this scaler: {0}")]
    Unsupported(&'static str),
    /// The scaler was shut down.
    #[error("scaler closed")]
    Closed,
}

impl ScalerError {
    /// [`ScalerError::Unavailable`] without a source.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`ScalerError::Backend`] without a source.
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the error this one was raised from (only `Unavailable` and
    /// `Backend` keep it; other variants are returned unchanged).
    pub fn with_source(mut self, error: impl StdError + Send + Sync + 'static) -> Self {
        if let Self::Unavailable { source, .. } | Self::Backend { source, .. } = &mut self {
            *source = Some(Arc::new(error));
        }
        self
    }

    /// The same error as [`ScalerError::Unavailable`] if it is a
    /// [`ScalerError::Backend`] (for failures that mean "not connected").
    pub fn into_unavailable(self) -> Self {
        match self {
            Self::Backend { message, source } => Self::Unavailable { message, source },
            other => other,
        }
    }

    /// True when retrying later may succeed (the backend is down or slow), so callers
    /// answer `unavailable` rather than `internal`.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Timeout(_) | Self::Closed
        )
    }

    /// True for [`ScalerError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_))
    }

    /// The message of `Unavailable` / `Backend` (without the source), for matching
    /// on backend error texts.
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Unavailable { message, .. } | Self::Backend { message, .. } => Some(message),
            _ => None,
        }
    }
}

impl PartialEq for ScalerError {
    fn eq(&self, other: &Self) -> bool {
        use ScalerError::*;
        match (self, other) {
            (Unavailable { message: a, .. }, Unavailable { message: b, .. })
            | (Backend { message: a, .. }, Backend { message: b, .. })
            | (InvalidArgument(a), InvalidArgument(b))
            | (Conflict(a), Conflict(b)) => a == b,
            (Timeout(a), Timeout(b)) => a == b,
            (Unsupported(a), Unsupported(b)) => a == b,
            (Closed, Closed) => true,
            _ => false,
        }
    }
}

impl Eq for ScalerError {}

/// Result alias of this crate.
pub type Result<T, E = ScalerError> = std::result::Result<T, E>;

/// Displays an error with its chain of sources (`a: b: c`), for logs.
#[derive(Debug)]
pub struct Chain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_is_kept_and_equality_ignores_it() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ScalerError::unavailable("connect").with_source(io);
        assert!(e.is_unavailable());
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("refused")
        );
        assert_eq!(e, ScalerError::unavailable("connect"));
        assert_ne!(e, ScalerError::backend("connect"));
        assert_eq!(
            Chain(&e).to_string(),
            "scaler backend unavailable: connect: refused"
        );
        assert!(
            ScalerError::backend("x")
                .into_unavailable()
                .is_unavailable()
        );
        assert!(ScalerError::Conflict("c".into()).is_conflict());
        assert!(!ScalerError::Conflict("c".into()).is_unavailable());
    }
}
