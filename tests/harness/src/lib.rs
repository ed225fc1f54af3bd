//! Private backend servers for tests.
//!
//! Tests that need Redis or NATS start their own server process here, on a free
//! loopback port (never a shared default port), so they can kill and restart it
//! for fault tests. The process is killed by pid when its handle drops.
//!
//! A missing binary is a loud failure with the install hint, never a skip.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A port nobody listens on right now, and never handed out before by this
/// process: tests run in parallel threads, and two servers started on one
/// port would have one test talk to another test's server.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral loopback port");
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Asks a Redis on `port` for its process id (`INFO server`).
fn redis_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("process_id:") || !text[text.find("process_id:")?..].contains('\n') {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = text.lines().find(|l| l.starts_with("process_id:"))?;
    line["process_id:".len()..].trim().parse().ok()
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

/// Waits until the child accepts connections on `port`. Err when it exited
/// (say, the port was taken after all): the caller may try another port.
fn wait_for_port(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited during start-up with {status}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Whoever answered, our child must still be running (a server
            // that lost the port to another one exits at once).
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{what} exited during start-up with {status}"));
            }
            return Ok(());
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
    /// Starts the process on its port (a restart: the port must not change).
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e} (port {})", self.port);
        }
    }

    /// The first start: on a port another process took meanwhile, tries
    /// again on a new one.
    fn spawn_fresh(&mut self) {
        for _ in 0..5 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(_) => {
                    let old = self.port.to_string();
                    self.port = free_port();
                    let new = self.port.to_string();
                    for arg in &mut self.args {
                        if *arg == old {
                            arg.clone_from(&new);
                        }
                    }
                }
            }
        }
        panic!("{} could not start on 5 different ports", self.name);
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        if let Err(e) = wait_for_port(self.port, &mut child, self.name) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        if self.name == "redis-server" && redis_pid(self.port) != Some(child.id()) {
            // Another process's Redis answers on this port.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "another redis-server answers on port {}",
                self.port
            ));
        }
        self.child = Some(child);
        Ok(())
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
        proc.spawn_fresh();
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
        proc.spawn_fresh();
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
