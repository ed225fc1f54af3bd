//! The in-memory scaler's state and the pieces of it that need more than a
//! line: streams, feed slots, leases with fencing tokens, the versioned
//! key-value map.

use crate::{
    FeedEvent, InstanceInfo, Lease, LeaseOutcome, PresenceEntry, Publication, PutMode, Result,
    Topic, Versioned,
    check::{fence_after, mode_holds},
    types::KV_LIST_LIMIT,
};
use bytes::Bytes;
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) streams: HashMap<Arc<str>, Stream>,
    pub(super) feeds: HashMap<u64, FeedSlot>,
    pub(super) subscribers: HashMap<Topic, HashSet<u64>>,
    pub(super) instances: HashMap<String, (InstanceInfo, Instant)>,
    pub(super) leases: HashMap<String, HeldLease>,
    pub(super) presence: HashMap<String, HashMap<String, PresenceEntry>>,
    /// Sorted, so listing a prefix is a range scan.
    pub(super) kv: BTreeMap<String, KvEntry>,
    /// Fencing tokens and revisions come from one counter each, shared by all
    /// keys: a per-key counter would have to outlive the key, a global one only
    /// ever grows.
    pub(super) last_token: u64,
    pub(super) last_revision: u64,
    pub(super) next_feed_id: u64,
    pub(super) feeds_disconnected: bool,
    pub(super) next_sweep: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct HeldLease {
    owner: String,
    token: u64,
    expires_at: Instant,
}

#[derive(Debug)]
pub(super) struct KvEntry {
    value: Bytes,
    revision: u64,
    fence: u64,
    expires_at: Option<Instant>,
}

impl KvEntry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

#[derive(Debug)]
pub(super) struct Stream {
    pub(super) epoch: Arc<str>,
    pub(super) offset: u64,
    pub(super) history: VecDeque<Publication>,
    pub(super) expires_at: Instant,
}

#[derive(Debug)]
pub(super) struct FeedSlot {
    pub(super) tx: mpsc::Sender<FeedEvent>,
    pub(super) topics: HashSet<Topic>,
    /// Events dropped because the queue was full, not yet reported.
    pub(super) dropped: u64,
    /// An `Interrupted` was delivered and no `Resumed` yet.
    pub(super) interrupted: bool,
}

impl FeedSlot {
    /// Hands an event to the feed without ever blocking. Returns false if the
    /// feed's receiver is gone.
    pub(super) fn deliver(&mut self, event: FeedEvent) -> bool {
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

impl State {
    /// Drops expired entries now and then, so keys nobody reads again do not pile up.
    pub(super) fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| now < t) {
            return;
        }
        self.next_sweep = Some(now + Duration::from_secs(5));
        self.streams.retain(|_, s| s.expires_at > now);
        self.leases.retain(|_, l| l.expires_at > now);
        self.kv.retain(|_, e| e.live(now));
        self.forget_expired_instances(now);
    }

