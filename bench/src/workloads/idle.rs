//! W3: idle memory. N welcomed clients, each subscribed to one of 100 rooms
//! (as examples/idle_connections.rs does); server RSS growth divided by N.

use super::{Cluster, Ctx, schedule};
use crate::{load, procs, results::Target};
use std::{
    sync::{Arc, atomic::AtomicU64, atomic::Ordering},
    time::Duration,
};
use tokio::sync::watch;

/// Time for allocators and queues to settle before reading RSS.
const SETTLE: Duration = Duration::from_secs(2);

async fn run(ctx: &Ctx, target: Target, n: usize) -> Result<f64, String> {
    let kind = ctx.kind(target, &["--allow-anonymous"]);
    let mut cluster = Cluster::start(ctx, &kind, 1).await?;
    let port = cluster.port(0);
    // Warm the server with one client first, so one-time allocations are not
    // charged to the N.
    let warm = load::open_client(port, ctx.sources.next(), None, Some("room-0")).await?;
    tokio::time::sleep(SETTLE).await;
    let pid = cluster.servers[0].pid();
    let before = procs::rss_bytes(pid)?;
    let label = format!("{} W3: {n} idle clients", target.name());
    let conns = load::connect_many(n, super::SETUP_IN_FLIGHT, &ctx.sources, &label, |i| {
        (port, None, Some(format!("room-{}", i % 100)))
    })
    .await?;
    let closed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| tokio::spawn(load::run_idle(ws, closed.clone(), stop_rx.clone())))
        .collect();
    tokio::time::sleep(SETTLE).await;
    cluster.check_alive()?;
    let after = procs::rss_bytes(pid)?;
    let lost = closed.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    drop(warm);
    if lost > 0 {
        return Err(format!(
            "{}: {lost} idle connections were closed by the server",
            target.name()
        ));
    }
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

pub async fn w3(ctx: &mut Ctx) -> Result<(), String> {
    for n in ctx.args.idle_conns.clone() {
        let scenario = format!("{n} idle conns");
        for (r, target) in schedule(ctx.args.runs) {
            eprintln!("   W3 {scenario} run {} {}", r + 1, target.name());
            let per_conn = run(ctx, target, n).await?;
            ctx.results.record(
                "W3",
                &scenario,
                "RSS per connection",
                "bytes",
                target,
                per_conn,
            );
        }
    }
    Ok(())
}
