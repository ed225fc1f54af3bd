//! `bench storm`: runs the reconnect storm ([`scaled_sockets_bench::storm`])
//! a few times, prints each run and the medians, writes `storm.json`.

use crate::{cli::StormArgs, stats::median};
use scaled_sockets_bench::storm::{self, StormConfig, StormReport};
use serde::Serialize;
use std::{path::Path, time::Duration};

/// The bar item 5 sets: everyone back within 15 s.
const WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
struct Output<'a> {
    command: String,
    commit: String,
    nproc: usize,
    loadavg_start: String,
    loadavg_end: String,
    clients: usize,
    runs: &'a [StormReport],
    median: Medians,
    passed: bool,
}

#[derive(Debug, Serialize)]
struct Medians {
    t50_ms: Option<f64>,
    t99_ms: Option<f64>,
    t100_ms: Option<f64>,
    peak_rss_mib: Option<f64>,
    peak_cpu_percent: Option<f64>,
    cpu_seconds: Option<f64>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.0} ms", v))
}

fn print_run(i: usize, r: &StormReport) {
    println!(
        "  run {}: {}/{} back; 50 % {}, 99 % {}, 100 % {}; failed connections {}; lost {} (not recovered {}, out of order {}); {} published ({} publish errors)",
        i + 1,
        r.back,
        r.clients,
        ms(r.t50_ms),
        ms(r.t99_ms),
        ms(r.t100_ms),
        r.failed_connections,
        r.lost,
        r.not_recovered,
        r.out_of_order,
        r.published,
        r.publish_errors,
    );
    let [noticed, started, opened, back] = r.phases_median_ms;
    println!(
        "         medians after the kill: noticed {noticed:.0} ms, last attempt started {started:.0} ms, WebSocket open {opened:.0} ms, back {back:.0} ms"
    );
    for s in &r.survivors {
        println!(
            "         {}: RSS {:.1} -> peak {:.1} MiB, peak CPU {:.0} %, {:.2} CPU s",
            s.name,
            s.rss_before_bytes as f64 / 1048576.0,
            s.peak_rss_bytes as f64 / 1048576.0,
            s.peak_cpu_percent,
            s.cpu_seconds,
        );
    }
    for f in &r.failure_samples {
        println!("         failure: {f}");
    }
}

pub async fn run(args: StormArgs, root: &Path) -> Result<(), String> {
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
    let loadavg_start = loadavg();
    let mut reports = Vec::new();
    for i in 0..args.runs.max(1) {
        let mut cfg = StormConfig::new(server_bin.clone(), args.out.join("logs"), args.clients);
        cfg.redis_server = args.redis_server.clone();
        cfg.channels = args.channels.max(1);
        cfg.source_addrs = args.source_addrs;
        cfg.progress = true;
        if let Some(n) = args.max_handshakes {
            cfg.server_flags
                .extend(["--max-handshakes".into(), n.to_string()]);
        }
        if let Some(n) = args.handshake_rate {
            cfg.server_flags
                .extend(["--handshake-rate".into(), n.to_string()]);
        }
        eprintln!("   storm run {}: {} clients", i + 1, args.clients);
        let report = storm::run(cfg).await?;
        print_run(i, &report);
        reports.push(report);
        if i + 1 < args.runs {
            // TIME_WAIT sockets and the old processes' memory settle.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let pick = |f: &dyn Fn(&StormReport) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(f).collect();
        median(&v)
    };
    // The busier survivor's figure in each run.
    fn peak(r: &StormReport, f: impl Fn(&storm::Survivor) -> f64) -> Option<f64> {
        r.survivors.iter().map(f).reduce(f64::max)
    }
    let medians = Medians {
        t50_ms: pick(&|r| r.t50_ms),
        t99_ms: pick(&|r| r.t99_ms),
        t100_ms: pick(&|r| r.t100_ms),
        peak_rss_mib: pick(&|r| peak(r, |s| s.peak_rss_bytes as f64 / 1048576.0)),
        peak_cpu_percent: pick(&|r| peak(r, |s| s.peak_cpu_percent)),
        cpu_seconds: pick(&|r| peak(r, |s| s.cpu_seconds)),
    };
    let passed = reports.iter().all(|r| r.passed(WITHIN));
    println!(
        "storm, median of {} run(s), {} clients: 50 % back in {}, 99 % in {}, 100 % in {}; survivors' peak RSS {:.1} MiB, peak CPU {:.0} %; {}",
        reports.len(),
        args.clients,
        ms(medians.t50_ms),
        ms(medians.t99_ms),
        ms(medians.t100_ms),
        medians.peak_rss_mib.unwrap_or(0.0),
        medians.peak_cpu_percent.unwrap_or(0.0),
        if passed {
            "PASSED (all back within 15 s, no failed connection, nothing lost)"
        } else {
            "FAILED"
        }
    );
    let out = Output {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: crate::workloads::git_short_head(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_start,
        loadavg_end: loadavg(),
        clients: args.clients,
        runs: &reports,
        median: medians,
        passed,
    };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("create {}: {e}", args.out.display()))?;
    let path = args.out.join("storm.json");
    let json = serde_json::to_string_pretty(&out).map_err(|e| format!("storm.json: {e}"))?;
    std::fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    if passed {
        Ok(())
    } else {
        Err("the storm did not meet the bar (see above)".into())
    }
}
