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

/// Runs `redis-cli -p PORT args...` and returns its output (trimmed); panics
/// when `redis-cli` is missing.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let binary = require_binary("redis-cli", "apt-get install -y redis-tools");
    let out = Command::new(binary)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A private Redis Cluster: `primaries` primaries with one replica each, on
/// free loopback ports, no persistence, a short `cluster-node-timeout` (so a
/// failover takes about two node timeouts), and `cluster-require-full-coverage
/// no` (the other shards keep serving while one fails over).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Owned>,
    dirs: Vec<PathBuf>,
    node_timeout: Duration,
}

impl RedisCluster {
    /// Starts `primaries` primaries and as many replicas, creates the cluster
    /// and waits until every slot is served and every replica is attached.
    pub fn start(primaries: usize, node_timeout: Duration) -> Self {
        let binary = require_binary("redis-server", "apt-get install -y redis-server");
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..primaries * 2 {
            let port = free_port();
            let dir = temp_dir("redis-cluster");
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
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout.as_millis().to_string(),
                "--cluster-replica-validity-factor",
                "0",
                "--cluster-require-full-coverage",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut proc = Owned {
                binary: binary.clone(),
                args,
                port,
                name: "redis-server",
                child: None,
            };
            proc.spawn_fresh();
            nodes.push(proc);
            dirs.push(dir);
        }
        let cluster = Self {
            nodes,
            dirs,
            node_timeout,
        };
        let addrs: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = redis_cli(cluster.ports()[0], &args);
        assert!(
            out.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed: {out}"
        );
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Every node's port (running or not).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The configured `cluster-node-timeout`.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// The port of the running primary serving `slot`, asked of a running node.
    pub fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        let node = self.nodes.iter().find(|n| n.child.is_some())?;
        let nodes = redis_cli(node.port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return Some(port);
                    }
                }
            }
        }
        None
    }

    /// The slot of a key (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn slot_of(&self, key: &str) -> u16 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node");
        redis_cli(node.port, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The ports of the running primaries.
    pub fn primary_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..16384u16)
            .step_by(64)
            .filter_map(|slot| self.primary_of_slot(slot))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Moves `slot` (and its keys) to the primary on `to`, the way
    /// `redis-cli --cluster reshard` does: `IMPORTING` on the target,
    /// `MIGRATING` on the source, `MIGRATE` of its keys in batches, then the
    /// new owner announced to every primary.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.primary_of_slot(slot).expect("slot served");
        if from == to {
            return;
        }
        let from_id = redis_cli(from, &["CLUSTER", "MYID"]);
        let to_id = redis_cli(to, &["CLUSTER", "MYID"]);
        let slot_arg = slot.to_string();
        let ok = |out: String, what: &str| assert_eq!(out, "OK", "{what}: {out}");
        ok(
            redis_cli(
                to,
                &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
            ),
            "SETSLOT IMPORTING",
        );
        ok(
            redis_cli(
                from,
                &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
            ),
            "SETSLOT MIGRATING",
        );
        loop {
            let keys = redis_cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(redis_cli(from, &args), "MIGRATE");
        }
        for port in [to, from] {
            ok(
                redis_cli(port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]),
                "SETSLOT NODE",
            );
        }
        for port in self.primary_ports() {
            let _ = redis_cli(port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]);
        }
    }

    /// Kills (SIGKILL) the node listening on `port`.
    pub fn kill_node(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// Starts again a node killed by [`RedisCluster::kill_node`] (it rejoins as
    /// it was configured; a replaced primary becomes a replica).
    pub fn restart_node(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.spawn();
        }
    }

    /// Kills every node (their data is gone; the cluster layout survives in
    /// each node's `nodes.conf`).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every node again after [`RedisCluster::stop`] and waits until the
    /// cluster serves every slot again.
    pub fn start_again(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_none() {
                n.spawn();
            }
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| redis_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let covered = (0..16384u16)
                .step_by(997)
                .all(|slot| self.primary_of_slot(slot).is_some());
            if ok && covered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the redis cluster did not become healthy within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `GET path` on a loopback HTTP port; the body, or `None` when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// A private NATS cluster: `size` `nats-server -js` processes routed to each
/// other on free loopback ports, each with its own store and monitoring port.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Owned>,
    monitor_ports: Vec<u16>,
    dirs: Vec<PathBuf>,
}

impl NatsCluster {
    /// Starts `size` servers (named `n0`, `n1`...) and waits until JetStream
    /// has a meta leader.
    pub fn start(size: usize) -> Self {
        let binary = require_binary("nats-server", "apt-get install -y nats-server");
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        let mut monitor_ports = Vec::new();
        let mut dirs = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let port = free_port();
            let monitor = free_port();
            let dir = temp_dir("nats-cluster");
            let args = [
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor.to_string(),
                "-js",
                "-sd",
                dir.to_str().expect("utf-8 temp dir"),
                "--server_name",
                &format!("n{i}"),
                "--cluster_name",
                "ss-test",
                "--cluster",
                &format!("nats://127.0.0.1:{route_port}"),
                "--routes",
                &routes,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut proc = Owned {
                binary: binary.clone(),
                args,
                port,
                name: "nats-server",
                child: None,
            };
            proc.spawn_fresh();
            nodes.push(proc);
            monitor_ports.push(monitor);
            dirs.push(dir);
        }
        let cluster = Self {
            nodes,
            monitor_ports,
            dirs,
        };
        cluster.wait_ready(Duration::from_secs(30));
        cluster
    }

