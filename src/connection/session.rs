//! The records a session leaves in the scaler, so a client that reconnects
//! (to any instance) within the resume window gets its subscriptions back,
//! and every tab of a browser can share one session.
//!
//! Two kinds of records, both with the resume window as their TTL:
//! - the head, `session/<session>`: whose session it is. Written when a
//!   connection joins the session, every half resume window while it is open,
//!   and when it closes, so it outlives the last connection by one window.
//! - one per connection, `sessconn/<session>/<client>`: that connection's
//!   subscriptions with the positions it last delivered, and whether it is
//!   open. Each connection writes only its own record, so two tabs of one
//!   session never overwrite each other's positions. A connection writes its
//!   first record once it has channels (a record without any would restore
//!   nothing), so a connect costs no record write.
//!
//! A resume restores the channels of the session's connections that are no
//! longer open (closed, or on an instance that died or does not answer),
//! each from the oldest position saved for it (at least once across tabs),
//! and takes those records over: it deletes them once its own record holds
//! their channels.

use super::Conn;
use crate::{
    hub::{Hub, Whose},
    protocol::SubscriptionRequest,
};
use bytes::Bytes;
use scaled_sockets_scaler::{PutMode, PutOptions, ScalerExt};
use serde::{Deserialize, Serialize};
use std::{collections::HashSet, time::Duration};
use tokio::sync::oneshot;

/// Where the connection records of session `session` live. No session's
/// prefix covers another's records: sessions are only ever created with a
/// fresh UUID (no `/`), and a resume lists records only after finding the
/// head of the session it names.
fn records_prefix(session: &str) -> String {
    format!("sessconn/{session}/")
}

/// Most connection records one resume reads (the first ones by key); a
/// session with more keeps the rest until they expire.
const MAX_RECORDS_READ: usize = 64;

/// How long a resume waits for the instances that hold connections of the
/// session still marked open to say which are: a dead instance still in the
/// registry delays a resume by this much at most, and its connections count
/// as closed.
const OPEN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The head record: whose session it is.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SessionHead {
    user: Option<String>,
    /// Subscriptions kept in the head by servers that wrote no connection
    /// records: restored like the record of a closed connection. Always
    /// written (empty), so such servers can still read a head written here
    /// while a cluster is upgraded.
    #[serde(default)]
    subscriptions: Vec<SubscriptionRequest>,
}

/// One connection's record.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ConnRecord {
    /// False once the connection closed (a crash leaves it true: see
    /// `OPEN_CHECK_TIMEOUT`).
    open: bool,
    subscriptions: Vec<SubscriptionRequest>,
}

/// What a resume found.
pub(super) struct Restored {
    /// The channels to subscribe again, with the positions to recover from.
    pub(super) subscriptions: Vec<SubscriptionRequest>,
    /// The records of closed connections taken over (deleted once this
    /// connection's own record is written).
    pub(super) taken: Vec<String>,
}

/// Writes the head record of `session` (whose it is) for a resume window. A
/// failure is logged: the connection works, but its session may not be
/// resumable.
pub(super) async fn put_head(hub: &Hub, session: &str, user: Option<String>) {
    let head = SessionHead {
        user,
        subscriptions: Vec::new(),
    };
    let Ok(bytes) = serde_json::to_vec(&head) else {
        return;
    };
    let put = hub
        .scaler
        .session_put(session, bytes.into(), hub.config.resume_window);
    if let Err(e) = put.await {
        tracing::warn!(error = %e, "could not save the session; it may not be resumable");
    }
}

