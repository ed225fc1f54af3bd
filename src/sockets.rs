//! [`Sockets`]: the application's handle on the cluster.

use crate::{
    cores::{CoreInfo, Cores},
    data::Data,
    error::CommandError,
    hub::{Hub, PeerMessage, Whose},
    protocol,
    session_data::SessionData,
};
use bytes::Bytes;
use scaled_sockets_scaler::{InstanceInfo, PresenceEntry, Scaler, StreamPosition, Topic};
use std::{fmt, sync::Arc, time::Duration};

pub use crate::hub::{ConnectionInfo, ConnectionList, MAX_LISTED_PER_INSTANCE};

/// The application's handle on the cluster: publish, tell, ask, subscribe and
/// disconnect anywhere, from anywhere. Cheap to clone.
#[derive(Clone)]
pub struct Sockets {
    pub(crate) hub: Arc<Hub>,
    pub(crate) cores: Arc<Cores>,
}

impl fmt::Debug for Sockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sockets")
            .field("instance", &self.hub.id)
            .finish()
    }
}

impl Sockets {
    pub(crate) fn new(hub: Arc<Hub>, cores: Arc<Cores>) -> Self {
        Self { hub, cores }
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.hub.id
    }

    /// The scaler this instance uses.
    pub fn scaler(&self) -> &Arc<dyn Scaler> {
        &self.hub.scaler
    }

    /// Publishes `data` on `channel` to subscribers on every instance; returns the
    /// publication's position. `unavailable` when the backend is down (nothing was
    /// published).
    pub async fn publish(
        &self,
        channel: &str,
        data: &Data,
    ) -> Result<StreamPosition, CommandError> {
        self.hub.publish(channel, data.get()).await
    }

