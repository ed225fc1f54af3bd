//! W1: fan-out at saturation; W2: latency at a fixed delivery rate.
//! Subscribers share one channel, spread round-robin over the instances; one
//! publisher on instance 1 keeps 64 publishes in flight (W1) or publishes at
//! a fixed rate (W2).

use super::{Cluster, Ctx, SETUP_IN_FLIGHT, measure, schedule};
use crate::{
    load::{self, Deliveries},
    publisher::{self, Plan, PublishStats},
    results::Target,
    stats,
};
use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio::{sync::watch, task::JoinHandle};

/// The one channel of every fan-out run.
pub(super) const CHANNEL: &str = "fanout";
/// How long queued messages may take to arrive after publishing stops.
const DRAIN: Duration = Duration::from_secs(10);

pub struct Outcome {
    pub deliveries_per_s: f64,
    pub cpu_us_per_delivery: f64,
    pub server_cores: f64,
    pub client_cores: f64,
    /// Messages received / (publishes acknowledged x subscribers), over the
    /// whole run after a drain: 1.0 when nothing was lost.
    pub delivered_fraction: f64,
    pub latency: Option<stats::Latency>,
    pub closed: u64,
    pub publish_errors: u64,
}

/// One fan-out run against `target`.
pub async fn run(
    ctx: &Ctx,
    target: Target,
    instances: usize,
    subscribers: usize,
    rate: Option<f64>,
) -> Result<Outcome, String> {
    let kind = ctx.kind(target, &["--allow-anonymous"]);
    let mut cluster = Cluster::start(ctx, &kind, instances).await?;
    let label = format!("{} x{instances}: {subscribers} subscribers", target.name());
    let subs = load::connect_many(subscribers, SETUP_IN_FLIGHT, &ctx.sources, &label, |i| {
        (cluster.port(i), None, Some(CHANNEL.to_string()))
    })
    .await?;
    let (outcome, first_error) = publish_and_measure(
        ctx,
        &mut cluster,
        &label,
        subscribers,
        rate,
        |shared, stop| {
            subs.into_iter()
                .map(|ws| tokio::spawn(load::run_subscriber(ws, shared.clone(), stop.clone())))
                .collect()
        },
    )
    .await?;
    if let Some(e) = first_error {
        eprintln!("   {}: a publish failed: {e}", target.name());
    }
    Ok(outcome)
}

/// The measured part of a fan-out run, whatever the subscribers' transport:
/// `spawn_subscribers` starts one task per subscriber that counts deliveries
/// into the shared [`Deliveries`] until the watch flips; one publisher on
/// instance 1 keeps 64 publishes to [`CHANNEL`] in flight (at `rate`
/// publishes/s if given) through the measured window, then stops; queued
/// messages drain and what arrived is counted against publishes acknowledged
/// x `subscribers`. Also answers the first publish error, if any.
pub(super) async fn publish_and_measure(
    ctx: &Ctx,
    cluster: &mut Cluster,
    label: &str,
    subscribers: usize,
    rate: Option<f64>,
    spawn_subscribers: impl FnOnce(Arc<Deliveries>, watch::Receiver<bool>) -> Vec<JoinHandle<()>>,
) -> Result<(Outcome, Option<String>), String> {
    let shared = Arc::new(Deliveries::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_pub_tx, stop_pub_rx) = watch::channel(false);
    let tasks = spawn_subscribers(shared.clone(), stop_rx);
    let publisher_ws = load::open_client(cluster.port(0), ctx.sources.next(), None, None).await?;
    let pub_stats = Arc::new(PublishStats::default());
    let plan = Plan {
        channels: vec![CHANNEL.to_string()],
        in_flight: 64,
        rate,
        pad: 64,
    };
    let publishing = tokio::spawn(publisher::run_publisher(
        publisher_ws,
        plan,
        pub_stats.clone(),
        stop_pub_rx,
    ));
    let window = measure(ctx, cluster, &shared, &format!("{label}: measuring")).await?;
    // Stop publishing, let queued messages drain, then count what arrived.
    let _ = stop_pub_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), publishing).await;
    let expected = pub_stats.acked.load(Ordering::Relaxed) * subscribers as u64;
    let drain_until = std::time::Instant::now() + DRAIN;
    while shared.count.load(Ordering::Relaxed) < expected && std::time::Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = shared.count.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let samples = std::mem::take(&mut *shared.latencies_us.lock().map_err(|_| "poisoned")?);
    let first_error = pub_stats.first_error.lock().ok().and_then(|e| e.clone());
    let outcome = Outcome {
        deliveries_per_s: window.deliveries as f64 / window.seconds,
        cpu_us_per_delivery: window.cpu_seconds * 1e6 / (window.deliveries.max(1) as f64),
        server_cores: window.cpu_seconds / window.seconds,
        client_cores: window.client_cpu_seconds / window.seconds,
        delivered_fraction: delivered as f64 / expected.max(1) as f64,
        latency: stats::latency(samples),
        closed: shared.closed.load(Ordering::Relaxed),
        publish_errors: pub_stats.errors.load(Ordering::Relaxed),
    };
    Ok((outcome, first_error))
}

pub(super) fn record(
    ctx: &mut Ctx,
    w: &str,
    scenario: &str,
    target: Target,
    o: &Outcome,
    p999: bool,
) {
    let mut rows = vec![
        ("deliveries/s", "1/s", o.deliveries_per_s),
        ("server CPU per delivery", "µs", o.cpu_us_per_delivery),
    ];
    if let Some(l) = o.latency {
        rows.push(("latency p50", "µs", l.p50_us));
        rows.push(("latency p99", "µs", l.p99_us));
        if p999 {
            rows.push(("latency p999", "µs", l.p999_us));
        }
    }
    rows.extend([
        ("server CPU", "cores", o.server_cores),
        ("load client CPU", "cores", o.client_cores),
        ("delivered / expected", "fraction", o.delivered_fraction),
        ("subscribers closed", "count", o.closed as f64),
        ("publish errors", "count", o.publish_errors as f64),
    ]);
    for (name, unit, value) in rows {
        ctx.results.record(w, scenario, name, unit, target, value);
    }
}

pub async fn w1(ctx: &mut Ctx) -> Result<(), String> {
    for instances in [1, 2] {
        let scenario = format!("{instances} inst, 1000 subs");
        for (run, target) in schedule(ctx.args.runs) {
            eprintln!("   W1 {scenario} run {} {}", run + 1, target.name());
            let o = self::run(ctx, target, instances, 1000, None).await?;
            record(ctx, "W1", &scenario, target, &o, false);
        }
    }
    Ok(())
}

/// 40,000 deliveries/s over 2,000 subscribers: 20 publishes/s.
pub async fn w2(ctx: &mut Ctx) -> Result<(), String> {
    let scenario = "2 inst, 2000 subs, 40k/s";
    for (run, target) in schedule(ctx.args.runs) {
        eprintln!("   W2 run {} {}", run + 1, target.name());
        let o = self::run(ctx, target, 2, 2000, Some(20.0)).await?;
        record(ctx, "W2", scenario, target, &o, true);
    }
    Ok(())
}
