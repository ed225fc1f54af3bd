//! W4: ask round trips against the demo example's `echo` handler. The floor
//! has no asks, so W4 measures ours only.

use super::{Cluster, Ctx, measure};
use crate::{
    load::{self, Deliveries, Ws, now_us},
    results::Target,
    stats,
};
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio::sync::watch;

const CLIENTS: usize = 50;

/// One client: one ask in flight at a time, until `stop` flips.
async fn asker(
    mut ws: Ws,
    shared: Arc<Deliveries>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut id = 0u64;
    let mut samples = Vec::new();
    loop {
        id += 1;
        let t0 = now_us();
        let frame = serde_json::json!({"type":"ask","id":id,"event":"echo","data":{"n":id}});
        tokio::select! {
            _ = stop.changed() => break,
            r = load::command(&mut ws, id, frame) => r?,
        }
        shared.count.fetch_add(1, Ordering::Relaxed);
        if shared.recording.load(Ordering::Relaxed) {
            samples.push(now_us().saturating_sub(t0));
        }
    }
    if let Ok(mut all) = shared.latencies_us.lock() {
        all.extend(samples);
    }
    Ok(())
}

pub async fn w4(ctx: &mut Ctx) -> Result<(), String> {
    if !ctx.demo_bin.is_file() {
        let why = format!(
            "W4 skipped: no demo binary at {} (build it with `cargo build --release --example demo`, or pass --demo-bin)",
            ctx.demo_bin.display()
        );
        eprintln!("   {why}");
        ctx.results.skipped.push(why);
        return Ok(());
    }
    let scenario = format!("1 inst, {CLIENTS} clients x1");
    for run in 0..ctx.args.runs.max(1) {
        eprintln!("   W4 run {} ours (demo)", run + 1);
        let kind = crate::procs::ServerKind::Ours {
            bin: ctx.demo_bin.clone(),
            extra: vec!["--allow-anonymous".into()],
        };
        let mut cluster = Cluster::start(ctx, &kind, 1).await?;
        let port = cluster.port(0);
        let conns = load::connect_many(CLIENTS, CLIENTS, &ctx.sources, "W4 clients", |_| {
            (port, None, None)
        })
        .await?;
        let shared = Arc::new(Deliveries::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|ws| tokio::spawn(asker(ws, shared.clone(), stop_rx.clone())))
            .collect();
        let w = measure(ctx, &mut cluster, &shared, "W4 asks: measuring").await?;
        let _ = stop_tx.send(true);
        for t in tasks {
            if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), t).await {
                return Err(format!("W4: an ask failed: {e}"));
            }
        }
        let samples = std::mem::take(&mut *shared.latencies_us.lock().map_err(|_| "poisoned")?);
        let r = &mut ctx.results;
        r.record(
            "W4",
            &scenario,
            "asks/s",
            "1/s",
            Target::Ours,
            w.deliveries as f64 / w.seconds,
        );
        r.record(
            "W4",
            &scenario,
            "server CPU per ask",
            "µs",
            Target::Ours,
            w.cpu_seconds * 1e6 / w.deliveries.max(1) as f64,
        );
        if let Some(l) = stats::latency(samples) {
            r.record(
                "W4",
                &scenario,
                "round trip p50",
                "µs",
                Target::Ours,
                l.p50_us,
            );
            r.record(
                "W4",
                &scenario,
                "round trip p99",
                "µs",
                Target::Ours,
                l.p99_us,
            );
        }
    }
    Ok(())
}
