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
use scaled_sockets_conformance::follower::{Seen, subscriber};
use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::{HistoryRequest, PublishOptions, Scaler, StreamPosition, Topic};
use scaled_sockets_test_harness::RedisSentinel;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep, timeout};

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
async fn the_primary_dies_under_publish_load() {
    let mut redis =
        tokio::task::block_in_place(|| RedisSentinel::start(Duration::from_millis(1000)));
    let url = redis.url();
    let prefix = format!("sentinel-{}", uuid::Uuid::new_v4().simple());
    let instances = [
        scaler(&url, &prefix).await,
        scaler(&url, &prefix).await,
        scaler(&url, &prefix).await,
    ];
    let channel = format!("load-{}", uuid::Uuid::new_v4().simple());
    let victim = tokio::task::block_in_place(|| redis.primary_port()).expect("a primary");

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut subscribers = Vec::new();
    let mut seens = Vec::new();
    let mut controls = Vec::new();
    for (i, s) in instances.iter().enumerate().skip(1) {
        let feed = s.open_feed(&format!("inst-{i}")).await.expect("feed");
        feed.control
            .subscribe(&[Topic::channel(channel.as_str())])
            .await
            .expect("subscribe");
        controls.push(feed.control.clone());
        let top = s
            .history(&channel, &HistoryRequest::default())
            .await
            .expect("top")
            .top;
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
            let mut n = 0u64;
            while publishing.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let payload = format!("m{n}");
                let s = &instances[n as usize % 3];
                match s
                    .publish(
                        &channel,
                        Bytes::from(payload.clone()),
                        &PublishOptions::default(),
                    )
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
    let old_epoch = acked.lock().unwrap().last().expect("acked").1.epoch.clone();
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
        let back = acked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.2 > killed_at && a.1.epoch != old_epoch);
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
    while !controls.iter().all(|c| c.is_live()) {
        assert!(
            Instant::now() < deadline,
            "the feeds were not live again within 5 s of the promotion"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let live_again = promoted_at.elapsed();
    sleep(Duration::from_secs(2)).await;
    publishing.store(false, std::sync::atomic::Ordering::SeqCst);
    load.await.expect("load task");

    let fin = instances[0]
        .publish(
            &channel,
            Bytes::from_static(b"final"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish after the failover");
    for seen in &seens {
        let wait = Instant::now() + Duration::from_secs(3);
        while !seen.lock().unwrap().received.iter().any(|p| p == "final") {
            if Instant::now() > wait {
                let log = seen.lock().unwrap().log.clone();
                panic!("the final publication {fin:?} was not delivered: {log:?}");
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
    stop.notify_waiters();
    for s in subscribers {
        let _ = timeout(Duration::from_secs(5), s).await;
    }
    assert_ne!(
        fin.epoch, old_epoch,
        "the promoted replica starts a new epoch"
    );
    let acked = acked.lock().unwrap();
    for (i, seen) in seens.iter().enumerate() {
        let seen = seen.lock().unwrap();
        let got: HashSet<&str> = seen.received.iter().map(String::as_str).collect();
        for (payload, at, _) in acked.iter() {
            assert!(
                got.contains(payload.as_str()) || seen.reported(at),
                "subscriber {i}: acknowledged {payload} at {at:?} neither delivered nor reported lost"
            );
        }
    }
    eprintln!(
        "sentinel failover: {promoted} replaced {victim} after {failover_time:?}; publishing \
         back {publish_back:?} and feeds live {live_again:?} after the promotion; {} \
         acknowledged, {} failed (unavailable/timeout)",
        acked.len(),
        failures.lock().unwrap().len()
    );
}
