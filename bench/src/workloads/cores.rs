//! W8: asks to a core, relayed between instances, beside local asks. Two
//! demo instances on one private Redis; one `counter` core; clients `join`
//! it and send `ask` `get` to it, one in flight each. Relayed: the clients
//! are connected to the instance that does not host the core, so every ask
//! crosses Redis twice (there and back). Local: the same clients on the
//! hosting instance, no backend message at all. The floor has no cores, so
//! W8 measures ours only.

use super::{Cluster, Ctx, measure};
use crate::{
    load::{self, Deliveries, Ws, now_us},
    procs::ServerKind,
    results::Target,
    stats,
};
use serde_json::json;
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio::sync::watch;

const CLIENTS: usize = 50;
const CORE: &str = "bench-core";

/// One client: joins the core, checks the first answer comes from `host`,
/// then keeps one `get` in flight until `stop` flips.
async fn asker(
    mut ws: Ws,
    host: String,
    shared: Arc<Deliveries>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let join = json!({"type":"join","id":1,"core":CORE,"data":{}});
    load::call(&mut ws, 1, join).await?;
    let mut id = 1u64;
    let mut samples = Vec::new();
    loop {
        id += 1;
        let t0 = now_us();
        let frame = json!({"type":"ask","id":id,"core":CORE,"event":"get","data":null});
        let data = tokio::select! {
            _ = stop.changed() => break,
            r = load::call(&mut ws, id, frame) => r?,
        };
        // Once per client: the answer really comes from the core's host
        // (so "relayed" is relayed and "local" is local).
        if id == 2 && data["instance"] != host.as_str() {
            return Err(format!("the core answered from {data}, expected {host}"));
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

/// Spawns the core through instance 0 and returns the index of its host.
async fn spawn_core(ctx: &Ctx, cluster: &Cluster) -> Result<(usize, String), String> {
    let mut ws = load::open_client(cluster.port(0), ctx.sources.next(), None, None).await?;
    let spawn = json!({"type":"ask","id":1,"event":"spawn",
        "data":{"kind":"counter","core":CORE}});
    let reply = load::call(&mut ws, 1, spawn).await?;
    let host = reply["instance"]
        .as_str()
        .ok_or_else(|| format!("spawn replied without an instance: {reply}"))?
        .to_string();
    // `procs::start_server` names instance i+1 `bench-{i+1}`.
    let index = (0..cluster.servers.len())
        .find(|i| host == format!("bench-{}", i + 1))
        .ok_or_else(|| format!("the core runs on {host}, not one of this cluster's instances"))?;
    Ok((index, host))
}

/// One measured phase: `CLIENTS` askers connected to instance `on`.
async fn phase(
    ctx: &mut Ctx,
    cluster: &mut Cluster,
    on: usize,
    host: &str,
    scenario: &str,
) -> Result<(), String> {
    let port = cluster.port(on);
    let label = format!("W8 {scenario}: clients");
    let conns = load::connect_many(CLIENTS, CLIENTS, &ctx.sources, &label, |_| {
        (port, None, None)
    })
    .await?;
    let shared = Arc::new(Deliveries::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| {
            let (host, shared) = (host.to_string(), shared.clone());
            tokio::spawn(asker(ws, host, shared, stop_rx.clone()))
        })
        .collect();
    let label = format!("W8 {scenario}: measuring");
    let w = measure(ctx, cluster, &shared, &label).await?;
    let _ = stop_tx.send(true);
    for t in tasks {
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), t).await {
            return Err(format!("W8 {scenario}: an ask failed: {e}"));
        }
    }
    let samples = std::mem::take(&mut *shared.latencies_us.lock().map_err(|_| "poisoned")?);
    let r = &mut ctx.results;
    let asks = w.deliveries as f64;
    r.record(
        "W8",
        scenario,
        "asks/s",
        "1/s",
        Target::Ours,
        asks / w.seconds,
    );
    r.record(
        "W8",
        scenario,
        "server CPU per ask",
        "µs",
        Target::Ours,
        w.cpu_seconds * 1e6 / asks.max(1.0),
    );
    if let Some(l) = stats::latency(samples) {
        r.record(
            "W8",
            scenario,
            "round trip p50",
            "µs",
            Target::Ours,
            l.p50_us,
        );
        r.record(
            "W8",
            scenario,
            "round trip p99",
            "µs",
            Target::Ours,
            l.p99_us,
        );
    }
    Ok(())
}

pub async fn w8(ctx: &mut Ctx) -> Result<(), String> {
    if !ctx.demo_bin.is_file() {
        let why = format!(
            "W8 skipped: no demo binary at {} (build it with `cargo build --release --example demo`, or pass --demo-bin)",
            ctx.demo_bin.display()
        );
        eprintln!("   {why}");
        ctx.results.skipped.push(why);
        return Ok(());
    }
    let kind = ServerKind::Ours {
        bin: ctx.demo_bin.clone(),
        extra: vec!["--allow-anonymous".into()],
    };
    for run in 0..ctx.args.runs.max(1) {
        eprintln!("   W8 run {} ours (demo)", run + 1);
        let mut cluster = Cluster::start(ctx, &kind, 2).await?;
        let (host, host_id) = spawn_core(ctx, &cluster).await?;
        let other = (host + 1) % 2;
        let relayed = format!("2 inst, {CLIENTS} clients x1, relayed");
        phase(ctx, &mut cluster, other, &host_id, &relayed).await?;
        let local = format!("2 inst, {CLIENTS} clients x1, local");
        phase(ctx, &mut cluster, host, &host_id, &local).await?;
    }
    Ok(())
}