    /// Sends a `tell` to one connection, wherever it is.
    pub async fn tell_client(
        &self,
        client: &str,
        event: &str,
        data: &Data,
    ) -> Result<(), CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.hub.check_data_size(data.get())?;
        let frame = protocol::tell(event, data.get(), None);
        self.hub
            .route(
                client,
                PeerMessage::Tell {
                    client: client.to_owned(),
                    frame,
                },
            )
            .await
    }

    /// Asks one connection, wherever it is, and waits for its answer (at most
    /// `timeout`, then `timeout`).
    pub async fn ask_client(
        &self,
        client: &str,
        event: &str,
        data: &Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.hub.check_data_size(data.get())?;
        self.hub.ask_client(client, event, data, timeout).await
    }

    /// Sends a `tell` to every connection of a user, on every instance.
    pub async fn tell_user(
        &self,
        user: &str,
        event: &str,
        data: &Data,
    ) -> Result<(), CommandError> {
        self.tell_topic(Topic::user(user), event, data).await
    }

    /// Sends a `tell` to every connection of a session, on every instance.
    pub async fn tell_session(
        &self,
        session: &str,
        event: &str,
        data: &Data,
    ) -> Result<(), CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.hub.check_data_size(data.get())?;
        let frame = protocol::tell(event, data.get(), None);
        self.hub.tell_session(session, frame).await
    }

    async fn tell_topic(&self, topic: Topic, event: &str, data: &Data) -> Result<(), CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.hub.check_data_size(data.get())?;
        // Encoded once here; every instance forwards the same bytes.
        let frame = protocol::tell(event, data.get(), None);
        let payload = Bytes::from(frame);
        self.hub
            .scaler
            .send(&topic, payload)
            .await
            .map_err(Into::into)
    }

    /// Subscribes a connection to a channel server-side; it gets a `subscribed`
    /// push (permissions are the app's business here: none are checked).
    pub async fn subscribe_client(&self, client: &str, channel: &str) -> Result<(), CommandError> {
        protocol::validate_name(channel, "channel").map_err(CommandError::bad_request)?;
        self.hub
            .route(
                client,
                PeerMessage::Subscribe {
                    client: client.to_owned(),
                    channel: channel.to_owned(),
                },
            )
            .await
    }

    /// Ends a connection's subscription server-side; it gets an `unsubscribed` push.
    pub async fn unsubscribe_client(
        &self,
        client: &str,
        channel: &str,
    ) -> Result<(), CommandError> {
        self.hub
            .route(
                client,
                PeerMessage::Unsubscribe {
                    client: client.to_owned(),
                    channel: channel.to_owned(),
                },
            )
            .await
    }

    /// Closes a connection with `code` after a `disconnect` push.
    pub async fn disconnect_client(
        &self,
        client: &str,
        code: u16,
        reason: &str,
        reconnect: bool,
    ) -> Result<(), CommandError> {
        self.hub
            .route(
                client,
                PeerMessage::Disconnect {
                    client: client.to_owned(),
                    code,
                    reason: reason.to_owned(),
                    reconnect,
                },
            )
            .await
    }

    /// Asks every connection of `user`, wherever they are, and returns the
    /// first answer. Finding them (at most half of it) and waiting for an
    /// answer take at most `timeout` together. When none answers: the error a client answered
    /// with, else `timeout`, else `not_found` (the user has no connection).
    pub async fn ask_user(
        &self,
        user: &str,
        event: &str,
        data: &Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.hub.check_data_size(data.get())?;
        self.hub
            .ask_any(Whose::User(user.to_owned()), event, data, timeout)
            .await
    }

    /// Like [`Sockets::ask_user`], for the connections of a session.
    pub async fn ask_session(
        &self,
        session: &str,
        event: &str,
        data: &Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        protocol::validate_name(event, "event").map_err(CommandError::bad_request)?;
        self.hub.check_data_size(data.get())?;
        self.hub
            .ask_any(Whose::Session(session.to_owned()), event, data, timeout)
            .await
    }

    /// The open connections of `user` on every live instance. Waits at most
    /// `timeout` for the instances' answers: an instance that did not answer
    /// in time (a dead one still in the registry) makes the list `partial`.
    pub async fn user_connections(
        &self,
        user: &str,
        timeout: Duration,
    ) -> Result<ConnectionList, CommandError> {
        self.hub
            .list_connections(Whose::User(user.to_owned()), None, timeout)
            .await
    }

    /// The open connections of `session` on every live instance (see
    /// [`Sockets::user_connections`]).
    pub async fn session_connections(
        &self,
        session: &str,
        timeout: Duration,
    ) -> Result<ConnectionList, CommandError> {
        self.hub
            .list_connections(Whose::Session(session.to_owned()), None, timeout)
            .await
    }

    /// Closes every connection of `user`, wherever they are, with `code`
    /// (1000, or 3000 to 4999; else `bad_request`) after a `disconnect` push.
    /// Returns the connections told to close (`partial` as in
    /// [`Sockets::user_connections`], bounded by `timeout`).
    pub async fn disconnect_user(
        &self,
        user: &str,
        code: u16,
        reason: &str,
        reconnect: bool,
        timeout: Duration,
    ) -> Result<ConnectionList, CommandError> {
        self.hub
            .disconnect_all(
                Whose::User(user.to_owned()),
                code,
                reason,
                reconnect,
                timeout,
            )
            .await
    }

    /// Closes every connection of `session` (see [`Sockets::disconnect_user`]).
    pub async fn disconnect_session(
        &self,
        session: &str,
        code: u16,
        reason: &str,
        reconnect: bool,
        timeout: Duration,
    ) -> Result<ConnectionList, CommandError> {
        self.hub
            .disconnect_all(
                Whose::Session(session.to_owned()),
                code,
                reason,
                reconnect,
                timeout,
            )
            .await
    }

    /// The data of session `session` (see [`SessionData`]).
    pub fn session_data(&self, session: &str) -> SessionData {
        SessionData::new(
            self.hub.scaler.clone(),
            session,
            self.hub.config.resume_window,
        )
    }

    /// Who is subscribed to a channel, on every instance.
    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, CommandError> {
        self.hub.scaler.presence(channel).await.map_err(Into::into)
    }

    /// Spawns core `id` of `kind` with `params` on the least-loaded live
    /// instance offering `kind` (fewest connections plus cores, or the app's
    /// [`crate::App::core_placement`]); returns the hosting instance's id.
    /// Exactly one instance runs a given id: spawning an id that already runs
    /// (even concurrently) answers where it runs. `unavailable` when no live
    /// instance offers the kind.
    pub async fn spawn_core(
        &self,
        kind: &str,
        id: &str,
        params: &Data,
    ) -> Result<String, CommandError> {
        self.cores.spawn(kind, id, params).await
    }

    /// Stops core `id` for good, wherever it runs (its members get `left`
    /// with `rejoin: false`, its snapshot is deleted); false when it was not
    /// running.
    pub async fn stop_core(&self, id: &str) -> Result<bool, CommandError> {
        self.cores.stop(id).await
    }

    /// The cores running in the cluster, sorted by id.
    pub async fn cores(&self) -> Result<Vec<CoreInfo>, CommandError> {
        self.cores.list().await
    }

    /// Live instances of the cluster.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, CommandError> {
        self.hub.scaler.instances().await.map_err(Into::into)
    }
}
