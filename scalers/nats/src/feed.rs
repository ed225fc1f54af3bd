//! Feeds: per-topic core NATS subscriptions on the scaler's one connection,
//! forwarded by one task into the feed's bounded queue.
//!
//! - `subscribe` creates one core subscription per new topic (channel topics on
//!   `{prefix}.live.{b64(channel)}`, others on `{prefix}.msg.{kind}.{b64(name)}`),
//!   then flushes (PING/PONG): when it returns, the server has every SUB, so a
//!   publication made afterwards is delivered.
//! - The forwarding task polls all subscriptions of the feed (a `SelectAll`, so
//!   each topic keeps its order) and hands events over with `try_send`: it never
//!   waits for the dispatcher. When the queue is full it counts what it drops and,
//!   as soon as there is room again, sends `Overflowed { dropped }` (it waits for
//!   room only to send that). Connection events (`Interrupted`/`Resumed`) are
//!   never dropped: they wait for room in the same order.
//! - `unsubscribe` aborts the topic's stream; dropping it unsubscribes on the
//!   server. Dropping the feed's control or its receiver ends the task, which drops
//!   every subscription.

use crate::{conn::ConnState, history::live_publication, names::Names};
use async_nats::{Client, Message, Subscriber};
use async_trait::async_trait;
use futures_util::{
    StreamExt,
    stream::{AbortHandle, BoxStream, SelectAll, abortable},
};
use scaled_sockets_scaler::{
    FEED_QUEUE_CAPACITY, Feed, FeedControl, FeedEvent, Result, ScalerError, Topic,
    outbox::{Outbox, OutboxCounters},
};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::sync::{Mutex, mpsc, watch};

type TopicStream = BoxStream<'static, (Topic, Message)>;

/// What the control needs from the scaler.
#[derive(Clone)]
pub struct FeedContext {
    /// The scaler's one connection.
    pub client: Client,
    /// Subject names.
    pub names: Names,
    /// Connection state shared by all feeds.
    pub state: watch::Receiver<ConnState>,
    /// Bound of `subscribe`.
    pub timeout: Duration,
    /// The scaler's shared state: a live feed keeps it (and so the driver that
    /// turns connection events into `Interrupted`/`Resumed`) alive even if every
    /// scaler handle is dropped.
    pub keep_alive: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for FeedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedContext")
            .field("names", &self.names)
            .field("state", &*self.state.borrow())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Opens a feed.
pub fn open(ctx: FeedContext) -> Feed {
    let (tx, events) = mpsc::channel(FEED_QUEUE_CAPACITY);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let mut state = ctx.state.clone();
    let seen = *state.borrow_and_update();
    tokio::spawn(forward(tx, Arc::default(), cmd_rx, state, seen));
    Feed {
        control: Arc::new(NatsFeedControl {
            ctx,
            subs: Mutex::new(HashMap::new()),
            cmd_tx,
        }),
        events,
    }
}

/// The control half of a NATS feed.
#[derive(Debug)]
pub struct NatsFeedControl {
    ctx: FeedContext,
    subs: Mutex<HashMap<Topic, AbortHandle>>,
    cmd_tx: mpsc::UnboundedSender<TopicStream>,
}

impl Drop for NatsFeedControl {
    fn drop(&mut self) {
        for handle in self.subs.get_mut().values() {
            handle.abort();
        }
    }
}

fn topic_stream(topic: Topic, sub: Subscriber) -> (TopicStream, AbortHandle) {
    let (stream, handle) = abortable(sub.map(move |msg| (topic.clone(), msg)));
    (stream.boxed(), handle)
}

#[async_trait]
impl FeedControl for NatsFeedControl {
    async fn subscribe(&self, topics: &[Topic]) -> Result<()> {
        for topic in topics {
            crate::names::check_name(topic.name(), "topic name")?;
        }
        if self.cmd_tx.is_closed() {
            return Err(ScalerError::Closed);
        }
        if self.ctx.client.connection_state() != async_nats::connection::State::Connected {
            return Err(ScalerError::unavailable("NATS connection is down"));
        }
        let mut subs = self.subs.lock().await;
        let mut added = Vec::new();
        let result: Result<()> =
            async {
                for topic in topics {
                    if subs.contains_key(topic) {
                        continue;
                    }
                    let subject = self.ctx.names.topic_subject(topic);
                    let sub =
                        self.ctx.client.subscribe(subject).await.map_err(|e| {
                            crate::errors::classify("subscribe", &e, self.ctx.timeout)
                        })?;
                    let (stream, handle) = topic_stream(topic.clone(), sub);
                    if self.cmd_tx.send(stream).is_err() {
                        return Err(ScalerError::Closed);
                    }
                    subs.insert(topic.clone(), handle);
                    added.push(topic.clone());
                }
                if !added.is_empty() {
                    match tokio::time::timeout(self.ctx.timeout, self.ctx.client.flush()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            return Err(crate::errors::classify("subscribe", &e, self.ctx.timeout));
                        }
                        Err(_) => return Err(ScalerError::Timeout(self.ctx.timeout)),
                    }
                }
                Ok(())
            }
            .await;
        if result.is_err() {
            for topic in &added {
                if let Some(handle) = subs.remove(topic) {
                    handle.abort();
                }
            }
        }
        result
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()> {
        let mut subs = self.subs.lock().await;
        for topic in topics {
            if let Some(handle) = subs.remove(topic) {
                handle.abort();
            }
        }
        Ok(())
    }

    fn is_live(&self) -> bool {
        !self.cmd_tx.is_closed() && self.ctx.state.borrow().connected
    }
}

fn event_for(topic: Topic, msg: Message) -> Option<FeedEvent> {
    match topic {
        Topic::Channel(channel) => live_publication(&channel, msg.headers.as_ref(), msg.payload)
            .map(FeedEvent::Publication),
        topic => Some(FeedEvent::Message {
            topic,
            payload: msg.payload,
        }),
    }
}

async fn forward(
    tx: mpsc::Sender<FeedEvent>,
    counters: Arc<OutboxCounters>,
    mut cmd_rx: mpsc::UnboundedReceiver<TopicStream>,
    mut state: watch::Receiver<ConnState>,
    mut seen: ConnState,
) {
    let mut out = Outbox::new(tx.clone(), counters);
    let mut streams: SelectAll<TopicStream> = SelectAll::new();
    let mut interrupted = false;
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            () = tx.closed() => break,
            cmd = cmd_rx.recv() => match cmd {
                Some(stream) => streams.push(stream),
                // The control is gone: nobody can subscribe or ask anything any more.
                None => break,
            },
            changed = state.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let now = *state.borrow_and_update();
                if now.slow > seen.slow {
                    out.lost(now.slow - seen.slow);
                }
                if (now.generation != seen.generation || !now.connected) && !interrupted {
                    interrupted = true;
                    if out.control(FeedEvent::Interrupted).is_err() {
                        break;
                    }
                }
                if now.connected && interrupted {
                    interrupted = false;
                    if out.control(FeedEvent::Resumed).is_err() {
                        break;
                    }
                }
                seen = now;
            }
            permit = tx.reserve(), if out.has_backlog() => {
                let Ok(permit) = permit else { break };
                // Only this task sends, so the freed slot stays ours.
                drop(permit);
                if out.flush().is_err() {
                    break;
                }
            }
            Some((topic, msg)) = streams.next(), if !streams.is_empty() => {
                if let Some(event) = event_for(topic, msg)
                    && out.data(event).is_err()
                {
                    break;
                }
            }
        }
    }
}
