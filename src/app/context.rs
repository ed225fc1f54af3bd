//! [`Context`]: who sent a frame, and a handle to the cluster.

use crate::{error::CommandError, sockets::Sockets};
use std::{
    any::{Any, type_name},
    fmt,
    sync::Arc,
};

/// Shared application state, as given to [`crate::App::with_state`].
pub(crate) type SharedState = Option<Arc<dyn Any + Send + Sync>>;

/// Who sent a frame, and a handle to the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// The connection id.
    pub client: Arc<str>,
    /// The user id, `None` when anonymous.
    pub user: Option<Arc<str>>,
    /// The session id.
    pub session: Arc<str>,
    /// Publish, tell, ask... anywhere in the cluster.
    pub sockets: Sockets,
    pub(crate) state: SharedState,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("client", &self.client)
            .field("user", &self.user)
            .field("session", &self.session)
            .field("instance", &self.sockets.instance_id())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The id of the instance hosting this connection.
    pub fn instance(&self) -> &str {
        self.sockets.instance_id()
    }

    /// This connection's session data, shared by every connection of the
    /// session and kept in the scaler for the resume window.
    pub fn session(&self) -> crate::SessionData {
        self.sockets.session_data(&self.session)
    }

    /// The app's shared state, as given to [`crate::App::with_state`]. An app
    /// that registered no state of type `S` gets `internal`, which
    /// [`crate::Server::start`] already refuses for handlers taking
    /// [`crate::State`].
    pub fn state<S: Clone + Send + Sync + 'static>(&self) -> Result<S, CommandError> {
        self.state
            .as_ref()
            .and_then(|state| state.downcast_ref::<S>())
            .cloned()
            .ok_or_else(|| {
                CommandError::internal(format!(
                    "no app state of type `{}`: call App::with_state",
                    type_name::<S>()
                ))
            })
    }
}
