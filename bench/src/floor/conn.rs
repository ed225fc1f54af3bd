//! One floor connection.

use super::hub::{Hub, Outbox, Subscriber};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::{Arc, atomic::Ordering};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream, accept_async_with_config,
    tungstenite::{
        Message,
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};

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

/// tungstenite allocates the read buffer up front and grows it for larger
/// frames; 256 bytes is what ours uses (`read_buffer_bytes`).
const READ_BUFFER: usize = 256;

/// One task per connection: it reads frames and writes what is queued for
/// it (by the hub and by publish tasks): everything queued at once, then one
/// flush, so fan-out costs one write per batch, not per message.
pub async fn run(stream: TcpStream, conn: u64, hub: Arc<Hub>) {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let Ok(mut ws) = accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let outbox = Arc::new(Outbox::default());
    let mut channels: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let subscriber = Subscriber { conn, outbox: Arc::clone(&outbox) };
                if let Some(out) = handle(&text, subscriber, &hub, &mut channels).await {
                    if ws.send(out).await.is_err() {
                        break;
                    }
                }
            }
            _ = outbox.ready.notified() => {
                if outbox.overflowed.load(Ordering::Relaxed) || write_batch(&mut ws, &outbox).await.is_err() {
                    break;
                }
            }
        }
    }
    hub.remove(conn, &channels);
    if outbox.overflowed.load(Ordering::Relaxed) {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Library(4008),
                reason: "slow consumer".into(),
            }))
            .await;
    }
}

/// Feeds everything queued, then flushes once.
async fn write_batch(
    ws: &mut WebSocketStream<TcpStream>,
    outbox: &Outbox,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for m in outbox.take() {
        ws.feed(m).await?;
    }
    ws.flush().await
}

/// Handles one client frame; returns the direct answer, if any.
async fn handle(
    text: &str,
    subscriber: Subscriber,
    hub: &Arc<Hub>,
    channels: &mut Vec<String>,
) -> Option<Message> {
    let conn = subscriber.conn;
    let frame: Frame<'_> = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return Some(error(None, "bad_request", &e.to_string())),
    };
    match (frame.kind, frame.id, frame.channel) {
        ("connect", _, _) => Some(Message::text(format!(
            r#"{{"type":"welcome","session":"s{conn}","client":"c{conn}","instance":"floor","user":null,"ping_interval":25000,"resumed":false}}"#
        ))),
        ("subscribe", Some(id), Some(channel)) => {
            Some(match hub.subscribe(&channel, subscriber).await {
                Ok(()) => {
                    channels.push(channel);
                    reply(id, true)
                }
                Err(e) => error(Some(id), "unavailable", &e),
            })
        }
        ("publish", Some(id), Some(channel)) => {
            let data = frame.data.map_or("null", |d| d.get()).to_owned();
            // Each publish waits for Redis on its own task, so one connection
            // can keep many in flight (as ours allows); the reply is queued.
            let (hub, outbox) = (Arc::clone(hub), subscriber.outbox);
            tokio::spawn(async move {
                let out = match hub.publish(&channel, &data).await {
                    Ok(()) => reply(id, false),
                    Err(e) => error(Some(id), "unavailable", &e),
                };
                outbox.push(out);
            });
            None
        }
        ("pong", _, _) => None,
        (_, id, _) => Some(error(
            id,
            "bad_request",
            "the floor knows connect, subscribe, publish",
        )),
    }
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
