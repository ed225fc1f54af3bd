//! The workloads and what they share: the run context, a cluster of servers
//! on a private Redis, and the measured window.
//!
//! - [`fanout`] — W1 (fan-out at saturation) and W2 (latency at a fixed rate).
//! - [`idle`] — W3 (idle memory).
//! - [`ask`] — W4 (ask round trips, demo example).
//! - [`connect`] — W5 (connect + subscribe rate with JWT).
//! - [`publish`] — W6 (publishes/s, beside redis-benchmark).
//! - [`channels`] — W7 (4 instances, 2,000 channels, bytes from Redis).
//! - [`cores`] — W8 (asks to a core relayed between two instances, beside local asks).
//! - [`sse`] — W9 (the HTTP fallback's event streams beside WebSocket subscribers).

mod ask;
mod channels;
mod connect;
mod cores;
mod fanout;
mod idle;
mod publish;
mod sse;

use crate::{
    cli::RunArgs,
    load::{Deliveries, Sources, progress},
    procs::{self, Proc, ServerKind},
    results::{Meta, Results, Target},
};
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

/// Connections set up at once before a measured phase. Both servers listen
/// with a backlog of 128; more connects in flight than that overflow the
/// accept queue on a busy machine and cost 1 s SYN retransmits.
pub const SETUP_IN_FLIGHT: usize = 100;

/// What every workload needs.
#[derive(Debug)]
pub struct Ctx {
    pub args: RunArgs,
    pub server_bin: PathBuf,
    pub demo_bin: PathBuf,
    pub exe: PathBuf,
    pub logs: PathBuf,
    pub sources: Arc<Sources>,
    pub ticks_per_s: f64,
    pub results: Results,
}

impl Ctx {
    pub fn kind(&self, target: Target, extra: &[&str]) -> ServerKind {
        match target {
            Target::Ours => ServerKind::Ours {
                bin: self.server_bin.clone(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            },
            Target::Floor => ServerKind::Floor {
                exe: self.exe.clone(),
            },
        }
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.args.warmup.max(0.0))
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.args.seconds.max(0.5))
    }
}

/// A private redis-server and `n` server instances on it.
#[derive(Debug)]
pub struct Cluster {
    pub servers: Vec<Proc>,
    // Dropped after the servers (field order), so they never see Redis vanish.
    pub redis: Proc,
}

impl Cluster {
    pub async fn start(ctx: &Ctx, kind: &ServerKind, instances: usize) -> Result<Self, String> {
        let redis = procs::start_redis(&ctx.args.redis_server, &ctx.logs).await?;
        let mut servers = Vec::with_capacity(instances);
        for i in 0..instances {
            servers.push(procs::start_server(kind, i + 1, redis.port, &ctx.logs).await?);
        }
        Ok(Self { servers, redis })
    }

    pub fn port(&self, i: usize) -> u16 {
        self.servers[i % self.servers.len()].port
    }

    /// utime + stime summed over the server processes, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64, String> {
        self.servers.iter().map(|s| procs::cpu_ticks(s.pid())).sum()
    }

    /// Fails when a server or the Redis died (the Redis is checked first:
    /// its loss explains the servers' errors).
    pub fn check_alive(&mut self) -> Result<(), String> {
        self.redis.check_alive()?;
        self.servers.iter_mut().try_for_each(Proc::check_alive)
    }
}

/// What happened in a measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub seconds: f64,
    /// Server CPU (all instances).
    pub cpu_seconds: f64,
    /// The bench process's own CPU: a load client near 100% of the machine
    /// would make the servers' figures the client's.
    pub client_cpu_seconds: f64,
    pub deliveries: u64,
}

/// Warms up, then measures `ctx.window()`: deliveries counted by `shared`,
/// server CPU from /proc. Latency samples are taken only inside the window.
pub async fn measure(
    ctx: &Ctx,
    cluster: &mut Cluster,
    shared: &Deliveries,
    label: &str,
) -> Result<Window, String> {
    tokio::time::sleep(ctx.warmup()).await;
    measure_now(ctx, cluster, shared, label).await
}

