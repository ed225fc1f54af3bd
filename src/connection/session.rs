//! The session record a connection leaves in the scaler, so a client that
//! reconnects (to any instance) within the resume window gets its
//! subscriptions back.

use super::Conn;
use crate::{hub::Hub, protocol::SubscriptionRequest};
use scaled_sockets_scaler::ScalerExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::oneshot;

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
async fn save(hub: &Arc<Hub>, session: &str, record: &SessionRecord) {
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

impl Conn {
    /// The record of this connection's subscriptions with the positions last
    /// delivered, or `None` while one is still being set up (its requested
    /// position is not known here; the next save will have it).
    fn session_record(&self) -> Option<SessionRecord> {
        let mut subscriptions = Vec::with_capacity(self.subs.len());
        for (channel, sub) in &self.subs {
            let pos = sub.position.as_ref()?;
            subscriptions.push(SubscriptionRequest {
                channel: channel.to_string(),
                offset: Some(pos.offset),
                epoch: Some(pos.epoch.to_string()),
            });
        }
        Some(SessionRecord {
            user: self.identity.user.clone(),
            subscriptions,
        })
    }

    /// A cheap summary of the positions: when it has not changed since the
    /// last save, there is nothing new to save.
    fn positions_fingerprint(&self) -> u64 {
        self.subs.values().fold(self.subs.len() as u64, |acc, sub| {
            let offset = sub.position.as_ref().map_or(u64::MAX, |p| p.offset);
            acc.wrapping_mul(31).wrapping_add(offset)
        })
    }

    /// Saves the session record as positions advance, in batches (the hub
    /// asks every `session_save_interval`), and at least every half resume
    /// window, so the record outlives neither the connection nor a crash of
    /// this instance by more than the resume window.
    pub(super) fn save_session_if_changed(&mut self) {
        let now = self.hub.clock_ms();
        let refresh_ms = (self.hub.config.resume_window.as_millis() / 2) as u64;
        // Session data outlives no connection of its session: renewed while
        // one is open (and at its close).
        if now.saturating_sub(self.data_touched_at_ms) >= refresh_ms {
            self.data_touched_at_ms = now;
            let data = self.session_data();
            tokio::spawn(async move {
                if let Err(e) = data.touch().await {
                    tracing::debug!(error = %e, "could not renew session data");
                }
            });
        }
        let fingerprint = self.positions_fingerprint();
        if fingerprint == self.saved_fingerprint
            && now.saturating_sub(self.saved_at_ms) < refresh_ms
        {
            return;
        }
        if let Some(record) = self.session_record() {
            self.saved_fingerprint = fingerprint;
            self.saved_at_ms = now;
            self.write_session(record, None);
        }
    }

    /// Writes `record`, after this connection's earlier session writes (they
    /// may travel on different backend connections: an older record must
    /// never land last). `then` runs after the write.
    pub(super) fn write_session(
        &mut self,
        record: SessionRecord,
        then: Option<futures_util::future::BoxFuture<'static, ()>>,
    ) {
        let previous = self.session_chain.take();
        let (done, next) = oneshot::channel();
        self.session_chain = Some(next);
        let hub = self.hub.clone();
        let session = self.handle.session.clone();
        tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            save(&hub, &session, &record).await;
            let _ = done.send(());
            if let Some(then) = then {
                then.await;
            }
        });
    }

    /// This connection's session data.
    pub(super) fn session_data(&self) -> crate::SessionData {
        crate::SessionData::new(
            self.hub.scaler.clone(),
            &self.handle.session,
            self.hub.config.resume_window,
        )
    }

    /// The record at close: the positions last delivered (a subscription
    /// still being set up keeps only its channel).
    pub(super) fn closing_record(&self) -> SessionRecord {
        SessionRecord {
            user: self.identity.user.clone(),
            subscriptions: self
                .subs
                .iter()
                .map(|(channel, sub)| SubscriptionRequest {
                    channel: channel.to_string(),
                    offset: sub.position.as_ref().map(|p| p.offset),
                    epoch: sub.position.as_ref().map(|p| p.epoch.to_string()),
                })
                .collect(),
        }
    }
}