    /// `nats://a,nats://b,...`: every server.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client port of server `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Index of the server named `name` (`n0`, `n1`...).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')?
            .parse()
            .ok()
            .filter(|i| *i < self.nodes.len())
    }

    /// `GET path` on the monitoring port of a running server.
    pub fn monitor(&self, path: &str) -> Option<String> {
        self.nodes
            .iter()
            .zip(&self.monitor_ports)
            .filter(|(n, _)| n.child.is_some())
            .find_map(|(_, port)| http_get(*port, path))
    }

    /// Kills (SIGKILL) server `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts server `i` again after [`NatsCluster::kill`] (same ports and store).
    pub fn start_again(&mut self, i: usize) {
        self.nodes[i].spawn();
    }

    /// Waits until every running server is routed to the others and JetStream
    /// has a meta leader.
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        loop {
            let ready = self
                .nodes
                .iter()
                .zip(&self.monitor_ports)
                .filter(|(n, _)| n.child.is_some())
                .all(|(_, port)| {
                    let routes = http_get(*port, "/routez").unwrap_or_default();
                    let jsz = http_get(*port, "/jsz").unwrap_or_default();
                    routes.contains(&format!("\"num_routes\": {}", running - 1))
                        && jsz.contains("\"leader\"")
                });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster did not form within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A private Redis primary with one replica, watched by three Sentinels
/// (quorum 2, `down-after-milliseconds` given), all on free loopback ports.
/// The service is named `ss`.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The primary first, then the replica (by start order; roles change on
    /// failover).
    servers: Vec<Owned>,
    sentinels: Vec<Owned>,
    dirs: Vec<PathBuf>,
}

impl RedisSentinel {
    /// The monitored service's name.
    pub const SERVICE: &'static str = "ss";

    /// Starts the primary, its replica and three Sentinels, and waits until
    /// every Sentinel knows the replica and the other Sentinels.
    pub fn start(down_after: Duration) -> Self {
        let binary = require_binary("redis-server", "apt-get install -y redis-server");
        let mut dirs = Vec::new();
        let mut servers = Vec::new();
        let mut primary_port = 0;
        for i in 0..2 {
            let port = free_port();
            let dir = temp_dir("redis-sentinel-data");
            let mut args: Vec<String> = [
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
            if i == 1 {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary_port.to_string(),
                ]);
            }
            let mut proc = Owned {
                binary: binary.clone(),
                args,
                port,
                name: "redis-server",
                child: None,
            };
            proc.spawn_fresh();
            if i == 0 {
                primary_port = proc.port;
            }
            servers.push(proc);
            dirs.push(dir);
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = temp_dir("redis-sentinel");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {svc} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {svc} {}\n\
                     sentinel failover-timeout {svc} 5000\n\
                     sentinel parallel-syncs {svc} 1\n",
                    dir.display(),
                    down_after.as_millis(),
                    svc = Self::SERVICE,
                ),
            )
            .expect("write sentinel.conf");
            let mut proc = Owned {
                binary: binary.clone(),
                args: vec![conf.display().to_string(), "--sentinel".into()],
                port,
                name: "redis-sentinel",
                child: None,
            };
            proc.spawn();
            sentinels.push(proc);
            dirs.push(dir);
        }
        let this = Self {
            servers,
            sentinels,
            dirs,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = this.sentinels.iter().all(|s| {
                let info = redis_cli(s.port, &["SENTINEL", "MASTER", Self::SERVICE]);
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(0)
                };
                field("num-slaves") >= 1 && field("num-other-sentinels") >= 2
            });
            let synced = redis_cli(this.servers[1].port, &["INFO", "replication"])
                .contains("master_link_status:up");
            if ready && synced {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not discover the replica and each other within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        this
    }

    /// `redis+sentinel://` with every Sentinel and the service name.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), Self::SERVICE)
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let s = self.sentinels.iter().find(|s| s.child.is_some())?;
        let out = redis_cli(
            s.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Kills (SIGKILL) the data server on `port`.
    pub fn kill_server(&mut self, port: u16) {
        if let Some(s) = self.servers.iter_mut().find(|s| s.port == port) {
            s.kill();
        }
    }

    /// Kills both data servers (the Sentinels keep running).
    pub fn stop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
    }

    /// Starts the killed data servers again (empty; each with the role it was
    /// started with) and waits until the Sentinels' primary answers.
    pub fn start_again(&mut self) {
        for s in &mut self.servers {
            if s.child.is_none() {
                s.spawn();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .primary_port()
            .is_some_and(|p| redis_cli(p, &["ROLE"]).starts_with("master"))
        {
            assert!(
                Instant::now() < deadline,
                "no primary 30 s after the restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for s in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            s.kill();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
