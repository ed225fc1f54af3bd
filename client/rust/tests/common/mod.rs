//! A scripted WebSocket peer standing in for a server instance: each test
//! decides frame by frame what the "server" says.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Generous bound on anything a test waits for: only there to not hang.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub struct Peer {
    listener: TcpListener,
    pub url: String,
}

impl Peer {
    pub async fn bind() -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        Peer { listener, url }
    }

    /// Accepts the next WebSocket connection.
    pub async fn accept(&self) -> Conn {
        let (tcp, _) = within("a connection", self.listener.accept())
            .await
            .unwrap();
        let ws = within("the upgrade", tokio_tungstenite::accept_async(tcp))
            .await
            .unwrap();
        Conn { ws }
    }

    /// Accepts a connection and completes the handshake with `welcome`;
    /// returns the connection and the client's `connect` frame.
    pub async fn accept_welcome(&self, session: &str, resumed: bool) -> (Conn, Value) {
        let mut conn = self.accept().await;
        let connect = conn.recv().await;
        assert_eq!(connect["type"], "connect", "{connect}");
        conn.welcome(session, resumed, 25_000).await;
        (conn, connect)
    }
}

pub struct Conn {
    ws: WebSocketStream<TcpStream>,
}

impl Conn {
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn welcome(&mut self, session: &str, resumed: bool, ping_interval: u64) {
        self.send(json!({
            "type": "welcome", "session": session, "client": format!("c-{session}"),
            "instance": "i1", "user": "alice", "ping_interval": ping_interval,
            "resumed": resumed,
        }))
        .await;
    }

    /// The next text frame the client sends, pongs included.
    pub async fn recv_any(&mut self) -> Value {
        loop {
            let msg = within("a client frame", self.ws.next())
                .await
                .expect("client closed the socket")
                .expect("socket error");
            match msg {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(frame) => panic!("client closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// The next text frame the client sends, skipping pongs.
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = self.recv_any().await;
            if frame["type"] != "pong" {
                return frame;
            }
        }
    }

    /// The next text frame as the exact text the client sent.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = within("a client frame", self.ws.next())
                .await
                .expect("client closed the socket")
                .expect("socket error");
            if let Message::Text(text) = msg {
                return text.to_string();
            }
        }
    }

    /// Closes with a close frame.
    pub async fn close(mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        // Wait for the client's answering close frame.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Waits until the client closes the connection; returns its close frame.
    pub async fn closed(mut self) -> Option<CloseFrame> {
        loop {
            match within("the client to close", self.ws.next()).await {
                Some(Ok(Message::Close(frame))) => {
                    // Keep polling so tungstenite sends the answering close
                    // frame, as a real server does.
                    let _ = tokio::time::timeout(WAIT, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return frame;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Drops the TCP connection without a close frame.
    pub fn kill(self) {
        drop(self);
    }
}
