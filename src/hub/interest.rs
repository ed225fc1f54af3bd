//! Local interest in topics: which connections of this instance want which
//! topic, the one backend subscription per topic, and fan-out.
//!
//! Interest is counted per topic: the feed subscribes to a topic when the first
//! local connection wants it and unsubscribes after the last leaves, so an
//! instance holds one backend subscription per channel and receives only the
//! traffic of channels it has subscribers for.
//!
//! Fan-out is the hot path: a frame encoded once is queued (one `Arc`) to every
//! local member with a non-blocking push. A member whose queue is full is a
//! slow consumer and is closed with 4008: one slow client never stalls the
//! others, and memory stays bounded.

use super::{Hub, lock};
use crate::{
    mailbox::{Mailbox, Outbound},
    metrics::Metrics,
};
use scaled_sockets_scaler::{ScalerError, StreamPosition, Topic};
use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};
use tokio::sync::{OnceCell, oneshot};

/// A topic waiting for its feed subscribe, and where its result goes.
pub(super) type PendingSubscribe = (Topic, oneshot::Sender<Result<(), ScalerError>>);

/// Local members of one topic, and whether the feed is subscribed to it.
pub(crate) struct TopicEntry {
    pub(super) members: HashMap<u64, Arc<Mailbox>>,
    /// Initialised once the feed confirmed the subscription. Concurrent joiners
    /// all wait on the same cell, so the backend sees one subscribe per topic.
    pub(super) subscribed: Arc<OnceCell<()>>,
    /// For a channel: the last position every local member was sent (by a
    /// publication fanned out, or a gap check). A periodic check whose top
    /// equals it has nothing to tell anyone.
    pub(super) sent_top: Option<StreamPosition>,
}

