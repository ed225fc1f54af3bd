//! [`CoreContext`]: what a running core can do.

use super::{Cores, records};
use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
    hub::lock,
    protocol,
};
use bytes::Bytes;
use scaled_sockets_scaler::{PutMode, PutOptions, StreamPosition};
use std::{
    collections::BTreeSet,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// A running core's handle on the cluster, given to every hook. Cheap to
/// clone; a clone kept past the core's life refuses to act (`not_found`)
/// once the core stopped here.
#[derive(Clone)]
pub struct CoreContext {
    pub(super) cores: Arc<Cores>,
    pub(super) id: Arc<str>,
    pub(super) kind: Arc<str>,
    /// The fencing token of this instance's lease on the core.
    pub(super) token: u64,
    pub(super) members: Arc<Mutex<BTreeSet<String>>>,
    pub(super) stop_requested: Arc<AtomicBool>,
}

impl fmt::Debug for CoreContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreContext")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("instance", &self.cores.instance())
            .field("token", &self.token)
            .finish()
    }
}

impl CoreContext {
    /// The core's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The core's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The instance hosting the core.
    pub fn instance(&self) -> &str {
        self.cores.instance()
    }

    /// The fencing token of this tenure: it grows every time the core gets a
    /// new owner.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The members (client ids), sorted.
    pub fn members(&self) -> Vec<String> {
        lock(&self.members).iter().cloned().collect()
    }

    /// Sends `{"type":"tell","core":ID,"event":…,"data":…}` to one member,
    /// wherever it is connected. `not_found` when it is not a member.
    pub fn tell(&self, member: &str, event: &str, data: &Data) -> Result<(), CommandError> {
        if !lock(&self.members).contains(member) {
            return Err(CommandError::not_found(format!(
                "`{member}` is not a member of core `{}`",
                self.id
            )));
        }
        let frame = self.frame(event, data)?;
        self.cores
            .deliver_to(&self.id, self.token, &[member.to_owned()], frame);
        Ok(())
    }

    /// Sends the same `tell` to every member. Each member gets the core's
    /// tells in the order the core sent them.
    pub fn broadcast(&self, event: &str, data: &Data) -> Result<(), CommandError> {
        let frame = self.frame(event, data)?;
        let members = self.members();
        self.cores.deliver_to(&self.id, self.token, &members, frame);
        Ok(())
    }

    fn frame(&self, event: &str, data: &Data) -> Result<String, CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.cores.hub.check_data_size(data.get())?;
        self.check_live()?;
        Ok(protocol::tell(event, data.get(), Some(&self.id)))
    }

    /// Asks one client (member or not), wherever it is, and waits at most
    /// `timeout` for its answer. The core handles nothing else meanwhile.
    pub async fn ask(
        &self,
        client: &str,
        event: &str,
        data: &Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.cores.hub.check_data_size(data.get())?;
        self.check_live()?;
        self.cores
            .hub
            .ask_client(client, event, data, timeout)
            .await
    }

    /// Publishes on a channel. Fenced: the lease is renewed first (one more
    /// backend round trip), so a core whose lease was taken over cannot
    /// publish; it gets `unavailable` and stops here.
    pub async fn publish(
        &self,
        channel: &str,
        data: &Data,
    ) -> Result<StreamPosition, CommandError> {
        self.check_live()?;
        self.cores.confirm_lease(&self.id, self.token).await?;
        self.cores.hub.publish(channel, data.get()).await
    }

    /// Saves the core's state; the core restarts from the latest snapshot
    /// after a panic, a failover or a handover. Fenced: refused (`unavailable`)
    /// when a newer owner of the core exists.
    pub async fn save_snapshot(&self, data: &Data) -> Result<(), CommandError> {
        self.check_live()?;
        let record = format!("{{\"s\":{}}}", data.get());
        let options = PutOptions::mode(PutMode::Fenced(self.token));
        match self
            .cores
            .hub
            .scaler
            .kv_put(&records::snap_key(&self.id), Bytes::from(record), &options)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => {
                self.cores.lost(&self.id, self.token);
                Err(CommandError::new(
                    ErrorCode::Unavailable,
                    format!("core `{}` has a newer owner; snapshot refused", self.id),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Spawns another core (a lobby spawning a match, say), as
    /// `Sockets::spawn_core` does; returns its hosting instance.
    pub async fn spawn_core(
        &self,
        kind: &str,
        id: &str,
        params: &Data,
    ) -> Result<String, CommandError> {
        self.cores.spawn(kind, id, params).await
    }

    /// Stops the core for good once the current hook returns (as
    /// `Sockets::stop_core` does): members get `left` with `rejoin: false`.
    pub fn stop(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
    }

    fn check_live(&self) -> Result<(), CommandError> {
        if self.cores.hosts(&self.id, self.token) {
            Ok(())
        } else {
            Err(CommandError::not_found(format!(
                "core `{}` no longer runs here",
                self.id
            )))
        }
    }
}
