//! The socket side of a connection: WebSocket settings, the main loop that
//! reads frames and writes batches, and the closing handshake.
//!
//! Why so little per connection: an idle socket should cost a few KiB, so the
//! task holds small buffers, empty maps, and no timer of its own (one hub-wide
//! timer pings everybody).

use super::Conn;
use crate::{
    mailbox::Outbound,
    metrics::Metrics,
    protocol::{self, close},
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hyper_util::rt::TokioIo;
use std::{
    borrow::Cow, collections::VecDeque, pin::Pin, sync::atomic::Ordering, task::Poll,
    time::Duration,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message, Utf8Bytes,
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};

/// A connection's WebSocket.
pub(crate) type Socket = WebSocketStream<Io>;

/// The byte stream under a connection's WebSocket.
///
/// Why not always hyper's `Upgraded`: it is a boxed `dyn` stream behind a
/// rewind buffer, two indirections on every read and write of every frame.
/// When the server accepted the connection itself (a plain `TcpStream`) the
/// socket is taken back out of the upgrade and used directly; an application
/// that mounts the service on another transport gets the `Upgraded` stream.
pub(crate) enum Io {
    Tcp(tokio::net::TcpStream),
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
}

impl Io {
    /// The upgraded stream, and the bytes the HTTP server read past the
    /// upgrade request (a client may send its first frame at once).
    pub(super) fn from_upgrade(upgraded: hyper::upgrade::Upgraded) -> (Self, Vec<u8>) {
        match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => (Io::Tcp(parts.io.into_inner()), parts.read_buf.to_vec()),
            Err(upgraded) => (Io::Upgraded(TokioIo::new(upgraded)), Vec::new()),
        }
    }
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Upgraded(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Upgraded(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Upgraded(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Upgraded(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Upgraded(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Upgraded(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Frames are gathered up to this many bytes before a write to the socket.
const WRITE_BATCH_BYTES: usize = 8 * 1024;

/// WebSocket settings for server sockets: small buffers for idle sockets (the
/// library defaults hold 128 KiB per socket), frames capped at the limit.
pub(crate) fn websocket_config(config: &crate::Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        // A batch of frames is written with one system call per 8 KiB
        // rather than one per frame (the loop flushes after every batch, so
        // nothing waits in it). The buffer grows only when written to: an
        // idle socket still holds next to nothing.
        .write_buffer_size(WRITE_BATCH_BYTES)
        // Room for several of the largest frames the server builds (data is
        // bounded by `max_data_bytes` at its source), so no frame is too big
        // to send.
        .max_write_buffer_size(
            config
                .max_data_bytes
                .max(config.max_frame_bytes)
                .saturating_mul(4)
                .max(1 << 20),
        )
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

/// Why the main loop ended.
pub(super) enum Exit {
    /// The client closed or the socket failed: nothing to send.
    Gone,
    /// Close with this code after a `disconnect` push.
    Close(u16, Cow<'static, str>, bool),
}

impl Exit {
    /// The close a kill asked for (`Mailbox::kill`).
    pub(super) fn killed(handle: &crate::mailbox::Mailbox) -> Self {
        let (code, reason, reconnect) = handle.take_kill_reason();
        Self::Close(code, reason, reconnect)
    }
}

pub(super) async fn send_close(ws: &mut Socket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.chars().take(100).collect::<String>().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
    // Give the client a moment to answer the close, then drop the socket.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

pub(super) async fn send_frame(ws: &mut Socket, frame: impl Into<Utf8Bytes>) -> bool {
    let frame = frame.into();
    tokio::time::timeout(Duration::from_secs(5), ws.send(Message::Text(frame)))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn write_all(ws: &mut Socket, out: &mut Vec<Utf8Bytes>) -> Result<(), WsError> {
    for frame in out.drain(..) {
        ws.feed(Message::Text(frame)).await?;
    }
    ws.flush().await
}

/// What woke the main loop.
enum Wake {
    Killed,
    /// Items were taken from the mailbox into the loop's batch.
    Queued,
    Incoming(Option<Result<Message, WsError>>),
}

/// How writing a batch ended (on either transport).
pub(super) enum Written {
    Done,
    Failed,
    Killed,
}

impl Written {
    /// Whether the loop ends after this write, and how.
    pub(super) fn exit(self, handle: &crate::mailbox::Mailbox) -> Option<Exit> {
        match self {
            Self::Done => None,
            Self::Failed => Some(Exit::Gone),
            Self::Killed => Some(Exit::killed(handle)),
        }
    }
}

/// The connection's main loop.
///
/// Written with `poll_fn` rather than `select!`: the loop's state is what stays
/// allocated for every idle connection, and `poll_fn` keeps only a few
/// pointers in it where `select!` keeps every branch's future.
pub(super) async fn run(conn: &mut Conn, ws: &mut Socket) {
    let handle = conn.handle.clone();
    let write_delay = conn.hub.config.write_delay;
    let mut out: Vec<Utf8Bytes> = Vec::new();
    // What was taken from the mailbox in one step: the whole queue at once,
    // so a burst costs one lock, one wake-up and one write, not one per item.
    let mut batch: VecDeque<Outbound> = VecDeque::new();
    let exit = loop {
        // Kill first, then queued items (our own replies and pushes), then
        // input. Input is looked at only once the queue is empty: under a
        // stream of publications the socket is polled once per batch, not once
        // per publication.
        let wake = std::future::poll_fn(|cx| {
            if handle.poll_killed(cx) {
                return Poll::Ready(Wake::Killed);
            }
            if handle.poll_take(cx, &mut batch).is_ready() {
                return Poll::Ready(Wake::Queued);
            }
            if let Poll::Ready(msg) = Pin::new(&mut *ws).poll_next(cx) {
                return Poll::Ready(Wake::Incoming(msg));
            }
            // Going idle: an idle socket keeps no batch buffers.
            if batch.capacity() > 0 {
                batch = VecDeque::new();
            }
            if out.capacity() > 0 {
                out = Vec::new();
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Killed => break Exit::killed(&handle),
            Wake::Queued => {
                if !write_delay.is_zero() {
                    // The coalescing window (`Config::write_delay`): whatever
                    // else arrives within it goes out in the same write.
                    // Boxed so that idle connections do not carry a timer.
                    Box::pin(tokio::time::sleep(write_delay)).await;
                    handle.try_take(&mut batch);
                }
                while let Some(item) = batch.pop_front() {
                    conn.on_outbound(item, &mut out);
                }
            }
            Wake::Incoming(incoming) => {
                handle
                    .last_seen_ms
                    .store(conn.hub.clock_ms(), Ordering::Relaxed);
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(exit) = conn.on_text(&text, &mut out) {
                            let _ = Box::pin(write_all(ws, &mut out)).await;
                            break exit;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break Exit::Close(
                            close::BINARY,
                            "binary frames are not accepted".into(),
                            false,
                        );
                    }
                    Some(Ok(Message::Close(_))) | None => break Exit::Gone,
                    Some(Ok(_)) => {}
                    Some(Err(WsError::Capacity(_))) => {
                        break Exit::Close(close::TOO_LARGE, "frame too large".into(), false);
                    }
                    Some(Err(_)) => break Exit::Gone,
                }
            }
        }
        conn.tidy_idle();
        if !out.is_empty() {
            // A write may wait on a slow socket; a kill must still get through.
            let mut next = 0;
            let written = std::future::poll_fn(|cx| {
                if handle.poll_killed(cx) {
                    return Poll::Ready(Written::Killed);
                }
                while next < out.len() {
                    match Pin::new(&mut *ws).poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(Written::Failed),
                        Poll::Pending => return Poll::Pending,
                    }
                    let frame = out[next].clone();
                    next += 1;
                    if Pin::new(&mut *ws).start_send(Message::Text(frame)).is_err() {
                        return Poll::Ready(Written::Failed);
                    }
                }
                match Pin::new(&mut *ws).poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Written::Done),
                    Poll::Ready(Err(_)) => Poll::Ready(Written::Failed),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            out.clear();
            if let Some(exit) = written.exit(&handle) {
                break exit;
            }
        }
    };
    conn.cleanup();
    if let Exit::Close(code, reason, reconnect) = exit {
        if code == close::POLICY {
            Metrics::inc(&conn.hub.metrics.slow_consumer_closes_total);
        }
        // Boxed: the closing handshake's futures would otherwise be part of
        // every idle connection's state.
        Box::pin(async move {
            out.clear();
            out.push(protocol::disconnect(code, &reason, reconnect).into());
            let _ = tokio::time::timeout(Duration::from_secs(1), write_all(ws, &mut out)).await;
            send_close(ws, code, &reason).await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle sockets must not hold the WebSocket library's default buffers
    /// (128 KiB each way): that is the difference between a few KiB and over
    /// 100 KiB per idle connection.
    #[test]
    fn idle_sockets_get_small_buffers() {
        let config = websocket_config(&crate::Config::default());
        assert!(
            config.read_buffer_size <= 4096,
            "read buffer {}",
            config.read_buffer_size
        );
        assert!(
            config.write_buffer_size <= 8 * 1024,
            "a batch buffer, not the library's 128 KiB default: {}",
            config.write_buffer_size
        );
        assert_eq!(config.max_message_size, Some(65_536));
        assert_eq!(config.max_frame_size, Some(65_536));
    }
}
