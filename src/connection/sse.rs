//! The HTTP fallback's side of a connection: the same [`Conn`] as a
//! WebSocket's (same handshake, commands, subscriptions, limits), with its
//! server frames written as an event stream and its client frames taken from
//! POSTs, which the hub routes here from any instance.
//!
//! POSTs may arrive in any order (they can reach different instances and be
//! forwarded): each carries a `seq`, and frames are applied strictly in `seq`
//! order. A few early POSTs are held until the missing ones come; a `seq`
//! already applied is acknowledged and ignored, so a client may retry a POST
//! whose answer it did not get.

use super::{
    Conn, Endpoint, handshake,
    io::{Exit, Written},
    transport::Transport,
};
use crate::{
    error::{CommandError, ErrorCode},
    hub::Upload,
    metrics::Metrics,
    protocol::{self, close},
    shutdown::DrainGuard,
};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::value::RawValue;
use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::atomic::Ordering,
    task::Poll,
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The body of a `GET /sse` response: chunks written by the stream's task.
pub(crate) type SseBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// POSTs held while an earlier `seq` is missing; one more is refused.
pub(crate) const MAX_EARLY_UPLOADS: usize = 64;

/// Bytes of frames held while an earlier `seq` is missing, in frame limits:
/// one stream cannot make its instance hold more than this however large
/// its POSTs are.
const MAX_EARLY_FRAME_LIMITS: usize = 64;

/// A comment line every this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Chunks waiting for the HTTP connection to take them. Small: a client that
/// does not read fills its mailbox instead, which closes it as a slow
/// consumer exactly like a WebSocket that does not read.
const BODY_CHUNKS: usize = 4;

/// Starts a stream's connection task for an already validated `connect` frame
/// and returns the response body it writes to.
pub(crate) fn serve_sse(endpoint: Endpoint, connect: String, guard: DrainGuard) -> SseBody {
    let (tx, rx) = mpsc::channel(BODY_CHUNKS);
    tokio::spawn(async move {
        run_stream(endpoint, connect, tx).await;
        drop(guard);
    });
    StreamBody::new(ReceiverStream::new(rx))
}

/// The handshake's frames, held until the stream's inbox is open: a client
/// that POSTs as soon as it reads `welcome` must find it.
struct Greeting(Vec<Utf8Bytes>);

impl Transport for Greeting {
    fn send_frame(&mut self, frame: Utf8Bytes) -> impl Future<Output = bool> + Send {
        self.0.push(frame);
        std::future::ready(true)
    }

    fn send_close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send {
        // A refused connect ends with its `error` alone; any other end of a
        // stream is announced by `disconnect`.
        if code != close::UNAUTHORIZED {
            let reconnect = code == close::RESTARTING;
            self.0
                .push(protocol::disconnect(code, reason, reconnect).into());
        }
        std::future::ready(())
    }
}

type Tx = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

async fn run_stream(endpoint: Endpoint, connect: String, tx: Tx) {
    let Endpoint { hub, cores, app } = endpoint;
    let mut greeting = Greeting(Vec::new());
    let deadline = tokio::time::Instant::now() + hub.config.handshake_timeout;
    let conn = match handshake::authenticate(&app, &mut greeting, &connect, deadline).await {
        Some((identity, request)) => {
            handshake::welcome(hub.clone(), app, cores, &mut greeting, identity, request).await
        }
        None => None,
    };
    drop(connect);
    let Some(mut conn) = conn else {
        let _ = send_chunk(&tx, encode(&greeting.0)).await;
        return;
    };
    let client = conn.handle.client.clone();
    let inbox = hub.open_uploads(&client, &conn.handle.session);
    hub.metrics.sse_streams.fetch_add(1, Ordering::Relaxed);
    run(&mut conn, &tx, inbox, greeting.0).await;
    hub.close_uploads(&client);
    hub.metrics.sse_streams.fetch_sub(1, Ordering::Relaxed);
}

/// What woke the stream's loop.
enum Wake {
    Killed,
    Queued,
    Upload(Upload),
    KeepAlive,
    ClientGone,
}

/// Where the `seq` order stands.
#[derive(Default)]
struct Order {
    /// The next `seq` to apply.
    next: u64,
    /// POSTs that came before `next`'s, by `seq`.
    early: BTreeMap<u64, Vec<Box<RawValue>>>,
    /// The size of the frames in `early`.
    early_bytes: usize,
}

