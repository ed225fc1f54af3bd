//! Feeds: one dedicated Redis subscriber connection per [`Feed`], carrying every
//! topic the instance needs, read by one task that never blocks.
//!
//! # Moving parts
//! - [`RedisFeedControl`] (the `FeedControl` half) keeps the *desired* topic set
//!   and sends `SUBSCRIBE`/`UNSUBSCRIBE` on the current connection's sink. The set
//!   change and the enqueueing of the command happen under one lock, so commands
//!   reach Redis in the order the set changed, even for concurrent callers.
//! - The feed task reads the connection. Each message is mapped back to its topic
//!   through the desired set (messages of topics no longer desired are dropped, so
//!   an unsubscribe takes effect at once) and handed to the feed's bounded queue
//!   with `try_send`. When the queue is full the event is dropped and counted; an
//!   [`FeedEvent::Overflowed`] with the count follows as soon as there is room.
//!   `Interrupted`/`Resumed` are never dropped: they wait for room, and events
//!   after them are counted as dropped until they are out.
//! - Liveness: when the connection has been quiet for the probe interval, the task
//!   publishes a probe to the feed's own probe channel (over the command pool) and
//!   expects it back within the probe timeout. Any message counts as a sign of
//!   life. No sign of life in time means the connection is dead even if TCP says
//!   otherwise.
//! - When the connection is lost (closed, or the probe failed): `is_live()`
//!   becomes false, `Interrupted` is emitted, and the task reconnects with
//!   exponential backoff and jitter, re-subscribes the probe channel and every
//!   desired topic in batches, then sets `is_live()` and emits `Resumed`.
//! - A failed `subscribe` leaves nothing behind: while disconnected it records
//!   nothing and returns [`ScalerError::Unavailable`] (so the server can answer
//!   `unavailable`); when Redis does not confirm in time, the topics this call
//!   added are dropped from the desired set again (and an `UNSUBSCRIBE` is
//!   sent), unless another call's `SUBSCRIBE` of them was confirmed meanwhile.
//!   Callers do not unsubscribe after a failed subscribe (the server does not),
//!   so a topic left desired would be re-subscribed on every reconnect and
//!   receive traffic for the feed's whole life. `unsubscribe` always succeeds:
//!   the topics are forgotten at once and not re-subscribed.
//! - Dropping the control handle or the event receiver stops the task, which
//!   closes the connection.

use crate::{
    codec::decode_envelope,
    keys::Keys,
    pool::{Pool, map_error},
    pubsub::{confirm, start_batches},
    stats::Counters,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{
    Msg,
    aio::{PubSubSink, PubSubStream},
};
use scaled_sockets_scaler::{
    Feed, FeedControl, FeedEvent, Publication, Result, ScalerError, Topic,
    outbox::{Closed, Outbox},
};
use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
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

/// The settings a feed needs (taken from [`crate::RedisConfig`]).
#[derive(Clone, Debug)]
pub(crate) struct FeedSettings {
    pub(crate) timeout: Duration,
    pub(crate) batch: usize,
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) queue_capacity: usize,
}

/// State shared by a feed's control handle and its task.
struct Shared {
    keys: Keys,
    probe_channel: String,
    state: Mutex<State>,
    live: AtomicBool,
}

/// A topic the feed should receive.
pub(crate) struct Desired {
    pub(crate) topic: Topic,
    /// Redis confirmed a `SUBSCRIBE` of it (from a `subscribe` call that
    /// succeeded): a later failed call must not drop it.
    pub(crate) confirmed: bool,
    /// The latest `subscribe` call that asked for it: only that call may drop
    /// it again when it fails.
    pub(crate) claim: u64,
}

/// Marks `topics` (each once) as desired by the `subscribe` call `claim`
/// and returns their pub/sub channel names, for both feeds (one server's and
/// the sharded one), so their confirmation rules stay the same.
pub(crate) fn claim_topics(
    desired: &mut HashMap<String, Desired>,
    keys: &Keys,
    topics: &[Topic],
    claim: u64,
) -> Vec<String> {
    let mut seen = HashSet::with_capacity(topics.len());
    let mut names = Vec::with_capacity(topics.len());
    for topic in topics {
        if seen.insert(topic) {
            let name = keys.topic_channel(topic);
            desired
                .entry(name.clone())
                .or_insert_with(|| Desired {
                    topic: topic.clone(),
                    confirmed: false,
                    claim,
                })
                .claim = claim;
            names.push(name);
        }
    }
    names
}

