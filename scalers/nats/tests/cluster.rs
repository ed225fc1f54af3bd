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

use scaled_sockets_conformance::follower::{Follower, PublishLoad};
use scaled_sockets_nats::{NatsConfig, NatsScaler};
use scaled_sockets_scaler::{HistoryRequest, PublishOptions, Scaler};
use scaled_sockets_test_harness::NatsCluster;
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::time::{Instant, sleep};

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

    let mut followers = Vec::new();
    for (i, s) in instances.iter().enumerate().skip(1) {
        followers.push(Follower::start(s, &format!("inst-{i}"), &channel).await);
    }
    let start_pos = followers.last().map(|f| f.start.clone());
    // History long enough to hold the whole run.
    let options = PublishOptions {
        history_size: 1000,
        ..PublishOptions::default()
    };
    let load = PublishLoad::start(&instances, &channel, options);

    sleep(Duration::from_secs(1)).await;
    assert!(
        load.acked.lock().unwrap().len() > 20,
        "the load runs before the kill"
    );
    let leader = stream_leader(&cluster, &format!("{prefix}_history"))
        .expect("the history stream has a leader");
    let victim = cluster.index_of(&leader).expect("leader is one of ours");
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(victim));

    // Publishing works again within 15 s.
    loop {
        if load
            .acked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.when > killed_at + Duration::from_millis(100))
        {
            break;
        }
        if killed_at.elapsed() > Duration::from_secs(15) {
            let seen: std::collections::BTreeSet<String> = load
                .failures
                .lock()
                .unwrap()
                .iter()
                .map(|f| f.error.clone())
                .collect();
            panic!("no publish acknowledged within 15 s of losing {leader}: {seen:?}");
        }
        sleep(Duration::from_millis(50)).await;
    }
    let back_after = killed_at.elapsed();
    sleep(Duration::from_secs(2)).await;
    let (acked, failures) = load.stop().await;
    let last = acked.last().expect("acked").at.clone();
    // Every subscriber catches up to the last acknowledged publication.
    for seen in followers.iter().map(|f| &f.seen) {
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
    for f in &mut followers {
        f.stop().await;
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
    for a in &acked {
        assert!(
            stored.contains(&a.payload),
            "acknowledged {} at {:?} lost from history",
            a.payload,
            a.at
        );
    }
    for (i, f) in followers.iter().enumerate() {
        let seen = f.seen.lock().unwrap();
        assert!(
            seen.lost_until.is_empty(),
            "subscriber {i} was told recovered:false: {:?}",
            seen.log
        );
        let got: HashSet<&str> = seen.received.iter().map(String::as_str).collect();
        for a in &acked {
            assert!(
                got.contains(a.payload.as_str()),
                "subscriber {i} missed {}",
                a.payload
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
        failures.len()
    );
}
