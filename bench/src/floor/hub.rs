//! Channel -> local subscribers, fed by one Redis pub/sub connection.
//!
//! Concurrency: the map is behind a std mutex held only for map edits and for
//! the fan-out loop (pushing to an outbox never waits). The first local subscriber of a
//! channel issues the Redis SUBSCRIBE through a per-channel `OnceCell`; later
//! subscribers wait on the same cell, so nobody is told "subscribed" before
//! Redis confirmed it.

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};
use tokio::sync::{Notify, OnceCell};
use tokio_tungstenite::tungstenite::Message;

/// Redis pub/sub channel prefix of the floor.
const PREFIX: &str = "floor:";

/// Frames queued per connection before it counts as a slow consumer (as in ours).
const QUEUE: usize = 1024;

/// A connection's outbound queue. A deque behind a mutex costs nothing until
/// something is queued (an idle connection allocates no queue), and the
/// connection takes everything queued in one swap.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<Message>>,
    /// Wakes the connection; a notification sent while it is busy is kept
    /// (tokio stores one permit), so none is lost.
    pub ready: Notify,
    /// Set when the queue was full; the connection then closes with 4008.
    pub overflowed: AtomicBool,
}

impl Outbox {
    /// Queues `m`; false (and the overflow flag) when the queue is full.
    pub fn push(&self, m: Message) -> bool {
        let ok = match self.queue.lock() {
            Ok(mut q) if q.len() < QUEUE => {
                q.push_back(m);
                true
            }
            _ => false,
        };
        if !ok {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        self.ready.notify_one();
        ok
    }

    /// Everything queued so far.
    pub fn take(&self) -> VecDeque<Message> {
        self.queue
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }
}

/// A local subscriber of a channel.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub conn: u64,
    pub outbox: Arc<Outbox>,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: Vec<Subscriber>,
    redis: Arc<OnceCell<()>>,
}

#[derive(Debug)]
pub struct Hub {
    channels: Mutex<HashMap<String, Channel>>,
    sink: tokio::sync::Mutex<PubSubSink>,
    publisher: MultiplexedConnection,
}

impl Hub {
    pub async fn connect(url: &str) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("floor: redis url: {e}"))?;
        // 5 s like ours' scaler timeout; the crate's 500 ms default fails
        // publishes on a busy shared machine.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(5)));
        let publisher = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("floor: redis connect: {e}"))?;
        let pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| format!("floor: redis pubsub: {e}"))?;
        let (sink, stream) = pubsub.split();
        let hub = Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            sink: tokio::sync::Mutex::new(sink),
            publisher,
        });
        tokio::spawn(Arc::clone(&hub).pump(stream));
        Ok(hub)
    }

    /// Delivers every Redis message to the local subscribers of its channel:
    /// one frame, encoded once, cloned (a reference count) per subscriber.
    async fn pump(self: Arc<Self>, mut stream: redis::aio::PubSubStream) {
        while let Some(msg) = stream.next().await {
            let Some(channel) = msg.get_channel_name().strip_prefix(PREFIX) else {
                continue;
            };
            let Ok(data) = std::str::from_utf8(msg.get_payload_bytes()) else {
                continue;
            };
            let frame = Message::text(format!(
                r#"{{"type":"message","channel":{},"data":{data},"offset":0,"epoch":"floor"}}"#,
                serde_json::Value::from(channel)
            ));
            let Ok(mut map) = self.channels.lock() else {
                return;
            };
            let Some(ch) = map.get_mut(channel) else {
                continue;
            };
            // A full outbox drops its subscriber (the connection closes 4008).
            ch.subscribers.retain(|s| s.outbox.push(frame.clone()));
        }
        eprintln!("floor: the Redis pub/sub connection ended");
        std::process::exit(1);
    }

    pub async fn subscribe(&self, channel: &str, sub: Subscriber) -> Result<(), String> {
        let cell = {
            let mut map = self.channels.lock().map_err(|_| "hub poisoned")?;
            let ch = map.entry(channel.to_owned()).or_default();
            if !ch.subscribers.iter().any(|s| s.conn == sub.conn) {
                ch.subscribers.push(sub);
            }
            Arc::clone(&ch.redis)
        };
        cell.get_or_try_init(|| async {
            self.sink
                .lock()
                .await
                .subscribe(format!("{PREFIX}{channel}"))
                .await
                .map_err(|e| format!("redis subscribe: {e}"))
        })
        .await
        .map(drop)
    }

    /// Forgets a closed connection. The Redis subscription stays: the floor
    /// does nothing it does not have to.
    pub fn remove(&self, conn: u64, channels: &[String]) {
        if let Ok(mut map) = self.channels.lock() {
            for c in channels {
                if let Some(ch) = map.get_mut(c) {
                    ch.subscribers.retain(|s| s.conn != conn);
                }
            }
        }
    }

    pub async fn publish(&self, channel: &str, data: &str) -> Result<(), String> {
        let mut conn = self.publisher.clone();
        redis::cmd("PUBLISH")
            .arg(format!("{PREFIX}{channel}"))
            .arg(data)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| format!("redis publish: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_takes_everything_queued_and_flags_overflow() {
        let outbox = Outbox::default();
        assert!(outbox.push(Message::text("a")));
        assert!(outbox.push(Message::text("b")));
        let batch = outbox.take();
        assert_eq!(batch.len(), 2);
        assert!(outbox.take().is_empty());
        for _ in 0..QUEUE {
            assert!(outbox.push(Message::text("x")));
        }
        assert!(!outbox.overflowed.load(Ordering::Relaxed));
        assert!(!outbox.push(Message::text("one too many")));
        assert!(outbox.overflowed.load(Ordering::Relaxed));
    }
}
