//! The load client: one WebSocket per simulated client, spread over loopback
//! source addresses, speaking the wire protocol's JSON frames. The same client
//! drives our server and the floor.

use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, watch},
};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

pub type Ws = WebSocketStream<TcpStream>;

/// How long one handshake step may take before the client reports an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Round-robin over 127.0.0.2 ..= 127.0.0.(1+n): each source address has its
/// own ephemeral port range, so tens of thousands of sockets to one server
/// port do not run out of ports.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Sources {
    pub fn new(n: u8) -> Self {
        let n = n.clamp(1, 250);
        Self {
            addrs: (0..n).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn next(&self) -> Ipv4Addr {
        self.addrs[self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len()]
    }
}

/// Microseconds since the Unix epoch (client and servers share the clock).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The timestamp a publisher put in `data` (`{"t":N,...}`), read without
/// parsing the whole frame: the load client must stay cheap next to the
/// servers on a small machine. Whitespace after the colon is allowed, as the
/// server may re-serialise `data`.
pub fn timestamp_in(frame: &str) -> Option<u64> {
    let start = frame.find("\"t\":")? + 4;
    let digits: String = frame[start..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Whether a text frame is a `message` push.
pub fn is_message(frame: &str) -> bool {
    frame.contains("\"type\":\"message\"")
}

/// Opens a WebSocket to `127.0.0.1:port/ws` from `src`.
pub async fn open(port: u16, src: Ipv4Addr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = tokio::time::timeout(STEP_TIMEOUT, socket.connect(([127, 0, 0, 1], port).into()))
        .await
        .map_err(|_| format!("TCP connect to port {port} timed out"))?
        .map_err(|e| format!("TCP connect to port {port} from {src}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    // Small buffers: the client holds up to 50,000 sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        client_async_with_config(format!("ws://127.0.0.1:{port}/ws"), stream, Some(config)),
    )
    .await
    .map_err(|_| "WebSocket upgrade timed out".to_string())?
    .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    Ok(ws)
}

/// Reads frames until one satisfies `pick`, answering pings on the way.
async fn read_until(
    ws: &mut Ws,
    what: &str,
    mut pick: impl FnMut(&serde_json::Value) -> Option<Result<(), String>>,
) -> Result<(), String> {
    let read = async {
        while let Some(msg) = ws.next().await {
            let text = match msg.map_err(|e| format!("waiting for {what}: {e}"))? {
                Message::Text(t) => t,
                Message::Close(c) => return Err(format!("closed while waiting for {what}: {c:?}")),
                _ => continue,
            };
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("bad frame {text}: {e}"))?;
            if v["type"] == "ping" {
                let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                continue;
            }
            if let Some(done) = pick(&v) {
                return done;
            }
        }
        Err(format!("connection ended while waiting for {what}"))
    };
    tokio::time::timeout(STEP_TIMEOUT, read)
        .await
        .map_err(|_| format!("no {what} within {STEP_TIMEOUT:?}"))?
}

/// Sends `connect` (with a token when given) and waits for `welcome`.
pub async fn handshake(ws: &mut Ws, token: Option<&str>) -> Result<(), String> {
    let frame = match token {
        Some(t) => serde_json::json!({"type":"connect","token":t}),
        None => serde_json::json!({"type":"connect"}),
    };
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| format!("send connect: {e}"))?;
    read_until(ws, "welcome", |v| match v["type"].as_str() {
        Some("welcome") => Some(Ok(())),
        Some("error") => Some(Err(format!("connect refused: {v}"))),
        _ => None,
    })
    .await
}

/// Sends a command with `id` and waits for its reply.
pub async fn command(ws: &mut Ws, id: u64, frame: serde_json::Value) -> Result<(), String> {
    call(ws, id, frame).await.map(drop)
}

/// Sends a command with `id` and returns its reply's `data`.
pub async fn call(
    ws: &mut Ws,
    id: u64,
    frame: serde_json::Value,
) -> Result<serde_json::Value, String> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut data = serde_json::Value::Null;
    read_until(ws, "reply", |v| {
        if v["id"] != id {
            return None;
        }
        match v["type"].as_str() {
            Some("reply") => {
                data = v["data"].clone();
                Some(Ok(()))
            }
            _ => Some(Err(format!("command {id} failed: {v}"))),
        }
    })
    .await?;
    Ok(data)
}

pub async fn subscribe(ws: &mut Ws, id: u64, channel: &str) -> Result<(), String> {
    command(
        ws,
        id,
        serde_json::json!({"type":"subscribe","id":id,"channel":channel}),
    )
    .await
}

/// Opens `n` connections with at most `in_flight` being set up at once;
/// `setup(i)` gives the port, the token and the channel of connection `i`.
/// Returns the connections in order, or the first error.
pub async fn connect_many(
    n: usize,
    in_flight: usize,
    sources: &Arc<Sources>,
    label: &str,
    setup: impl Fn(usize) -> (u16, Option<String>, Option<String>),
) -> Result<Vec<Ws>, String> {
    let bar = progress(n as u64, label);
    let gate = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (port, token, channel) = setup(i);
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "connect gate closed".to_string())?;
        let src = sources.next();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let ws = open_client(port, src, token.as_deref(), channel.as_deref()).await;
            drop(permit);
            bar.inc(1);
            ws
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.map_err(|e| format!("connect task: {e}"))??);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// One client: open, connect, subscribe to `channel` when given.
pub async fn open_client(
    port: u16,
    src: Ipv4Addr,
    token: Option<&str>,
    channel: Option<&str>,
) -> Result<Ws, String> {
    let mut ws = open(port, src).await?;
    handshake(&mut ws, token).await?;
    if let Some(ch) = channel {
        subscribe(&mut ws, 1, ch).await?;
    }
    Ok(ws)
}

