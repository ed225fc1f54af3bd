//! The [`Scaler`] trait and its convenience extension [`ScalerExt`].

use crate::{
    Capabilities, Feed, HistoryPage, HistoryRequest, InstanceInfo, Lease, LeaseOutcome,
    PresenceEntry, PublishOptions, PutMode, PutOptions, Result, StreamPosition, Topic, Versioned,
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
/// hang (wrap any scaler in [`crate::TimeoutScaler`] to enforce one bound on top).
/// No method panics on backend errors.
///
/// The trait is object-safe and small on purpose: variants of one operation are
/// options and modes ([`PutOptions`], [`HistoryRequest`]), not extra methods, and
/// conveniences live in [`ScalerExt`]. The one batch method,
/// [`Scaler::publish_ordered`], exists for speed (one round trip for many
/// ordered publishes) and has a default built on [`Scaler::publish`].
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

    /// Publishes `items` (channel, payload) in this order, each as
    /// [`Scaler::publish`] would. One result per item, in order. Once an item
    /// fails for another reason than its own arguments, the items after it are
    /// not attempted and fail `Unavailable`: a caller's publications are never
    /// applied after one of them was lost. The default publishes one after the
    /// other; a backend may send them all in one round trip.
    async fn publish_ordered(
        &self,
        items: &[(String, Bytes)],
        options: &PublishOptions,
    ) -> Vec<Result<StreamPosition>> {
        let mut results: Vec<Result<StreamPosition>> = Vec::with_capacity(items.len());
        for (channel, payload) in items {
            let broken = results.iter().any(
                |r| matches!(r, Err(e) if !matches!(e, crate::ScalerError::InvalidArgument(_))),
            );
            results.push(if broken {
                Err(crate::ScalerError::unavailable(
                    "an earlier publish of the batch failed; this one was not sent",
                ))
            } else {
                self.publish(channel, payload.clone(), options).await
            });
        }
        results
    }

    /// Sends an opaque message to every feed subscribed to a non-channel `topic`
    /// (user, session or instance). Nothing is stored; nobody listening is not an
    /// error.
    async fn send(&self, topic: &Topic, payload: Bytes) -> Result<()>;

    /// Reads a channel's position and, with `since`, the publications after it.
    /// Creates the stream's epoch (kept for `request.ttl`) if the channel has none
    /// yet, so the epoch a subscriber is given is the one later publications carry.
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

    /// Takes `key` for `owner` for `ttl` if nobody holds it, with a new fencing
    /// token larger than any token of `key` before (whoever held it, released or
    /// expired). If `owner` already holds it, renews the TTL and keeps its token.
    /// Exactly one of many contending owners wins; the others get
    /// [`LeaseOutcome::HeldBy`].
    async fn acquire_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<LeaseOutcome>;

    /// Extends the lease `owner` holds with `token` to `ttl` from now; false when
    /// the lease is not (or no longer) held by `owner` with that token: a stale
    /// holder, whose lease expired and was taken since, is refused even if it
    /// uses the same owner name again.
    async fn renew_lease(&self, key: &str, owner: &str, token: u64, ttl: Duration) -> Result<bool>;

    /// Gives up the lease `owner` holds with `token`; false when it does not
    /// (stale token, other owner, expired).
    async fn release_lease(&self, key: &str, owner: &str, token: u64) -> Result<bool>;

    /// The live lease on `key`, if any.
    async fn lease(&self, key: &str) -> Result<Option<Lease>>;

    /// Every live lease whose key starts with `prefix`, sorted by key.
    async fn leases(&self, prefix: &str) -> Result<Vec<(String, Lease)>>;

    // ----- presence ---------------------------------------------------------------

    /// Records a connection as subscribed to a channel.
    async fn presence_add(&self, channel: &str, entry: &PresenceEntry) -> Result<()>;

    /// Forgets a connection's subscription to a channel.
    async fn presence_remove(&self, channel: &str, client: &str) -> Result<()>;

    /// Who is subscribed to a channel, on any live instance. Entries of instances
    /// that left the registry are not returned (and are deleted by the read that
    /// finds them).
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>>;

    // ----- versioned key-value -----------------------------------------------------

    /// The live value at `key` with its revision; `None` when absent or expired.
    async fn kv_get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Writes `value` at `key` if `options.mode` holds (else
    /// [`crate::ScalerError::Conflict`], nothing written) and returns the new
    /// revision, larger than any revision `key` had before. Replaces the TTL with
    /// `options.ttl`. Concurrent conditional puts on one key are decided
    /// atomically: of many [`PutMode::Create`] puts exactly one wins.
    async fn kv_put(&self, key: &str, value: Bytes, options: &PutOptions) -> Result<u64>;

    /// Deletes `key` if `mode` holds ([`PutMode::Create`] is refused as
    /// `InvalidArgument`); true when a live value was deleted. A fenced delete
    /// of an absent key succeeds with false.
    async fn kv_delete(&self, key: &str, mode: PutMode) -> Result<bool>;

    /// The live entries whose key starts with `prefix`, sorted by key, at most
    /// [`crate::types::KV_LIST_LIMIT`] (the first ones).
    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>>;
}

/// Where [`ScalerExt`]'s session helpers keep session records in the key-value
/// family: `session/<id>`.
pub const SESSION_PREFIX: &str = "session/";

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
                ..HistoryRequest::default()
            },
        )
        .await
    }

    /// Stores a session record at `session/<id>`, replacing any previous one, for
    /// `ttl`.
    async fn session_put(&self, id: &str, value: Bytes, ttl: Duration) -> Result<()> {
        let options = PutOptions {
            mode: PutMode::Any,
            ttl: Some(ttl),
        };
        self.kv_put(&format!("{SESSION_PREFIX}{id}"), value, &options)
            .await
            .map(drop)
    }

    /// Reads a session record, `None` when absent or expired.
    async fn session_get(&self, id: &str) -> Result<Option<Bytes>> {
        Ok(self
            .kv_get(&format!("{SESSION_PREFIX}{id}"))
            .await?
            .map(|v| v.value))
    }

    /// Deletes a session record (absent is fine).
    async fn session_delete(&self, id: &str) -> Result<()> {
        self.kv_delete(&format!("{SESSION_PREFIX}{id}"), PutMode::Any)
            .await
            .map(drop)
    }

    /// True when `id` is in the registry now.
    async fn instance_is_live(&self, id: &str) -> Result<bool> {
        Ok(self.instances().await?.iter().any(|i| i.id == id))
    }
}

impl<S: Scaler + ?Sized> ScalerExt for S {}
