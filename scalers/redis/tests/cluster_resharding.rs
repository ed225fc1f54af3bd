//! A Redis Cluster moves a loaded channel's slot to another primary
//! (resharding) while it is published to.
//!
//! A private cluster (3 primaries, 3 replicas), two scaler instances: A
//! publishes to a channel every 10 ms, B subscribes and keeps its position
//! like a client does. The channel's slot is moved to another primary with
//! its keys (`IMPORTING`/`MIGRATING`, `MIGRATE`, `SETSLOT NODE`). The test
//! shows that publishes only ever fail with `unavailable`/`timeout` (the
//! cluster connection follows `ASK` and `MOVED`), that the feed notices the
//! server dropping its sharded subscription, re-subscribes on the new owner
//! and delivers again, that the new owner starts a new epoch, and that every
//! acknowledged publication is received or covered by `recovered: false`.

use bytes::Bytes;
use scaled_sockets_conformance::follower::{Seen, subscriber};
use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::{HistoryRequest, PublishOptions, Scaler, StreamPosition, Topic};
use scaled_sockets_test_harness::RedisCluster;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep, timeout};

async fn scaler(url: &str, prefix: &str) -> Arc<dyn Scaler> {
    let config = RedisConfig::from_url(url)
        .expect("url")
        .with_prefix(prefix)
        .with_command_timeout(Duration::from_secs(2))
        .with_probe(Duration::from_millis(500), Duration::from_secs(2))
        .with_reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1));
    Arc::new(RedisScaler::connect(config).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_channel_moves_to_another_shard() {
    let cluster =
        tokio::task::block_in_place(|| RedisCluster::start(3, Duration::from_millis(1000)));
    let url = cluster.url();
    let prefix = format!("reshard-{}", uuid::Uuid::new_v4().simple());
    let publisher = scaler(&url, &prefix).await;
    let reader = scaler(&url, &prefix).await;
    let channel = format!("moving-{}", uuid::Uuid::new_v4().simple());
    let slot = cluster.slot_of(&channel);
    let from = cluster.primary_of_slot(slot).expect("slot served");
    let to = *cluster
        .primary_ports()
        .iter()
        .find(|p| **p != from)
        .expect("another primary");

    let feed = reader.open_feed("reader").await.expect("feed");
    let control = feed.control.clone();
    feed.control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("subscribe");
    let top = reader
        .history(&channel, &HistoryRequest::default())
        .await
        .expect("top")
        .top;
    let seen = Arc::new(Mutex::new(Seen {
        pos: Some(top),
        ..Seen::default()
    }));
    let stop = Arc::new(tokio::sync::Notify::new());
    let reading = tokio::spawn(subscriber(
        reader.clone(),
        feed,
        channel.clone(),
        seen.clone(),
        stop.clone(),
    ));

    let acked: Arc<Mutex<Vec<(String, StreamPosition)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let publishing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (acked, failures, publishing) = (acked.clone(), failures.clone(), publishing.clone());
        let publisher = publisher.clone();
        let channel = channel.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while publishing.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let payload = format!("m{n}");
                match publisher
                    .publish(
                        &channel,
                        Bytes::from(payload.clone()),
                        &PublishOptions::default(),
                    )
                    .await
                {
                    Ok(at) => acked.lock().unwrap().push((payload, at)),
                    Err(e) => {
                        assert!(
                            e.is_unavailable(),
                            "a publish during resharding failed with {e:?}"
                        );
                        failures.lock().unwrap().push(e.to_string());
                    }
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
    };

    sleep(Duration::from_secs(1)).await;
    let old_epoch = acked.lock().unwrap().last().expect("acked").1.epoch.clone();
    tokio::task::block_in_place(|| cluster.move_slot(slot, to));
    let moved_at = Instant::now();
    assert_eq!(cluster.primary_of_slot(slot), Some(to), "the slot moved");
    sleep(Duration::from_secs(2)).await;
    publishing.store(false, std::sync::atomic::Ordering::SeqCst);
    load.await.expect("load task");

    // The feed is live on the new owner and delivers a final publication.
    let deadline = moved_at + Duration::from_secs(5);
    while !control.is_live() {
        assert!(
            Instant::now() < deadline,
            "the feed is not live 5 s after the move"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let fin = publisher
        .publish(
            &channel,
            Bytes::from_static(b"final"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish after the move");
    let wait = Instant::now() + Duration::from_secs(3);
    while !seen.lock().unwrap().received.iter().any(|p| p == "final") {
        if Instant::now() > wait {
            let log = seen.lock().unwrap().log.clone();
            panic!("the final publication {fin:?} was not delivered: {log:?}");
        }
        sleep(Duration::from_millis(20)).await;
    }
    stop.notify_waiters();
    let _ = timeout(Duration::from_secs(5), reading).await;

    assert_ne!(fin.epoch, old_epoch, "the new owner starts a new epoch");
    let seen = seen.lock().unwrap();
    let got: HashSet<&str> = seen.received.iter().map(String::as_str).collect();
    let acked = acked.lock().unwrap();
    for (payload, at) in acked.iter() {
        assert!(
            got.contains(payload.as_str()) || seen.reported(at),
            "acknowledged {payload} at {at:?} neither delivered nor reported lost"
        );
    }
    eprintln!(
        "resharding: slot {slot} moved from {from} to {to}; {} acknowledged, {} failed \
         (unavailable/timeout), {} received, {} interruptions, recovered:false {} times",
        acked.len(),
        failures.lock().unwrap().len(),
        seen.received.len(),
        seen.interruptions,
        seen.lost_until.len()
    );
}