#[derive(Default)]
struct State {
    /// Pub/sub channel name -> topic, for every topic the feed should receive.
    desired: HashMap<String, Desired>,
    /// Numbers `subscribe` calls (their claims).
    calls: u64,
    /// Where to send (un)subscribe commands; `None` while disconnected.
    sink: Option<PubSubSink>,
    /// The task ended: the feed is closed for good.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if it ever did, the map is still
        // structurally valid, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("RedisFeed")
            .field("probe_channel", &self.probe_channel)
            .field("topics", &state.desired.len())
            .field("connected", &state.sink.is_some())
            .field("closed", &state.closed)
            .field("live", &self.live.load(Ordering::SeqCst))
            .finish()
    }
}

/// Opens a subscriber connection and subscribes the probe channel and every
/// desired topic on it. On success the sink is installed in the shared state.
async fn connect(shared: &Shared, pool: &Pool, settings: &FeedSettings) -> Result<PubSubStream> {
    let limit = settings.timeout;
    // With Sentinel, the primary is looked up again on every connect.
    let client = pool.subscriber_client().await?;
    let pubsub = match timeout(limit, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => {
            return Err(map_error(e, limit).into_unavailable());
        }
        Err(_) => return Err(ScalerError::Timeout(limit)),
    };
    let (sink, stream) = pubsub.split();
    let pending = {
        let mut state = shared.lock();
        // Installing the sink and listing the topics under one lock: a topic added
        // before is in the list, one added after goes out on the new sink itself.
        state.sink = Some(sink.clone());
        let mut names = Vec::with_capacity(state.desired.len() + 1);
        names.push(shared.probe_channel.clone());
        names.extend(state.desired.keys().cloned());
        start_batches(&sink, &names, settings.batch, true)
    };
    if let Err(e) = confirm(pending, limit).await {
        shared.lock().sink = None;
        return Err(e);
    }
    Ok(stream)
}

/// Opens a feed: connects its subscriber connection and starts its task.
pub(crate) async fn open(
    pool: Arc<Pool>,
    keys: Keys,
    settings: FeedSettings,
    counters: Arc<Counters>,
    instance_id: &str,
) -> Result<Feed> {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let feed_id = format!("{instance_id}/{}", &unique[..12]);
    let shared = Arc::new(Shared {
        probe_channel: keys.probe_channel(&feed_id),
        keys,
        state: Mutex::new(State::default()),
        live: AtomicBool::new(false),
    });
    let stream = connect(&shared, &pool, &settings).await?;
    shared.live.store(true, Ordering::SeqCst);
    let (tx, events) = mpsc::channel(settings.queue_capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    counters.feeds_open.fetch_add(1, Ordering::Relaxed);
    let task = FeedTask {
        shared: shared.clone(),
        pool,
        settings: settings.clone(),
        counters: counters.clone(),
        io: TaskIo {
            outbox: Outbox::new(tx, counters.outbox.clone()),
            stop: stop_rx,
        },
    };
    tokio::spawn(task.run(stream));
    Ok(Feed {
        control: Arc::new(RedisFeedControl {
            shared,
            settings,
            _stop: stop_tx,
        }),
        events,
    })
}

/// The control half of a Redis feed. Dropping it stops the feed.
pub(crate) struct RedisFeedControl {
    shared: Arc<Shared>,
    settings: FeedSettings,
    /// Dropped with the control: the task sees the channel close and stops.
    _stop: oneshot::Sender<()>,
}

impl fmt::Debug for RedisFeedControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl RedisFeedControl {
    /// After a `subscribe` call: marks its topics confirmed, or, when it
    /// failed, drops the ones it still claims that no call confirmed, and
    /// unsubscribes them (best effort: the reader already ignores them).
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
        if dropped.is_empty() {
            return;
        }
        tracing::debug!(topics = dropped.len(), "failed subscribe: topics dropped");
        if let Some(sink) = &state.sink {
            let pending = start_batches(sink, &dropped, self.settings.batch, false);
            let limit = self.settings.timeout;
            tokio::spawn(async move {
                if let Err(e) = confirm(pending, limit).await {
                    tracing::debug!(error = %e, "redis UNSUBSCRIBE after a failed subscribe not confirmed");
                }
            });
        }
    }
}

