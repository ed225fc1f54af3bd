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
use scaled_sockets_conformance::follower::{Follower, PublishLoad, wait_received};
use scaled_sockets_scaler::PublishOptions;
use scaled_sockets_test_harness::RedisCluster;
use std::time::Duration;
use tokio::time::{Instant, sleep};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_channel_moves_to_another_shard() {
    let cluster =
        tokio::task::block_in_place(|| RedisCluster::start(3, Duration::from_millis(1000)));
    let url = cluster.url();
    let prefix = format!("reshard-{}", uuid::Uuid::new_v4().simple());
    let instances = support::failover_instances(&url, &prefix, 2).await;
    let (publisher, reader) = (&instances[0], &instances[1]);
    let channel = format!("moving-{}", uuid::Uuid::new_v4().simple());
    let slot = cluster.slot_of(&channel);
    let from = cluster.primary_of_slot(slot).expect("slot served");
    let to = *cluster
        .primary_ports()
        .iter()
        .find(|p| **p != from)
        .expect("another primary");

    let mut follower = Follower::start(reader, "reader", &channel).await;
    let load = PublishLoad::start(
        std::slice::from_ref(publisher),
        &channel,
        PublishOptions::default(),
    );

    sleep(Duration::from_secs(1)).await;
    let old_epoch = load.last_acked().expect("acked").epoch;
    tokio::task::block_in_place(|| cluster.move_slot(slot, to));
    let moved_at = Instant::now();
    assert_eq!(cluster.primary_of_slot(slot), Some(to), "the slot moved");
    sleep(Duration::from_secs(2)).await;
    let (acked, failures) = load.stop().await;

    // The feed is live on the new owner and delivers a final publication.
    let deadline = moved_at + Duration::from_secs(5);
    while !follower.control.is_live() {
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
    if !wait_received(&follower.seen, "final", Duration::from_secs(3)).await {
        let log = follower.seen.lock().unwrap().log.clone();
        panic!("the final publication {fin:?} was not delivered: {log:?}");
    }
    follower.stop().await;

    assert_ne!(fin.epoch, old_epoch, "the new owner starts a new epoch");
    let seen = follower.seen.lock().unwrap();
    seen.assert_accounted_for(&acked, "the reader");
    eprintln!(
        "resharding: slot {slot} moved from {from} to {to}; {} acknowledged, {} failed \
         (unavailable/timeout), {} received, {} interruptions, recovered:false {} times",
        acked.len(),
        failures.len(),
        seen.received.len(),
        seen.interruptions,
        seen.lost_until.len()
    );
}
