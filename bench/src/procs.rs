//! Child processes and what the bench reads about them from /proc.
//!
//! Every child is killed by its own pid when its handle drops, so an error in
//! the middle of a workload leaves no server or redis-server behind.

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// Raises RLIMIT_NOFILE (soft and hard) to `want` for this process and the
/// children it spawns from now on; falls back to the hard limit when raising
/// the hard limit is not allowed. Returns the soft limit in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    if Resource::NOFILE.set(want, want).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

/// Kernel clock ticks per second, the unit of utime/stime in /proc/PID/stat.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks (all its threads).
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| format!("unexpected /proc/{pid}/stat: {stat}"))
}

/// Fields 14 and 15 (utime, stime) of a /proc/PID/stat line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of a process in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    parse_vm_rss(&status).ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub port: u16,
    log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(name: &str, port: u16, cmd: &mut Command, log: &Path) -> Result<Self, String> {
        let file =
            std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("log file {}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Self {
            name: name.into(),
            port,
            log: log.to_path_buf(),
            child,
        })
    }

    /// Waits until the port accepts TCP connections, failing when the
    /// process exits first or 20 s pass.
    async fn wait_port(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited during start-up with {status}",
                    self.name
                ));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "{} did not listen on port {} within 20 s",
            self.name, self.port
        ))
    }

    /// Waits until `GET path` answers 200.
    async fn wait_http_ok(&mut self, path: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited during start-up with {status}",
                    self.name
                ));
            }
            if http_get_status(self.port, path).await == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{} {path} did not answer 200 within 20 s",
            self.name
        ))
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails when the process is no longer running (it crashed under load).
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited during the run with {status} (was it killed from outside? see {})",
                self.name,
                self.log.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Starts a private redis-server on a free loopback port (never 6379), with
/// no persistence.
pub async fn start_redis(bin: &str, logs: &Path) -> Result<Proc, String> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--maxclients", "50000"]);
    let mut p = Proc::spawn(
        "redis-server",
        port,
        &mut cmd,
        &logs.join(format!("redis-{port}.log")),
    )
    .map_err(|e| format!("{e}; install it with: apt-get install redis-server"))?;
    p.wait_port().await?;
    Ok(p)
}

/// How to start one server instance.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// The real binary, with extra flags (auth mode etc.).
    Ours { bin: PathBuf, extra: Vec<String> },
    /// `bench floor`, from this executable.
    Floor { exe: PathBuf },
}

pub async fn start_server(
    kind: &ServerKind,
    instance: usize,
    redis_port: u16,
    logs: &Path,
) -> Result<Proc, String> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let redis = format!("redis://127.0.0.1:{redis_port}");
    match kind {
        ServerKind::Ours { bin, extra } => {
            let mut cmd = Command::new(bin);
            cmd.args(["--listen", &listen, "--scaler", &redis])
                .args(["--instance-id", &format!("bench-{instance}")])
                .args(["--publish-rate", "0", "--max-subscriptions", "4096"])
                .args(extra)
                .env("RUST_LOG", "warn");
            let log = logs.join(format!("ours-{instance}-{port}.log"));
            let mut p = Proc::spawn(&format!("scaled-sockets #{instance}"), port, &mut cmd, &log)?;
            p.wait_port().await?;
            p.wait_http_ok("/readyz").await?;
            Ok(p)
        }
        ServerKind::Floor { exe } => {
            let mut cmd = Command::new(exe);
            cmd.args(["floor", "--listen", &listen, "--redis", &redis]);
            let log = logs.join(format!("floor-{instance}-{port}.log"));
            let mut p = Proc::spawn(&format!("floor #{instance}"), port, &mut cmd, &log)?;
            p.wait_port().await?;
            Ok(p)
        }
    }
}

/// Bytes each process received from Redis on its connections to
/// `127.0.0.1:redis_port`, from the kernel's per-socket TCP_INFO
/// (`bytes_received`, as printed by `ss -tinp`). Keyed by pid.
pub fn redis_bytes_by_pid(redis_port: u16) -> Result<HashMap<u32, u64>, String> {
    let out = Command::new("ss")
        .args(["-tinpH", "state", "established"])
        .arg(format!("dport = :{redis_port}"))
        .output()
        .map_err(|e| format!("cannot run ss (apt-get install iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse_ss(&String::from_utf8_lossy(&out.stdout)))
}

/// Sums `bytes_received` per `pid=` over `ss -tinpH` output, where each
/// socket is a line with `users:((...pid=N...))` followed by an indented
/// TCP_INFO line.
pub fn parse_ss(text: &str) -> HashMap<u32, u64> {
    let mut sums = HashMap::new();
    let mut pid: Option<u32> = None;
    for line in text.lines() {
        if let Some(i) = line.find("pid=") {
            let digits: String = line[i + 4..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            pid = digits.parse().ok();
        }
        if let Some(i) = line.find("bytes_received:") {
            let digits: String = line[i + 15..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let (Some(p), Ok(n)) = (pid, digits.parse::<u64>()) {
                *sums.entry(p).or_insert(0) += n;
            }
            pid = None;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 100 1000 50";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t  4096 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(4096 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn ss_bytes_are_summed_per_pid() {
        let text = "0 0 127.0.0.1:40000 127.0.0.1:7000 users:((\"scaled-sockets\",pid=11,fd=9))\n\
\t cubic rto:204 bytes_sent:10 bytes_received:1000 segs_out:2\n\
0 0 127.0.0.1:40001 127.0.0.1:7000 users:((\"scaled-sockets\",pid=11,fd=10))\n\
\t cubic bytes_received:24 segs_out:2\n\
0 0 127.0.0.1:40002 127.0.0.1:7000 users:((\"bench\",pid=12,fd=3))\n\
\t cubic bytes_received:5\n";
        let sums = parse_ss(text);
        assert_eq!(sums.get(&11), Some(&1024));
        assert_eq!(sums.get(&12), Some(&5));
        assert_eq!(sums.len(), 2);
    }
}