pub fn progress(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("  {msg:<40} [{bar:30}] {pos}/{len} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// What subscribers count, shared by all of them.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub count: AtomicU64,
    /// Latency samples are kept only while this is set (the measured window).
    pub recording: AtomicBool,
    pub closed: AtomicU64,
    pub latencies_us: Mutex<Vec<u64>>,
}

/// Reads pushes until `stop` flips: counts `message` frames, records
/// publish-to-receive latency from the timestamp in `data`, answers pings.
pub async fn run_subscriber(mut ws: Ws, shared: Arc<Deliveries>, mut stop: watch::Receiver<bool>) {
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if is_message(&t) {
                        shared.count.fetch_add(1, Ordering::Relaxed);
                        if shared.recording.load(Ordering::Relaxed) {
                            if let Some(sent) = timestamp_in(&t) {
                                samples.push(now_us().saturating_sub(sent));
                            }
                        }
                    } else if t.contains("\"ping\"") {
                        let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
    }
    if !samples.is_empty() {
        if let Ok(mut all) = shared.latencies_us.lock() {
            all.extend(samples);
        }
    }
    let _ = ws.close(None).await;
}

/// Holds an idle connection open, answering pings, until `stop` flips.
pub async fn run_idle(mut ws: Ws, closed: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) if t.contains("\"ping\"") => {
                    let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_found_with_or_without_spaces() {
        let ours = r#"{"type":"message","channel":"c","data":{"t":1700000000123456,"p":"x"},"offset":3,"epoch":"e"}"#;
        assert_eq!(timestamp_in(ours), Some(1_700_000_000_123_456));
        assert_eq!(timestamp_in(r#"{"data":{"t": 42}}"#), Some(42));
        assert_eq!(timestamp_in(r#"{"data":{"x":1}}"#), None);
        assert_eq!(timestamp_in(r#"{"data":{"t":"abc"}}"#), None);
    }

    #[test]
    fn message_frames_are_told_apart() {
        assert!(is_message(r#"{"type":"message","channel":"c"}"#));
        assert!(!is_message(r#"{"type":"reply","id":1}"#));
    }

    #[test]
    fn sources_cycle_over_loopback_addresses() {
        let s = Sources::new(3);
        let got: Vec<_> = (0..4).map(|_| s.next()).collect();
        assert_eq!(got[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(got[2], Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(got[3], got[0]);
    }
}
