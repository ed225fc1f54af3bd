//! The session record a connection leaves in the scaler, so a client that
//! reconnects (to any instance) within the resume window gets its
//! subscriptions back.

use crate::{hub::Hub, protocol::SubscriptionRequest};
use scaled_sockets_scaler::ScalerExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a session record keeps between connections.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SessionRecord {
    pub(super) user: Option<String>,
    pub(super) subscriptions: Vec<SubscriptionRequest>,
}

/// Reads the record of session `requested`. It resumes only for the same
/// user: knowing an id is not enough to take over someone else's session.
/// Returns the subscriptions to restore, or `None` when there is nothing to
/// resume (absent, expired, another user's, unreadable, or the backend failed).
pub(super) async fn restore(
    hub: &Hub,
    requested: &str,
    user: &Option<String>,
) -> Option<Vec<SubscriptionRequest>> {
    let lookup = hub.scaler.session_get(requested);
    match lookup.await {
        Ok(Some(bytes)) => match serde_json::from_slice::<SessionRecord>(&bytes) {
            Ok(record) if record.user == *user => Some(record.subscriptions),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable session record ignored");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "session lookup failed; starting a new session");
            None
        }
    }
}

/// Writes the record for the resume window.
pub(super) async fn save(hub: &Arc<Hub>, session: &str, record: &SessionRecord) {
    let Ok(bytes) = serde_json::to_vec(record) else {
        return;
    };
    let put = hub
        .scaler
        .session_put(session, bytes.into(), hub.config.resume_window);
    if let Err(e) = put.await {
        tracing::warn!(error = %e, "could not save the session; it may not be resumable");
    }
}