/// Reads session `requested`. It resumes only for the same user: knowing an
/// id is not enough to take over someone else's session. `None` when there is
/// no such session for this user (absent, expired, another user's,
/// unreadable, or the backend failed): the connection starts a new one.
pub(super) async fn restore(hub: &Hub, requested: &str, user: &Option<String>) -> Option<Restored> {
    let head = match hub.scaler.session_get(requested).await {
        Ok(Some(bytes)) => match serde_json::from_slice::<SessionHead>(&bytes) {
            Ok(head) if head.user == *user => head,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable session record ignored");
                return None;
            }
        },
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "session lookup failed; starting a new session");
            return None;
        }
    };
    let prefix = records_prefix(requested);
    let listed = match hub.scaler.kv_list(&prefix).await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the session's connections; resuming without their subscriptions");
            Vec::new()
        }
    };
    let mut records: Vec<(String, String, ConnRecord)> = Vec::new();
    for (key, value) in listed.into_iter().take(MAX_RECORDS_READ) {
        let Some(client) = key.strip_prefix(&prefix) else {
            continue;
        };
        match serde_json::from_slice::<ConnRecord>(&value.value) {
            Ok(record) => records.push((key.clone(), client.to_owned(), record)),
            Err(e) => tracing::warn!(error = %e, "unreadable connection record ignored"),
        }
    }
    let open = open_connections(hub, requested, &records).await;
    let mut subscriptions = Vec::new();
    for request in head.subscriptions {
        merge_oldest(&mut subscriptions, request);
    }
    let mut taken = Vec::new();
    for (key, client, record) in records {
        if open.contains(&client) {
            continue;
        }
        for request in record.subscriptions {
            merge_oldest(&mut subscriptions, request);
        }
        taken.push(key);
    }
    Some(Restored {
        subscriptions,
        taken,
    })
}

/// The clients of `records` that are still open: those marked open whose
/// instance says so within `OPEN_CHECK_TIMEOUT`. A record marked open may be
/// stale (its instance crashed), so the instance is asked rather than trusted.
async fn open_connections(
    hub: &Hub,
    session: &str,
    records: &[(String, String, ConnRecord)],
) -> HashSet<String> {
    let instances: HashSet<String> = records
        .iter()
        .filter(|(_, _, record)| record.open)
        .filter_map(|(_, client, _)| crate::hub::instance_of(client).map(str::to_owned))
        .collect();
    if instances.is_empty() {
        return HashSet::new();
    }
    let whose = Whose::Session(session.to_owned());
    match hub
        .list_connections(whose, Some(&instances), OPEN_CHECK_TIMEOUT)
        .await
    {
        Ok(list) => list.connections.into_iter().map(|c| c.client).collect(),
        Err(e) => {
            // At least once: restoring a live tab's channels too costs a
            // duplicate subscription, not a lost one.
            tracing::debug!(error = %e, "could not check which connections are open");
            HashSet::new()
        }
    }
}

/// Adds `request` to `into`, keeping for each channel the oldest position
/// (a position is older than none; positions of different epochs cannot be
/// compared, and the first one stays).
fn merge_oldest(into: &mut Vec<SubscriptionRequest>, request: SubscriptionRequest) {
    let Some(existing) = into.iter_mut().find(|r| r.channel == request.channel) else {
        into.push(request);
        return;
    };
    let older = match (request.offset, existing.offset) {
        (Some(_), None) => true,
        (Some(new), Some(old)) => request.epoch == existing.epoch && new < old,
        (None, _) => false,
    };
    if older {
        *existing = request;
    }
}

impl Conn {
    /// This connection's record key.
    fn record_key(&self) -> String {
        format!(
            "{}{}",
            records_prefix(&self.handle.session),
            self.handle.client
        )
    }

