//! W6: publishes/s through one instance to Redis (no subscribers), beside
//! redis-benchmark on the same Redis running what each server asks Redis to do
//! per publish: ours, the publish Lua script; the floor, a bare PUBLISH.

use super::{Cluster, Ctx, schedule};
use crate::{
    load,
    publisher::{self, Plan, PublishStats},
    results::Target,
};
use std::{
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio::sync::watch;

const PUBLISHERS: usize = 4;
const IN_FLIGHT: usize = 64;

/// The rate from `redis-benchmark -q` output (`...: 12345.67 requests per second...`).
pub fn parse_rps(out: &str) -> Option<f64> {
    let end = out.rfind(" requests per second")?;
    out[..end].split_whitespace().last()?.parse().ok()
}

/// redis-benchmark arguments for what `target` does per publish.
fn benchmark_command(target: Target, payload: &str) -> Vec<String> {
    match target {
        // The server's defaults: history 1000, TTL 600 s; key layout as the scaler's.
        Target::Ours => vec![
            "EVAL".into(),
            scaled_sockets_redis::publish_script_source().into(),
            "2".into(),
            "ss:ch:{w6}:meta".into(),
            "ss:ch:{w6}:stream".into(),
            payload.into(),
            "1000".into(),
            "600000".into(),
            "benchepoch".into(),
            "ss:ch:{w6}:pub".into(),
            // A standalone Redis: classic PUBLISH, no node check.
            "0".into(),
        ],
        Target::Floor => vec!["PUBLISH".into(), "floor:w6".into(), payload.into()],
    }
}

fn redis_benchmark(ctx: &Ctx, port: u16, target: Target) -> Result<f64, String> {
    let payload = format!(r#"{{"t":{},"p":"{}"}}"#, load::now_us(), "x".repeat(64));
    let out = Command::new(&ctx.args.redis_benchmark)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "64", "-n", "100000", "-q"])
        .args(benchmark_command(target, &payload))
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} (apt-get install redis-tools): {e}",
                ctx.args.redis_benchmark
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_rps(&text).ok_or_else(|| format!("unexpected redis-benchmark output: {text}"))
}

pub async fn w6(ctx: &mut Ctx) -> Result<(), String> {
    let scenario = format!("1 inst, {PUBLISHERS}x{IN_FLIGHT} in flight");
    for (r, target) in schedule(ctx.args.runs) {
        eprintln!("   W6 run {} {}", r + 1, target.name());
        let kind = ctx.kind(target, &["--allow-anonymous"]);
        let mut cluster = Cluster::start(ctx, &kind, 1).await?;
        let port = cluster.port(0);
        let stats = Arc::new(PublishStats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for k in 0..PUBLISHERS {
            let ws = load::open_client(port, ctx.sources.next(), None, None).await?;
            let plan = Plan {
                channels: vec![format!("w6-{k}")],
                in_flight: IN_FLIGHT,
                rate: None,
                pad: 64,
            };
            tasks.push(tokio::spawn(publisher::run_publisher(
                ws,
                plan,
                stats.clone(),
                stop_rx.clone(),
            )));
        }
        tokio::time::sleep(ctx.warmup()).await;
        let bar = load::progress(
            ctx.window().as_millis() as u64,
            &format!("{} W6: measuring", target.name()),
        );
        let (a0, cpu0, t0) = (
            stats.acked.load(Ordering::Relaxed),
            cluster.cpu_ticks()?,
            Instant::now(),
        );
        while t0.elapsed() < ctx.window() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            bar.set_position(t0.elapsed().as_millis() as u64);
        }
        let (a1, cpu1, secs) = (
            stats.acked.load(Ordering::Relaxed),
            cluster.cpu_ticks()?,
            t0.elapsed().as_secs_f64(),
        );
        bar.finish_and_clear();
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        cluster.check_alive()?;
        let errors = stats.errors.load(Ordering::Relaxed);
        if errors > 0 {
            let first = stats
                .first_error
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            return Err(format!(
                "W6 {}: {errors} publishes failed, first: {first}",
                target.name()
            ));
        }
        let published = (a1 - a0) as f64;
        let cpu_us = (cpu1.saturating_sub(cpu0)) as f64 / ctx.ticks_per_s * 1e6;
        let rps = redis_benchmark(ctx, cluster.redis.port, target)?;
        let res = &mut ctx.results;
        res.record(
            "W6",
            &scenario,
            "publishes/s",
            "1/s",
            target,
            published / secs,
        );
        res.record(
            "W6",
            &scenario,
            "server CPU per publish",
            "µs",
            target,
            cpu_us / published.max(1.0),
        );
        res.record(
            "W6",
            "redis-benchmark -c 64",
            "script (ours) / PUBLISH (floor)",
            "1/s",
            target,
            rps,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rps_is_read_from_quiet_output() {
        let out = "EVAL local x\r\nEVAL: rps=1.0 (overall: 2.0) avg_msec=1\r                                   \rEVAL\nlocal: 45045.04 requests per second, p50=0.543 msec\n";
        assert_eq!(parse_rps(out), Some(45045.04));
        assert_eq!(parse_rps("nothing"), None);
    }

    #[test]
    fn benchmark_commands_use_the_scaler_key_layout() {
        let ours = benchmark_command(Target::Ours, "{}");
        assert_eq!(ours[0], "EVAL");
        assert_eq!(ours[3], "ss:ch:{w6}:meta");
        assert_eq!(ours.len(), 11);
        assert_eq!(benchmark_command(Target::Floor, "{}")[0], "PUBLISH");
    }
}
