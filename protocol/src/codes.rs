//! Error codes (sent in `error` frames) and WebSocket close codes.

use std::fmt;

/// An error code of the wire protocol, as carried by `error` frames.
///
/// The nine codes of the contract are variants; a code this version does not
/// know (a newer server or client may send one) is kept verbatim in
/// [`ErrorCode::Other`]. [`ErrorCode::parse`] accepts only the known codes, for
/// peers that must map anything else to a code of their own; `From<&str>` keeps
/// unknown ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed or unknown frame, wrong field types.
    BadRequest,
    /// Missing, invalid or expired token.
    Unauthorized,
    /// Not allowed for this user (channel or action).
    Forbidden,
    /// No such handler, core, client or resource.
    NotFound,
    /// A per-connection limit (e.g. subscriptions) was reached.
    LimitExceeded,
    /// Too many publications.
    RateLimited,
    /// The answer did not come in time.
    Timeout,
    /// The scaler backend is unreachable: nothing was done.
    Unavailable,
    /// A bug or unexpected failure.
    Internal,
    /// A code this version does not know, as written on the wire.
    Other(String),
}

/// The known codes with their wire spelling.
const KNOWN: [(ErrorCode, &str); 9] = [
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::Unauthorized, "unauthorized"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::NotFound, "not_found"),
    (ErrorCode::LimitExceeded, "limit_exceeded"),
    (ErrorCode::RateLimited, "rate_limited"),
    (ErrorCode::Timeout, "timeout"),
    (ErrorCode::Unavailable, "unavailable"),
    (ErrorCode::Internal, "internal"),
];

impl ErrorCode {
    /// The code as written on the wire (`"bad_request"`, …).
    pub fn as_str(&self) -> &str {
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
            Self::Other(code) => code,
        }
    }

    /// Parses a known code's wire spelling; `None` for anything else.
    pub fn parse(code: &str) -> Option<Self> {
        KNOWN
            .iter()
            .find(|(_, spelling)| *spelling == code)
            .map(|(known, _)| known.clone())
    }

    /// True for the codes of the contract, false for [`ErrorCode::Other`].
    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

impl From<&str> for ErrorCode {
    fn from(code: &str) -> Self {
        Self::parse(code).unwrap_or_else(|| Self::Other(code.to_owned()))
    }
}

impl From<String> for ErrorCode {
    fn from(code: String) -> Self {
        Self::parse(&code).unwrap_or(Self::Other(code))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes of the contract.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A binary frame was received.
    pub const BINARY: u16 = 1003;
    /// A frame was larger than the limit.
    pub const TOO_LARGE: u16 = 1009;
    /// The instance is restarting: reconnect (anywhere).
    pub const RESTARTING: u16 = 1012;
    /// Protocol violation.
    pub const PROTOCOL: u16 = 4000;
    /// Unauthorized, or the token expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Policy: rate limit or slow consumer.
    pub const POLICY: u16 = 4008;
    /// No `connect` within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u16 = 4009;
    /// No sign of life for two ping intervals.
    pub const NO_PONG: u16 = 4010;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_round_trip() {
        for (code, spelling) in KNOWN {
            assert_eq!(code.as_str(), spelling);
            assert_eq!(ErrorCode::parse(spelling), Some(code.clone()));
            assert_eq!(ErrorCode::from(spelling), code);
            assert_eq!(ErrorCode::from(spelling.to_owned()), code);
            assert_eq!(code.to_string(), spelling);
            assert!(code.is_known());
        }
    }

    #[test]
    fn unknown_codes_are_kept_verbatim() {
        assert_eq!(ErrorCode::parse("brand_new"), None);
        assert_eq!(ErrorCode::parse("BAD_REQUEST"), None);
        let other = ErrorCode::from("brand_new");
        assert_eq!(other, ErrorCode::Other("brand_new".into()));
        assert_eq!(other.as_str(), "brand_new");
        assert_eq!(ErrorCode::from("brand_new".to_owned()), other);
        assert!(!other.is_known());
        assert_eq!(ErrorCode::from(""), ErrorCode::Other(String::new()));
    }
}
