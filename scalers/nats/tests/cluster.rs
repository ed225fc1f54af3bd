//! One server of a three-server NATS cluster dies under a steady publish load.
//!
//! Three `nats-server -js` processes routed together; the scaler URL names all
//! three, so every stream and bucket has 3 replicas. Three scaler instances;
//! publishes every 10 ms (round-robin over them); two subscribers keep their
//! position like clients do (gap check, recovery from history after
//! `Resumed`). The server leading the history stream is killed. The test
//! shows:
//! - every failed publish answered `unavailable` or `timeout`;
//! - no acknowledged publication is lost: history still holds every one of
//!   them afterwards, and each subscriber received every one (live or
//!   recovered), none answered `recovered: false`;
//! - publishing works again within 15 s (a publish in flight to the lost leader
//!   answers `timeout` after the request timeout, 2 s here).

use bytes::Bytes;
use scaled_sockets_conformance::follower::{Seen, subscriber};
use scaled_sockets_nats::{NatsConfig, NatsScaler};
use scaled_sockets_scaler::{HistoryRequest, PublishOptions, Scaler, StreamPosition, Topic};
use scaled_sockets_test_harness::NatsCluster;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep, timeout};

/// The name of the server leading the JetStream stream `stream`.
fn stream_leader(cluster: &NatsCluster, stream: &str) -> Option<String> {
    let jsz = cluster.monitor("/jsz?streams=true")?;
    let at = jsz.find(&format!("\"name\": \"{stream}\""))?;
    let rest = &jsz[at..];
    let leader = rest.find("\"leader\": \"")? + "\"leader\": \"".len();
    let end = rest[leader..].find('"')?;
    Some(rest[leader..leader + end].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dies_under_publish_load() {
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(3));
    let url = cluster.url();
    let prefix = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let config = NatsConfig::from_url(&url)
        .with_prefix(&prefix)
        .with_request_timeout(Duration::from_secs(2));
    assert_eq!(config.replicas, 3, "three URLs: three replicas");
    let mut instances: Vec<Arc<dyn Scaler>> = Vec::new();
    for _ in 0..3 {
        let scaler = NatsScaler::connect(config.clone()).await.expect("connect");
        instances.push(Arc::new(scaler));
    }
    let channel = format!("load-{}", uuid::Uuid::new_v4().simple());

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut subscribers = Vec::new();
    let mut seens = Vec::new();
    let mut start_pos = None;
    for (i, s) in instances.iter().enumerate().skip(1) {
        let feed = s.open_feed(&format!("inst-{i}")).await.expect("feed");
        feed.control
            .subscribe(&[Topic::channel(channel.as_str())])
            .await
            .expect("subscribe");
        let top = s
            .history(&channel, &HistoryRequest::default())
            .await
            .expect("top")
            .top;
        start_pos = Some(top.clone());
        let seen = Arc::new(Mutex::new(Seen {
            pos: Some(top),
            ..Seen::default()
        }));
        seens.push(seen.clone());
        subscribers.push(tokio::spawn(subscriber(
            s.clone(),
            feed,
            channel.clone(),
            seen,
            stop.clone(),
        )));
    }

    let acked: Arc<Mutex<Vec<(String, StreamPosition, Instant)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (acked, failures, publishing) = (acked.clone(), failures.clone(), publishing.clone());
        let instances = instances.clone();
        let channel = channel.clone();
        tokio::spawn(async move {
            // History long enough to hold the whole run.
            let options = PublishOptions {
                history_size: 1000,
                ..PublishOptions::default()
            };
            let mut n = 0u64;
            while publishing.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let payload = format!("m{n}");
                let s = &instances[n as usize % 3];
                match s
                    .publish(&channel, Bytes::from(payload.clone()), &options)
                    .await
                {
                    Ok(at) => acked.lock().unwrap().push((payload, at, Instant::now())),
                    Err(e) => {
                        assert!(e.is_unavailable(), "a publish failed with {e:?}");
                        failures.lock().unwrap().push(e.to_string());
                    }
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
    };

    sleep(Duration::from_secs(1)).await;
    assert!(
        acked.lock().unwrap().len() > 20,
        "the load runs before the kill"
    );
    let leader = stream_leader(&cluster, &format!("{prefix}_history"))
        .expect("the history stream has a leader");
    let victim = cluster.index_of(&leader).expect("leader is one of ours");
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(victim));

    // Publishing works again within 15 s.
    loop {
        if acked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.2 > killed_at + Duration::from_millis(100))
        {
            break;
        }
        if killed_at.elapsed() > Duration::from_secs(15) {
            let seen: std::collections::BTreeSet<String> =
                failures.lock().unwrap().iter().cloned().collect();
            panic!("no publish acknowledged within 15 s of losing {leader}: {seen:?}");
        }
        sleep(Duration::from_millis(50)).await;
    }
    let back_after = killed_at.elapsed();
    sleep(Duration::from_secs(2)).await;
    publishing.store(false, std::sync::atomic::Ordering::SeqCst);
    load.await.expect("load task");

    let acked = acked.lock().unwrap().clone();
    let last = acked.last().expect("acked").1.clone();
    // Every subscriber catches up to the last acknowledged publication.
    for seen in &seens {
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().pos.as_ref() != Some(&last) {
            assert!(
                Instant::now() < deadline,
                "a subscriber did not catch up: at {:?}, want {last:?}, log {:?}",
                seen.lock().unwrap().pos,
                seen.lock().unwrap().log
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
    stop.notify_waiters();
    for s in subscribers {
        let _ = timeout(Duration::from_secs(5), s).await;
    }

    // History still holds every acknowledged publication. Reading that many
    // back uses a short-lived JetStream consumer; right after a server loss
    // its creation may time out for a few seconds (it can be placed on the
    // lost server), like any call answering `timeout`: retried.
    let read_at = Instant::now();
    let page = loop {
        match instances[0]
            .history(
                &channel,
                &HistoryRequest {
                    since: start_pos.clone(),
                    limit: 100_000,
                    ..HistoryRequest::default()
                },
            )
            .await
        {
            Ok(page) => break page,
            Err(e) => {
                assert!(e.is_unavailable(), "history failed with {e:?}");
                assert!(
                    read_at.elapsed() < Duration::from_secs(20),
                    "history still failing 20 s later: {e:?}"
                );
            }
        }
    };
    let history_after = read_at.elapsed();
    assert!(page.recovered, "history is complete");
    let stored: HashSet<String> = page
        .publications
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    for (payload, at, _) in &acked {
        assert!(
            stored.contains(payload),
            "acknowledged {payload} at {at:?} lost from history"
        );
    }
    for (i, seen) in seens.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert!(
            seen.lost_until.is_empty(),
            "subscriber {i} was told recovered:false: {:?}",
            seen.log
        );
        let got: HashSet<&str> = seen.received.iter().map(String::as_str).collect();
        for (payload, _, _) in &acked {
            assert!(
                got.contains(payload.as_str()),
                "subscriber {i} missed {payload}"
            );
        }
        eprintln!(
            "subscriber {i}: {} received, {} interruptions",
            seen.received.len(),
            seen.interruptions
        );
    }
    eprintln!(
        "NATS cluster: killed {leader} (history stream leader); publishing back after \
         {back_after:?}; {} acknowledged, {} failed (unavailable/timeout), none lost; \
         the full history read answered after {history_after:?}",
        acked.len(),
        failures.lock().unwrap().len()
    );
}
