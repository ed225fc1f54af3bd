//! Feeds on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), so each channel's
//! traffic stays on the shard that owns its slot instead of being broadcast to
//! every node as classic `PUBLISH` is.
//!
//! # Moving parts
//! - Each feed owns one cluster connection (RESP3) with a push sender: it keeps
//!   one connection per node, sends each `SSUBSCRIBE` to the primary owning the
//!   slot of its channels, and, after a node connection is lost or the slot map
//!   changed, re-subscribes the node that now owns each slot by itself. Every
//!   push (messages, confirmations, disconnections) arrives on one queue, read
//!   by the feed task, which never blocks (the same bounded outbox as the
//!   standalone feed: drop and count, then `Overflowed`).
//! - Subscriptions are grouped by slot (one `SSUBSCRIBE` may only name channels
//!   of one slot), at most [`crate::RedisConfig::subscribe_batch`] per command,
//!   all groups sent concurrently.
//! - What may have lost publications is an interruption: a node connection
//!   closed (a `Disconnection` push), the server dropping a still-wanted channel
//!   (`sunsubscribe` push: its slot moved to another node during resharding),
//!   or the liveness probe (a `SPUBLISH` on the feed's own probe channel, sent
//!   after a quiet probe interval) not coming back in time. Then `is_live()`
//!   turns false, `Interrupted` is queued, and the task re-subscribes every
//!   wanted channel (with backoff and jitter) until each slot's current owner
//!   confirmed; then `is_live()` turns true and `Resumed` is queued. Subscribers
//!   recover what they missed from history, or get `recovered: false`.
//! - A failed `subscribe` leaves nothing behind, as on a single server: while
//!   interrupted it records nothing and returns `Unavailable`; a `SSUBSCRIBE`
//!   not confirmed in time drops the topics this call added (unless another
//!   call confirmed them) and unsubscribes them again.
//! - Dropping either half stops the task, which drops the cluster connection.

use crate::{
    codec::decode_envelope,
    feed::{Desired, claim_topics},
    feed::{FeedSettings, backoff},
    keys::{Keys, slot_of},
    pool::{Pool, cluster_builder, map_error},
    stats::Counters,
};
use async_trait::async_trait;
use bytes::Bytes;
use redis::{PushInfo, PushKind, Value, cluster_async::ClusterConnection};
use scaled_sockets_scaler::{
    Feed, FeedControl, FeedEvent, Publication, Result, ScalerError, Topic,
    outbox::{Closed, Outbox},
};
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, sleep, sleep_until, timeout},
};

/// How long re-subscription waits before confirming everything a second time.
const SETTLE: Duration = Duration::from_millis(500);

/// A topic the feed should receive (see the standalone feed for the rules).
#[derive(Default)]
struct State {
    desired: HashMap<String, Desired>,
    calls: u64,
    closed: bool,
}

