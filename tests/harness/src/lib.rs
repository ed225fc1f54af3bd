//! Private backend servers for tests.
//!
//! Tests that need Redis or NATS start their own server process here, on a free
//! loopback port (never a shared default port), so they can kill and restart it
//! for fault tests. The process is killed by pid when its handle drops.
//!
//! A missing binary is a loud failure with the install hint, never a skip.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn require_binary(name: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into()]) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed or not on PATH; these tests need it. Install it with: {hint}"
    );
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up with {status}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not accept connections on 127.0.0.1:{port} within 15 s");
}

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "scaled-sockets-{prefix}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// One server process the test owns.
#[derive(Debug)]
struct Owned {
    binary: PathBuf,
    args: Vec<String>,
    port: u16,
    name: &'static str,
    child: Option<Child>,
}

impl Owned {
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        wait_for_port(self.port, &mut child, self.name);
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private `redis-server` (no persistence) on a free loopback port.
#[derive(Debug)]
pub struct RedisServer {
    proc: Owned,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one; panics with an install hint if `redis-server` is missing.
    pub fn start() -> Self {
        let binary = require_binary("redis-server", "apt-get install -y redis-server");
        let port = free_port();
        let dir = temp_dir("redis");
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            dir.to_str().expect("utf-8 temp dir"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Owned {
            binary,
            args,
            port,
            name: "redis-server",
            child: None,
        };
        proc.spawn();
        Self { proc, dir }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.proc.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Kills the process (SIGKILL): its data is gone, like a crash without persistence.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc.spawn();
    }

    /// Starts it again after [`RedisServer::stop`].
    pub fn start_again(&mut self) {
        self.proc.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private `nats-server -js` on a free loopback port, with its own store dir.
#[derive(Debug)]
pub struct NatsServer {
    proc: Owned,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts one; panics with an install hint if `nats-server` is missing.
    pub fn start() -> Self {
        let binary = require_binary("nats-server", "apt-get install -y nats-server");
        let port = free_port();
        let dir = temp_dir("nats");
        let args = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            dir.to_str().expect("utf-8 temp dir"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Owned {
            binary,
            args,
            port,
            name: "nats-server",
            child: None,
        };
        proc.spawn();
        Self { proc, dir }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.proc.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.proc.port
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Kills the process (SIGKILL). JetStream data on disk survives a restart.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts it again after [`NatsServer::stop`], same port and store.
    pub fn start_again(&mut self) {
        self.proc.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