    /// Drops expired registrations and the presence entries of their instances.
    pub(super) fn forget_expired_instances(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .instances
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(id, _)| id.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            self.instances.remove(id);
        }
        self.forget_presence_of(&gone.iter().map(String::as_str).collect());
    }

    /// Deletes every presence entry of these instances.
    pub(super) fn forget_presence_of(&mut self, instances: &HashSet<&str>) {
        self.presence.retain(|_, entries| {
            entries.retain(|_, e| !instances.contains(e.instance.as_str()));
            !entries.is_empty()
        });
    }

    /// The channel's stream, created (with a new epoch) if absent or expired.
    pub(super) fn stream(&mut self, channel: &str, now: Instant, ttl: Duration) -> &mut Stream {
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
                epoch: Arc::from(crate::types::new_epoch()),
                offset: 0,
                history: VecDeque::new(),
                expires_at: now + ttl,
            })
    }

    pub(super) fn deliver(&mut self, topic: &Topic, event: FeedEvent) {
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

    pub(super) fn remove_feed(&mut self, id: u64) {
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

    pub(super) fn live_instance(&self, id: &str, now: Instant) -> bool {
        self.instances.get(id).is_some_and(|(_, exp)| *exp > now)
    }

    fn live_lease(&self, key: &str, now: Instant) -> Option<&HeldLease> {
        self.leases.get(key).filter(|l| l.expires_at > now)
    }

    pub(super) fn acquire_lease(
        &mut self,
        key: &str,
        owner: &str,
        ttl: Duration,
        now: Instant,
    ) -> LeaseOutcome {
        let token = match self.live_lease(key, now) {
            Some(held) if held.owner != owner => {
                return LeaseOutcome::HeldBy {
                    owner: held.owner.clone(),
                    token: held.token,
                };
            }
            Some(held) => held.token,
            None => {
                self.last_token += 1;
                self.last_token
            }
        };
        self.leases.insert(
            key.to_owned(),
            HeldLease {
                owner: owner.to_owned(),
                token,
                expires_at: now + ttl,
            },
        );
        LeaseOutcome::Acquired { token }
    }

    /// The live lease if `owner` holds it with `token`.
    pub(super) fn held_lease(
        &mut self,
        key: &str,
        owner: &str,
        token: u64,
        now: Instant,
    ) -> Option<&mut HeldLease> {
        self.leases
            .get_mut(key)
            .filter(|l| l.expires_at > now && l.owner == owner && l.token == token)
    }

    pub(super) fn renew_lease(
        &mut self,
        key: &str,
        owner: &str,
        token: u64,
        until: Instant,
        now: Instant,
    ) -> bool {
        match self.held_lease(key, owner, token, now) {
            Some(held) => {
                held.expires_at = until;
                true
            }
            None => false,
        }
    }

    pub(super) fn lease(&self, key: &str, now: Instant) -> Option<Lease> {
        self.live_lease(key, now).map(|l| Lease {
            owner: l.owner.clone(),
            token: l.token,
        })
    }

    pub(super) fn leases(&self, prefix: &str, now: Instant) -> Vec<(String, Lease)> {
        let mut out: Vec<(String, Lease)> = self
            .leases
            .iter()
            .filter(|(k, l)| k.starts_with(prefix) && l.expires_at > now)
            .map(|(k, l)| {
                (
                    k.clone(),
                    Lease {
                        owner: l.owner.clone(),
                        token: l.token,
                    },
                )
            })
            .collect();
        out.sort();
        out
    }

    pub(super) fn kv_get(&self, key: &str, now: Instant) -> Option<Versioned> {
        self.kv.get(key).filter(|e| e.live(now)).map(|e| Versioned {
            value: e.value.clone(),
            revision: e.revision,
        })
    }

    fn kv_current(&self, key: &str, now: Instant) -> Option<(u64, u64)> {
        self.kv
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| (e.revision, e.fence))
    }

    pub(super) fn kv_put(
        &mut self,
        key: &str,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<u64> {
        let current = self.kv_current(key, now);
        mode_holds(mode, current)?;
        self.last_revision += 1;
        let revision = self.last_revision;
        let fence = fence_after(mode, current.map_or(0, |(_, f)| f));
        self.kv.insert(
            key.to_owned(),
            KvEntry {
                value,
                revision,
                fence,
                expires_at: ttl.map(|t| now + t),
            },
        );
        Ok(revision)
    }

    pub(super) fn kv_delete(&mut self, key: &str, mode: PutMode, now: Instant) -> Result<bool> {
        let current = self.kv_current(key, now);
        mode_holds(mode, current)?;
        Ok(self.kv.remove(key).is_some() && current.is_some())
    }

    pub(super) fn kv_list(&self, prefix: &str, now: Instant) -> Vec<(String, Versioned)> {
        self.kv
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(now))
            .take(KV_LIST_LIMIT)
            .map(|(k, e)| {
                (
                    k.clone(),
                    Versioned {
                        value: e.value.clone(),
                        revision: e.revision,
                    },
                )
            })
            .collect()
    }
}
