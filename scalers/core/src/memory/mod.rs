//! The in-memory scaler: the embedded default.
//!
//! All state sits behind one mutex. That is the simplest way to make every
//! publish atomic (offset, history and delivery in one step, so offsets are
//! ordered across concurrent publishers) and it is fast enough for one process:
//! no call awaits while holding the lock, and delivery to a feed is a `try_send`.
//!
//! Several server instances in one process may share one `MemoryScaler` (clone
//! it): that is a real cluster as far as the server can tell. For fault tests it
//! can pretend to be down ([`MemoryScaler::set_available`]) or to have lost its
//! feeds' connections while publishes still succeed
//! ([`MemoryScaler::set_feeds_connected`]), which is exactly the window in which
//! other systems lose messages silently.

mod state;

use crate::{
    Feed, FeedControl, FeedEvent, HistoryPage, HistoryRequest, InstanceInfo, Lease, LeaseOutcome,
    PresenceEntry, Publication, PublishOptions, PutMode, PutOptions, Result, Scaler, ScalerError,
    StreamPosition, Topic, Versioned,
    check::{check_channel, check_delete_mode, check_key, check_owner, check_send_topic},
    feed::FEED_QUEUE_CAPACITY,
};
use async_trait::async_trait;
use bytes::Bytes;
use state::{FeedSlot, State};
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// The in-memory scaler. Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct MemoryScaler {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// False while simulating an outage: every call fails with `Unavailable`.
    down: AtomicBool,
}

impl MemoryScaler {
    /// A new, empty scaler.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(ScalerError::unavailable(
                "memory scaler is simulating an outage",
            ));
        }
        let mut state = self
            .inner
            .state
            .lock()
            .map_err(|_| ScalerError::backend("memory scaler state poisoned"))?;
        state.sweep(Instant::now());
        Ok(state)
    }

    fn lock_always(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere mid-update; the maps are still
        // structurally valid, so keep serving rather than cascade the panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Simulates the backend going down (`false`) or coming back (`true`).
    ///
    /// While down every call fails with [`ScalerError::Unavailable`] and every feed
    /// receives [`FeedEvent::Interrupted`]; on recovery feeds receive
    /// [`FeedEvent::Resumed`]. State is kept, like a backend that restarts with
    /// persistence.
    pub fn set_available(&self, available: bool) {
        self.inner.down.store(!available, Ordering::SeqCst);
        self.set_feeds_connected(available);
    }

    /// Simulates the feeds' connections dropping (`false`) and coming back
    /// (`true`) while publishing keeps working: publications made meanwhile never
    /// reach the feeds. Feeds get [`FeedEvent::Interrupted`] / [`FeedEvent::Resumed`].
    pub fn set_feeds_connected(&self, connected: bool) {
        let mut state = self.lock_always();
        if state.feeds_disconnected != connected {
            return;
        }
        state.feeds_disconnected = !connected;
        for slot in state.feeds.values_mut() {
            if connected && slot.interrupted {
                slot.interrupted = false;
                slot.deliver(FeedEvent::Resumed);
            } else if !connected && !slot.interrupted {
                slot.interrupted = true;
                slot.deliver(FeedEvent::Interrupted);
            }
        }
    }

    /// Number of feeds subscribed to a topic (tests use it to check that an
    /// instance holds one backend subscription per topic, not one per socket).
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        self.lock_always()
            .subscribers
            .get(topic)
            .map_or(0, HashSet::len)
    }
}

#[derive(Debug)]
struct MemoryFeedControl {
    scaler: MemoryScaler,
    id: u64,
}

impl Drop for MemoryFeedControl {
    fn drop(&mut self) {
        self.scaler.lock_always().remove_feed(self.id);
    }
}

#[async_trait]
impl FeedControl for MemoryFeedControl {
    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        let mut state = self.scaler.lock()?;
        let Some(slot) = state.feeds.get_mut(&self.id) else {
            return Err(ScalerError::Closed);
        };
        let mut added = Vec::new();
        for topic in topics {
            if slot.topics.insert(topic.clone()) {
                added.push(topic.clone());
            }
        }
        for topic in added {
            state.subscribers.entry(topic).or_default().insert(self.id);
        }
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        let mut state = self.scaler.lock()?;
        let Some(slot) = state.feeds.get_mut(&self.id) else {
            return Ok(());
        };
        let mut removed = Vec::new();
        for topic in topics {
            if slot.topics.remove(topic) {
                removed.push(topic);
            }
        }
        for topic in removed {
            if let Some(set) = state.subscribers.get_mut(topic) {
                set.remove(&self.id);
                if set.is_empty() {
                    state.subscribers.remove(topic);
                }
            }
        }
        Ok(())
    }

    fn is_live(&self) -> bool {
        !self.scaler.inner.down.load(Ordering::SeqCst)
            && !self.scaler.lock_always().feeds_disconnected
    }
}