    /// The record of this connection's subscriptions with the positions last
    /// delivered, or `None` while one is still being set up (its requested
    /// position is not known here; the next save will have it).
    fn session_record(&self) -> Option<ConnRecord> {
        let mut subscriptions = Vec::with_capacity(self.subs.len());
        for (channel, sub) in &self.subs {
            let pos = sub.position.as_ref()?;
            subscriptions.push(SubscriptionRequest {
                channel: channel.to_string(),
                offset: Some(pos.offset),
                epoch: Some(pos.epoch.to_string()),
            });
        }
        Some(ConnRecord {
            open: true,
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

    /// The first records of a connection that joined its session: the head
    /// (new, or renewed), this connection's record with the subscriptions it
    /// is about to make (`wanted`), then the deletion of the records it took
    /// over, whose channels that record now holds.
    pub(super) fn start_session_records(
        &mut self,
        wanted: Vec<SubscriptionRequest>,
        taken: Vec<String>,
        head_written: bool,
    ) {
        if !head_written {
            self.write_head();
        }
        // A record says which channels to restore; a connection with none
        // yet writes its first when it has some (the next save after its
        // first subscription), which spares a backend write per connect.
        if wanted.is_empty() && taken.is_empty() {
            return;
        }
        let then: Option<futures_util::future::BoxFuture<'static, ()>> = if taken.is_empty() {
            None
        } else {
            let scaler = self.hub.scaler.clone();
            Some(Box::pin(async move {
                for key in taken {
                    if let Err(e) = scaler.kv_delete(&key, PutMode::Any).await {
                        // It expires with the resume window.
                        tracing::debug!(error = %e, "could not delete a taken-over session record");
                    }
                }
            }))
        };
        self.saved_at_ms = self.hub.clock_ms().max(1);
        self.write_session(
            ConnRecord {
                open: true,
                subscriptions: wanted,
            },
            then,
        );
    }

    /// Whether this connection has written its record (then every later
    /// state must be written too, an empty one included, to replace it).
    pub(super) fn has_record(&self) -> bool {
        self.saved_at_ms != 0
    }

    /// Renews the head record (whose session this is) for a resume window,
    /// in the background.
    fn write_head(&self) {
        let hub = self.hub.clone();
        let session = self.handle.session.clone();
        let user = self.identity.user.clone();
        tokio::spawn(async move { put_head(&hub, &session, user).await });
    }

    /// Saves this connection's record as positions advance, in batches (the
    /// hub asks every `session_save_interval`), and at least every half
    /// resume window, so the records outlive neither the connection nor a
    /// crash of this instance by more than the resume window.
    pub(super) fn save_session_if_changed(&mut self) {
        let now = self.hub.clock_ms();
        let refresh_ms = (self.hub.config.resume_window.as_millis() / 2) as u64;
        // The head and the session data outlive no connection of their
        // session: renewed while one is open (and at its close).
        if now.saturating_sub(self.data_touched_at_ms) >= refresh_ms {
            self.data_touched_at_ms = now;
            self.write_head();
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
            if record.subscriptions.is_empty() && !self.has_record() {
                return;
            }
            self.saved_fingerprint = fingerprint;
            self.saved_at_ms = now.max(1);
            self.write_session(record, None);
        }
    }

    /// Writes this connection's `record`, after its earlier record writes
    /// (they may travel on different backend connections: an older record
    /// must never land last). `then` runs after the write.
    pub(super) fn write_session(
        &mut self,
        record: ConnRecord,
        then: Option<futures_util::future::BoxFuture<'static, ()>>,
    ) {
        let previous = self.session_chain.take();
        let (done, next) = oneshot::channel();
        self.session_chain = Some(next);
        let hub = self.hub.clone();
        let key = self.record_key();
        tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            if let Ok(bytes) = serde_json::to_vec(&record) {
                let options = PutOptions {
                    mode: PutMode::Any,
                    ttl: Some(hub.config.resume_window),
                };
                if let Err(e) = hub.scaler.kv_put(&key, Bytes::from(bytes), &options).await {
                    tracing::warn!(error = %e, "could not save the session; it may not be resumable");
                }
            }
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
    /// still being set up keeps only its channel); `None` when there is
    /// nothing to record (no channels, no record written before). Also renews
    /// the head, so the session lives a resume window after this close.
    pub(super) fn closing_record(&self) -> Option<ConnRecord> {
        self.write_head();
        if self.subs.is_empty() && !self.has_record() {
            return None;
        }
        Some(ConnRecord {
            open: false,
            subscriptions: self
                .subs
                .iter()
                .map(|(channel, sub)| SubscriptionRequest {
                    channel: channel.to_string(),
                    offset: sub.position.as_ref().map(|p| p.offset),
                    epoch: sub.position.as_ref().map(|p| p.epoch.to_string()),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(channel: &str, offset: Option<u64>, epoch: &str) -> SubscriptionRequest {
        SubscriptionRequest {
            channel: channel.into(),
            offset,
            epoch: offset.map(|_| epoch.into()),
        }
    }

    #[test]
    fn the_oldest_position_of_a_channel_is_kept() {
        let mut into = Vec::new();
        merge_oldest(&mut into, at("a", Some(7), "e"));
        merge_oldest(&mut into, at("a", Some(3), "e"));
        merge_oldest(&mut into, at("a", Some(9), "e"));
        merge_oldest(&mut into, at("a", None, "e"));
        merge_oldest(&mut into, at("a", Some(1), "other"));
        merge_oldest(&mut into, at("b", None, "e"));
        merge_oldest(&mut into, at("b", Some(4), "e"));
        assert_eq!(into.len(), 2);
        assert_eq!(
            (into[0].offset, into[0].epoch.as_deref()),
            (Some(3), Some("e"))
        );
        assert_eq!(into[1].offset, Some(4));
    }
}
