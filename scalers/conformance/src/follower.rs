//! A subscriber that behaves like a client under backend failures, for the
//! failover tests of every backend (Redis Cluster, Sentinel, NATS cluster):
//! it keeps its position, repairs gaps from history (after `Resumed` or an
//! offset jump) and records every `recovered: false`, so a test can check
//! that no acknowledged publication vanished silently.

use bytes::Bytes;
use scaled_sockets_scaler::{
    Feed, FeedControl, FeedEvent, HistoryRequest, PublishOptions, Scaler, StreamPosition, Topic,
};
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{
    task::JoinHandle,
    time::{Instant, sleep, timeout},
};

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Payloads received (live or recovered), in order.
    pub received: Vec<String>,
    /// Every `recovered: false`: the top it moved to.
    pub lost_until: Vec<StreamPosition>,
    /// Its position: the last publication it has.
    pub pos: Option<StreamPosition>,
    pub interruptions: usize,
    /// Control events and recoveries, for the failure message.
    pub log: Vec<String>,
}

impl Seen {
    /// True when a `recovered: false` covers a publication at `at`.
    pub fn reported(&self, at: &StreamPosition) -> bool {
        self.lost_until
            .iter()
            .any(|top| top.epoch != at.epoch || at.offset <= top.offset)
    }

    /// Fails unless every publication of `acked` was received or covered by
    /// a `recovered: false` (none vanished silently); `who` names the
    /// subscriber in the failure.
    pub fn assert_accounted_for(&self, acked: &[Acked], who: &str) {
        let got: HashSet<&str> = self.received.iter().map(String::as_str).collect();
        for a in acked {
            assert!(
                got.contains(a.payload.as_str()) || self.reported(&a.at),
                "{who}: acknowledged {} at {:?} neither delivered nor reported lost",
                a.payload,
                a.at
            );
        }
    }
}