struct Shared {
    keys: Keys,
    probe_channel: String,
    conn: ClusterConnection,
    settings: FeedSettings,
    state: Mutex<State>,
    live: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; the map stays valid if it did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends `SSUBSCRIBE` (or `SUNSUBSCRIBE`) for `names`, one command per slot
/// and batch, all at once, and waits for every confirmation within `limit`.
async fn shard_command(
    conn: &ClusterConnection,
    names: &[String],
    batch: usize,
    subscribe: bool,
    limit: Duration,
) -> Result<()> {
    let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for name in names {
        by_slot.entry(slot_of(name)).or_default().push(name.clone());
    }
    let calls = by_slot.into_values().flat_map(|group| {
        group
            .chunks(batch.max(1))
            .map(|chunk| {
                let mut conn = conn.clone();
                let chunk = chunk.to_vec();
                async move {
                    if subscribe {
                        conn.ssubscribe(chunk).await
                    } else {
                        conn.sunsubscribe(chunk).await
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    match timeout(limit, futures_util::future::join_all(calls)).await {
        Err(_) => Err(ScalerError::Timeout(limit)),
        Ok(results) => match results.into_iter().find_map(|r| r.err()) {
            Some(e) => Err(map_error(e, limit).into_unavailable()),
            None => Ok(()),
        },
    }
}

/// Opens a sharded feed: connects its cluster connection, subscribes its probe
/// channel and starts its task.
pub(crate) async fn open(
    pool: Arc<Pool>,
    keys: Keys,
    settings: FeedSettings,
    counters: Arc<Counters>,
    instance_id: &str,
) -> Result<Feed> {
    let nodes = pool
        .cluster_nodes()
        .ok_or_else(|| ScalerError::backend("sharded feed without a redis cluster"))?;
    let limit = settings.timeout;
    let (push_tx, pushes) = mpsc::unbounded_channel::<PushInfo>();
    let client = cluster_builder(nodes, limit)
        .push_sender(push_tx)
        .build()
        .map_err(|e| ScalerError::InvalidArgument(format!("redis cluster client: {e}")))?;
    let conn = match timeout(limit, client.get_async_connection()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(map_error(e, limit).into_unavailable()),
        Err(_) => return Err(ScalerError::Timeout(limit)),
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let feed_id = format!("{instance_id}/{}", &unique[..12]);
    let shared = Arc::new(Shared {
        probe_channel: keys.probe_channel(&feed_id),
        keys,
        conn,
        settings: settings.clone(),
        state: Mutex::new(State::default()),
        live: AtomicBool::new(false),
    });
    shard_command(
        &shared.conn,
        std::slice::from_ref(&shared.probe_channel),
        1,
        true,
        limit,
    )
    .await?;
    shared.live.store(true, Ordering::SeqCst);
    let (tx, events) = mpsc::channel(settings.queue_capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    counters.feeds_open.fetch_add(1, Ordering::Relaxed);
    let task = ShardTask {
        shared: shared.clone(),
        outbox: Outbox::new(tx, counters.outbox.clone()),
        counters,
        stop: stop_rx,
        pushes,
    };
    tokio::spawn(task.run());
    Ok(Feed {
        control: Arc::new(ShardFeedControl {
            shared,
            _stop: stop_tx,
        }),
        events,
    })
}

/// The control half of a sharded feed. Dropping it stops the feed.
pub(crate) struct ShardFeedControl {
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl fmt::Debug for ShardFeedControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("RedisShardFeed")
            .field("probe_channel", &self.shared.probe_channel)
            .field("topics", &state.desired.len())
            .field("closed", &state.closed)
            .field("live", &self.shared.live.load(Ordering::SeqCst))
            .finish()
    }
}

impl ShardFeedControl {
    /// After a `subscribe` call: marks its topics confirmed, or drops the ones
    /// it still claims that no call confirmed, and unsubscribes them.
    fn settle(&self, names: &[String], claim: u64, ok: bool) {
        let mut state = self.shared.lock();
        let mut dropped = Vec::new();
        for name in names {
            let Some(desired) = state.desired.get_mut(name) else {
                continue;
            };
            if ok {
                desired.confirmed = true;
            } else if desired.claim == claim && !desired.confirmed {
                state.desired.remove(name);
                dropped.push(name.clone());
            }
        }
        drop(state);
        if dropped.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let s = &shared.settings;
            if let Err(e) = shard_command(&shared.conn, &dropped, s.batch, false, s.timeout).await {
                tracing::debug!(error = %e, "redis SUNSUBSCRIBE after a failed subscribe not confirmed");
            }
        });
    }
}

#[async_trait]
impl FeedControl for ShardFeedControl {
    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        let (names, claim) = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(ScalerError::Closed);
            }
            if !self.is_live() {
                return Err(ScalerError::unavailable(
                    "redis cluster subscriber connections are interrupted; subscribe again once the feed resumed",
                ));
            }
            state.calls += 1;
            let claim = state.calls;
            let names = claim_topics(&mut state.desired, &self.shared.keys, topics, claim);
            (names, claim)
        };
        let s = &self.shared.settings;
        let result = shard_command(&self.shared.conn, &names, s.batch, true, s.timeout)
            .await
            .and_then(|()| {
                if self.is_live() {
                    Ok(())
                } else {
                    Err(ScalerError::unavailable(
                        "redis cluster subscriber connections are re-subscribing",
                    ))
                }
            });
        self.settle(&names, claim, result.is_ok());
        result
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        let gone: Vec<String> = {
            let mut state = self.shared.lock();
            topics
                .iter()
                .map(|t| self.shared.keys.topic_channel(t))
                .filter(|name| state.desired.remove(name).is_some())
                .collect()
        };
        if gone.is_empty() {
            return Ok(());
        }
        // Delivery already stopped (the reader filters on the desired set).
        let s = &self.shared.settings;
        if let Err(e) = shard_command(&self.shared.conn, &gone, s.batch, false, s.timeout).await {
            tracing::debug!(error = %e, "redis SUNSUBSCRIBE not confirmed");
        }
        Ok(())
    }

    fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::SeqCst)
    }
}

struct ShardTask {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    outbox: Outbox,
    stop: oneshot::Receiver<()>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

/// What the reader made of one push.
enum Seen {
    Nothing,
    Probe,
    Lost(&'static str),
}

impl ShardTask {
    async fn run(mut self) {
        loop {
            let why = match self.pump().await {
                None => break,
                Some(why) => why,
            };
            self.shared.live.store(false, Ordering::SeqCst);
            Counters::bump(&self.counters.feed_interruptions);
            tracing::warn!(
                probe_channel = %self.shared.probe_channel,
                reason = why,
                "redis cluster feed interrupted; re-subscribing"
            );
            if self.outbox.control(FeedEvent::Interrupted).is_err() {
                break;
            }
            if self.resubscribe().await.is_none() {
                break;
            }
            self.shared.live.store(true, Ordering::SeqCst);
            Counters::bump(&self.counters.feed_resumptions);
            tracing::info!(probe_channel = %self.shared.probe_channel, "redis cluster feed resumed");
            if self.outbox.control(FeedEvent::Resumed).is_err() {
                break;
            }
        }
        self.shared.lock().closed = true;
        self.shared.live.store(false, Ordering::SeqCst);
        self.counters.feeds_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads pushes until something may have been lost (`Some(why)`) or the
    /// feed is dropped (`None`).
    async fn pump(&mut self) -> Option<&'static str> {
        let settings = self.shared.settings.clone();
        let mut last_seen = Instant::now();
        let mut probe_deadline: Option<Instant> = None;
        loop {
            let wake = probe_deadline.unwrap_or(last_seen + settings.probe_interval);
            let backlog = self.outbox.has_backlog();
            let tx = self.outbox.sender().clone();
            tokio::select! {
                biased;
                _ = &mut self.stop => return None,
                () = tx.closed() => return None,
                permit = tx.reserve(), if backlog => {
                    drop(permit.ok()?);
                    self.outbox.flush().ok()?;
                }
                push = self.pushes.recv() => {
                    let push = push?;
                    last_seen = Instant::now();
                    match self.handle(push).ok()? {
                        Seen::Nothing => {}
                        Seen::Probe => probe_deadline = None,
                        Seen::Lost(why) => return Some(why),
                    }
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    match probe_deadline {
                        Some(deadline) if now >= deadline => {
                            Counters::bump(&self.counters.probe_failures);
                            return Some("liveness probe not echoed in time");
                        }
                        Some(_) => {}
                        None if now >= last_seen + settings.probe_interval => {
                            self.send_probe();
                            probe_deadline = Some(now + settings.probe_timeout);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    fn handle(&mut self, push: PushInfo) -> std::result::Result<Seen, Closed> {
        let channel = push.data.first().and_then(|v| match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        });
        if push.kind != PushKind::SMessage {
            tracing::trace!(kind = ?push.kind, data = ?push.data, probe = %self.shared.probe_channel, "redis cluster feed push");
        }
        match push.kind {
            PushKind::Disconnection => Ok(Seen::Lost("a node connection closed")),
            PushKind::SUnsubscribe => {
                // Ours (an unsubscribe) are no longer desired; a desired one was
                // dropped by the server: its slot moved to another node.
                let wanted = channel.is_some_and(|c| {
                    c == self.shared.probe_channel || self.shared.lock().desired.contains_key(c)
                });
                Ok(if wanted {
                    Seen::Lost("a subscribed slot moved to another node")
                } else {
                    Seen::Nothing
                })
            }
            PushKind::SMessage | PushKind::Message => {
                let Some(channel) = channel else {
                    return Ok(Seen::Nothing);
                };
                if channel == self.shared.probe_channel {
                    return Ok(Seen::Probe);
                }
                let topic = self
                    .shared
                    .lock()
                    .desired
                    .get(channel)
                    .map(|d| d.topic.clone());
                let (Some(topic), Some(Value::BulkString(payload))) = (topic, push.data.get(1))
                else {
                    return Ok(Seen::Nothing);
                };
                let event = match topic {
                    Topic::Channel(name) => {
                        let Some((offset, epoch, data)) = decode_envelope(payload) else {
                            tracing::warn!(channel = %name, "malformed publication envelope ignored");
                            return Ok(Seen::Nothing);
                        };
                        FeedEvent::Publication(Publication {
                            channel: name,
                            offset,
                            epoch: Arc::from(epoch),
                            payload: Bytes::copy_from_slice(data),
                        })
                    }
                    topic => FeedEvent::Message {
                        topic,
                        payload: Bytes::copy_from_slice(payload),
                    },
                };
                self.outbox.data(event).map(|()| Seen::Nothing)
            }
            _ => Ok(Seen::Nothing),
        }
    }

    /// Publishes a probe on the feed's own sharded channel, without waiting.
    fn send_probe(&self) {
        Counters::bump(&self.counters.probes_sent);
        let mut conn = self.shared.conn.clone();
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(&self.shared.probe_channel).arg("probe");
        tokio::spawn(async move {
            if let Err(e) = cmd.query_async::<i64>(&mut conn).await {
                tracing::debug!(error = %e, "redis cluster feed probe failed");
            }
        });
    }

    /// Re-subscribes every wanted channel (and the probe) with backoff until
    /// all are confirmed; `None` when the feed is dropped meanwhile. Pushes
    /// keep being read: messages are delivered, and a loss reported during a
    /// round (another node connection closing, a slot moving) starts the round
    /// again, so that `Resumed` follows only a round no loss interrupted.
    async fn resubscribe(&mut self) -> Option<()> {
        let s = self.shared.settings.clone();
        let mut attempt = 0u32;
        'rounds: loop {
            let delay = backoff(attempt, s.reconnect_min, s.reconnect_max);
            attempt = attempt.saturating_add(1);
            let mut names: Vec<String> = self.shared.lock().desired.keys().cloned().collect();
            names.push(self.shared.probe_channel.clone());
            let shared = self.shared.clone();
            let s = s.clone();
            let round = async move {
                sleep(delay).await;
                shard_command(&shared.conn, &names, s.batch, true, s.timeout).await?;
                // Twice, a moment apart: while the cluster connection refreshes
                // its slot map after a failover it may replace a node's
                // connection, and a subscription confirmed on the replaced one
                // just before is gone without a word. The second round lands
                // on the settled connections (a duplicate SSUBSCRIBE is
                // harmless); only then is the feed live again.
                sleep(SETTLE).await;
                shard_command(&shared.conn, &names, s.batch, true, s.timeout).await
            };
            tokio::pin!(round);
            loop {
                let backlog = self.outbox.has_backlog();
                let tx = self.outbox.sender().clone();
                tokio::select! {
                    biased;
                    _ = &mut self.stop => return None,
                    () = tx.closed() => return None,
                    permit = tx.reserve(), if backlog => {
                        drop(permit.ok()?);
                        self.outbox.flush().ok()?;
                    }
                    push = self.pushes.recv() => {
                        if let Seen::Lost(why) = self.handle(push?).ok()? {
                            tracing::debug!(reason = why, "redis cluster re-subscribe round restarted");
                            continue 'rounds;
                        }
                    }
                    out = &mut round => match out {
                        Ok(()) => return Some(()),
                        Err(e) => {
                            tracing::debug!(attempt, error = %e, "redis cluster re-subscribe failed");
                            continue 'rounds;
                        }
                    },
                }
            }
        }
    }
}
