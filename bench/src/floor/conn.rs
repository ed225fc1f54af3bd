//! One floor connection: a reader that handles frames and a writer that
//! sends everything queued, then flushes once.

use super::hub::{Hub, Subscriber};
use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{
    WebSocketStream, accept_async_with_config,
    tungstenite::{
        Message,
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};

/// Outbound queue per connection, as in ours.
const QUEUE: usize = 1024;

#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: Option<u64>,
    channel: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn reply(id: u64, offset: bool) -> Message {
    if offset {
        Message::text(format!(
            r#"{{"type":"reply","id":{id},"offset":0,"epoch":"floor"}}"#
        ))
    } else {
        Message::text(format!(r#"{{"type":"reply","id":{id},"offset":0}}"#))
    }
}

fn error(id: Option<u64>, code: &str, message: &str) -> Message {
    Message::text(
        serde_json::json!({"type":"error","id":id,"code":code,"message":message}).to_string(),
    )
}

pub async fn run(stream: TcpStream, conn: u64, hub: Arc<Hub>) {
    // tungstenite's default read buffer is 128 KiB per connection, allocated
    // up front; the frames here are small, so 4 KiB does the same job.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (sink, mut frames) = ws.split();
    let (tx, rx) = mpsc::channel(QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write(sink, rx, Arc::clone(&overflowed)));
    let mut channels: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = frames.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            _ => continue,
        };
        let frame: Frame<'_> = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(error(None, "bad_request", &e.to_string())).await;
                continue;
            }
        };
        let out = match (frame.kind, frame.id, frame.channel) {
            ("connect", _, _) => Message::text(format!(
                r#"{{"type":"welcome","session":"s{conn}","client":"c{conn}","instance":"floor","user":null,"ping_interval":25000,"resumed":false}}"#
            )),
            ("subscribe", Some(id), Some(channel)) => {
                let sub = Subscriber {
                    conn,
                    tx: tx.clone(),
                    overflowed: Arc::clone(&overflowed),
                };
                match hub.subscribe(&channel, sub).await {
                    Ok(()) => {
                        channels.push(channel);
                        reply(id, true)
                    }
                    Err(e) => error(Some(id), "unavailable", &e),
                }
            }
            ("publish", Some(id), Some(channel)) => {
                let data = frame.data.map_or("null", |d| d.get()).to_owned();
                // Each publish waits for Redis on its own task, so one
                // connection can keep many in flight (as ours allows).
                let (hub, tx) = (Arc::clone(&hub), tx.clone());
                tokio::spawn(async move {
                    let out = match hub.publish(&channel, &data).await {
                        Ok(()) => reply(id, false),
                        Err(e) => error(Some(id), "unavailable", &e),
                    };
                    let _ = tx.send(out).await;
                });
                continue;
            }
            ("pong", _, _) => continue,
            (_, id, _) => error(
                id,
                "bad_request",
                "the floor knows connect, subscribe, publish",
            ),
        };
        if tx.send(out).await.is_err() {
            break;
        }
    }
    hub.remove(conn, &channels);
    drop(tx);
    let _ = writer.await;
}

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// Writes every queued frame, then flushes once; closes with 4008 when the
/// hub found the queue full.
async fn write(mut sink: Sink, mut rx: mpsc::Receiver<Message>, overflowed: Arc<AtomicBool>) {
    while let Some(first) = rx.recv().await {
        if overflowed.load(Ordering::Relaxed) {
            break;
        }
        if sink.feed(first).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    if overflowed.load(Ordering::Relaxed) {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Library(4008),
                reason: "slow consumer".into(),
            })))
            .await;
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_raw_data() {
        let f: Frame<'_> = serde_json::from_str(
            r#"{"type":"publish","id":3,"channel":"c","data":{"t":1, "big":123456789012345678901234567890}}"#,
        )
        .expect("valid frame");
        assert_eq!(
            (f.kind, f.id, f.channel.as_deref()),
            ("publish", Some(3), Some("c"))
        );
        assert_eq!(
            f.data.map(|d| d.get()),
            Some(r#"{"t":1, "big":123456789012345678901234567890}"#),
            "data is relayed byte for byte"
        );
    }

    #[test]
    fn replies_have_the_protocol_shapes() {
        let Message::Text(sub) = reply(4, true) else {
            panic!("text")
        };
        let v: serde_json::Value = serde_json::from_str(&sub).expect("json");
        assert_eq!(
            (v["type"].as_str(), v["id"].as_u64()),
            (Some("reply"), Some(4))
        );
        assert_eq!(v["epoch"], "floor");
        let Message::Text(err) = error(None, "bad_request", "x") else {
            panic!("text")
        };
        let v: serde_json::Value = serde_json::from_str(&err).expect("json");
        assert_eq!(v["code"], "bad_request");
        assert!(v["id"].is_null());
    }
}
