//! A primary of a Redis Cluster dies under a steady publish load.
//!
//! A private cluster (3 primaries, 3 replicas, `cluster-node-timeout` 1 s) and
//! three scaler instances on it. Instance A publishes to a channel every 10 ms
//! (round-robin over A, B, C); B and C subscribe to it, each keeping its
//! position like a client does (gap check on every publication, recovery from
//! history after `Resumed`). The primary serving the channel's slot is killed.
//! The test shows:
//! - its replica takes over (the slot's primary changes to the old replica);
//! - every failed publish answered `unavailable` or `timeout` (never another
//!   error, never a hang beyond the command timeout);
//! - no acknowledged publication vanishes silently: each subscriber received
//!   it, or was told `recovered: false` for a position covering it;
//! - publications after the switch carry a new epoch (the promoted replica may
//!   lack acknowledged publications; their offsets are not reused under the
//!   old epoch);
//! - publishing and delivery work again within the failover time plus 5 s.

use bytes::Bytes;
use scaled_sockets_conformance::follower::{Follower, PublishLoad, wait_received};
use scaled_sockets_scaler::PublishOptions;
use scaled_sockets_test_harness::RedisCluster;
use std::time::Duration;
use tokio::time::{Instant, sleep};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_dies_under_publish_load() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster =
        tokio::task::block_in_place(|| RedisCluster::start(3, Duration::from_millis(1000)));
    let url = cluster.url();
    let prefix = format!("failover-{}", uuid::Uuid::new_v4().simple());
    let instances = support::failover_instances(&url, &prefix, 3).await;
    let channel = format!("load-{}", uuid::Uuid::new_v4().simple());
    // The slot of the channel's keys: they carry the channel as hash tag.
    let slot = cluster.slot_of(&channel);
    let victim = cluster.primary_of_slot(slot).expect("slot served");

    // Subscribers on B and C, positioned at the channel's top.
    let mut followers = Vec::new();
    for (i, s) in instances.iter().enumerate().skip(1) {
        followers.push(Follower::start(s, &format!("inst-{i}"), &channel).await);
    }

    // The publish load: every 10 ms, round-robin over the instances.
    let load = PublishLoad::start(&instances, &channel, PublishOptions::default());

    sleep(Duration::from_secs(1)).await;
    let before_kill = load.acked.lock().unwrap().len();
    assert!(before_kill > 20, "the load runs before the kill");
    let old_epoch = load.last_acked().expect("acked").epoch;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_node(victim));

    // The replica takes over.
    let promoted = loop {
        let now = tokio::task::block_in_place(|| cluster.primary_of_slot(slot));
        if let Some(port) = now.filter(|p| *p != victim) {
            break port;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no replica took over slot {slot} within 30 s"
        );
        sleep(Duration::from_millis(100)).await;
    };
    let failover_time = killed_at.elapsed();
    let promoted_at = Instant::now();
    assert_ne!(promoted, victim);

    // Publishing works again within the failover time plus 5 s.
    let recovered_at = loop {
        let first_after = load
            .acked
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.when > promoted_at || a.when > killed_at && a.at.epoch != old_epoch)
            .map(|a| a.when);
        if let Some(when) = first_after {
            break when;
        }
        assert!(
            promoted_at.elapsed() < Duration::from_secs(5),
            "no publish succeeded within 5 s of the failover ({failover_time:?})"
        );
        sleep(Duration::from_millis(50)).await;
    };
    // Every feed is live again within the failover time plus 5 s.
    let deadline = promoted_at + Duration::from_secs(5);
    while !followers.iter().all(|f| f.control.is_live()) {
        assert!(
            Instant::now() < deadline,
            "the feeds were not live again within 5 s of the failover"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let live_again = promoted_at.elapsed();
    // Let the load run on the new primary, then stop it.
    sleep(Duration::from_secs(2)).await;
    let (acked, failures) = load.stop().await;

    // Every subscriber gets a final publication.
    let final_payload = "final".to_owned();
    let fin = loop {
        match instances[0]
            .publish(
                &channel,
                Bytes::from(final_payload.clone()),
                &PublishOptions::default(),
            )
            .await
        {
            Ok(at) => break at,
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                assert!(
                    Instant::now() < deadline,
                    "final publish still failing: {e}"
                );
                sleep(Duration::from_millis(100)).await;
            }
        }
    };
    for f in &followers {
        if !wait_received(&f.seen, &final_payload, Duration::from_secs(3)).await {
            let report = {
                let s = f.seen.lock().unwrap();
                format!(
                    "at {:?}, last {:?}, live {}, events {:?}",
                    s.pos,
                    s.received.last(),
                    f.control.is_live(),
                    s.log
                )
            };
            let pubsub = format!("{prefix}:ch:{{{channel}}}:pub");
            let subs: Vec<String> = cluster
                .ports()
                .iter()
                .map(|p| {
                    format!(
                        "{p}: {} / {}",
                        scaled_sockets_test_harness::redis_cli(
                            *p,
                            &["PUBSUB", "SHARDNUMSUB", &pubsub]
                        )
                        .replace('\n', " "),
                        scaled_sockets_test_harness::redis_cli(*p, &["ROLE"])
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    )
                })
                .collect();
            panic!(
                "a subscriber did not get the final publication {fin:?}: {report}; slot {slot} on {:?}, subscribers {subs:?}",
                cluster.primary_of_slot(slot)
            );
        }
    }
    for f in &mut followers {
        f.stop().await;
    }

    // No acknowledged publication vanished silently.
    for (i, f) in followers.iter().enumerate() {
        let seen = f.seen.lock().unwrap();
        seen.assert_accounted_for(&acked, &format!("subscriber {i}"));
        assert!(seen.received.contains(&final_payload));
        eprintln!(
            "subscriber {i}: {} received, {} interruptions, recovered:false {} times",
            seen.received.len(),
            seen.interruptions,
            seen.lost_until.len()
        );
    }
    // After the switch the channel is in a new epoch.
    assert_ne!(
        fin.epoch, old_epoch,
        "a promoted replica starts a new epoch"
    );
    let worst = failures.iter().map(|f| f.took).max().unwrap_or_default();
    eprintln!(
        "failover: replica {promoted} took over from {victim} after {failover_time:?}; \
         first publish acknowledged {:?} after the kill; {} acknowledged, {} failed \
         (unavailable/timeout, slowest answer {worst:?}); feeds live again {live_again:?} \
         after the promotion; final at {:?}",
        recovered_at - killed_at,
        acked.len(),
        failures.len(),
        fin
    );
    assert!(
        !failures.is_empty(),
        "publishes to the dead shard answered unavailable/timeout during the switch"
    );
    assert!(
        worst <= Duration::from_millis(2500),
        "a failed publish took {worst:?} (command timeout 2 s)"
    );
}