#[async_trait]
impl FeedControl for RedisFeedControl {
    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        let (pending, names, claim) = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(ScalerError::Closed);
            }
            let Some(sink) = state.sink.clone() else {
                return Err(ScalerError::unavailable(
                    "redis subscriber connection is down; subscribe again once the feed resumed",
                ));
            };
            state.calls += 1;
            let claim = state.calls;
            // Topics already desired are sent again (a duplicate SUBSCRIBE is
            // harmless): the call then returns only once Redis confirmed them,
            // even if another caller's SUBSCRIBE of them is still in flight.
            let names = claim_topics(&mut state.desired, &self.shared.keys, topics, claim);
            (
                start_batches(&sink, &names, self.settings.batch, true),
                names,
                claim,
            )
        };
        let result = confirm(pending, self.settings.timeout)
            .await
            .and_then(|()| {
                if self.is_live() {
                    Ok(())
                } else {
                    // The connection was replaced meanwhile and is being
                    // re-subscribed: not confirmed on a live feed.
                    Err(ScalerError::unavailable(
                        "redis subscriber connection is re-subscribing",
                    ))
                }
            });
        self.settle(&names, claim, result.is_ok());
        result
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        let pending = {
            let mut state = self.shared.lock();
            let mut gone = Vec::new();
            for topic in topics {
                let name = self.shared.keys.topic_channel(topic);
                if state.desired.remove(&name).is_some() {
                    gone.push(name);
                }
            }
            match &state.sink {
                Some(sink) if !gone.is_empty() => {
                    start_batches(sink, &gone, self.settings.batch, false)
                }
                _ => return Ok(()),
            }
        };
        // Delivery already stopped (the reader filters on the desired set); a
        // failed UNSUBSCRIBE only means the connection is going away anyway.
        if let Err(e) = confirm(pending, self.settings.timeout).await {
            tracing::debug!(error = %e, "redis UNSUBSCRIBE not confirmed");
        }
        Ok(())
    }

    fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::SeqCst)
    }
}

/// The parts of the task that must stay serviceable while it waits for
/// something else (a reconnect, a backoff delay).
struct TaskIo {
    outbox: Outbox,
    stop: oneshot::Receiver<()>,
}

impl TaskIo {
    /// Runs `fut` while flushing the outbox as room appears and watching for the
    /// feed being dropped. `None` when the feed is being dropped.
    async fn serve<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let backlog = self.outbox.has_backlog();
            let tx = self.outbox.sender().clone();
            tokio::select! {
                biased;
                _ = &mut self.stop => return None,
                () = tx.closed() => return None,
                permit = tx.reserve(), if backlog => {
                    // Only this task sends, so the freed slot is ours.
                    drop(permit.ok()?);
                    self.outbox.flush().ok()?;
                }
                out = &mut fut => return Some(out),
            }
        }
    }
}

