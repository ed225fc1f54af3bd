//! A subscriber that behaves like a client under backend failures, for the
//! failover tests of every backend (Redis Cluster, Sentinel, NATS cluster):
//! it keeps its position, repairs gaps from history (after `Resumed` or an
//! offset jump) and records every `recovered: false`, so a test can check
//! that no acknowledged publication vanished silently.

use scaled_sockets_scaler::{Feed, FeedEvent, HistoryRequest, Scaler, StreamPosition};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep};

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

/// One acknowledged publish.
#[derive(Debug)]
pub struct Acked {
    pub payload: String,
    pub at: StreamPosition,
    pub when: Instant,
}
