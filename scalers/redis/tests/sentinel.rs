//! Redis with Sentinel (`redis+sentinel://`): the conformance suite, and a
//! primary killed under publish load.
//!
//! A private primary with one replica and three Sentinels
//! (`down-after-milliseconds` 1 s). The failover test mirrors the Redis
//! Cluster one: three instances, publishes every 10 ms, two subscribers that
//! keep their position like clients do; the primary is killed. It shows: the
//! Sentinels promote the replica; failed publishes answer
//! `unavailable`/`timeout`; the promoted replica (another run id) starts new
//! epochs, so no acknowledged publication vanishes silently; publishing and
//! delivery work again within the failover time plus 5 s.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use scaled_sockets_conformance::TestBackend;
use scaled_sockets_conformance::follower::{Follower, PublishLoad, wait_received};
use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::{PublishOptions, Scaler};
use scaled_sockets_test_harness::RedisSentinel;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep};

mod support;

struct Sentinel {
    redis: Mutex<RedisSentinel>,
    url: String,
    prefix: String,
}

impl Sentinel {
    fn lock(&self) -> std::sync::MutexGuard<'_, RedisSentinel> {
        self.redis.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl TestBackend for Sentinel {
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Scaler>> {
        Box::pin(async {
            let config = RedisConfig::from_url(&self.url)
                .expect("url")
                .with_prefix(&self.prefix);
            let scaler = RedisScaler::connect(config)
                .await
                .expect("connect through the sentinels");
            Arc::new(scaler) as Arc<dyn Scaler>
        })
    }
    fn stop(&self) -> BoxFuture<'_, bool> {
        Box::pin(async {
            tokio::task::block_in_place(|| self.lock().stop());
            true
        })
    }
    fn start(&self) -> BoxFuture<'_, ()> {
        Box::pin(async { tokio::task::block_in_place(|| self.lock().start_again()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_sentinel() {
    let redis = tokio::task::block_in_place(|| RedisSentinel::start(Duration::from_millis(1000)));
    let backend = Sentinel {
        url: redis.url(),
        redis: Mutex::new(redis),
        prefix: format!("conf-{}", uuid::Uuid::new_v4().simple()),
    };
    scaled_sockets_conformance::run_all(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_dies_under_publish_load() {
    let mut redis =
        tokio::task::block_in_place(|| RedisSentinel::start(Duration::from_millis(1000)));
    let url = redis.url();
    let prefix = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
    let instances = support::failover_instances(&url, &prefix, 3).await;
    let channel = format!("load-{}", uuid::Uuid::new_v4().simple());
    let victim = tokio::task::block_in_place(|| redis.primary_port()).expect("a primary");

    let mut followers = Vec::new();
    for (i, s) in instances.iter().enumerate().skip(1) {
        followers.push(Follower::start(s, &format!("inst-{i}"), &channel).await);
    }
    let load = PublishLoad::start(&instances, &channel, PublishOptions::default());

    sleep(Duration::from_secs(1)).await;
    let old_epoch = load.last_acked().expect("acked").epoch;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| redis.kill_server(victim));
    let promoted = loop {
        let now = tokio::task::block_in_place(|| redis.primary_port());
        if let Some(port) = now.filter(|p| *p != victim) {
            break port;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "the Sentinels promoted no replica within 30 s"
        );
        sleep(Duration::from_millis(100)).await;
    };
    let failover_time = killed_at.elapsed();
    let promoted_at = Instant::now();
    let deadline = promoted_at + Duration::from_secs(5);
    loop {
        let back = load
            .acked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.when > killed_at && a.at.epoch != old_epoch);
        if back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no publish succeeded within 5 s of the promotion ({failover_time:?})"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let publish_back = promoted_at.elapsed();
    while !followers.iter().all(|f| f.control.is_live()) {
        assert!(
            Instant::now() < deadline,
            "the feeds were not live again within 5 s of the promotion"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let live_again = promoted_at.elapsed();
    sleep(Duration::from_secs(2)).await;
    let (acked, failures) = load.stop().await;

    let fin = instances[0]
        .publish(
            &channel,
            Bytes::from_static(b"final"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish after the failover");
    for f in &followers {
        if !wait_received(&f.seen, "final", Duration::from_secs(3)).await {
            let log = f.seen.lock().unwrap().log.clone();
            panic!("the final publication {fin:?} was not delivered: {log:?}");
        }
    }
    for f in &mut followers {
        f.stop().await;
    }
    assert_ne!(
        fin.epoch, old_epoch,
        "the promoted replica starts a new epoch"
    );
    for (i, f) in followers.iter().enumerate() {
        f.seen
            .lock()
            .unwrap()
            .assert_accounted_for(&acked, &format!("subscriber {i}"));
    }
    eprintln!(
        "sentinel failover: {promoted} replaced {victim} after {failover_time:?}; publishing \
         back {publish_back:?} and feeds live {live_again:?} after the promotion; {} \
         acknowledged, {} failed (unavailable/timeout)",
        acked.len(),
        failures.len()
    );
}