/// Waits up to `within` for `seen` to have received `payload`; false if it
/// did not.
pub async fn wait_received(seen: &Mutex<Seen>, payload: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !seen.lock().unwrap().received.iter().any(|p| p == payload) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Repairs a subscriber's gap from history, as a client does.
pub async fn recover(scaler: &dyn Scaler, channel: &str, seen: &Mutex<Seen>) {
    let since = seen.lock().unwrap().pos.clone();
    let request = HistoryRequest {
        since: since.clone(),
        limit: 10_000,
        ..HistoryRequest::default()
    };
    // Retried: the shard may still be failing over.
    let page = loop {
        match scaler.history(channel, &request).await {
            Ok(page) => break page,
            Err(e) => {
                assert!(e.is_unavailable(), "history failed with {e:?}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut seen = seen.lock().unwrap();
    seen.log.push(format!(
        "history since {since:?}: recovered {} ({} publications, top {:?})",
        page.recovered,
        page.publications.len(),
        page.top
    ));
    if page.recovered {
        for p in page.publications {
            let newer = seen
                .pos
                .as_ref()
                .is_none_or(|pos| pos.epoch != p.epoch || p.offset > pos.offset);
            if newer {
                seen.received
                    .push(String::from_utf8_lossy(&p.payload).into_owned());
                seen.pos = Some(StreamPosition::new(p.offset, p.epoch.to_string()));
            }
        }
    } else {
        seen.lost_until.push(page.top.clone());
        seen.pos = Some(page.top);
    }
}

/// Reads a subscriber's feed until `stop`, keeping `seen` up to date.
pub async fn subscriber(
    scaler: Arc<dyn Scaler>,
    mut feed: Feed,
    channel: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<tokio::sync::Notify>,
) {
    loop {
        let event = tokio::select! {
            () = stop.notified() => return,
            event = feed.events.recv() => event.expect("feed open"),
        };
        match event {
            FeedEvent::Publication(p) => {
                let (in_order, duplicate) = {
                    let s = seen.lock().unwrap();
                    match &s.pos {
                        None => (true, false),
                        Some(pos) if *pos.epoch == *p.epoch => {
                            (p.offset == pos.offset + 1, p.offset <= pos.offset)
                        }
                        Some(_) => (false, false),
                    }
                };
                if duplicate {
                    continue;
                }
                if !in_order {
                    recover(&*scaler, &channel, &seen).await;
                }
                let mut s = seen.lock().unwrap();
                let next = match &s.pos {
                    None => true,
                    Some(pos) => *pos.epoch == *p.epoch && p.offset == pos.offset + 1,
                };
                if next {
                    s.received
                        .push(String::from_utf8_lossy(&p.payload).into_owned());
                    s.pos = Some(StreamPosition::new(p.offset, p.epoch.to_string()));
                }
            }
            FeedEvent::Interrupted => {
                let mut s = seen.lock().unwrap();
                s.interruptions += 1;
                s.log.push("Interrupted".into());
            }
            FeedEvent::Resumed => {
                seen.lock().unwrap().log.push("Resumed".into());
                recover(&*scaler, &channel, &seen).await
            }
            other => seen.lock().unwrap().log.push(format!("{other:?}")),
        }
    }
}

/// A [`subscriber`] running on its own feed.
#[derive(Debug)]
pub struct Follower {
    pub seen: Arc<Mutex<Seen>>,
    pub control: Arc<dyn FeedControl>,
    /// The channel's top when it subscribed: where it started.
    pub start: StreamPosition,
    stop: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Opens a feed named `feed_name` on `scaler`, subscribes it to
    /// `channel`, positions it at the channel's top and follows it.
    pub async fn start(scaler: &Arc<dyn Scaler>, feed_name: &str, channel: &str) -> Self {
        let feed = scaler.open_feed(feed_name).await.expect("feed");
        let control = feed.control.clone();
        control
            .subscribe(&[Topic::channel(channel)])
            .await
            .expect("subscribe");
        let start = scaler
            .history(channel, &HistoryRequest::default())
            .await
            .expect("top")
            .top;
        let seen = Arc::new(Mutex::new(Seen {
            pos: Some(start.clone()),
            ..Seen::default()
        }));
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(subscriber(
            scaler.clone(),
            feed,
            channel.to_owned(),
            seen.clone(),
            stop.clone(),
        ));
        Self {
            seen,
            control,
            start,
            stop,
            task,
        }
    }

    /// Stops following (waits up to 5 s for the task to end).
    pub async fn stop(&mut self) {
        self.stop.notify_waiters();
        let _ = timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

/// One acknowledged publish.
#[derive(Debug, Clone)]
pub struct Acked {
    pub payload: String,
    pub at: StreamPosition,
    pub when: Instant,
}

/// One failed publish: the error and how long it took to answer.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: String,
    pub took: Duration,
}

/// A steady publish load: `m1`, `m2`, ... to one channel every 10 ms,
/// round-robin over the instances given. Every failure must answer
/// `unavailable` or `timeout`.
#[derive(Debug)]
pub struct PublishLoad {
    /// The acknowledged publishes so far, in order.
    pub acked: Arc<Mutex<Vec<Acked>>>,
    /// The failed publishes so far.
    pub failures: Arc<Mutex<Vec<Failure>>>,
    running: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PublishLoad {
    pub fn start(instances: &[Arc<dyn Scaler>], channel: &str, options: PublishOptions) -> Self {
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let failures: Arc<Mutex<Vec<Failure>>> = Arc::default();
        let running = Arc::new(AtomicBool::new(true));
        let task = {
            let (acked, failures, running) = (acked.clone(), failures.clone(), running.clone());
            let instances = instances.to_vec();
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let mut n = 0u64;
                while running.load(Ordering::SeqCst) {
                    n += 1;
                    let payload = format!("m{n}");
                    let started = Instant::now();
                    let s = &instances[n as usize % instances.len()];
                    match s
                        .publish(&channel, Bytes::from(payload.clone()), &options)
                        .await
                    {
                        Ok(at) => acked.lock().unwrap().push(Acked {
                            payload,
                            at,
                            when: Instant::now(),
                        }),
                        Err(e) => {
                            assert!(e.is_unavailable(), "a publish failed with {e:?}");
                            failures.lock().unwrap().push(Failure {
                                error: e.to_string(),
                                took: started.elapsed(),
                            });
                        }
                    }
                    sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Self {
            acked,
            failures,
            running,
            task,
        }
    }

    /// The position of the last acknowledged publish so far.
    pub fn last_acked(&self) -> Option<StreamPosition> {
        self.acked.lock().unwrap().last().map(|a| a.at.clone())
    }

    /// Stops the load; answers every acknowledged and every failed publish.
    pub async fn stop(self) -> (Vec<Acked>, Vec<Failure>) {
        self.running.store(false, Ordering::SeqCst);
        self.task.await.expect("load task");
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (acked, failures)
    }
}
