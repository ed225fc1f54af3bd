//! Shared helpers for the integration tests: in-process servers on ephemeral
//! loopback ports, a raw protocol client, and the demo handlers.
#![allow(dead_code)]

pub mod faulty;

use futures_util::{SinkExt, StreamExt};
use scaled_sockets::{App, CommandError, Config, Context, Data, Scaler, Server, Sockets};
use serde_json::{Value, json};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};

/// How long a test waits for any single expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// The demo's handlers (echo, whoami, tell echo), anonymous access allowed.
pub fn demo_app() -> App {
    App::new()
        .authenticator(scaled_sockets::AllowAnonymous)
        .ask("echo", |_cx: Context, data: Data| async move { Ok::<_, CommandError>(data) })
        .ask("whoami", |cx: Context, _data: Data| async move {
            Data::json(&json!({"user": cx.user.as_deref(), "client": &*cx.client, "instance": cx.instance()}))
        })
        .tell("echo", |cx: Context, data: Data| async move {
            let _ = cx.sockets.tell_client(&cx.client, "echo", &data).await;
        })
}

/// A config for tests: fast heartbeats, otherwise defaults.
pub fn test_config(instance: &str) -> Config {
    Config {
        instance_id: instance.to_owned(),
        heartbeat_interval: Duration::from_millis(200),
        ..Config::default()
    }
}

/// One server instance running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub sockets: Sockets,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config, scaler: Arc<dyn Scaler>, app: App) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = Config {
            advertised_address: addr.to_string(),
            ..config
        };
        let server = Server::start(config, scaler, app)
            .await
            .expect("start server");
        let sockets = server.sockets();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
        Self {
            addr,
            sockets,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Drains the server and waits for it to stop.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server stopped within the drain bound")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A client speaking raw protocol frames.
pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    NoCloseFrame,
}

impl Raw {
    pub async fn open(url: &str) -> Self {
        let (ws, _) = connect_async(url).await.expect("websocket connect");
        Self { ws }
    }

    /// Opens and sends `connect` (anonymous), returning the welcome.
    pub async fn connect(url: &str) -> (Self, Value) {
        Self::connect_with(url, json!({"type": "connect"})).await
    }

    pub async fn connect_with(url: &str, connect: Value) -> (Self, Value) {
        let mut raw = Self::open(url).await;
        raw.send(connect).await;
        let welcome = raw.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (raw, welcome)
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Next JSON frame, skipping server pings.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("connection open")
                .expect("frame");
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("server sent JSON");
                    if v["type"] == "ping" {
                        continue;
                    }
                    return v;
                }
                Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Next frame of `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Sends a command and returns its answer (frames before it are skipped
    /// only if they carry no matching id).
    pub async fn call(&mut self, frame: Value) -> Value {
        let id = frame["id"].clone();
        self.send(frame).await;
        loop {
            let v = self.recv().await;
            if v["id"] == id && (v["type"] == "reply" || v["type"] == "error") {
                return v;
            }
        }
    }

    /// Reads until the connection ends; returns the close code.
    pub async fn closed(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within the wait")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ended::Closed(u16::from(frame.code));
                }
                Some(Ok(Message::Close(None))) => return Ended::Closed(CloseCode::Status.into()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::NoCloseFrame,
            }
        }
    }

    /// Asserts nothing but pings arrives for `wait`.
    pub async fn quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"ping\"") => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// A plain HTTP/1.1 request (no client library needed); returns status and body.
pub async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = TcpStream::connect(host).await.expect("http connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("http write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("http answer within the wait")
        .expect("http read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within {limit:?}: {what}");
}

/// A `scaled-sockets` binary process started by a test; killed on drop.
pub struct BinaryInstance {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub id: String,
}

impl BinaryInstance {
    /// Starts the real binary with `args` (plus `--listen 127.0.0.1:0`) and waits
    /// for its `listening on ADDR` line.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_program(env!("CARGO_BIN_EXE_scaled-sockets").as_ref(), args, envs)
    }

    /// Starts `program` (the binary or an example built from this crate),
    /// as [`BinaryInstance::start`] does.
    pub fn start_program(program: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(program);
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        let _ = tx.send(addr.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the binary logs `listening on ADDR` when ready")
            .parse()
            .expect("a socket address");
        let id = args
            .iter()
            .position(|a| *a == "--instance-id")
            .map(|i| args[i + 1].to_owned())
            .unwrap_or_default();
        Self { child, addr, id }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BinaryInstance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo example's binary next to the crate's binary
/// (`target/<profile>/examples/demo`), which `cargo test -p scaled-sockets`
/// builds with the tests.
pub fn demo_binary() -> std::path::PathBuf {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_scaled-sockets"));
    let demo = bin
        .parent()
        .expect("binary directory")
        .join("examples")
        .join(format!("demo{}", std::env::consts::EXE_SUFFIX));
    assert!(
        demo.exists(),
        "{} is missing: run `cargo build -p scaled-sockets --example demo` (or the whole `cargo test -p scaled-sockets`)",
        demo.display()
    );
    demo
}
