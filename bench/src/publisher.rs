//! Publishers: keep a fixed number of publishes in flight on one connection,
//! optionally paced to a fixed rate, with `data` = `{"t":<send time µs>,"p":pad}`.

use crate::load::{Ws, now_us};
use futures_util::{SinkExt, StreamExt};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// Counters shared by every publisher of a run (the drain at the end waits
/// for all of them, so share one only between publishers stopped together).
#[derive(Debug, Default)]
pub struct PublishStats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Published to in turn.
    pub channels: Vec<String>,
    pub in_flight: usize,
    /// Publishes per second for this connection; `None`: as fast as replies allow.
    pub rate: Option<f64>,
    /// Bytes of padding in `data`.
    pub pad: usize,
}

/// The `publish` frame; channel names are the bench's own (plain ASCII).
pub fn publish_frame(id: u64, channel: &str, t_us: u64, pad: &str) -> String {
    format!(
        r#"{{"type":"publish","id":{id},"channel":"{channel}","data":{{"t":{t_us},"p":"{pad}"}}}}"#
    )
}

/// Publishes until `stop` flips. Replies release in-flight slots; an error
/// answer is counted (and the first one kept) and also releases its slot.
pub async fn run_publisher(
    ws: Ws,
    plan: Plan,
    stats: Arc<PublishStats>,
    mut stop: watch::Receiver<bool>,
) {
    let (mut sink, mut stream) = ws.split();
    let gate = Arc::new(Semaphore::new(plan.in_flight.max(1)));
    let reader = {
        let gate = gate.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                if t.contains("\"type\":\"reply\"") {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    gate.add_permits(1);
                } else if t.contains("\"type\":\"error\"") {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = stats.first_error.lock() {
                        first.get_or_insert_with(|| t.to_string());
                    }
                    gate.add_permits(1);
                }
            }
        })
    };
    let pad = "x".repeat(plan.pad);
    let mut ticker = plan.rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut id = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            permit = gate.acquire() => {
                let Ok(permit) = permit else { break };
                // The slot comes back when the reply arrives (reader task).
                permit.forget();
                if let Some(t) = ticker.as_mut() {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = t.tick() => {}
                    }
                }
                id += 1;
                let channel = &plan.channels[(id as usize) % plan.channels.len()];
                let frame = publish_frame(id, channel, now_us(), &pad);
                if sink.send(Message::text(frame)).await.is_err() {
                    break;
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Wait for the answers to what is still in flight, so `acked` counts every
    // publish the server took (the fan-out check compares deliveries with it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.acked.load(Ordering::Relaxed) + stats.errors.load(Ordering::Relaxed)
        < stats.sent.load(Ordering::Relaxed)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frames_are_valid_json_with_a_timestamp() {
        let f = publish_frame(7, "room-1", 123, "xx");
        let v: serde_json::Value = serde_json::from_str(&f).expect("valid JSON");
        assert_eq!(v["type"], "publish");
        assert_eq!(v["id"], 7);
        assert_eq!(v["data"]["t"], 123);
        assert_eq!(crate::load::timestamp_in(&f), Some(123));
    }
}
