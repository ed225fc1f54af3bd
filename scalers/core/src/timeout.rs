//! [`TimeoutScaler`]: one time bound around every call of any scaler.
//!
//! Backends bound their own calls, but with their own settings and with gaps a
//! wrapper closes once for all: the server wraps its scaler once, so no
//! request handler can wait longer than the limit whatever the backend does.
//! The feeds it opens are wrapped too, so `subscribe`/`unsubscribe` are bounded.
//! An overrun answers [`ScalerError::Timeout`] with the limit; the inner call is
//! dropped (cancelled) at that point.

use crate::{
    Capabilities, Feed, FeedControl, HistoryPage, HistoryRequest, InstanceInfo, Lease,
    LeaseOutcome, PresenceEntry, PublishOptions, PutMode, PutOptions, Result, Scaler, ScalerError,
    StreamPosition, Topic, Versioned,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::{future::Future, sync::Arc, time::Duration};

/// Wraps a scaler so every call answers within `limit`.
#[derive(Debug, Clone)]
pub struct TimeoutScaler {
    inner: Arc<dyn Scaler>,
    limit: Duration,
}

impl TimeoutScaler {
    /// Bounds every call of `inner` by `limit`.
    pub fn new(inner: Arc<dyn Scaler>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    /// The wrapped scaler.
    pub fn inner(&self) -> &Arc<dyn Scaler> {
        &self.inner
    }

    /// The bound.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

async fn bounded<T>(limit: Duration, call: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(ScalerError::Timeout(limit)),
    }
}

/// A feed control whose calls are bounded (`is_live` is not a call).
#[derive(Debug)]
struct TimeoutFeedControl {
    inner: Arc<dyn FeedControl>,
    limit: Duration,
}

#[async_trait]
impl FeedControl for TimeoutFeedControl {
    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        bounded(self.limit, self.inner.subscribe(topics)).await
    }
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        bounded(self.limit, self.inner.unsubscribe(topics)).await
    }
    fn is_live(&self) -> bool {
        self.inner.is_live()
    }
}

#[async_trait]
impl Scaler for TimeoutScaler {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn ping(&self) -> Result<()> {
        bounded(self.limit, self.inner.ping()).await
    }
    async fn open_feed(&self, instance_id: &str) -> Result<Feed> {
        let feed = bounded(self.limit, self.inner.open_feed(instance_id)).await?;
        Ok(Feed {
            control: Arc::new(TimeoutFeedControl {
                inner: feed.control,
                limit: self.limit,
            }),
            events: feed.events,
        })
    }
    async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<StreamPosition> {
        bounded(self.limit, self.inner.publish(channel, payload, options)).await
    }
    async fn publish_ordered(
        &self,
        items: &[(String, Bytes)],
        options: &PublishOptions,
    ) -> Vec<Result<StreamPosition>> {
        match tokio::time::timeout(self.limit, self.inner.publish_ordered(items, options)).await {
            Ok(results) => results,
            Err(_) => items
                .iter()
                .map(|_| Err(ScalerError::Timeout(self.limit)))
                .collect(),
        }
    }
    async fn send(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        bounded(self.limit, self.inner.send(topic, payload)).await
    }
    async fn history(&self, channel: &str, request: &HistoryRequest) -> Result<HistoryPage> {
        bounded(self.limit, self.inner.history(channel, request)).await
    }
    async fn register_instance(&self, info: &InstanceInfo, ttl: Duration) -> Result<()> {
        bounded(self.limit, self.inner.register_instance(info, ttl)).await
    }
    async fn unregister_instance(&self, id: &str) -> Result<()> {
        bounded(self.limit, self.inner.unregister_instance(id)).await
    }
    async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        bounded(self.limit, self.inner.instances()).await
    }
    async fn acquire_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<LeaseOutcome> {
        bounded(self.limit, self.inner.acquire_lease(key, owner, ttl)).await
    }
    async fn renew_lease(&self, key: &str, owner: &str, token: u64, ttl: Duration) -> Result<bool> {
        bounded(self.limit, self.inner.renew_lease(key, owner, token, ttl)).await
    }
    async fn release_lease(&self, key: &str, owner: &str, token: u64) -> Result<bool> {
        bounded(self.limit, self.inner.release_lease(key, owner, token)).await
    }
    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        bounded(self.limit, self.inner.lease(key)).await
    }
    async fn leases(&self, prefix: &str) -> Result<Vec<(String, Lease)>> {
        bounded(self.limit, self.inner.leases(prefix)).await
    }
    async fn presence_add(&self, channel: &str, entry: &PresenceEntry) -> Result<()> {
        bounded(self.limit, self.inner.presence_add(channel, entry)).await
    }
    async fn presence_remove(&self, channel: &str, client: &str) -> Result<()> {
        bounded(self.limit, self.inner.presence_remove(channel, client)).await
    }
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>> {
        bounded(self.limit, self.inner.presence(channel)).await
    }
    async fn kv_get(&self, key: &str) -> Result<Option<Versioned>> {
        bounded(self.limit, self.inner.kv_get(key)).await
    }
    async fn kv_put(&self, key: &str, value: Bytes, options: &PutOptions) -> Result<u64> {
        bounded(self.limit, self.inner.kv_put(key, value, options)).await
    }
    async fn kv_delete(&self, key: &str, mode: PutMode) -> Result<bool> {
        bounded(self.limit, self.inner.kv_delete(key, mode)).await
    }
    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        bounded(self.limit, self.inner.kv_list(prefix)).await
    }
}
