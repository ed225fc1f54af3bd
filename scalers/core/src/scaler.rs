//! The [`Scaler`] trait and its convenience extension [`ScalerExt`].

use crate::{
    Capabilities, Feed, HistoryPage, HistoryRequest, InstanceInfo, LeaseOutcome, PresenceEntry,
    PublishOptions, Result, StreamPosition, Topic,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// Where cluster state lives. One value is shared by every part of an instance as
/// `Arc<dyn Scaler>`; several instances may share one (the in-memory scaler in
/// tests) or each hold their own connected to the same backend.
///
/// Every method is bounded in time: a backend that does not answer yields
/// [`crate::ScalerError::Timeout`] or [`crate::ScalerError::Unavailable`], never a
/// hang. No method panics on backend errors.
///
/// The contract of each method is pinned down by the conformance suite in
/// `scaled-sockets-conformance`; a new backend runs it with one line.
#[async_trait]
pub trait Scaler: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and metrics (`"memory"`, `"redis"`, `"nats"`).
    fn name(&self) -> &'static str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Checks that the backend answers (one round trip). Used by readiness probes.
    async fn ping(&self) -> Result<()>;

    // ----- messages between instances -------------------------------------------

    /// Opens this instance's one subscription to the backend. Call once per instance.
    async fn open_feed(&self, instance_id: &str) -> Result<Feed>;

    /// Publishes on a channel as one atomic step: assigns the next offset of the
    /// channel's stream (starting a new epoch if the stream was lost), appends to
    /// history, renews the history TTL and delivers to every feed subscribed to the
    /// channel. Offsets are gap-free and ordered cluster-wide.
    async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<StreamPosition>;

    /// Sends an opaque message to every feed subscribed to a non-channel `topic`
    /// (user, session or instance). Nothing is stored; nobody listening is not an
    /// error.
    async fn send(&self, topic: &Topic, payload: Bytes) -> Result<()>;

    /// Reads a channel's position and, with `since`, the publications after it.
    /// Creates the stream's epoch if the channel has none yet, so the epoch a
    /// subscriber is given is the one later publications carry.
    async fn history(&self, channel: &str, request: &HistoryRequest) -> Result<HistoryPage>;

    // ----- instance registry -----------------------------------------------------

    /// Registers or refreshes an instance (a heartbeat); it is forgotten when not
    /// refreshed within `ttl`.
    async fn register_instance(&self, info: &InstanceInfo, ttl: Duration) -> Result<()>;

    /// Removes an instance at once (graceful shutdown).
    async fn unregister_instance(&self, id: &str) -> Result<()>;

    /// The live instances, in no particular order.
    async fn instances(&self) -> Result<Vec<InstanceInfo>>;

    // ----- leases (cores) ---------------------------------------------------------

    /// Takes `key` for `owner` for `ttl` if nobody else holds it; if `owner` already
    /// holds it, renews it. Exactly one of many contending owners wins.
    async fn acquire_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<LeaseOutcome>;

    /// Extends a lease `owner` holds; false if it is not (or no longer) the owner.
    async fn renew_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool>;

    /// Gives up a lease `owner` holds; false if it was not the owner.
    async fn release_lease(&self, key: &str, owner: &str) -> Result<bool>;

    /// Current owner of a lease, if any.
    async fn lease_owner(&self, key: &str) -> Result<Option<String>>;

    /// Every live lease whose key starts with `prefix`, as `(key, owner)`.
    async fn leases(&self, prefix: &str) -> Result<Vec<(String, String)>>;

    // ----- presence ---------------------------------------------------------------

    /// Records a connection as subscribed to a channel.
    async fn presence_add(&self, channel: &str, entry: &PresenceEntry) -> Result<()>;

    /// Forgets a connection's subscription to a channel.
    async fn presence_remove(&self, channel: &str, client: &str) -> Result<()>;

    /// Who is subscribed to a channel, on any live instance. Entries of instances
    /// that left the registry are not returned (and may be cleaned up lazily).
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>>;

    // ----- sessions ---------------------------------------------------------------

    /// Stores a session record, replacing any previous one, for `ttl`.
    async fn session_put(&self, id: &str, value: Bytes, ttl: Duration) -> Result<()>;

    /// Reads a session record, `None` when absent or expired.
    async fn session_get(&self, id: &str) -> Result<Option<Bytes>>;

    /// Deletes a session record.
    async fn session_delete(&self, id: &str) -> Result<()>;
}

/// Conveniences built on [`Scaler`], available on every scaler (including
/// `dyn Scaler`).
#[async_trait]
pub trait ScalerExt: Scaler {
    /// The channel's current position (creating its epoch if needed).
    async fn stream_top(&self, channel: &str) -> Result<StreamPosition> {
        Ok(self.history(channel, &HistoryRequest::default()).await?.top)
    }

    /// Publications after `since`, at most `limit`; see [`Scaler::history`].
    async fn recover(
        &self,
        channel: &str,
        since: StreamPosition,
        limit: usize,
    ) -> Result<HistoryPage> {
        self.history(
            channel,
            &HistoryRequest {
                since: Some(since),
                limit,
            },
        )
        .await
    }

    /// True when `id` is in the registry now.
    async fn instance_is_live(&self, id: &str) -> Result<bool> {
        Ok(self.instances().await?.iter().any(|i| i.id == id))
    }
}

impl<S: Scaler + ?Sized> ScalerExt for S {}
