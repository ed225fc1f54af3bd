//! What the handshake needs from a transport: send one frame, and end the
//! connection with a close code. The WebSocket and the SSE stream both
//! implement it, so the handshake and the welcome exist once.

use super::io::{self, Socket};
use std::future::Future;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub(super) trait Transport: Send {
    /// Sends one server frame; false when the client is gone.
    fn send_frame(&mut self, frame: Utf8Bytes) -> impl Future<Output = bool> + Send;
    /// Ends the connection during the handshake with a close code.
    fn send_close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;
}

impl Transport for Socket {
    fn send_frame(&mut self, frame: Utf8Bytes) -> impl Future<Output = bool> + Send {
        io::send_frame(self, frame)
    }

    fn send_close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send {
        io::send_close(self, code, reason)
    }
}
