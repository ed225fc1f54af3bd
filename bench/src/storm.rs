//! The reconnect storm: three instances on a private Redis, N clients on
//! instance A, a publisher on B; A is killed (SIGKILL) and every client
//! reconnects to the survivors (alternating B and C, as a load balancer
//! would) with full-jitter exponential backoff, the JavaScript client's
//! (`backoffDelay`: uniform in `[0, min(max, min·2^(attempt+1))]`).
//!
//! Half the clients resume with their positions (`subscriptions` in
//! `connect`, with the offset and epoch of the last message seen): each of
//! them must get every publication, in order, with no gap. The others
//! subscribe afresh. The run measures the time from the kill until 50 %,
//! 99 % and 100 % are back (welcomed and subscribed), the failed connection
//! attempts (an error of any kind: the server must make a storm wait, never
//! fail), the losses, and the survivors' peak memory and CPU.

use crate::{
    load::{self, Sources, Ws},
    procs::{self, Proc, ServerKind},
};
use futures_util::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use rand::Rng;
use serde::Serialize;
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// How one storm is run.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// The `scaled-sockets` binary.
    pub server_bin: PathBuf,
    /// The `redis-server` binary.
    pub redis_server: String,
    /// Clients on the instance that is killed.
    pub clients: usize,
    /// Channels the clients spread over (client `i` on `storm-{i % channels}`).
    pub channels: usize,
    /// Loopback source addresses for the client sockets.
    pub source_addrs: u8,
    /// Extra flags for every instance (e.g. `--max-handshakes 8`).
    pub server_flags: Vec<String>,
    /// Where the servers' and Redis's logs go.
    pub logs: PathBuf,
    /// Pause between two publishes of the publisher.
    pub publish_every: Duration,
    /// Give up waiting for the clients to come back after this long.
    pub give_up_after: Duration,
    /// First reconnect's backoff ceiling is twice this (JS client: 200 ms).
    pub backoff_min: Duration,
    /// Backoff ceiling (JS client: 10 s).
    pub backoff_max: Duration,
    /// Show progress bars.
    pub progress: bool,
}

impl StormConfig {
    /// The defaults: the JavaScript client's backoff, 100 channels, one
    /// publish every 20 ms.
    pub fn new(server_bin: PathBuf, logs: PathBuf, clients: usize) -> Self {
        Self {
            server_bin,
            redis_server: "redis-server".into(),
            clients,
            channels: 100,
            source_addrs: 16,
            server_flags: Vec::new(),
            logs,
            publish_every: Duration::from_millis(20),
            give_up_after: Duration::from_secs(60),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            progress: false,
        }
    }
}

/// Peak use of one surviving instance during the storm.
#[derive(Debug, Clone, Serialize)]
pub struct Survivor {
    pub name: String,
    /// RSS just before the kill.
    pub rss_before_bytes: u64,
    /// Highest RSS seen from the kill until every client was back.
    pub peak_rss_bytes: u64,
    /// Highest CPU use over one sampling period (100 % = one core).
    pub peak_cpu_percent: f64,
    /// CPU time used from the kill until every client was back.
    pub cpu_seconds: f64,
}

/// What one storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub clients: usize,
    /// Clients back on a survivor (welcomed and subscribed).
    pub back: usize,
    /// Milliseconds from the kill until 50 %, 99 % and 100 % were back
    /// (`None`: not reached).
    pub t50_ms: Option<f64>,
    pub t99_ms: Option<f64>,
    pub t100_ms: Option<f64>,
    /// Connection attempts that failed (refused, closed, timed out, error).
    pub failed_connections: u64,
    /// The first few failures' messages.
    pub failure_samples: Vec<String>,
    /// Clients that resumed with their positions.
    pub position_clients: usize,
    /// Publications those clients never got (gaps and a short tail).
    pub lost: u64,
    /// Of those clients, the ones answered `recovered:false` or a new epoch.
    pub not_recovered: u64,
    /// Publications out of order or twice (for position clients).
    pub out_of_order: u64,
    /// Publications made during the run, and publishes that failed.
    pub published: u64,
    pub publish_errors: u64,
    pub survivors: Vec<Survivor>,
    /// Medians, in ms after the kill, of when clients noticed the lost
    /// connection, started their successful attempt, had the WebSocket open,
    /// and were back: where the time goes.
    pub phases_median_ms: [f64; 4],
}

