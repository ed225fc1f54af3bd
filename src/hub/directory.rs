//! Who is connected, cluster-wide: the connections of a user or of a session
//! on every instance, found by asking the instances themselves.
//!
//! The scaler keeps no list of connections (that would cost a backend write
//! per connect and a sweep after every crash): a lookup is sent to the inbox
//! of each live instance, which answers with its local connections of that
//! user or session. Answers are gathered until every instance answered or the
//! caller's timeout passed; an instance that did not answer in time (killed,
//! partitioned, overloaded) makes the list `partial` instead of hanging it.
//!
//! On top of the lookup: asking any connection of a user or session (first
//! answer wins) and disconnecting all of them.

use super::{Hub, PeerMessage, lock};
use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
};
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;

/// Most connections one instance lists in one answer; more make the list
/// `partial` (an answer must fit in one backend message).
pub const MAX_LISTED_PER_INSTANCE: usize = 1000;

/// Longest user or session id accepted by a lookup, in bytes.
const MAX_ID_BYTES: usize = 1024;

/// One connection, wherever it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The connection id (`welcome.client`).
    pub client: String,
    /// Its user, `None` when anonymous.
    pub user: Option<String>,
    /// Its session.
    pub session: String,
    /// The instance it is connected to.
    pub instance: String,
}

/// The connections found by a lookup, sorted by client id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionInfo>,
    /// True when some live instance did not answer within the timeout (or
    /// could not be reached, or had more than [`MAX_LISTED_PER_INSTANCE`]
    /// connections to list): connections there may be missing.
    pub partial: bool,
}

/// Whose connections a lookup wants.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Whose {
    User(String),
    Session(String),
}

impl Whose {
    fn matches(&self, user: Option<&str>, session: &str) -> bool {
        match self {
            Whose::User(u) => user == Some(u.as_str()),
            Whose::Session(s) => session == s,
        }
    }

    /// Refuses an empty, oversized or control-character id.
    fn validate(&self) -> Result<(), CommandError> {
        let (what, id) = match self {
            Whose::User(u) => ("user", u),
            Whose::Session(s) => ("session", s),
        };
        if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
            return Err(CommandError::bad_request(format!(
                "a {what} id is 1 to {MAX_ID_BYTES} bytes of printable text"
            )));
        }
        Ok(())
    }
}

/// One instance's answer: (instance, its connections, truncated).
type Answer = (String, Vec<ConnectionInfo>, bool);

/// Lookups this instance sent, waiting for the instances' answers, by
/// request number.
#[derive(Debug, Default)]
pub(crate) struct Lookups(Mutex<HashMap<u64, mpsc::Sender<Answer>>>);

/// Removes a lookup's entry however its wait ends (answered, timed out, or
/// the caller's future dropped), so no entry outlives its lookup.
struct Pending<'a> {
    hub: &'a Hub,
    request: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(&self.hub.lookups.0).remove(&self.request);
    }
}

/// A close code app code may use: 1000, or 3000 to 4999.
pub(crate) fn check_close_code(code: u16) -> Result<(), CommandError> {
    if code == 1000 || (3000..=4999).contains(&code) {
        Ok(())
    } else {
        Err(CommandError::bad_request(format!(
            "close code {code}: use 1000 or 3000 to 4999"
        )))
    }
}

impl Hub {
    /// This instance's connections of `whose` (at most
    /// [`MAX_LISTED_PER_INSTANCE`]; true when there were more). A connection
    /// already told to close is not listed: it is on its way out.
    fn local_connections(&self, whose: &Whose) -> (Vec<ConnectionInfo>, bool) {
        let conns = lock(&self.conns);
        let mut found = Vec::new();
        let mut truncated = false;
        for conn in conns.values() {
            if conn.is_closing() || !whose.matches(conn.user.as_deref(), &conn.session) {
                continue;
            }
            if found.len() == MAX_LISTED_PER_INSTANCE {
                truncated = true;
                break;
            }
            found.push(ConnectionInfo {
                client: conn.client.to_string(),
                user: conn.user.as_deref().map(str::to_owned),
                session: conn.session.to_string(),
                instance: self.id.to_string(),
            });
        }
        (found, truncated)
    }

