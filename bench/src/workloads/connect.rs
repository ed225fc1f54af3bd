//! W5: connect + subscribe rate with JWT (HS256, `--token-secret`), 200 in
//! flight. The floor does no auth: it gets the same tokens and ignores them.

use super::{Cluster, Ctx, schedule};
use crate::{load, procs, results::Target, stats};
use jsonwebtoken::{EncodingKey, Header};
use std::{sync::Arc, time::Instant};
use tokio::sync::Semaphore;

const SECRET: &str = "bench-secret-not-for-production";
const CLIENTS: usize = 4000;
const IN_FLIGHT: usize = 200;

/// An HS256 token for user `sub` that may subscribe and publish anywhere.
pub fn mint(secret: &str, sub: &str, exp: u64) -> Result<String, String> {
    let claims = serde_json::json!({"sub": sub, "exp": exp, "channels": ["*"], "publish": ["*"]});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("mint token: {e}"))
}

/// What one W5 run measured.
struct Outcome {
    rate: f64,
    latency: stats::Latency,
    /// Server CPU (all instances) per connection, µs.
    server_cpu_us: f64,
    /// The Redis's CPU per connection, µs.
    redis_cpu_us: f64,
}

async fn run(ctx: &Ctx, target: Target) -> Result<Outcome, String> {
    let kind = ctx.kind(target, &["--token-secret", SECRET]);
    let mut cluster = Cluster::start(ctx, &kind, 1).await?;
    let port = cluster.port(0);
    let exp = load::now_us() / 1_000_000 + 3600;
    // Minted before the clock starts: the client's signing is not the server's cost.
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|i| mint(SECRET, &format!("user-{i}"), exp))
        .collect::<Result<_, _>>()?;
    let bar = load::progress(
        CLIENTS as u64,
        &format!("{} W5: connect+subscribe", target.name()),
    );
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let server_ticks = cluster.cpu_ticks()?;
    let redis_ticks = procs::cpu_ticks(cluster.redis.pid())?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for (i, token) in tokens.into_iter().enumerate() {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "gate closed")?;
        let (src, bar) = (ctx.sources.next(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let ws = load::open_client(port, src, Some(&token), Some(&format!("room-{}", i % 100)))
                .await;
            let took = t0.elapsed().as_micros() as u64;
            drop(permit);
            bar.inc(1);
            ws.map(|ws| (ws, took))
        }));
    }
    let mut conns = Vec::with_capacity(CLIENTS);
    let mut samples = Vec::with_capacity(CLIENTS);
    for t in tasks {
        let (ws, took) = t.await.map_err(|e| format!("W5 task: {e}"))??;
        conns.push(ws);
        samples.push(took);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_conn_us = |ticks: u64| ticks as f64 / procs::clock_ticks() * 1e6 / CLIENTS as f64;
    let server_cpu_us = per_conn_us(cluster.cpu_ticks()?.saturating_sub(server_ticks));
    let redis_cpu_us =
        per_conn_us(procs::cpu_ticks(cluster.redis.pid())?.saturating_sub(redis_ticks));
    bar.finish_and_clear();
    cluster.check_alive()?;
    drop(conns);
    let latency = stats::latency(samples).ok_or("W5: no samples")?;
    Ok(Outcome {
        rate: CLIENTS as f64 / elapsed,
        latency,
        server_cpu_us,
        redis_cpu_us,
    })
}

pub async fn w5(ctx: &mut Ctx) -> Result<(), String> {
    let scenario = format!("1 inst, {CLIENTS} JWT clients");
    for (r, target) in schedule(ctx.args.runs) {
        eprintln!("   W5 run {} {}", r + 1, target.name());
        let o = run(ctx, target).await?;
        let l = o.latency;
        let res = &mut ctx.results;
        res.record(
            "W5",
            &scenario,
            "connect+subscribe/s",
            "1/s",
            target,
            o.rate,
        );
        res.record(
            "W5",
            &scenario,
            "server CPU per connect",
            "µs",
            target,
            o.server_cpu_us,
        );
        res.record(
            "W5",
            &scenario,
            "Redis CPU per connect",
            "µs",
            target,
            o.redis_cpu_us,
        );
        res.record(
            "W5",
            &scenario,
            "connect+subscribe p50",
            "µs",
            target,
            l.p50_us,
        );
        res.record(
            "W5",
            &scenario,
            "connect+subscribe p99",
            "µs",
            target,
            l.p99_us,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_with_the_secret_only() {
        let token = mint("s3cret", "alice", 4_000_000_000).expect("mint");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.validate_exp = true;
        let ok = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .expect("valid token");
        assert_eq!(ok.claims["sub"], "alice");
        assert_eq!(ok.claims["channels"][0], "*");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"other"),
                &v
            )
            .is_err()
        );
    }
}