impl StormReport {
    /// Whether the run met the bar: all back, no failure, nothing lost.
    pub fn passed(&self, within: Duration) -> bool {
        self.back == self.clients
            && self
                .t100_ms
                .is_some_and(|t| t <= within.as_secs_f64() * 1000.0)
            && self.failed_connections == 0
            && self.lost == 0
            && self.not_recovered == 0
            && self.out_of_order == 0
    }
}

/// A channel's stream position as a client last saw it.
#[derive(Debug, Clone, Default)]
struct Position {
    offset: u64,
    epoch: String,
}

impl Position {
    /// Moves to a delivered publication. When `checked`, it must be the next
    /// offset of the same epoch: a jump counts the skipped publications as
    /// lost, a new epoch as not recovered, an old offset as out of order
    /// (and is ignored).
    fn advance(&mut self, offset: u64, epoch: &str, checked: bool, shared: &Shared) {
        if epoch != self.epoch {
            if checked {
                shared.not_recovered.fetch_add(1, Ordering::Relaxed);
            }
            *self = Position {
                offset,
                epoch: epoch.to_owned(),
            };
            return;
        }
        if offset <= self.offset {
            if checked {
                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if checked && offset > self.offset + 1 {
            shared
                .lost
                .fetch_add(offset - self.offset - 1, Ordering::Relaxed);
        }
        self.offset = offset;
    }
}

/// What every client task reports into.
#[derive(Debug, Default)]
struct Shared {
    back: AtomicUsize,
    failed: AtomicU64,
    failure_samples: Mutex<Vec<String>>,
    /// Milliseconds after the kill at which each client was back.
    back_ms: Mutex<Vec<f64>>,
    /// Where each client's time went, in ms after the kill: the lost
    /// connection noticed, the successful attempt started, its WebSocket
    /// open (TCP + upgrade answered), welcomed and subscribed (= back).
    phases: Mutex<Vec<[f64; 4]>>,
    lost: AtomicU64,
    not_recovered: AtomicU64,
    out_of_order: AtomicU64,
}

impl Shared {
    fn failure(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.failure_samples.lock() {
            if s.len() < 5 {
                s.push(message);
            }
        }
    }
}

/// The signals the driver gives every client task.
#[derive(Debug, Clone)]
struct Signals {
    /// Set at the kill.
    killed_at: Arc<Mutex<Option<Instant>>>,
    /// The latest offset of every channel once the publisher has stopped.
    tops: watch::Receiver<Option<Arc<Vec<u64>>>>,
}

/// One simulated client.
struct Client {
    index: usize,
    channel_index: usize,
    channel: String,
    /// Resumes with its position (and is checked for losses).
    positions: bool,
    pos: Position,
    ws: Ws,
}

/// Parses a text frame; the bench's own frames are always JSON.
fn parse(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("bad frame {text}: {e}"))
}

impl Client {
    /// Applies one `message` push: it must be the next offset of the epoch
    /// the client holds (checked for position clients only, as the others
    /// accept a gap at their fresh subscribe).
    fn on_message(&mut self, v: &serde_json::Value, shared: &Shared) {
        if v["channel"] != self.channel.as_str() {
            return;
        }
        let offset = v["offset"].as_u64().unwrap_or(0);
        let epoch = v["epoch"].as_str().unwrap_or_default();
        self.pos.advance(offset, epoch, self.positions, shared);
    }