async fn run(conn: &mut Conn, tx: &Tx, mut inbox: mpsc::Receiver<Upload>, mut out: Vec<Utf8Bytes>) {
    let handle = conn.handle.clone();
    let mut order = Order {
        next: 1,
        early: BTreeMap::new(),
        early_bytes: 0,
    };
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gone = pin!(tx.closed());
    let mut batch = VecDeque::new();
    let exit = 'conn: loop {
        if !out.is_empty() {
            if let Some(exit) = write(conn, tx, encode(&out)).await.exit(&handle) {
                break exit;
            }
            out.clear();
        }
        // Kill first, then queued items, then POSTed frames.
        let wake = std::future::poll_fn(|cx| {
            if handle.poll_killed(cx) {
                return Poll::Ready(Wake::Killed);
            }
            if handle.poll_take(cx, &mut batch).is_ready() {
                return Poll::Ready(Wake::Queued);
            }
            if let Poll::Ready(upload) = inbox.poll_recv(cx) {
                // The hub keeps the inbox's sender while the stream is open.
                return Poll::Ready(upload.map_or(Wake::ClientGone, Wake::Upload));
            }
            if gone.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::ClientGone);
            }
            if keep_alive.poll_tick(cx).is_ready() {
                return Poll::Ready(Wake::KeepAlive);
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Killed => break Exit::killed(&handle),
            Wake::ClientGone => break Exit::Gone,
            Wake::KeepAlive => {
                if let Written::Failed | Written::Killed =
                    write(conn, tx, Bytes::from_static(b":\n\n")).await
                {
                    // A kill is seen on the next turn.
                    if tx.is_closed() {
                        break Exit::Gone;
                    }
                }
            }
            Wake::Queued => {
                // The whole queue was taken at once: one event chunk for it.
                while let Some(item) = batch.pop_front() {
                    conn.on_outbound(item, &mut out);
                }
            }
            Wake::Upload(upload) => {
                let Upload { seq, frames, reply } = upload;
                let (answer, exit) = order.take(conn, seq, frames, &mut out);
                let _ = reply.send(answer);
                if let Some(exit) = exit {
                    let _ = write(conn, tx, encode(&out)).await;
                    out.clear();
                    break 'conn exit;
                }
            }
        }
        conn.tidy_idle();
    };
    conn.cleanup();
    if let Exit::Close(code, reason, reconnect) = exit {
        if code == close::POLICY {
            Metrics::inc(&conn.hub.metrics.slow_consumer_closes_total);
        }
        out.clear();
        out.push(protocol::disconnect(code, &reason, reconnect).into());
        let _ = tokio::time::timeout(Duration::from_secs(1), send_chunk(tx, encode(&out))).await;
    }
    // Dropping the sender ends the response body: the stream is over.
}

impl Order {
    /// Applies a POST's frames in `seq` order, and any held ones that follow.
    fn take(
        &mut self,
        conn: &mut Conn,
        seq: u64,
        frames: Vec<Box<RawValue>>,
        out: &mut Vec<Utf8Bytes>,
    ) -> (Result<(), CommandError>, Option<Exit>) {
        if seq < self.next || self.early.contains_key(&seq) {
            // A retry of a POST already taken: acknowledged, applied once.
            return (Ok(()), None);
        }
        if seq > self.next {
            let bytes: usize = frames.iter().map(|f| f.get().len()).sum();
            let max_bytes = conn
                .hub
                .config
                .max_frame_bytes
                .saturating_mul(MAX_EARLY_FRAME_LIMITS);
            if self.early.len() >= MAX_EARLY_UPLOADS || self.early_bytes + bytes > max_bytes {
                return (
                    Err(CommandError::new(
                        ErrorCode::RateLimited,
                        format!("too many POSTs held ahead of seq {}", self.next),
                    )),
                    None,
                );
            }
            self.early_bytes += bytes;
            self.early.insert(seq, frames);
            return (Ok(()), None);
        }
        let mut frames = frames;
        loop {
            self.next += 1;
            if let Some(exit) = apply(conn, &frames, out) {
                return (Ok(()), Some(exit));
            }
            match self.early.remove(&self.next) {
                Some(held) => {
                    self.early_bytes -= held.iter().map(|f| f.get().len()).sum::<usize>();
                    frames = held;
                }
                None => return (Ok(()), None),
            }
        }
    }
}

/// Handles one POST's client frames exactly as WebSocket frames are handled.
fn apply(conn: &mut Conn, frames: &[Box<RawValue>], out: &mut Vec<Utf8Bytes>) -> Option<Exit> {
    conn.handle
        .last_seen_ms
        .store(conn.hub.clock_ms(), Ordering::Relaxed);
    for frame in frames {
        if let Some(exit) = conn.on_text(frame.get(), out) {
            return Some(exit);
        }
    }
    None
}

/// Each frame as one event. Frames are compact JSON, but relayed data keeps
/// the client's own whitespace: a line break in it starts another `data:`
/// line, which the reader joins back with a line break.
fn encode(frames: &[Utf8Bytes]) -> Bytes {
    let mut chunk = BytesMut::with_capacity(frames.iter().map(|f| f.len() + 8).sum());
    for frame in frames {
        for line in frame.as_str().split(['\n', '\r']) {
            if line.is_empty() {
                continue;
            }
            chunk.put_slice(b"data: ");
            chunk.put_slice(line.as_bytes());
            chunk.put_u8(b'\n');
        }
        chunk.put_u8(b'\n');
    }
    chunk.freeze()
}

async fn send_chunk(tx: &Tx, chunk: Bytes) -> bool {
    tx.send(Ok(Frame::data(chunk))).await.is_ok()
}

/// Writes one chunk; a full body (a client that does not read) waits, but a
/// kill still gets through. Every write taken is a sign of life: SSE clients
/// do not answer pings.
async fn write(conn: &Conn, tx: &Tx, chunk: Bytes) -> Written {
    let handle = &conn.handle;
    let killed = std::future::poll_fn(|cx| {
        if handle.poll_killed(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::select! {
        biased;
        () = killed => Written::Killed,
        sent = send_chunk(tx, chunk) => {
            if sent {
                handle.last_seen_ms.store(conn.hub.clock_ms(), Ordering::Relaxed);
                Written::Done
            } else {
                Written::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_frame_and_line_breaks_split_data_lines() {
        let frames = [
            Utf8Bytes::from_static("{\"type\":\"ping\"}"),
            Utf8Bytes::from_static("{\"a\":\n1}"),
        ];
        assert_eq!(
            &encode(&frames)[..],
            b"data: {\"type\":\"ping\"}\n\ndata: {\"a\":\ndata: 1}\n\n"
        );
    }
}
