//! Measures what an idle connection costs the server: RSS growth per welcomed
//! connection holding one subscription.
//!
//! ```text
//! ulimit -n 65536
//! cargo run --release --example idle_connections -- 10000
//! IDLE_SCALER=redis://127.0.0.1:6380 cargo run --release --example idle_connections -- 10000
//! ```
//!
//! The server runs in a child process (this same executable with `--serve`),
//! so the figure contains the server's memory only: socket task, WebSocket
//! buffers, queues, subscription and presence entries, session and in-memory
//! scaler state. The client side uses small buffers too, so 10,000 sockets fit
//! on a small machine.

use futures_util::{SinkExt, StreamExt};
use scaled_sockets::{AllowAnonymous, App, Config, MemoryScaler, Server};
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

/// Counts live heap bytes, so the report can tell heap from other RSS.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwards the caller's layout to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn serve() {
    let config = Config {
        ping_interval: Duration::from_secs(600),
        ..Config::default()
    };
    let server = Server::start(
        config,
        Arc::new(MemoryScaler::new()),
        App::new().authenticator(AllowAnonymous),
    )
    .await
    .expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    // Report live heap bytes on request (a line on stdin).
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            eprintln!("HEAP {}", LIVE.load(std::sync::atomic::Ordering::Relaxed));
            line.clear();
        }
    });
    server
        .serve(listener, std::future::pending())
        .await
        .expect("serve");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: String, channel: String) -> Socket {
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .expect("connect");
    ws.send(Message::text(r#"{"type":"connect"}"#))
        .await
        .expect("send");
    let _welcome = ws.next().await.expect("welcome").expect("welcome");
    if std::env::var_os("IDLE_NO_SUBSCRIBE").is_some() {
        return ws;
    }
    ws.send(Message::text(format!(
        r#"{{"type":"subscribe","id":1,"channel":"{channel}"}}"#
    )))
    .await
    .expect("send");
    let reply = ws.next().await.expect("reply").expect("reply");
    assert!(
        reply.to_text().unwrap_or("").contains("\"reply\""),
        "{reply:?}"
    );
    ws
}

async fn open_many(url: &str, n: usize, offset: usize) -> Vec<Socket> {
    let mut sockets = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 250).min(n))
            .map(|k| tokio::spawn(open(url.to_owned(), format!("room-{}", (k + offset) % 100))))
            .collect();
        for task in batch {
            sockets.push(task.await.expect("task"));
        }
        i += 250;
    }
    sockets
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve().await;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    if let Ok(addr) = std::env::var("IDLE_SERVER_ADDR") {
        // Drive a server started elsewhere (e.g. under a heap profiler).
        let url = format!("ws://{addr}/ws");
        let sockets = open_many(&url, n, 0).await;
        println!(
            "opened {} connections; holding them for 20 s",
            sockets.len()
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        return;
    }
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server address");
    let url = format!("ws://{}/ws", line.trim());
    // Warm up allocator arenas and lazily initialised state first.
    let warm = open_many(&url, 500, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stdin = child.stdin.take().expect("stdin");
    use std::io::Write;
    let _ = writeln!(stdin);
    let before = rss_kib(pid);
    let sockets = open_many(&url, n, 500).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = writeln!(stdin);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) as f64 * 1024.0) / n as f64;
    println!(
        "server RSS: {before} KiB with {} warm-up connections, {after} KiB with {} more",
        warm.len(),
        sockets.len()
    );
    println!("idle connection (welcomed, one subscription): {per:.0} bytes of server RSS each");
    drop(sockets);
    drop(warm);
    let _ = child.kill();
    let _ = child.wait();
}
