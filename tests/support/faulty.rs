//! A scaler that can be made to misbehave on purpose: publishes that hang,
//! live publications lost without any signal. Everything else is delegated to
//! a real in-memory scaler.

use async_trait::async_trait;
use bytes::Bytes;
use scaled_sockets::MemoryScaler;
use scaled_sockets::scaler::{
    Capabilities, Feed, FeedControl, FeedEvent, HistoryPage, HistoryRequest, InstanceInfo, Lease,
    LeaseOutcome, PresenceEntry, PublishOptions, PutMode, PutOptions, Result, Scaler,
    StreamPosition, Topic, Versioned,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::mpsc;

/// Faults to inject.
#[derive(Debug, Default)]
pub struct Faults {
    /// `publish` waits while this is set (then publishes).
    pub hang_publish: AtomicBool,
    /// Messages to these instances' inboxes fail with `unavailable`.
    pub unreachable_instances: std::sync::Mutex<Vec<String>>,
    /// `history` answers 300 ms late while this is set.
    pub slow_history: AtomicBool,
    /// `history` reads its page at once but answers it 300 ms later while
    /// this is set (a reply delayed on its way back).
    pub stale_history: AtomicBool,
    /// Feeds silently drop every publication while this is set.
    pub drop_live: AtomicBool,
    /// A feed's subscribe takes 200 ms more while this is set.
    pub slow_feed_subscribe: AtomicBool,
    /// Pushes events into the feeds opened so far, as if the backend sent them.
    pub inject: std::sync::Mutex<Vec<mpsc::Sender<FeedEvent>>>,
}

impl Faults {
    /// Delivers `event` to every feed, after what they already received.
    pub async fn inject(&self, event: FeedEvent) {
        let senders = self.inject.lock().unwrap().clone();
        for tx in senders {
            let _ = tx.send(event.clone()).await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct FaultyScaler {
    pub inner: MemoryScaler,
    pub faults: Arc<Faults>,
}

impl FaultyScaler {
    pub fn new() -> Self {
        Self {
            inner: MemoryScaler::new(),
            faults: Arc::default(),
        }
    }
}

/// A feed control whose subscribes can be slowed down.
#[derive(Debug)]
struct SlowControl {
    inner: Arc<dyn FeedControl>,
    faults: Arc<Faults>,
}

#[async_trait]
impl FeedControl for SlowControl {
    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        if self.faults.slow_feed_subscribe.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.inner.subscribe(topics).await
    }
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        self.inner.unsubscribe(topics).await
    }
    fn is_live(&self) -> bool {
        self.inner.is_live()
    }
}

#[async_trait]
impl Scaler for FaultyScaler {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn open_feed(&self, instance_id: &str) -> Result<Feed> {
        let Feed {
            control,
            mut events,
        } = self.inner.open_feed(instance_id).await?;
        let (tx, rx) = mpsc::channel(1024);
        self.faults.inject.lock().unwrap().push(tx.clone());
        let faults = self.faults.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let lost = matches!(event, FeedEvent::Publication(_))
                    && faults.drop_live.load(Ordering::SeqCst);
                if !lost && tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Feed {
            control: Arc::new(SlowControl {
                inner: control,
                faults: self.faults.clone(),
            }),
            events: rx,
        })
    }
    async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<StreamPosition> {
        while self.faults.hang_publish.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.publish(channel, payload, options).await
    }
    async fn send(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        if let Topic::Instance(id) = topic {
            if self
                .faults
                .unreachable_instances
                .lock()
                .unwrap()
                .iter()
                .any(|i| **i == **id)
            {
                return Err(scaled_sockets::scaler::ScalerError::unavailable(format!(
                    "instance {id} unreachable (injected)"
                )));
            }
        }
        self.inner.send(topic, payload).await
    }
    async fn history(&self, channel: &str, request: &HistoryRequest) -> Result<HistoryPage> {
        if self.faults.slow_history.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let page = self.inner.history(channel, request).await;
        if self.faults.stale_history.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        page
    }
    async fn register_instance(&self, info: &InstanceInfo, ttl: Duration) -> Result<()> {
        self.inner.register_instance(info, ttl).await
    }
    async fn unregister_instance(&self, id: &str) -> Result<()> {
        self.inner.unregister_instance(id).await
    }
    async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        self.inner.instances().await
    }
    async fn acquire_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<LeaseOutcome> {
        self.inner.acquire_lease(key, owner, ttl).await
    }
    async fn renew_lease(&self, key: &str, owner: &str, token: u64, ttl: Duration) -> Result<bool> {
        self.inner.renew_lease(key, owner, token, ttl).await
    }
    async fn release_lease(&self, key: &str, owner: &str, token: u64) -> Result<bool> {
        self.inner.release_lease(key, owner, token).await
    }
    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        self.inner.lease(key).await
    }
    async fn leases(&self, prefix: &str) -> Result<Vec<(String, Lease)>> {
        self.inner.leases(prefix).await
    }
    async fn presence_add(&self, channel: &str, entry: &PresenceEntry) -> Result<()> {
        self.inner.presence_add(channel, entry).await
    }
    async fn presence_remove(&self, channel: &str, client: &str) -> Result<()> {
        self.inner.presence_remove(channel, client).await
    }
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>> {
        self.inner.presence(channel).await
    }
    async fn kv_get(&self, key: &str) -> Result<Option<Versioned>> {
        self.inner.kv_get(key).await
    }
    async fn kv_put(&self, key: &str, value: Bytes, options: &PutOptions) -> Result<u64> {
        self.inner.kv_put(key, value, options).await
    }
    async fn kv_delete(&self, key: &str, mode: PutMode) -> Result<bool> {
        self.inner.kv_delete(key, mode).await
    }
    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        self.inner.kv_list(prefix).await
    }
}
