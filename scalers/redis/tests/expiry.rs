//! What expires leaves Redis, not only the answers: the presence of an
//! instance that crashed, expired key-value index entries, and the topics of a
//! subscribe that failed. Each test owns a private redis-server and inspects
//! the raw keys.

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::{
    FeedEvent, InstanceInfo, PresenceEntry, PublishOptions, PutOptions, Scaler, ScalerError,
    ScalerExt, Topic,
};
use scaled_sockets_test_harness::RedisServer;
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};

const SWEEP: Duration = Duration::from_millis(500);

async fn server() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("start redis-server")
}

fn config(server: &RedisServer, prefix: &str) -> RedisConfig {
    RedisConfig::from_url(server.url())
        .expect("url")
        .with_prefix(prefix)
        .with_sweep_interval(SWEEP)
}

async fn admin(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

async fn exists(admin: &mut MultiplexedConnection, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(admin)
        .await
        .expect("EXISTS");
    n > 0
}

async fn gone_within(admin: &mut MultiplexedConnection, key: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while exists(admin, key).await {
        assert!(
            Instant::now() < deadline,
            "{what}: {key} still exists {within:?} later"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

fn entry(client: &str, instance: &str) -> PresenceEntry {
    PresenceEntry {
        client: client.into(),
        user: None,
        instance: instance.into(),
    }
}

/// An instance that crashed (its registration expired, it never unregistered)
/// leaves no presence entry and no index behind within a bounded time, with
/// nobody reading the registry or the presence; a live instance's entry stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_crashed_instance_is_removed() {
    let server = server().await;
    let s = RedisScaler::connect(config(&server, "gx"))
        .await
        .expect("connect");
    let mut admin = admin(&server).await;
    for (id, ttl) in [("crashed", 1), ("alive", 60)] {
        s.register_instance(
            &InstanceInfo {
                id: id.into(),
                ..InstanceInfo::default()
            },
            Duration::from_secs(ttl),
        )
        .await
        .expect("register");
    }
    s.presence_add("room", &entry("c1", "crashed"))
        .await
        .expect("add");
    s.presence_add("lonely", &entry("c2", "crashed"))
        .await
        .expect("add");
    s.presence_add("room", &entry("c3", "alive"))
        .await
        .expect("add");
    assert!(exists(&mut admin, "gx:ch:{lonely}:presence").await);
    // TTL 1 s (+1 s index margin), then one sweep; allow a few.
    let within = Duration::from_secs(8);
    gone_within(
        &mut admin,
        "gx:ch:{lonely}:presence",
        within,
        "presence hash holding only the crashed instance's entry",
    )
    .await;
    gone_within(
        &mut admin,
        "gx:ipres:{crashed}",
        within,
        "the crashed instance's presence index",
    )
    .await;
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("gx:ch:{room}:presence")
        .query_async(&mut admin)
        .await
        .expect("HKEYS");
    assert_eq!(fields, vec!["c3".to_owned()], "only the live entry stays");
    let indexed: Vec<String> = redis::cmd("ZRANGE")
        .arg("gx:{registry}:index")
        .arg(0)
        .arg(-1)
        .query_async(&mut admin)
        .await
        .expect("ZRANGE");
    assert_eq!(indexed, vec!["alive".to_owned()]);
}

/// Key-value entries with a TTL (sessions) leave the name indexes within a
/// bounded time even if nothing is read or written afterwards; entries
/// without a TTL stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_key_value_names_are_swept() {
    let server = server().await;
    let s = RedisScaler::connect(config(&server, "gk"))
        .await
        .expect("connect");
    let mut admin = admin(&server).await;
    for i in 0..20 {
        s.session_put(
            &format!("s{i}"),
            Bytes::from_static(b"x"),
            Duration::from_secs(1),
        )
        .await
        .expect("put");
    }
    s.kv_put("keep", Bytes::from_static(b"k"), &PutOptions::default())
        .await
        .expect("put");
    let count = |admin: &mut MultiplexedConnection, key: &'static str| {
        let mut admin = admin.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(key)
                .query_async::<i64>(&mut admin)
                .await
                .expect("ZCARD")
        }
    };
    assert_eq!(count(&mut admin, "gk:{kv}:names").await, 21);
    let deadline = Instant::now() + Duration::from_secs(6);
    while count(&mut admin, "gk:{kv}:names").await > 1 {
        assert!(Instant::now() < deadline, "expired names still indexed");
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&mut admin, "gk:{kv}:exp").await, 0);
    assert!(!exists(&mut admin, "gk:{kv}:k:session/s0").await);
    assert!(exists(&mut admin, "gk:{kv}:k:keep").await);
}

/// A subscribe that Redis does not confirm in time fails with `Timeout` and
/// leaves no desired topic behind: once Redis answers again, the topic gets
/// no traffic (before, it stayed subscribed for the feed's whole life). A
/// topic subscribed before stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_subscribe_leaves_no_topic_behind() {
    let server = server().await;
    let s = RedisScaler::connect(
        config(&server, "gf")
            .with_command_timeout(Duration::from_millis(500))
            // No probe during the pause: this test is about the subscribe.
            .with_probe(Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await
    .expect("connect");
    let mut admin = admin(&server).await;
    let mut feed = s.open_feed("inst").await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel("kept")])
        .await
        .expect("subscribe");
    // Redis holds every client's commands for 1.5 s.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    let err = feed
        .control
        .subscribe(&[Topic::channel("failed"), Topic::channel("kept")])
        .await
        .expect_err("not confirmed while Redis is paused");
    assert!(
        matches!(err, ScalerError::Timeout(_)),
        "a bounded failure, got {err:?}"
    );
    sleep(Duration::from_millis(1500)).await;
    let opts = PublishOptions::default();
    s.publish("failed", Bytes::from_static(b"nobody asked"), &opts)
        .await
        .expect("publish");
    s.publish("kept", Bytes::from_static(b"wanted"), &opts)
        .await
        .expect("publish");
    let got = loop {
        match timeout(Duration::from_secs(10), feed.events.recv()).await {
            Ok(Some(FeedEvent::Publication(p))) => break p,
            Ok(Some(_)) => continue,
            other => panic!("no publication: {other:?}"),
        }
    };
    assert_eq!(
        (&*got.channel, &got.payload[..]),
        ("kept", &b"wanted"[..]),
        "the failed topic got no traffic, the earlier one still does"
    );
    let subscribers: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("gf:ch:{failed}:pub")
        .arg("gf:ch:{kept}:pub")
        .query_async(&mut admin)
        .await
        .expect("PUBSUB NUMSUB");
    assert_eq!(
        subscribers,
        vec![
            ("gf:ch:{failed}:pub".to_owned(), 0),
            ("gf:ch:{kept}:pub".to_owned(), 1)
        ],
        "unsubscribed on Redis too"
    );
    assert!(feed.control.is_live());
}