/// [`measure`] without the warm-up.
pub async fn measure_now(
    ctx: &Ctx,
    cluster: &mut Cluster,
    shared: &Deliveries,
    label: &str,
) -> Result<Window, String> {
    cluster.check_alive()?;
    let window = ctx.window();
    let bar = progress(window.as_millis() as u64, label);
    let cpu0 = cluster.cpu_ticks()?;
    let own0 = procs::cpu_ticks(std::process::id())?;
    let d0 = shared.count.load(Ordering::Relaxed);
    shared.recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(250).min(window.saturating_sub(t0.elapsed())))
            .await;
        bar.set_position(t0.elapsed().as_millis() as u64);
    }
    shared.recording.store(false, Ordering::Relaxed);
    let seconds = t0.elapsed().as_secs_f64();
    let d1 = shared.count.load(Ordering::Relaxed);
    let cpu1 = cluster.cpu_ticks()?;
    let own1 = procs::cpu_ticks(std::process::id())?;
    bar.finish_and_clear();
    cluster.check_alive()?;
    Ok(Window {
        seconds,
        cpu_seconds: (cpu1.saturating_sub(cpu0)) as f64 / ctx.ticks_per_s,
        client_cpu_seconds: (own1.saturating_sub(own0)) as f64 / ctx.ticks_per_s,
        deliveries: d1 - d0,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn git_short_head() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The workspace root: the bench's manifest dir's parent.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub async fn run_all(args: RunArgs) -> Result<(), String> {
    let root = workspace_root();
    let server_bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/scaled-sockets"));
    if !server_bin.is_file() {
        return Err(format!(
            "no server binary at {}; build it with `cargo build --release --bin scaled-sockets` or pass --server-bin",
            server_bin.display()
        ));
    }
    let demo_bin = args
        .demo_bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/examples/demo"));
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    // Client sockets and, inherited, the servers' sockets.
    let nofile = procs::raise_nofile(262_144);
    let want_conns = args
        .idle_conns
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(10_000);
    if nofile < want_conns as u64 + 1024 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile} and could not be raised (that needs CAP_SYS_RESOURCE), too low for {want_conns} connections; raise the hard limit (ulimit -Hn) or lower --idle-conns"
        ));
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let meta = Meta {
        commit: git_short_head(),
        server_bin: server_bin.display().to_string(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu_model(),
        command,
        runs: args.runs.max(1),
        seconds: args.seconds,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    };
    eprintln!(
        "bench: commit {}, {} cores ({}), server {}, {} interleaved runs, load average {}",
        meta.commit, meta.nproc, meta.cpu_model, meta.server_bin, meta.runs, meta.loadavg_start
    );
    let mut ctx = Ctx {
        sources: Arc::new(Sources::new(args.source_addrs)),
        ticks_per_s: procs::clock_ticks(),
        results: Results::new(meta),
        server_bin,
        demo_bin,
        exe,
        logs,
        args,
    };
    let started = Instant::now();
    for w in ctx.args.workloads.clone() {
        let t = Instant::now();
        eprintln!("== {w}");
        match w.trim().to_ascii_uppercase().as_str() {
            "W1" => fanout::w1(&mut ctx).await?,
            "W2" => fanout::w2(&mut ctx).await?,
            "W3" => idle::w3(&mut ctx).await?,
            "W4" => ask::w4(&mut ctx).await?,
            "W5" => connect::w5(&mut ctx).await?,
            "W6" => publish::w6(&mut ctx).await?,
            "W7" => channels::w7(&mut ctx).await?,
            "W8" => cores::w8(&mut ctx).await?,
            "W9" => sse::w9(&mut ctx).await?,
            other => return Err(format!("unknown workload {other:?} (W1..W9)")),
        }
        eprintln!("   {w} took {:.0} s", t.elapsed().as_secs_f64());
        write_results(&mut ctx)?;
    }
    println!("{}", ctx.results.table());
    eprintln!(
        "bench: all done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes results.json (and the chart) after every workload, so an
/// interrupted run keeps what it measured.
fn write_results(ctx: &mut Ctx) -> Result<(), String> {
    ctx.results.meta.loadavg_end = loadavg();
    let json = ctx.args.out.join("results.json");
    std::fs::write(&json, ctx.results.to_json())
        .map_err(|e| format!("write {}: {e}", json.display()))?;
    let svg = ctx.args.out.join("results.svg");
    if let Err(e) = ctx.results.write_svg(&svg) {
        eprintln!("bench: no chart: {e}");
    }
    Ok(())
}

/// The interleaving: run 1 ours, run 1 floor, run 2 ours, ...
pub fn schedule(runs: usize) -> impl Iterator<Item = (usize, Target)> {
    (0..runs.max(1)).flat_map(|r| [(r, Target::Ours), (r, Target::Floor)])
}