    /// Handles frames until the socket ends (the instance died) or, once the
    /// tops are known, until the client has seen its channel's top.
    async fn pump(&mut self, shared: &Shared, tops: &mut watch::Receiver<Option<Arc<Vec<u64>>>>) {
        loop {
            let top = tops.borrow().as_ref().map(|t| t[self.channel_index]);
            if let Some(top) = top {
                if self.pos.offset >= top {
                    return;
                }
            }
            tokio::select! {
                changed = tops.changed(), if top.is_none() => {
                    if changed.is_err() {
                        return;
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(v) = parse(&t) else { continue };
                        match v["type"].as_str() {
                            Some("message") => self.on_message(&v, shared),
                            Some("ping") => {
                                let _ = self.ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    }

    /// Sends `connect` (with the position for position clients), then either
    /// waits for the `subscribed` push or subscribes afresh. Replayed
    /// messages that follow are handled by [`Client::pump`].
    async fn resume(&mut self, shared: &Shared) -> Result<(), String> {
        let connect = if self.positions && !self.pos.epoch.is_empty() {
            serde_json::json!({"type":"connect","subscriptions":[
                {"channel":self.channel,"offset":self.pos.offset,"epoch":self.pos.epoch}]})
        } else {
            serde_json::json!({"type":"connect"})
        };
        self.send(connect).await?;
        self.expect("welcome", |_| Ok(())).await?;
        if self.positions && !self.pos.epoch.is_empty() {
            let channel = self.channel.clone();
            let held = self.pos.epoch.clone();
            let v = self
                .expect("subscribed", |v| {
                    if v["channel"] == channel.as_str() {
                        Ok(())
                    } else {
                        Err(format!("subscribed to another channel: {v}"))
                    }
                })
                .await?;
            if v["recovered"] != true || v["epoch"] != held.as_str() {
                shared.not_recovered.fetch_add(1, Ordering::Relaxed);
                self.pos.epoch = v["epoch"].as_str().unwrap_or_default().to_owned();
                self.pos.offset = v["offset"].as_u64().unwrap_or(0);
            }
            return Ok(());
        }
        self.subscribe().await
    }

    /// Plain subscribe; the reply's offset and epoch become the position.
    async fn subscribe(&mut self) -> Result<(), String> {
        self.send(serde_json::json!({"type":"subscribe","id":1,"channel":self.channel}))
            .await?;
        let v = self
            .expect("reply", |v| {
                if v["id"] == 1 {
                    Ok(())
                } else {
                    Err(format!("unexpected answer {v}"))
                }
            })
            .await?;
        self.pos = Position {
            offset: v["offset"].as_u64().unwrap_or(0),
            epoch: v["epoch"].as_str().unwrap_or_default().to_owned(),
        };
        Ok(())
    }

    async fn send(&mut self, frame: serde_json::Value) -> Result<(), String> {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// Reads until a frame of type `kind` (checked by `check`); an `error`
    /// frame, a close, or 20 s without it is a failure.
    async fn expect(
        &mut self,
        kind: &str,
        check: impl Fn(&serde_json::Value) -> Result<(), String>,
    ) -> Result<serde_json::Value, String> {
        let read = async {
            while let Some(msg) = self.ws.next().await {
                let text = match msg.map_err(|e| format!("waiting for {kind}: {e}"))? {
                    Message::Text(t) => t,
                    Message::Close(c) => {
                        return Err(format!("closed while waiting for {kind}: {c:?}"));
                    }
                    _ => continue,
                };
                let v = parse(&text)?;
                match v["type"].as_str() {
                    Some(t) if t == kind => return check(&v).map(|()| v),
                    Some("error") => return Err(format!("waiting for {kind}: {v}")),
                    Some("ping") => {
                        let _ = self.ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    }
                    _ => {}
                }
            }
            Err(format!("connection ended while waiting for {kind}"))
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .map_err(|_| format!("no {kind} within 20 s"))?
    }
}

/// Full jitter: uniform in `[0, min(max, min·2^(attempt+1))]`.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let cap = min
        .saturating_mul(1u32 << attempt.saturating_add(1).min(20))
        .min(max);
    let micros = cap.as_micros() as u64;
    Duration::from_micros(rand::rng().random_range(0..=micros))
}

/// One client's life: on A until it dies, then back on B or C.
async fn client_task(
    mut client: Client,
    survivors: [u16; 2],
    sources: Arc<Sources>,
    shared: Arc<Shared>,
    mut signals: Signals,
    cfg: Arc<StormConfig>,
) {
    client.pump(&shared, &mut signals.tops).await;
    if signals.tops.borrow().is_some() {
        // The run ended before A was killed (it failed elsewhere).
        return;
    }
    let killed_at = signals.killed_at.lock().ok().and_then(|k| *k);
    let since_kill = || killed_at.map_or(0.0, |at| at.elapsed().as_secs_f64() * 1000.0);
    let noticed = since_kill();
    let mut started;
    let mut opened = 0.0;
    let mut attempt = 0u32;
    loop {
        tokio::time::sleep(backoff(attempt, cfg.backoff_min, cfg.backoff_max)).await;
        let port = survivors[(client.index + attempt as usize) % 2];
        started = since_kill();
        let outcome = async {
            client.ws = load::open(port, sources.next()).await?;
            opened = since_kill();
            client.resume(&shared).await
        }
        .await;
        match outcome {
            Ok(()) => break,
            Err(e) => {
                shared.failure(format!("client {} to port {port}: {e}", client.index));
                attempt = attempt.saturating_add(1);
                if attempt > 30 {
                    return;
                }
            }
        }
    }
    let back = since_kill();
    if let Ok(mut b) = shared.back_ms.lock() {
        b.push(back);
    }
    if let Ok(mut p) = shared.phases.lock() {
        p.push([noticed, started, opened, back]);
    }
    shared.back.fetch_add(1, Ordering::Relaxed);
    client.pump(&shared, &mut signals.tops).await;
    if client.positions {
        if let Some(tops) = signals.tops.borrow().as_ref() {
            let top = tops[client.channel_index];
            if client.pos.offset < top {
                shared
                    .lost
                    .fetch_add(top - client.pos.offset, Ordering::Relaxed);
            }
        }
    }
    let _ = client.ws.close(None).await;
}

/// Publishes to every channel in turn on one connection, one publish in
/// flight, until `stop`; keeps the latest offset of each channel.
async fn publisher(
    mut ws: Ws,
    channels: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> Vec<u64> {
    let mut tops = vec![0u64; channels];
    let mut id = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        id += 1;
        let ch = (id as usize) % channels;
        let frame = serde_json::json!({"type":"publish","id":id,"channel":format!("storm-{ch}"),
            "data":{"t":load::now_us()}});
        match publish(&mut ws, id, frame).await {
            Ok(v) => {
                if let Some(offset) = v["offset"].as_u64() {
                    tops[ch] = tops[ch].max(offset);
                }
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = ws.close(None).await;
    tops
}

/// Sends one publish and returns its reply (the publisher subscribes to
/// nothing, so the next text frame other than a ping is the answer).
async fn publish(
    ws: &mut Ws,
    id: u64,
    frame: serde_json::Value,
) -> Result<serde_json::Value, String> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let read = async {
        while let Some(msg) = ws.next().await {
            let Message::Text(t) = msg.map_err(|e| format!("publisher: {e}"))? else {
                continue;
            };
            let v = parse(&t)?;
            if v["type"] == "ping" {
                let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
            } else if v["id"] == id {
                return if v["type"] == "reply" {
                    Ok(v)
                } else {
                    Err(format!("publish {id}: {v}"))
                };
            }
        }
        Err("publisher connection ended".to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| format!("publish {id}: no answer within 10 s"))?
}

/// Samples RSS and CPU of the survivors every 100 ms until `stop`.
async fn sample(
    pids: Vec<(String, u32)>,
    ticks_per_s: f64,
    stop: Arc<AtomicBool>,
) -> Vec<Survivor> {
    let mut out: Vec<Survivor> = pids
        .iter()
        .map(|(name, pid)| Survivor {
            name: name.clone(),
            rss_before_bytes: procs::rss_bytes(*pid).unwrap_or(0),
            peak_rss_bytes: 0,
            peak_cpu_percent: 0.0,
            cpu_seconds: 0.0,
        })
        .collect();
    let start: Vec<u64> = pids
        .iter()
        .map(|(_, pid)| procs::cpu_ticks(*pid).unwrap_or(0))
        .collect();
    let mut last = start.clone();
    let mut last_at = Instant::now();
    loop {
        let done = stop.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let dt = now.duration_since(last_at).as_secs_f64();
        last_at = now;
        for (i, (_, pid)) in pids.iter().enumerate() {
            if let Ok(rss) = procs::rss_bytes(*pid) {
                out[i].peak_rss_bytes = out[i].peak_rss_bytes.max(rss);
            }
            if let Ok(ticks) = procs::cpu_ticks(*pid) {
                let pct = (ticks.saturating_sub(last[i]) as f64 / ticks_per_s) / dt * 100.0;
                out[i].peak_cpu_percent = out[i].peak_cpu_percent.max(pct);
                out[i].cpu_seconds = ticks.saturating_sub(start[i]) as f64 / ticks_per_s;
                last[i] = ticks;
            }
        }
        if done {
            return out;
        }
    }
}

/// The time by which `share` of `n` clients were back, from sorted times.
fn time_for(sorted_ms: &[f64], n: usize, share: f64) -> Option<f64> {
    let need = ((n as f64) * share).ceil().max(1.0) as usize;
    sorted_ms.get(need - 1).copied()
}

/// Runs one storm.
pub async fn run(cfg: StormConfig) -> Result<StormReport, String> {
    let cfg = Arc::new(cfg);
    std::fs::create_dir_all(&cfg.logs)
        .map_err(|e| format!("create {}: {e}", cfg.logs.display()))?;
    // Client sockets (the old ones close as the new ones open) and the
    // servers' sockets all live on this machine.
    procs::raise_nofile((cfg.clients as u64) * 3 + 4096);
    let redis = procs::start_redis(&cfg.redis_server, &cfg.logs).await?;
    let kind = ServerKind::Ours {
        bin: cfg.server_bin.clone(),
        extra: ["--allow-anonymous"]
            .iter()
            .map(|s| s.to_string())
            .chain(cfg.server_flags.iter().cloned())
            .collect(),
    };
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(procs::start_server(&kind, i, redis.port, &cfg.logs).await?);
    }
    let outcome = storm(&cfg, &mut servers).await;
    drop(servers);
    drop(redis);
    outcome
}

async fn storm(cfg: &Arc<StormConfig>, servers: &mut [Proc]) -> Result<StormReport, String> {
    let sources = Arc::new(Sources::new(cfg.source_addrs));
    let (a, b, c) = (servers[0].port, servers[1].port, servers[2].port);
    let shared = Arc::new(Shared::default());
    let (tops_tx, tops_rx) = watch::channel(None);
    let signals = Signals {
        killed_at: Arc::new(Mutex::new(None)),
        tops: tops_rx,
    };

    // The publisher first, so every channel has a stream before anyone
    // subscribes.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publish_errors = Arc::new(AtomicU64::new(0));
    let mut pub_ws = load::open(b, sources.next()).await?;
    load::handshake(&mut pub_ws, None).await?;
    let publisher = tokio::spawn(publisher(
        pub_ws,
        cfg.channels,
        cfg.publish_every,
        stop_publishing.clone(),
        publish_errors.clone(),
    ));

    // Every client on A, at most 100 setting up at once.
    let bar = if cfg.progress {
        load::progress(cfg.clients as u64, "storm: clients on instance A")
    } else {
        ProgressBar::hidden()
    };
    let gate = Arc::new(Semaphore::new(100));
    let mut setups = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "setup gate closed".to_string())?;
        let src = sources.next();
        let bar = bar.clone();
        let channel_index = i % cfg.channels;
        setups.push(tokio::spawn(async move {
            let ws = load::open(a, src).await?;
            let mut client = Client {
                index: i,
                channel_index,
                channel: format!("storm-{channel_index}"),
                positions: i % 2 == 0,
                pos: Position::default(),
                ws,
            };
            load::handshake(&mut client.ws, None).await?;
            client.subscribe().await?;
            drop(permit);
            bar.inc(1);
            Ok::<Client, String>(client)
        }));
    }
    let mut tasks = Vec::with_capacity(cfg.clients);
    for s in setups {
        let client = s.await.map_err(|e| format!("setup task: {e}"))??;
        tasks.push(tokio::spawn(client_task(
            client,
            [b, c],
            sources.clone(),
            shared.clone(),
            signals.clone(),
            cfg.clone(),
        )));
    }
    bar.finish_and_clear();
    // Let positions move before the kill.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for s in servers.iter_mut() {
        s.check_alive()?;
    }

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(
        vec![
            (servers[1].name.clone(), servers[1].pid()),
            (servers[2].name.clone(), servers[2].pid()),
        ],
        procs::clock_ticks(),
        stop_sampling.clone(),
    ));
    if let Ok(mut k) = signals.killed_at.lock() {
        *k = Some(Instant::now());
    }
    let killed = Instant::now();
    servers[0].kill();

    let bar = if cfg.progress {
        load::progress(cfg.clients as u64, "storm: back on B and C")
    } else {
        ProgressBar::hidden()
    };
    while shared.back.load(Ordering::Relaxed) < cfg.clients && killed.elapsed() < cfg.give_up_after
    {
        bar.set_position(shared.back.load(Ordering::Relaxed) as u64);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    stop_sampling.store(true, Ordering::Relaxed);
    let survivors = sampler.await.map_err(|e| format!("sampler: {e}"))?;
    for s in servers[1..].iter_mut() {
        s.check_alive()?;
    }

    // Publish a little longer on the new connections, then stop and tell
    // every client the tops it must reach.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_publishing.store(true, Ordering::Relaxed);
    let tops = publisher.await.map_err(|e| format!("publisher: {e}"))?;
    let published: u64 = tops.iter().sum();
    let _ = tops_tx.send(Some(Arc::new(tops)));
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            shared.failure(
                "a client did not reach its channel's last publication within 10 s".into(),
            );
        }
    }

    let phases = shared.phases.lock().map(|p| p.clone()).unwrap_or_default();
    let phase_median = |i: usize| {
        let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let phases_median_ms = [0, 1, 2, 3].map(phase_median);
    let mut back_ms = shared.back_ms.lock().map(|b| b.clone()).unwrap_or_default();
    back_ms.sort_by(f64::total_cmp);
    let n = cfg.clients;
    let back = shared.back.load(Ordering::Relaxed);
    let reached = |share: f64| time_for(&back_ms, n, share);
    Ok(StormReport {
        clients: n,
        back,
        t50_ms: reached(0.5),
        t99_ms: reached(0.99),
        t100_ms: reached(1.0),
        failed_connections: shared.failed.load(Ordering::Relaxed),
        failure_samples: shared
            .failure_samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        position_clients: n.div_ceil(2),
        lost: shared.lost.load(Ordering::Relaxed),
        not_recovered: shared.not_recovered.load(Ordering::Relaxed),
        out_of_order: shared.out_of_order.load(Ordering::Relaxed),
        published,
        publish_errors: publish_errors.load(Ordering::Relaxed),
        survivors,
        phases_median_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_growing_cap() {
        let min = Duration::from_millis(200);
        let max = Duration::from_secs(10);
        let first: Vec<_> = (0..200).map(|_| backoff(0, min, max)).collect();
        assert!(first.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(first.iter().any(|d| *d < Duration::from_millis(100)));
        assert!((0..200).all(|_| backoff(30, min, max) <= max));
    }

    #[test]
    fn positions_count_gaps_epochs_and_repeats() {
        let shared = Shared::default();
        let mut pos = Position {
            offset: 5,
            epoch: "e".into(),
        };
        pos.advance(6, "e", true, &shared);
        assert_eq!(pos.offset, 6);
        pos.advance(9, "e", true, &shared);
        assert_eq!(shared.lost.load(Ordering::Relaxed), 2, "7 and 8 skipped");
        pos.advance(9, "e", true, &shared);
        pos.advance(4, "e", true, &shared);
        assert_eq!(shared.out_of_order.load(Ordering::Relaxed), 2);
        assert_eq!(pos.offset, 9);
        pos.advance(1, "f", true, &shared);
        assert_eq!(shared.not_recovered.load(Ordering::Relaxed), 1);
        assert_eq!((pos.offset, pos.epoch.as_str()), (1, "f"));
        // Unchecked (fresh subscribers): follows along, counts nothing.
        let quiet = Shared::default();
        pos.advance(7, "f", false, &quiet);
        pos.advance(3, "g", false, &quiet);
        assert_eq!(quiet.lost.load(Ordering::Relaxed), 0);
        assert_eq!(quiet.not_recovered.load(Ordering::Relaxed), 0);
        assert_eq!(pos.offset, 3);
    }

    #[test]
    fn shares_are_read_from_sorted_times() {
        let times: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(time_for(&times, 100, 0.5), Some(50.0));
        assert_eq!(time_for(&times, 100, 0.99), Some(99.0));
        assert_eq!(time_for(&times, 100, 1.0), Some(100.0));
        assert_eq!(time_for(&times[..90], 100, 1.0), None);
    }
}
