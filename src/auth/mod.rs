//! Who is connecting, and what may they do.
//!
//! An [`Authenticator`] turns the `connect` frame's token into an [`Identity`].
//! [`JwtAuthenticator`] implements the token rules of docs/protocol.md (HS256, `sub`
//! and `exp` required, `channels` and `publish` patterns, 30 s leeway); apps can
//! plug in their own (sessions, API keys, an auth service).

mod jwt;

pub use jwt::{JwtAuthenticator, TOKEN_LEEWAY};

use crate::{error::CommandError, pattern::Permission};
use async_trait::async_trait;
use std::time::SystemTime;

/// The authenticated party behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id; `None` for anonymous connections.
    pub user: Option<String>,
    /// Channels it may subscribe to (and read presence of).
    pub subscribe: Permission,
    /// Channels it may publish to.
    pub publish: Permission,
    /// When its credentials expire: the connection is then closed with 4001.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    /// An anonymous identity allowed everything (development only).
    pub fn anonymous() -> Self {
        Self {
            user: None,
            subscribe: Permission::All,
            publish: Permission::All,
            expires_at: None,
        }
    }

    /// A named user allowed everything.
    pub fn user(id: impl Into<String>) -> Self {
        Self {
            user: Some(id.into()),
            ..Self::anonymous()
        }
    }
}

/// Decides who a `connect` frame is. Return `unauthorized` to refuse.
#[async_trait]
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// Checks the token (absent for anonymous connects).
    async fn authenticate(&self, token: Option<&str>) -> Result<Identity, CommandError>;
}

pub(crate) fn unauthorized(message: impl Into<String>) -> CommandError {
    CommandError::new(crate::ErrorCode::Unauthorized, message)
}

/// Accepts every connection as anonymous (tokens are ignored). Development only.
#[derive(Debug, Clone, Default)]
pub struct AllowAnonymous;

#[async_trait]
impl Authenticator for AllowAnonymous {
    async fn authenticate(&self, _token: Option<&str>) -> Result<Identity, CommandError> {
        Ok(Identity::anonymous())
    }
}

/// Refuses every connection: the default until an authenticator is set, so a
/// forgotten one fails closed.
#[derive(Debug, Clone, Default)]
pub struct DenyAll;

#[async_trait]
impl Authenticator for DenyAll {
    async fn authenticate(&self, _token: Option<&str>) -> Result<Identity, CommandError> {
        Err(unauthorized("no authenticator configured on this server"))
    }
}