    /// The connections of `whose` on every live instance (or only on
    /// `instances`, when given), waiting at most `timeout` for the answers.
    /// `unavailable` only when the registry cannot be read.
    pub(crate) async fn list_connections(
        &self,
        whose: Whose,
        instances: Option<&HashSet<String>>,
        timeout: Duration,
    ) -> Result<ConnectionList, CommandError> {
        whose.validate()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let live = self.live_instance_ids(None).await?;
        let mut list = ConnectionList::default();
        let mut expected: HashSet<String> = HashSet::new();
        for instance in live.iter() {
            if instances.is_some_and(|only| !only.contains(instance)) {
                continue;
            }
            if **instance == *self.id {
                let (found, truncated) = self.local_connections(&whose);
                list.connections.extend(found);
                list.partial |= truncated;
            } else {
                expected.insert(instance.clone());
            }
        }
        if !expected.is_empty() {
            let request = self.next_id();
            // Room for every expected answer: the dispatcher never waits.
            let (tx, mut rx) = mpsc::channel(expected.len());
            lock(&self.lookups.0).insert(request, tx);
            let _pending = Pending { hub: self, request };
            let message = PeerMessage::Lookup {
                whose,
                request,
                reply_to: self.id.to_string(),
            };
            // Sent to all at once: one slow send must not eat the others' time.
            let sends = expected.iter().map(|instance| {
                let message = &message;
                async move { (instance.clone(), self.send_to_peer(instance, message).await) }
            });
            for (instance, sent) in futures_util::future::join_all(sends).await {
                if let Err(e) = sent {
                    tracing::debug!(%instance, error = %e, "lookup not sent to an instance");
                    expected.remove(&instance);
                    list.partial = true;
                }
            }
            while !expected.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((instance, found, truncated))) => {
                        if expected.remove(&instance) {
                            list.connections.extend(found);
                            list.partial |= truncated;
                        }
                    }
                    // Timed out (or, impossibly, the entry vanished): those
                    // still silent are missing from the list.
                    Ok(None) | Err(_) => {
                        list.partial = true;
                        break;
                    }
                }
            }
        }
        list.connections.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(list)
    }

    /// Answers a lookup from another instance (or from this one).
    pub(super) async fn answer_lookup(&self, whose: Whose, request: u64, reply_to: String) {
        let (connections, truncated) = self.local_connections(&whose);
        let reply = PeerMessage::LookupReply {
            request,
            instance: self.id.to_string(),
            connections,
            truncated,
        };
        if reply_to == *self.id {
            self.complete_lookup(reply);
        } else if let Err(e) = self.send_to_peer(&reply_to, &reply).await {
            tracing::debug!(error = %e, "could not answer a lookup");
        }
    }

    /// Hands an instance's answer to the lookup waiting for it (if it still waits).
    pub(super) fn complete_lookup(&self, reply: PeerMessage) {
        let PeerMessage::LookupReply {
            request,
            instance,
            connections,
            truncated,
        } = reply
        else {
            return;
        };
        let tx = lock(&self.lookups.0).get(&request).cloned();
        if let Some(tx) = tx {
            // Full only if an instance answered twice: the extra answer goes.
            let _ = tx.try_send((instance, connections, truncated));
        }
    }

    /// Asks every connection of `whose` at once; the first answer wins.
    /// Listing (at most half of it) and asking together take at most
    /// `timeout`. When none
    /// answered: the error a client answered with, else `timeout` (a client
    /// or an instance was silent), else `not_found` (no connection).
    pub(crate) async fn ask_any(
        self: &Arc<Self>,
        whose: Whose,
        event: &str,
        data: &Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Half the budget at most for finding them: a silent instance must
        // leave time to ask the connections the others reported.
        let list = self.list_connections(whose, None, timeout / 2).await?;
        if list.connections.is_empty() {
            return Err(if list.partial {
                CommandError::new(
                    ErrorCode::Timeout,
                    "no connection found, and some instances did not answer in time",
                )
            } else {
                CommandError::not_found("no connection to ask")
            });
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (tx, mut rx) = mpsc::channel(list.connections.len());
        for connection in list.connections {
            // Detached, not aborted when an answer wins: each ask removes its
            // own correlation entry when it ends (at most `remaining` later).
            let hub = self.clone();
            let tx = tx.clone();
            let (event, data) = (event.to_owned(), data.clone());
            tokio::spawn(async move {
                let result = hub
                    .ask_client(&connection.client, &event, &data, remaining)
                    .await;
                let _ = tx.send(result).await;
            });
        }
        drop(tx);
        let mut best: Option<CommandError> = None;
        while let Some(result) = rx.recv().await {
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    if best.as_ref().is_none_or(|b| rank(&e) > rank(b)) {
                        best = Some(e);
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| CommandError::not_found("no connection answered")))
    }

    /// Closes every connection of `whose` with `code` (1000 or 3000–4999)
    /// after a `disconnect` push; returns the connections told to close.
    pub(crate) async fn disconnect_all(
        &self,
        whose: Whose,
        code: u16,
        reason: &str,
        reconnect: bool,
        timeout: Duration,
    ) -> Result<ConnectionList, CommandError> {
        check_close_code(code)?;
        if reason.len() > 123 {
            // The close frame's reason is at most 123 bytes.
            return Err(CommandError::bad_request(
                "a close reason is at most 123 bytes",
            ));
        }
        let mut list = self.list_connections(whose, None, timeout).await?;
        let mut told = Vec::with_capacity(list.connections.len());
        for connection in list.connections {
            let message = PeerMessage::Disconnect {
                client: connection.client.clone(),
                code,
                reason: reason.to_owned(),
                reconnect,
            };
            match self.route(&connection.client, message).await {
                Ok(()) => told.push(connection),
                // Gone meanwhile: nothing left to close.
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(_) => list.partial = true,
            }
        }
        list.connections = told;
        Ok(list)
    }
}

/// Which failure of an ask says most: a client's own error, then a timeout,
/// then anything else, then `not_found`.
fn rank(e: &CommandError) -> u8 {
    match e.code {
        ErrorCode::NotFound => 0,
        ErrorCode::Timeout => 2,
        ErrorCode::Internal | ErrorCode::Unavailable => 1,
        _ => 3,
    }
}