/// Why the pump stopped.
enum Ended {
    /// The feed was dropped.
    Shutdown,
    /// The connection is gone (or presumed dead).
    Lost(&'static str),
}

struct FeedTask {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    settings: FeedSettings,
    counters: Arc<Counters>,
    io: TaskIo,
}

impl FeedTask {
    async fn run(mut self, first: PubSubStream) {
        let mut connection = Some(first);
        while let Some(mut stream) = connection.take() {
            let why = match self.pump(&mut stream).await {
                Ended::Shutdown => break,
                Ended::Lost(why) => why,
            };
            drop(stream);
            self.shared.live.store(false, Ordering::SeqCst);
            self.shared.lock().sink = None;
            Counters::bump(&self.counters.feed_interruptions);
            tracing::warn!(
                probe_channel = %self.shared.probe_channel,
                reason = why,
                "redis feed lost its subscriber connection; reconnecting"
            );
            if self.io.outbox.control(FeedEvent::Interrupted).is_err() {
                break;
            }
            connection = self.reconnect().await;
            if connection.is_some() {
                self.shared.live.store(true, Ordering::SeqCst);
                Counters::bump(&self.counters.feed_resumptions);
                tracing::info!(
                    probe_channel = %self.shared.probe_channel,
                    "redis feed resumed"
                );
                if self.io.outbox.control(FeedEvent::Resumed).is_err() {
                    break;
                }
            }
        }
        {
            let mut state = self.shared.lock();
            state.closed = true;
            state.sink = None;
        }
        self.shared.live.store(false, Ordering::SeqCst);
        self.counters.feeds_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads the connection until it is lost or the feed is dropped.
    async fn pump(&mut self, stream: &mut PubSubStream) -> Ended {
        let Self {
            shared,
            pool,
            settings,
            counters,
            io,
        } = self;
        let interval = settings.probe_interval;
        let mut last_seen = Instant::now();
        let mut probe_deadline: Option<Instant> = None;
        loop {
            let wake = probe_deadline.unwrap_or(last_seen + interval);
            let backlog = io.outbox.has_backlog();
            let tx = io.outbox.sender().clone();
            tokio::select! {
                biased;
                _ = &mut io.stop => return Ended::Shutdown,
                () = tx.closed() => return Ended::Shutdown,
                permit = tx.reserve(), if backlog => {
                    let Ok(permit) = permit else { return Ended::Shutdown };
                    drop(permit);
                    if io.outbox.flush().is_err() {
                        return Ended::Shutdown;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { return Ended::Lost("connection closed") };
                    last_seen = Instant::now();
                    probe_deadline = None;
                    if deliver(shared, &mut io.outbox, &msg).is_err() {
                        return Ended::Shutdown;
                    }
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    match probe_deadline {
                        Some(deadline) if now >= deadline => {
                            Counters::bump(&counters.probe_failures);
                            return Ended::Lost("liveness probe not echoed in time");
                        }
                        Some(_) => {}
                        None if now >= last_seen + interval => {
                            send_probe(pool, &shared.probe_channel, counters);
                            probe_deadline = Some(now + settings.probe_timeout);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Reconnects with backoff until it works or the feed is dropped.
    async fn reconnect(&mut self) -> Option<PubSubStream> {
        let mut attempt = 0u32;
        loop {
            let delay = backoff(
                attempt,
                self.settings.reconnect_min,
                self.settings.reconnect_max,
            );
            attempt = attempt.saturating_add(1);
            self.io.serve(sleep(delay)).await?;
            let connecting = connect(&self.shared, &self.pool, &self.settings);
            match self.io.serve(connecting).await? {
                Ok(stream) => return Some(stream),
                Err(e) => tracing::debug!(attempt, error = %e, "redis feed reconnect failed"),
            }
        }
    }
}

/// Maps one pub/sub message to a feed event and hands it over.
fn deliver(shared: &Shared, outbox: &mut Outbox, msg: &Msg) -> std::result::Result<(), Closed> {
    let channel = msg.get_channel_name();
    if channel == shared.probe_channel {
        return Ok(());
    }
    let topic = shared.lock().desired.get(channel).map(|d| d.topic.clone());
    let Some(topic) = topic else {
        // Unsubscribed meanwhile.
        return Ok(());
    };
    let payload = msg.get_payload_bytes();
    let event = match topic {
        Topic::Channel(name) => {
            let Some((offset, epoch, data)) = decode_envelope(payload) else {
                tracing::warn!(channel = %name, "malformed publication envelope ignored");
                return Ok(());
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
    outbox.data(event)
}

/// Publishes a probe to a feed's own channel, without waiting for it.
fn send_probe(pool: &Arc<Pool>, channel: &str, counters: &Counters) {
    Counters::bump(&counters.probes_sent);
    let pool = pool.clone();
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(channel).arg("probe");
    tokio::spawn(async move {
        if let Err(e) = pool.query::<i64>(&cmd).await {
            tracing::debug!(error = %e, "redis feed probe publish failed");
        }
    });
}

/// Exponential backoff with jitter: between half and all of
/// `min * 2^attempt`, capped at `max`.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1024) as u32;
    base / 2 + (base / 2) * jitter / 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            let base = min.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
        }
        let spread: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff(5, min, max)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }
}