#[async_trait]
impl Scaler for MemoryScaler {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        self.lock().map(drop)
    }

    async fn open_feed(&self, _instance_id: &str) -> Result<Feed> {
        let (tx, events) = mpsc::channel(FEED_QUEUE_CAPACITY);
        let mut state = self.lock()?;
        state.next_feed_id += 1;
        let id = state.next_feed_id;
        state.feeds.insert(
            id,
            FeedSlot {
                tx,
                topics: HashSet::new(),
                dropped: 0,
                interrupted: false,
            },
        );
        drop(state);
        Ok(Feed {
            control: Arc::new(MemoryFeedControl {
                scaler: self.clone(),
                id,
            }),
            events,
        })
    }

    async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<StreamPosition> {
        check_channel(channel)?;
        let now = Instant::now();
        let mut state = self.lock()?;
        let stream = state.stream(channel, now, options.history_ttl);
        stream.offset += 1;
        stream.expires_at = now + options.history_ttl;
        let publication = Publication {
            channel: Arc::from(channel),
            offset: stream.offset,
            epoch: stream.epoch.clone(),
            payload,
        };
        if options.history_size > 0 {
            stream.history.push_back(publication.clone());
            while stream.history.len() > options.history_size {
                stream.history.pop_front();
            }
        } else {
            stream.history.clear();
        }
        let position = StreamPosition::new(publication.offset, publication.epoch.clone());
        let topic = Topic::Channel(publication.channel.clone());
        state.deliver(&topic, FeedEvent::Publication(publication));
        Ok(position)
    }

    async fn send(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        check_send_topic(topic)?;
        let mut state = self.lock()?;
        state.deliver(
            topic,
            FeedEvent::Message {
                topic: topic.clone(),
                payload,
            },
        );
        Ok(())
    }

    async fn history(&self, channel: &str, request: &HistoryRequest) -> Result<HistoryPage> {
        check_channel(channel)?;
        let now = Instant::now();
        let mut state = self.lock()?;
        // A channel nobody publishes to keeps its epoch for the caller's TTL;
        // publishing then renews it with the publisher's TTL.
        let stream = state.stream(channel, now, request.ttl);
        let top = StreamPosition::new(stream.offset, stream.epoch.clone());
        let Some(since) = &request.since else {
            return Ok(HistoryPage {
                top,
                publications: Vec::new(),
                recovered: true,
            });
        };
        if since.epoch != stream.epoch || since.offset > stream.offset {
            return Ok(HistoryPage {
                top,
                publications: Vec::new(),
                recovered: false,
            });
        }
        let missed = stream.offset - since.offset;
        let oldest = stream
            .history
            .front()
            .map_or(stream.offset + 1, |p| p.offset);
        let recovered =
            missed as usize <= request.limit && (missed == 0 || oldest <= since.offset + 1);
        let publications = if recovered {
            stream
                .history
                .iter()
                .filter(|p| p.offset > since.offset)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        Ok(HistoryPage {
            top,
            publications,
            recovered,
        })
    }

    async fn register_instance(&self, info: &InstanceInfo, ttl: Duration) -> Result<()> {
        let mut state = self.lock()?;
        state
            .instances
            .insert(info.id.clone(), (info.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn unregister_instance(&self, id: &str) -> Result<()> {
        let mut state = self.lock()?;
        state.instances.remove(id);
        state.forget_presence_of(&HashSet::from([id]));
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        let now = Instant::now();
        let mut state = self.lock()?;
        state.forget_expired_instances(now);
        Ok(state
            .instances
            .values()
            .map(|(info, _)| info.clone())
            .collect())
    }

    async fn acquire_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<LeaseOutcome> {
        check_key(key, "lease key")?;
        check_owner(owner)?;
        Ok(self.lock()?.acquire_lease(key, owner, ttl, Instant::now()))
    }

    async fn renew_lease(&self, key: &str, owner: &str, token: u64, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        Ok(self.lock()?.renew_lease(key, owner, token, now + ttl, now))
    }

    async fn release_lease(&self, key: &str, owner: &str, token: u64) -> Result<bool> {
        let mut state = self.lock()?;
        if state
            .held_lease(key, owner, token, Instant::now())
            .is_none()
        {
            return Ok(false);
        }
        state.leases.remove(key);
        Ok(true)
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        Ok(self.lock()?.lease(key, Instant::now()))
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<(String, Lease)>> {
        Ok(self.lock()?.leases(prefix, Instant::now()))
    }

    async fn presence_add(&self, channel: &str, entry: &PresenceEntry) -> Result<()> {
        self.lock()?
            .presence
            .entry(channel.to_owned())
            .or_default()
            .insert(entry.client.clone(), entry.clone());
        Ok(())
    }

    async fn presence_remove(&self, channel: &str, client: &str) -> Result<()> {
        let mut state = self.lock()?;
        if let Some(entries) = state.presence.get_mut(channel) {
            entries.remove(client);
            if entries.is_empty() {
                state.presence.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>> {
        let now = Instant::now();
        let state = self.lock()?;
        let mut entries: Vec<PresenceEntry> = state
            .presence
            .get(channel)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|e| state.live_instance(&e.instance, now))
            .cloned()
            .collect();
        entries.sort();
        Ok(entries)
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Versioned>> {
        Ok(self.lock()?.kv_get(key, Instant::now()))
    }

    async fn kv_put(&self, key: &str, value: Bytes, options: &PutOptions) -> Result<u64> {
        check_key(key, "key")?;
        self.lock()?
            .kv_put(key, value, options.mode, options.ttl, Instant::now())
    }

    async fn kv_delete(&self, key: &str, mode: PutMode) -> Result<bool> {
        check_delete_mode(mode)?;
        self.lock()?.kv_delete(key, mode, Instant::now())
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        Ok(self.lock()?.kv_list(prefix, Instant::now()))
    }
}
