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

use crate::{
    Feed, FeedControl, FeedEvent, HistoryPage, HistoryRequest, InstanceInfo, LeaseOutcome,
    PresenceEntry, Publication, PublishOptions, Result, Scaler, ScalerError, StreamPosition, Topic,
    feed::FEED_QUEUE_CAPACITY,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::{
    collections::{HashMap, HashSet, VecDeque},
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

#[derive(Debug, Default)]
struct State {
    streams: HashMap<Arc<str>, Stream>,
    feeds: HashMap<u64, FeedSlot>,
    subscribers: HashMap<Topic, HashSet<u64>>,
    instances: HashMap<String, (InstanceInfo, Instant)>,
    leases: HashMap<String, (String, Instant)>,
    presence: HashMap<String, HashMap<String, PresenceEntry>>,
    sessions: HashMap<String, (Bytes, Instant)>,
    next_feed_id: u64,
    feeds_disconnected: bool,
    next_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Publication>,
    expires_at: Instant,
}

#[derive(Debug)]
struct FeedSlot {
    tx: mpsc::Sender<FeedEvent>,
    topics: HashSet<Topic>,
    /// Events dropped because the queue was full, not yet reported.
    dropped: u64,
    /// An `Interrupted` was delivered and no `Resumed` yet.
    interrupted: bool,
}

impl FeedSlot {
    /// Hands an event to the feed without ever blocking. Returns false if the
    /// feed's receiver is gone.
    fn deliver(&mut self, event: FeedEvent) -> bool {
        use mpsc::error::TrySendError;
        if self.dropped > 0 {
            match self.tx.try_send(FeedEvent::Overflowed {
                dropped: self.dropped,
            }) {
                Ok(()) => self.dropped = 0,
                Err(TrySendError::Full(_)) => {
                    self.dropped += 1;
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

fn new_epoch() -> Arc<str> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Arc::from(&id[..8])
}

impl State {
    /// Drops expired entries now and then, so keys nobody reads again do not pile up.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + Duration::from_secs(5));
        self.streams.retain(|_, s| s.expires_at > now);
        self.instances.retain(|_, (_, exp)| *exp > now);
        self.leases.retain(|_, (_, exp)| *exp > now);
        self.sessions.retain(|_, (_, exp)| *exp > now);
        let live: HashSet<&String> = self.instances.keys().collect();
        self.presence.retain(|_, entries| {
            entries.retain(|_, e| live.contains(&e.instance));
            !entries.is_empty()
        });
    }

    /// The channel's stream, created (with a new epoch) if absent or expired.
    fn stream(&mut self, channel: &str, now: Instant, ttl: Duration) -> &mut Stream {
        let expired = self
            .streams
            .get(channel)
            .is_some_and(|s| s.expires_at <= now);
        if expired {
            self.streams.remove(channel);
        }
        self.streams
            .entry(Arc::from(channel))
            .or_insert_with(|| Stream {
                epoch: new_epoch(),
                offset: 0,
                history: VecDeque::new(),
                expires_at: now + ttl,
            })
    }

    fn deliver(&mut self, topic: &Topic, event: FeedEvent) {
        if self.feeds_disconnected {
            // The feeds' "connections" are down: the message is lost for them, as it
            // would be on a real pub/sub bus. They learn about it via Resumed.
            return;
        }
        let Some(ids) = self.subscribers.get(topic) else {
            return;
        };
        let mut closed = Vec::new();
        for id in ids {
            if let Some(slot) = self.feeds.get_mut(id) {
                if !slot.deliver(event.clone()) {
                    closed.push(*id);
                }
            }
        }
        for id in closed {
            self.remove_feed(id);
        }
    }

    fn remove_feed(&mut self, id: u64) {
        if let Some(slot) = self.feeds.remove(&id) {
            for topic in slot.topics {
                if let Some(set) = self.subscribers.get_mut(&topic) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.subscribers.remove(&topic);
                    }
                }
            }
        }
    }

    fn live_instance(&self, id: &str, now: Instant) -> bool {
        self.instances.get(id).is_some_and(|(_, exp)| *exp > now)
    }
}

impl MemoryScaler {
    /// A new, empty scaler.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(ScalerError::Unavailable(
                "memory scaler is simulating an outage".into(),
            ));
        }
        let mut state = self
            .inner
            .state
            .lock()
            .map_err(|_| ScalerError::Backend("memory scaler state poisoned".into()))?;
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
        if channel.is_empty() {
            return Err(ScalerError::InvalidArgument("empty channel name".into()));
        }
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
        if matches!(topic, Topic::Channel(_)) {
            return Err(ScalerError::InvalidArgument(
                "send is for user, session and instance topics; publish to channels".into(),
            ));
        }
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
        if channel.is_empty() {
            return Err(ScalerError::InvalidArgument("empty channel name".into()));
        }
        let now = Instant::now();
        let mut state = self.lock()?;
        // A channel nobody publishes to keeps its epoch as long as a default
        // history TTL; publishing then renews it with the publisher's TTL.
        let stream = state.stream(channel, now, PublishOptions::default().history_ttl);
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
        self.lock()?.instances.remove(id);
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        let now = Instant::now();
        Ok(self
            .lock()?
            .instances
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(info, _)| info.clone())
            .collect())
    }

    async fn acquire_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<LeaseOutcome> {
        let now = Instant::now();
        let mut state = self.lock()?;
        match state.leases.get(key) {
            Some((holder, exp)) if *exp > now && holder != owner => {
                Ok(LeaseOutcome::HeldBy(holder.clone()))
            }
            _ => {
                state
                    .leases
                    .insert(key.to_owned(), (owner.to_owned(), now + ttl));
                Ok(LeaseOutcome::Acquired)
            }
        }
    }

    async fn renew_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut state = self.lock()?;
        match state.leases.get_mut(key) {
            Some((holder, exp)) if *exp > now && holder == owner => {
                *exp = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<bool> {
        let now = Instant::now();
        let mut state = self.lock()?;
        match state.leases.get(key) {
            Some((holder, exp)) if *exp > now && holder == owner => {
                state.leases.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lease_owner(&self, key: &str) -> Result<Option<String>> {
        let now = Instant::now();
        Ok(self
            .lock()?
            .leases
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(owner, _)| owner.clone()))
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let now = Instant::now();
        Ok(self
            .lock()?
            .leases
            .iter()
            .filter(|(k, (_, exp))| k.starts_with(prefix) && *exp > now)
            .map(|(k, (owner, _))| (k.clone(), owner.clone()))
            .collect())
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

    async fn session_put(&self, id: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.lock()?
            .sessions
            .insert(id.to_owned(), (value, Instant::now() + ttl));
        Ok(())
    }

    async fn session_get(&self, id: &str) -> Result<Option<Bytes>> {
        let now = Instant::now();
        Ok(self
            .lock()?
            .sessions
            .get(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(v, _)| v.clone()))
    }

    async fn session_delete(&self, id: &str) -> Result<()> {
        self.lock()?.sessions.remove(id);
        Ok(())
    }
}
