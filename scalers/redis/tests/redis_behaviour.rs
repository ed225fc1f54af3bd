//! Redis-specific behaviour: reconnects, the liveness probe, batching, the key
//! layout, bounded failures and overflow accounting. Each test owns a private
//! redis-server.

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::{
    Feed, FeedEvent, HistoryRequest, InstanceInfo, PresenceEntry, PublishOptions, Scaler,
    ScalerError, ScalerExt, Topic, types::now_ms,
};
use scaled_sockets_test_harness::RedisServer;
use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    time::Duration,
};
use tokio::time::{Instant, sleep, timeout};

/// How long any single expected event may take.
const WAIT: Duration = Duration::from_secs(30);
/// The bound within which a call must fail when Redis is down or silent.
const FAIL_WITHIN: Duration = Duration::from_secs(5);

fn unique(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::from_url(server.url())
        .expect("url")
        .with_prefix(unique("t"))
}

async fn scaler(config: RedisConfig) -> RedisScaler {
    RedisScaler::connect(config).await.expect("connect")
}

/// A plain connection for inspecting and disturbing the server.
async fn admin(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

async fn next_event(feed: &mut Feed, want: impl Fn(&FeedEvent) -> bool, what: &str) -> FeedEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, feed.events.recv()).await {
            Ok(Some(ev)) if want(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("feed closed while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

async fn next_publication_on(feed: &mut Feed, channel: &str) -> u64 {
    match next_event(
        feed,
        |e| matches!(e, FeedEvent::Publication(p) if &*p.channel == channel),
        "publication",
    )
    .await
    {
        FeedEvent::Publication(p) => p.offset,
        _ => unreachable!(),
    }
}

/// Asserts that `call` fails with an "unavailable" error within [`FAIL_WITHIN`].
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, ScalerError>>,
) {
    let started = Instant::now();
    let outcome = timeout(FAIL_WITHIN + Duration::from_secs(1), call).await;
    let elapsed = started.elapsed();
    let err = match outcome {
        Err(_) => panic!("{what} hung for more than {FAIL_WITHIN:?}"),
        Ok(Ok(v)) => panic!("{what} succeeded while redis is unreachable: {v:?}"),
        Ok(Err(e)) => e,
    };
    assert!(
        err.is_unavailable(),
        "{what}: want unavailable/timeout, got {err:?}"
    );
    assert!(elapsed <= FAIL_WITHIN, "{what} took {elapsed:?}");
}

async fn info_field(conn: &mut MultiplexedConnection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| {
            let calls = v.split(',').next().unwrap_or(v);
            let n = calls.strip_prefix("calls=").unwrap_or(calls);
            n.trim().parse().expect("numeric INFO field")
        })
        .unwrap_or(0)
}

async fn pubsub_channels(conn: &mut MultiplexedConnection) -> Vec<String> {
    redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(conn)
        .await
        .expect("PUBSUB CHANNELS")
}

async fn pubsub_clients(conn: &mut MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// The part of a key Redis Cluster hashes.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriber_resumes_with_every_topic_resubscribed_in_batches() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let s = scaler(config(&server)).await;
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    let channels: Vec<String> = (0..1200).map(|i| format!("many-{i}")).collect();
    let user = Topic::user(unique("u"));
    let mut topics: Vec<Topic> = channels
        .iter()
        .map(|c| Topic::channel(c.as_str()))
        .collect();
    topics.push(user.clone());
    feed.control
        .subscribe(&topics)
        .await
        .expect("subscribe all");
    assert!(feed.control.is_live());
    let subscribed = pubsub_channels(&mut admin).await.len();
    assert_eq!(
        subscribed,
        topics.len() + 1,
        "every topic plus the probe channel"
    );

    let subscribes_before = info_field(&mut admin, "commandstats", "cmdstat_subscribe").await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "exactly the feed's subscriber connection");

    next_event(&mut feed, |e| *e == FeedEvent::Interrupted, "Interrupted").await;
    next_event(&mut feed, |e| *e == FeedEvent::Resumed, "Resumed").await;
    assert!(feed.control.is_live(), "live again after Resumed");

    assert_eq!(
        pubsub_channels(&mut admin).await.len(),
        topics.len() + 1,
        "every topic re-subscribed"
    );
    let subscribes =
        info_field(&mut admin, "commandstats", "cmdstat_subscribe").await - subscribes_before;
    assert!(
        (1..=5).contains(&subscribes),
        "{} topics re-subscribed with {subscribes} SUBSCRIBE commands: batches of 500 expected",
        topics.len() + 1
    );
    assert_eq!(s.stats().feed_interruptions, 1);
    assert_eq!(s.stats().feed_resumptions, 1);

    for channel in [&channels[0], &channels[600], &channels[1199]] {
        let pos = s
            .publish(
                channel,
                Bytes::from_static(b"after"),
                &PublishOptions::default(),
            )
            .await
            .expect("publish");
        assert_eq!(next_publication_on(&mut feed, channel).await, pos.offset);
    }
    s.send(&user, Bytes::from_static(b"hi"))
        .await
        .expect("send");
    next_event(
        &mut feed,
        |e| matches!(e, FeedEvent::Message { topic, .. } if *topic == user),
        "user message",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_probe_detects_a_silent_connection() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let s = scaler(
        config(&server)
            .with_probe(Duration::from_millis(200), Duration::from_millis(500))
            .with_command_timeout(Duration::from_secs(1)),
    )
    .await;
    let channel = unique("probe");
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("subscribe");
    // Let a few probes go round while all is well: they must not interrupt.
    sleep(Duration::from_millis(800)).await;
    assert!(feed.control.is_live());
    assert!(s.stats().probes_sent >= 1, "an idle feed probes");
    assert_eq!(s.stats().probe_failures, 0);

    // The connection stays open but Redis answers nothing: only the probe can tell.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    next_event(&mut feed, |e| *e == FeedEvent::Interrupted, "Interrupted").await;
    assert!(!feed.control.is_live());
    assert!(s.stats().probe_failures >= 1, "the probe noticed");

    next_event(&mut feed, |e| *e == FeedEvent::Resumed, "Resumed").await;
    assert!(feed.control.is_live());
    let pos = loop {
        match s
            .publish(
                &channel,
                Bytes::from_static(b"x"),
                &PublishOptions::default(),
            )
            .await
        {
            Ok(pos) => break pos,
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(next_publication_on(&mut feed, &channel).await, pos.offset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_channels_stay_under_the_prefix_with_one_tag_per_channel() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let cfg = config(&server);
    let prefix = format!("{}:", cfg.prefix);
    let s = scaler(cfg).await;
    let weird = "we{ird}:na}me{ 100%";
    let plain = "plain";
    let instance = unique("inst");
    s.register_instance(
        &InstanceInfo {
            id: instance.clone(),
            address: "127.0.0.1:1".into(),
            connections: 1,
            cores: 0,
            updated_at_ms: now_ms(),
        },
        Duration::from_secs(30),
    )
    .await
    .expect("register");
    let mut feed = s.open_feed(&instance).await.expect("feed");
    feed.control
        .subscribe(&[
            Topic::channel(weird),
            Topic::channel(plain),
            Topic::user("a{b}"),
            Topic::instance(instance.as_str()),
        ])
        .await
        .expect("subscribe");
    for channel in [weird, plain] {
        s.publish(
            channel,
            Bytes::from_static(b"1"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish");
        assert_eq!(next_publication_on(&mut feed, channel).await, 1);
        s.history(channel, &HistoryRequest::default())
            .await
            .expect("history");
        s.presence_add(
            channel,
            &PresenceEntry {
                client: "c1".into(),
                user: Some("alice".into()),
                instance: instance.clone(),
            },
        )
        .await
        .expect("presence");
        assert_eq!(s.presence(channel).await.expect("presence").len(), 1);
    }
    s.history("never-published{}", &HistoryRequest::default())
        .await
        .expect("history creates an epoch");
    s.acquire_lease("core{1}", "me", Duration::from_secs(30))
        .await
        .expect("lease");
    s.session_put("sess{1}", Bytes::from_static(b"v"), Duration::from_secs(30))
        .await
        .expect("session");
    s.send(&Topic::user("a{b}"), Bytes::from_static(b"x"))
        .await
        .expect("send");
    s.instances().await.expect("instances");

    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut admin)
            .await
            .expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(keys.len() >= 10, "the calls above wrote keys: {keys:?}");
    for key in &keys {
        assert!(
            key.starts_with(&prefix),
            "{key} is outside the prefix {prefix}"
        );
    }
    for channel in pubsub_channels(&mut admin).await {
        assert!(
            channel.starts_with(&prefix),
            "pub/sub channel {channel} is outside the prefix"
        );
    }

    // One channel's keys (meta, stream, presence) share one hash tag, distinct
    // from every other channel's.
    let mut by_tag: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for key in keys.iter().filter(|k| k[prefix.len()..].starts_with("ch:")) {
        by_tag.entry(hash_tag(key)).or_default().push(key);
    }
    assert_eq!(by_tag.len(), 3, "three channels, three tags: {by_tag:?}");
    let mut full_sets = 0;
    for (tag, members) in &by_tag {
        assert_ne!(*tag, "", "{members:?}");
        assert!(
            members.iter().all(|k| hash_tag(k) != *k),
            "{members:?} have a tag"
        );
        if members.len() == 3 {
            full_sets += 1;
            let suffixes: HashSet<&str> = members
                .iter()
                .map(|k| &k[k.rfind(':').unwrap_or(0)..])
                .collect();
            assert_eq!(suffixes, HashSet::from([":meta", ":stream", ":presence"]));
        }
    }
    assert_eq!(
        full_sets, 2,
        "both published channels have meta, stream and presence"
    );
    // Registry, lease and key-value keys each share one tag too.
    for tag in ["registry", "lease", "kv"] {
        let found: HashSet<&str> = keys
            .iter()
            .filter(|k| k.contains(&format!("{{{tag}}}")))
            .map(|k| hash_tag(k))
            .collect();
        assert_eq!(found, HashSet::from([tag]), "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_fails_fast_when_redis_is_stopped() {
    let mut server = RedisServer::start();
    let s = scaler(config(&server)).await;
    let channel = unique("down");
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("subscribe");
    s.publish(
        &channel,
        Bytes::from_static(b"1"),
        &PublishOptions::default(),
    )
    .await
    .expect("publish while up");
    server.stop();
    next_event(&mut feed, |e| *e == FeedEvent::Interrupted, "Interrupted").await;

    let opts = PublishOptions::default();
    fails_fast(
        "publish",
        s.publish(&channel, Bytes::from_static(b"2"), &opts),
    )
    .await;
    fails_fast(
        "publish again",
        s.publish(&channel, Bytes::from_static(b"3"), &opts),
    )
    .await;
    fails_fast("ping", s.ping()).await;
    fails_fast("history", s.history(&channel, &HistoryRequest::default())).await;
    fails_fast("send", s.send(&Topic::user("u"), Bytes::from_static(b"x"))).await;
    fails_fast("instances", s.instances()).await;
    fails_fast(
        "acquire_lease",
        s.acquire_lease("k", "o", Duration::from_secs(1)),
    )
    .await;
    fails_fast("presence", s.presence(&channel)).await;
    fails_fast("session_get", s.session_get("s")).await;
    fails_fast("open_feed", s.open_feed("other")).await;
    fails_fast(
        "subscribe while down",
        feed.control.subscribe(&[Topic::channel("later")]),
    )
    .await;
    fails_fast("connect", RedisScaler::connect(config(&server))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_time_out_when_redis_is_silent() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    // Default command timeout (3 s).
    let s = scaler(config(&server)).await;
    let channel = unique("silent");
    s.publish(
        &channel,
        Bytes::from_static(b"1"),
        &PublishOptions::default(),
    )
    .await
    .expect("publish while up");
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(7000)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    fails_fast(
        "publish to a paused redis",
        s.publish(
            &channel,
            Bytes::from_static(b"2"),
            &PublishOptions::default(),
        ),
    )
    .await;
    fails_fast("ping a paused redis", s.ping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_of_a_tiny_queue_is_counted_and_reported() {
    let server = RedisServer::start();
    let s = scaler(config(&server).with_feed_queue_capacity(4)).await;
    let channel = unique("flood");
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("subscribe");
    let total = 50u64;
    for _ in 0..total {
        s.publish(
            &channel,
            Bytes::from_static(b"x"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish");
    }
    // Nobody reads: 4 fit, the rest is dropped and counted.
    let deadline = Instant::now() + WAIT;
    while s.stats().feed_events_dropped < total - 4 {
        assert!(
            Instant::now() < deadline,
            "drops not counted: {:?}",
            s.stats()
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.stats().feed_events_dropped, total - 4);
    let mut got = Vec::new();
    for _ in 0..5 {
        let ev = timeout(WAIT, feed.events.recv())
            .await
            .expect("event in time")
            .expect("feed open");
        got.push(ev);
    }
    let offsets: Vec<u64> = got[..4]
        .iter()
        .map(|e| match e {
            FeedEvent::Publication(p) => p.offset,
            other => panic!("expected a publication, got {other:?}"),
        })
        .collect();
    assert_eq!(offsets, vec![1, 2, 3, 4]);
    assert_eq!(got[4], FeedEvent::Overflowed { dropped: total - 4 });
    // The counter is bumped right after the hand-off; give it a moment.
    let deadline = Instant::now() + WAIT;
    while s.stats().feed_overflows == 0 {
        assert!(Instant::now() < deadline, "overflow not counted");
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.stats().feed_overflows, 1);
    // Back to normal afterwards.
    let pos = s
        .publish(
            &channel,
            Bytes::from_static(b"y"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish");
    assert_eq!(next_publication_on(&mut feed, &channel).await, pos.offset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_changes_while_down_leave_nothing_behind() {
    let mut server = RedisServer::start();
    let s = scaler(config(&server)).await;
    let old = unique("old");
    let new = unique("new");
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel(old.as_str())])
        .await
        .expect("subscribe");
    server.stop();
    next_event(&mut feed, |e| *e == FeedEvent::Interrupted, "Interrupted").await;
    assert!(!feed.control.is_live());
    let err = feed
        .control
        .subscribe(&[Topic::channel(new.as_str())])
        .await
        .expect_err("subscribe while down says so");
    assert!(err.is_unavailable(), "{err:?}");
    feed.control
        .unsubscribe(&[Topic::channel(old.as_str())])
        .await
        .expect("unsubscribe while down");
    server.start_again();
    next_event(&mut feed, |e| *e == FeedEvent::Resumed, "Resumed").await;
    assert!(feed.control.is_live());
    let mut admin = admin(&server).await;
    let channels = pubsub_channels(&mut admin).await;
    assert_eq!(
        channels.len(),
        1,
        "only the probe: the failed subscribe and the unsubscribed topic are forgotten: {channels:?}"
    );
    // The caller subscribes again once the feed resumed.
    feed.control
        .subscribe(&[Topic::channel(new.as_str())])
        .await
        .expect("subscribe after resume");
    // Publishing works again once the command connection is back.
    let deadline = Instant::now() + WAIT;
    loop {
        match s
            .publish(&old, Bytes::from_static(b"no"), &PublishOptions::default())
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_unavailable(), "{e:?}");
                sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish still failing: {e:?}"),
        }
    }
    s.publish(&new, Bytes::from_static(b"yes"), &PublishOptions::default())
        .await
        .expect("publish new");
    match next_event(
        &mut feed,
        |e| matches!(e, FeedEvent::Publication(_)),
        "publication",
    )
    .await
    {
        FeedEvent::Publication(p) => {
            assert_eq!(&*p.channel, new.as_str(), "only the topic subscribed now")
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_feed_closes_its_connection() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let s = scaler(config(&server)).await;
    let feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel("c")])
        .await
        .expect("subscribe");
    assert_eq!(pubsub_clients(&mut admin).await, 1);
    assert_eq!(s.stats().feeds_open, 1);
    drop(feed);
    let deadline = Instant::now() + FAIL_WITHIN;
    while pubsub_clients(&mut admin).await > 0 || s.stats().feeds_open > 0 {
        assert!(
            Instant::now() < deadline,
            "subscriber connection still open after drop"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_one_multiplexed_connection() {
    let server = RedisServer::start();
    let mut admin = admin(&server).await;
    let s = scaler(config(&server).with_pool_size(1)).await;
    let channel = unique("burst");
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let s = s.clone();
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            s.publish(
                &channel,
                Bytes::from_static(b"x"),
                &PublishOptions::default(),
            )
            .await
            .expect("publish")
            .offset
        }));
    }
    let mut offsets = HashSet::new();
    for t in tasks {
        assert!(offsets.insert(t.await.expect("task")));
    }
    assert_eq!(offsets, (1..=500).collect::<HashSet<u64>>());
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut admin)
        .await
        .expect("CLIENT LIST");
    assert_eq!(
        list.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "500 concurrent publishes went over one connection (plus this admin one)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_calls_after_a_quiet_restart_succeed() {
    let mut server = RedisServer::start();
    let s = scaler(config(&server).with_pool_size(4)).await;
    let channel = unique("restart");
    // Touch every pooled connection.
    for _ in 0..8 {
        s.publish(
            &channel,
            Bytes::from_static(b"x"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish");
    }
    // Redis restarts while nobody calls: the pooled connections notice on their
    // own, so no call after the restart runs into a dead connection.
    server.stop();
    sleep(Duration::from_millis(300)).await;
    server.start_again();
    let mut admin = admin(&server).await;
    let _: String = redis::cmd("PING")
        .query_async(&mut admin)
        .await
        .expect("up");
    for n in 1..=8 {
        let pos = s
            .publish(
                &channel,
                Bytes::from_static(b"y"),
                &PublishOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("publish #{n} after the restart failed: {e:?}"));
        assert_eq!(pos.offset, n, "the restarted redis is empty: a new epoch");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_against_a_plain_server_fails_cleanly() {
    // A TLS URL pointed at a plain-text redis: the handshake fails. What matters
    // is that TLS is wired (a crypto provider is present, nothing panics) and the
    // failure is a bounded "unavailable".
    let server = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let config = RedisConfig::from_url(url).expect("rediss url");
    assert!(config.is_tls());
    fails_fast(
        "connect over TLS to a plain server",
        RedisScaler::connect(config),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_are_handled() {
    let server = RedisServer::start();
    let s = scaler(config(&server)).await;
    let channel = unique("edge");
    // History size 0: offsets advance, nothing is kept, recovery fails.
    let none = PublishOptions {
        history_size: 0,
        history_ttl: Duration::from_secs(60),
    };
    let first = s
        .publish(&channel, Bytes::from_static(b"a"), &none)
        .await
        .expect("publish");
    let second = s
        .publish(&channel, Bytes::from_static(b"b"), &none)
        .await
        .expect("publish");
    assert_eq!((first.offset, second.offset), (1, 2));
    let page = s
        .history(
            &channel,
            &HistoryRequest {
                since: Some(first.clone()),
                limit: 10,
                ..HistoryRequest::default()
            },
        )
        .await
        .expect("history");
    assert!(!page.recovered && page.publications.is_empty());
    let page = s
        .history(
            &channel,
            &HistoryRequest {
                since: Some(second.clone()),
                limit: 0,
                ..HistoryRequest::default()
            },
        )
        .await
        .expect("history at the top");
    assert!(page.recovered, "nothing missed is recovered");
    // Then keeping history again works from there on.
    let third = s
        .publish(
            &channel,
            Bytes::from_static(b"c"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish");
    let page = s
        .history(
            &channel,
            &HistoryRequest {
                since: Some(second),
                limit: 10,
                ..HistoryRequest::default()
            },
        )
        .await
        .expect("history");
    assert!(page.recovered);
    assert_eq!(page.publications.len(), 1);
    assert_eq!(page.publications[0].offset, third.offset);
    assert_eq!(page.publications[0].payload, Bytes::from_static(b"c"));

    // Extreme sizes and durations are clamped, not rejected.
    let huge = PublishOptions {
        history_size: usize::MAX,
        history_ttl: Duration::MAX,
    };
    s.publish(&unique("huge"), Bytes::from_static(b"x"), &huge)
        .await
        .expect("publish with extreme options");
    s.session_put("zero", Bytes::from_static(b"v"), Duration::ZERO)
        .await
        .expect("zero TTL");
    s.session_put("forever", Bytes::from_static(b"v"), Duration::MAX)
        .await
        .expect("max TTL");
    assert!(matches!(
        s.acquire_lease("l", "o", Duration::MAX)
            .await
            .expect("lease"),
        scaled_sockets_scaler::LeaseOutcome::Acquired { .. }
    ));
    s.kv_put(
        "forever",
        Bytes::from_static(b"v"),
        &scaled_sockets_scaler::PutOptions::default().with_ttl(Duration::MAX),
    )
    .await
    .expect("max TTL");
    // Binary payloads survive both paths.
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("subscribe");
    let binary = Bytes::from(vec![0u8, 0xff, b':', b'\n', 0x80]);
    let pos = s
        .publish(&channel, binary.clone(), &PublishOptions::default())
        .await
        .expect("publish binary");
    match next_event(
        &mut feed,
        |e| matches!(e, FeedEvent::Publication(_)),
        "publication",
    )
    .await
    {
        FeedEvent::Publication(p) => {
            assert_eq!((p.offset, &p.epoch), (pos.offset, &pos.epoch));
            assert_eq!(p.payload, binary);
        }
        _ => unreachable!(),
    }
    let page = s
        .history(
            &channel,
            &HistoryRequest {
                since: Some(scaled_sockets_scaler::StreamPosition::new(
                    pos.offset - 1,
                    pos.epoch.clone(),
                )),
                limit: 10,
                ..HistoryRequest::default()
            },
        )
        .await
        .expect("history");
    assert_eq!(page.publications[0].payload, binary);

    // Invalid arguments are refused without touching Redis.
    assert!(matches!(
        s.publish("", Bytes::new(), &PublishOptions::default())
            .await,
        Err(ScalerError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.send(&Topic::channel("c"), Bytes::new()).await,
        Err(ScalerError::InvalidArgument(_))
    ));
}