impl Hub {
    /// Adds `conn` to the local members of `topic`, subscribing the feed if it is
    /// the first. Resolves once the feed is subscribed: from then on every
    /// publication on the topic reaches `conn`.
    pub(crate) async fn join_topic(
        self: &Arc<Self>,
        topic: &Topic,
        conn: &Arc<Mailbox>,
    ) -> Result<(), ScalerError> {
        let cell = {
            let mut topics = lock(&self.topics);
            let entry = topics.entry(topic.clone()).or_insert_with(|| TopicEntry {
                members: HashMap::new(),
                subscribed: Arc::new(OnceCell::new()),
                sent_top: None,
            });
            entry.members.insert(conn.key, conn.clone());
            entry.subscribed.clone()
        };
        let result = cell
            .get_or_try_init(|| async {
                // Queued first, then the ops lock: whoever holds the lock next
                // subscribes everything queued by then in one backend call, so
                // a burst of connects (each joining its user's topic) costs a
                // few round trips rather than one each, one after the other.
                let (tx, rx) = oneshot::channel();
                lock(&self.pending_subscribes).push((topic.clone(), tx));
                {
                    let mut feed_topics = self.feed_ops.lock().await;
                    let batch = std::mem::take(&mut *lock(&self.pending_subscribes));
                    if !batch.is_empty() {
                        let topics: Vec<Topic> = batch.iter().map(|(t, _)| t.clone()).collect();
                        let result = self.feed.subscribe(&topics).await;
                        if result.is_ok() {
                            for topic in topics {
                                if feed_topics.insert(topic) {
                                    self.metrics.backend_topics.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        for (_, tx) in batch {
                            let _ = tx.send(result.clone());
                        }
                    }
                }
                // Our topic was in this batch or in an earlier holder's. The
                // sender is gone only if that holder was cancelled mid-call.
                rx.await.unwrap_or_else(|_| {
                    Err(ScalerError::unavailable(
                        "the feed subscribe was interrupted",
                    ))
                })
            })
            .await;
        if let Err(e) = result {
            self.leave_topic(topic, conn.key);
            return Err(e);
        }
        // The connection may have left while the feed was being subscribed
        // (a client that closes right after subscribing): then the topic may
        // have no member left, and its subscription must not outlive it.
        let unused = lock(&self.topics)
            .get(topic)
            .is_none_or(|entry| entry.members.is_empty());
        if unused {
            self.release_topic(topic);
        }
        Ok(())
    }

    /// Removes a member; the feed unsubscribes once nobody local wants the topic.
    pub(crate) fn leave_topic(self: &Arc<Self>, topic: &Topic, key: u64) {
        let now_empty = {
            let mut topics = lock(&self.topics);
            match topics.get_mut(topic) {
                Some(entry) => entry.members.remove(&key).is_some() && entry.members.is_empty(),
                None => false,
            }
        };
        if now_empty {
            self.release_topic(topic);
        }
    }

    /// Forgets `topic` and unsubscribes the feed from it if no local
    /// connection wants it (checked again under the ops lock).
    fn release_topic(self: &Arc<Self>, topic: &Topic) {
        let hub = self.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut feed_topics = hub.feed_ops.lock().await;
            // Re-check under the ops lock: somebody may have joined meanwhile.
            {
                let mut topics = lock(&hub.topics);
                match topics.get(&topic) {
                    Some(entry) if entry.members.is_empty() => {
                        topics.remove(&topic);
                    }
                    Some(_) => return,
                    None => {}
                }
            }
            // Subscribed by a joiner that has left since (its entry gone), or
            // by this topic's last members: either way nobody wants it now.
            if feed_topics.remove(&topic) {
                hub.metrics.backend_topics.fetch_sub(1, Ordering::Relaxed);
                let unsub = hub.feed.unsubscribe(std::slice::from_ref(&topic));
                if let Err(e) = unsub.await {
                    // The feed forgets it on reconnect at the latest; a stale
                    // subscription costs traffic, not correctness.
                    tracing::warn!(?topic, error = %e, "feed unsubscribe failed");
                }
            }
        });
    }

    /// Queues to every local member of `topic`.
    pub(crate) fn fan_out(&self, topic: &Topic, make: impl Fn() -> Outbound) {
        self.fan_out_at(topic, None, make);
    }

    /// Fans out what brings every member of a channel to `top` (a publication,
    /// or a gap check), and remembers it.
    pub(crate) fn fan_out_at(
        &self,
        topic: &Topic,
        top: Option<StreamPosition>,
        make: impl Fn() -> Outbound,
    ) {
        let mut topics = lock(&self.topics);
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        if top.is_some() {
            entry.sent_top = top;
        }
        for conn in entry.members.values() {
            if conn.push(make()) {
                Metrics::inc(&self.metrics.frames_queued_total);
            }
        }
    }

    /// Like [`Hub::fan_out_at`], but wakes nobody: every member queued to for
    /// the first time since its last wake is added to `wakes`, for the caller
    /// to wake once its whole batch is queued.
    pub(crate) fn fan_out_deferred(
        &self,
        topic: &Topic,
        top: Option<StreamPosition>,
        make: impl Fn() -> Outbound,
        wakes: &mut Vec<Arc<Mailbox>>,
    ) {
        let mut topics = lock(&self.topics);
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        if top.is_some() {
            entry.sent_top = top;
        }
        let mut queued = 0;
        for conn in entry.members.values() {
            let (ok, listed) = conn.push_deferred(make());
            queued += u64::from(ok);
            if listed {
                wakes.push(conn.clone());
            }
        }
        self.metrics
            .frames_queued_total
            .fetch_add(queued, Ordering::Relaxed);
    }

    /// The last position every local member of `channel` was sent.
    pub(super) fn sent_top(&self, channel: &Arc<str>) -> Option<StreamPosition> {
        lock(&self.topics)
            .get(&Topic::Channel(channel.clone()))
            .and_then(|entry| entry.sent_top.clone())
    }

    pub(super) fn channel_topics(&self) -> Vec<Arc<str>> {
        lock(&self.topics)
            .iter()
            .filter(|(_, e)| !e.members.is_empty())
            .filter_map(|(t, _)| match t {
                Topic::Channel(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}
