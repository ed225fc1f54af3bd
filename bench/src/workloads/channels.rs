//! W7: 4 instances, 2,000 channels of 5 subscribers each (10,000
//! connections), each subscriber on a pseudo-random instance; one publisher
//! per instance keeps 32 publishes in flight over all channels.
//!
//! Bytes from Redis: the kernel's per-socket count of bytes received
//! (TCP_INFO `bytes_received`, read with `ss -tinp`) on each server process's
//! sockets to the private Redis, before and after the window. This is exact
//! (no sampling, nothing inferred from Redis' own estimates), covers every
//! connection a process has to Redis (pub/sub feed and commands, including
//! publish replies), and counts only Redis traffic, unlike /proc/PID/io
//! `rchar`, which would add the WebSocket traffic.

use super::{Cluster, Ctx, SETUP_IN_FLIGHT, measure_now, schedule};
use crate::{
    load::{self, Deliveries},
    procs,
    publisher::{self, Plan, PublishStats},
};
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

const INSTANCES: usize = 4;
const CHANNELS: usize = 2000;
const PER_CHANNEL: usize = 5;

/// Instance of subscriber `i` (a fixed pseudo-random spread: splitmix64).
pub fn instance_of(i: usize) -> usize {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % INSTANCES as u64) as usize
}

fn redis_bytes(cluster: &Cluster) -> Result<Vec<u64>, String> {
    let by_pid = procs::redis_bytes_by_pid(cluster.redis.port)?;
    Ok(cluster
        .servers
        .iter()
        .map(|s| by_pid.get(&s.pid()).copied().unwrap_or(0))
        .collect())
}

pub async fn w7(ctx: &mut Ctx) -> Result<(), String> {
    let scenario = format!("{INSTANCES} inst, {CHANNELS} ch x {PER_CHANNEL}");
    let channel = |i: usize| format!("ch-{}", i / PER_CHANNEL);
    for (r, target) in schedule(ctx.args.runs) {
        eprintln!("   W7 run {} {}", r + 1, target.name());
        let kind = ctx.kind(target, &["--allow-anonymous"]);
        let mut cluster = Cluster::start(ctx, &kind, INSTANCES).await?;
        let label = format!(
            "{} W7: {} subscribers",
            target.name(),
            CHANNELS * PER_CHANNEL
        );
        let subs = load::connect_many(
            CHANNELS * PER_CHANNEL,
            SETUP_IN_FLIGHT,
            &ctx.sources,
            &label,
            |i| (cluster.port(instance_of(i)), None, Some(channel(i))),
        )
        .await?;
        let shared = Arc::new(Deliveries::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks: Vec<_> = subs
            .into_iter()
            .map(|ws| tokio::spawn(load::run_subscriber(ws, shared.clone(), stop_rx.clone())))
            .collect();
        let stats = Arc::new(PublishStats::default());
        for k in 0..INSTANCES {
            let ws = load::open_client(cluster.port(k), ctx.sources.next(), None, None).await?;
            let channels = (0..CHANNELS)
                .map(|c| format!("ch-{}", (c + k * CHANNELS / INSTANCES) % CHANNELS))
                .collect();
            let plan = Plan {
                channels,
                in_flight: 32,
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
        let b0 = redis_bytes(&cluster)?;
        let w = measure_now(ctx, &mut cluster, &shared, &format!("{label}: measuring")).await?;
        let b1 = redis_bytes(&cluster)?;
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let received: Vec<f64> = b0
            .iter()
            .zip(&b1)
            .map(|(a, b)| b.saturating_sub(*a) as f64 / w.seconds)
            .collect();
        let total: f64 = received.iter().sum();
        let res = &mut ctx.results;
        res.record(
            "W7",
            &scenario,
            "deliveries/s",
            "1/s",
            target,
            w.deliveries as f64 / w.seconds,
        );
        res.record(
            "W7",
            &scenario,
            "server CPU per delivery",
            "µs",
            target,
            w.cpu_seconds * 1e6 / w.deliveries.max(1) as f64,
        );
        res.record(
            "W7",
            &scenario,
            "bytes from Redis per instance",
            "B/s",
            target,
            total / INSTANCES as f64,
        );
        res.record(
            "W7",
            &scenario,
            "bytes from Redis per delivery",
            "B",
            target,
            total * w.seconds / w.deliveries.max(1) as f64,
        );
        res.record(
            "W7",
            &scenario,
            "subscribers closed",
            "count",
            target,
            shared.closed.load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_spread_over_every_instance() {
        let mut counts = [0usize; INSTANCES];
        for i in 0..CHANNELS * PER_CHANNEL {
            counts[instance_of(i)] += 1;
        }
        for c in counts {
            assert!((2000..3000).contains(&c), "{counts:?}");
        }
    }
}
