//! [`Sockets`]: the application's handle on the cluster.

use crate::{
    data::Data,
    error::CommandError,
    hub::{Hub, PeerMessage},
    protocol,
};
use bytes::Bytes;
use scaled_sockets_scaler::{InstanceInfo, PresenceEntry, Scaler, StreamPosition, Topic};
use std::{fmt, sync::Arc, time::Duration};

/// The application's handle on the cluster: publish, tell, ask, subscribe and
/// disconnect anywhere, from anywhere. Cheap to clone.
#[derive(Clone)]
pub struct Sockets {
    pub(crate) hub: Arc<Hub>,
}

impl fmt::Debug for Sockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sockets")
            .field("instance", &self.hub.id)
            .finish()
    }
}

impl Sockets {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
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

    /// Who is subscribed to a channel, on every instance.
    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, CommandError> {
        self.hub.scaler.presence(channel).await.map_err(Into::into)
    }

    /// Live instances of the cluster.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, CommandError> {
        self.hub.scaler.instances().await.map_err(Into::into)
    }
}
