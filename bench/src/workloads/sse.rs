//! W9: the HTTP fallback beside WebSocket. The same fan-out at a fixed rate
//! (2 instances, subscribers round-robin, one WebSocket publisher on
//! instance 1), once with WebSocket subscribers and once with event-stream
//! subscribers (`GET /sse`, subscribed in their `connect`): delivery latency
//! and server CPU per delivery of each transport. Ours only: the floor has no
//! HTTP fallback.

use super::{
    Cluster, Ctx, SETUP_IN_FLIGHT,
    fanout::{self, CHANNEL},
};
use crate::{
    load::{self, Deliveries, is_message, now_us, timestamp_in},
    results::Target,
};
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, watch},
};

const INSTANCES: usize = 2;
const SUBSCRIBERS: usize = 500;
/// 20 publishes/s to 500 subscribers: 10,000 deliveries/s.
const RATE: f64 = 20.0;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn w9(ctx: &mut Ctx) -> Result<(), String> {
    let scenario = |t: &str| format!("{t}, 2 inst, 500 subs, 10k/s");
    for run in 0..ctx.args.runs.max(1) {
        eprintln!("   W9 run {} websocket", run + 1);
        let o = fanout::run(ctx, Target::Ours, INSTANCES, SUBSCRIBERS, Some(RATE)).await?;
        fanout::record(ctx, "W9", &scenario("WebSocket"), Target::Ours, &o, true);
        eprintln!("   W9 run {} sse", run + 1);
        let o = run_sse(ctx).await?;
        fanout::record(ctx, "W9", &scenario("SSE"), Target::Ours, &o, true);
    }
    Ok(())
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Opens an event stream subscribed to `channel` and reads until its
/// `subscribed` event.
async fn open_stream(
    port: u16,
    src: Ipv4Addr,
    channel: &str,
) -> Result<BufReader<TcpStream>, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let mut stream =
        tokio::time::timeout(STEP_TIMEOUT, socket.connect(([127, 0, 0, 1], port).into()))
            .await
            .map_err(|_| format!("TCP connect to port {port} timed out"))?
            .map_err(|e| format!("TCP connect to port {port}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let connect =
        serde_json::json!({"type":"connect","subscriptions":[{"channel":channel}]}).to_string();
    let req = format!(
        "GET /sse?connect={} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n",
        encode_query(&connect)
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::with_capacity(4096, stream);
    let setup = async {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(format!("GET /sse answered {}", line.trim()));
        }
        loop {
            line.clear();
            if reader
                .read_line(&mut line)
                .await
                .map_err(|e| format!("read: {e}"))?
                == 0
            {
                return Err("the stream ended during setup".to_string());
            }
            if line.contains("\"type\":\"subscribed\"") {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, setup)
        .await
        .map_err(|_| "no subscribed event in time".to_string())??;
    Ok(reader)
}

/// Reads the chunked event stream until `stop` flips: counts `message`
/// events, records latency from the timestamp in `data`.
async fn run_stream(
    mut reader: BufReader<TcpStream>,
    shared: Arc<Deliveries>,
    mut stop: watch::Receiver<bool>,
) {
    let mut samples = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let read = tokio::select! {
            _ = stop.changed() => break,
            read = reader.read_line(&mut line) => read,
        };
        match read {
            Ok(0) | Err(_) => {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(_) => {}
        }
        // Chunk-size lines and blank lines carry no `data:`; an event never
        // spans a chunk (the server writes whole events).
        if let Some(frame) = line.strip_prefix("data: ") {
            if is_message(frame) {
                shared.count.fetch_add(1, Ordering::Relaxed);
                if shared.recording.load(Ordering::Relaxed) {
                    if let Some(sent) = timestamp_in(frame) {
                        samples.push(now_us().saturating_sub(sent));
                    }
                }
            }
        }
    }
    if !samples.is_empty() {
        if let Ok(mut all) = shared.latencies_us.lock() {
            all.extend(samples);
        }
    }
    let _ = reader.get_mut().shutdown().await;
}

async fn run_sse(ctx: &Ctx) -> Result<fanout::Outcome, String> {
    let kind = ctx.kind(Target::Ours, &["--allow-anonymous"]);
    let mut cluster = Cluster::start(ctx, &kind, INSTANCES).await?;
    let label = format!("sse x{INSTANCES}: {SUBSCRIBERS} subscribers");
    let bar = load::progress(SUBSCRIBERS as u64, &label);
    let gate = Arc::new(Semaphore::new(SETUP_IN_FLIGHT));
    let mut opening = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "gate closed")?;
        let (port, src, bar) = (cluster.port(i), ctx.sources.next(), bar.clone());
        opening.push(tokio::spawn(async move {
            let stream = open_stream(port, src, CHANNEL).await;
            drop(permit);
            bar.inc(1);
            stream
        }));
    }
    let mut streams = Vec::with_capacity(SUBSCRIBERS);
    for t in opening {
        streams.push(t.await.map_err(|e| format!("open task: {e}"))??);
    }
    bar.finish_and_clear();
    let (outcome, _) = fanout::publish_and_measure(
        ctx,
        &mut cluster,
        &label,
        SUBSCRIBERS,
        Some(RATE),
        |shared, stop| {
            streams
                .into_iter()
                .map(|s| tokio::spawn(run_stream(s, shared.clone(), stop.clone())))
                .collect()
        },
    )
    .await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::encode_query;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query(r#"{"a":"b c"}"#),
            "%7B%22a%22%3A%22b%20c%22%7D"
        );
    }
}
