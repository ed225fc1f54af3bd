//! NATS-specific checks beyond the shared conformance suite.

use bytes::Bytes;
use scaled_sockets_nats::{NatsConfig, NatsScaler};
use scaled_sockets_scaler::{
    Feed, FeedEvent, HistoryRequest, MemoryScaler, PublishOptions, Scaler, ScalerError, ScalerExt,
    StreamPosition, Topic,
};
use scaled_sockets_test_harness::NatsServer;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tokio::time::timeout;

async fn server() -> NatsServer {
    tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("start nats-server")
}

async fn scaler(server: &NatsServer) -> NatsScaler {
    NatsScaler::connect(NatsConfig::from_url(server.url()).with_prefix("nt"))
        .await
        .expect("connect")
}

async fn next_event(feed: &mut Feed) -> FeedEvent {
    timeout(Duration::from_secs(10), feed.events.recv())
        .await
        .expect("an event within 10 s")
        .expect("feed open")
}

fn opts(size: usize) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: Duration::from_secs(300),
    }
}

/// Channel and user names with subject metacharacters, spaces and unicode are
/// kept apart and arrive under their own names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weird_names_are_encoded_safely() {
    let server = server().await;
    let s = scaler(&server).await;
    let mut feed = s.open_feed("inst").await.expect("feed");
    let channels = [
        "a.b",
        "a",
        "b",
        "*",
        ">",
        "a.*",
        "a.>",
        "a b",
        "ünïcødé 🎉",
        "$KV.x.y",
        "-",
        "_",
    ];
    let topics: Vec<Topic> = channels.iter().map(|c| Topic::channel(*c)).collect();
    feed.control.subscribe(&topics).await.expect("subscribe");
    for c in channels {
        s.publish(c, Bytes::from(c.to_owned()), &opts(10))
            .await
            .expect("publish");
    }
    let mut seen = HashMap::new();
    for _ in channels {
        match next_event(&mut feed).await {
            FeedEvent::Publication(p) => {
                assert_eq!(p.payload, Bytes::from(p.channel.to_string()), "no mix-up");
                assert_eq!(p.offset, 1, "each channel has its own stream");
                seen.insert(p.channel.to_string(), p.offset);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen.len(), channels.len());
    // The same names as user topics do not see channel traffic and vice versa.
    let users: Vec<Topic> = channels.iter().map(|c| Topic::user(*c)).collect();
    feed.control
        .subscribe(&users)
        .await
        .expect("subscribe users");
    s.send(&Topic::user("a.*"), Bytes::from_static(b"to a.*"))
        .await
        .expect("send");
    match next_event(&mut feed).await {
        FeedEvent::Message { topic, payload } => {
            assert_eq!(topic, Topic::user("a.*"));
            assert_eq!(payload, Bytes::from_static(b"to a.*"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        timeout(Duration::from_millis(300), feed.events.recv())
            .await
            .is_err(),
        "a wildcard-looking name is not a wildcard"
    );
    // Empty and overlong names are refused before touching NATS.
    assert!(matches!(
        s.publish("", Bytes::new(), &opts(1)).await,
        Err(ScalerError::InvalidArgument(_))
    ));
    let long = "x".repeat(scaled_sockets_nats::names::MAX_NAME_BYTES + 1);
    assert!(matches!(
        s.publish(&long, Bytes::new(), &opts(1)).await,
        Err(ScalerError::InvalidArgument(_))
    ));
    assert!(matches!(
        feed.control
            .subscribe(&[Topic::channel(long.as_str())])
            .await,
        Err(ScalerError::InvalidArgument(_))
    ));
    // Presence and leases with odd names work too.
    s.register_instance(
        &scaled_sockets_scaler::InstanceInfo {
            id: "inst. *>".into(),
            ..Default::default()
        },
        Duration::from_secs(30),
    )
    .await
    .expect("register");
    s.presence_add(
        "a.>",
        &scaled_sockets_scaler::PresenceEntry {
            client: "c.1 *".into(),
            user: Some("ü".into()),
            instance: "inst. *>".into(),
        },
    )
    .await
    .expect("presence add");
    assert_eq!(s.presence("a.>").await.expect("presence").len(), 1);
    assert!(s.presence("a.*").await.expect("presence").is_empty());
    let token = s
        .acquire_lease("core.*", "me", Duration::from_secs(5))
        .await
        .expect("lease")
        .acquired()
        .expect("acquired");
    assert_eq!(
        s.leases("core.").await.expect("leases"),
        vec![(
            "core.*".to_owned(),
            scaled_sockets_scaler::Lease {
                owner: "me".to_owned(),
                token
            }
        )]
    );
    // Key-value keys with odd names list by their real prefix.
    for key in ["kv.*", "kv.>", "kv. x", "kw"] {
        s.kv_put(key, Bytes::from(key), &Default::default())
            .await
            .expect("kv put");
    }
    let listed: Vec<String> = s
        .kv_list("kv.")
        .await
        .expect("kv list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, vec!["kv. x", "kv.*", "kv.>"]);
}

/// One feed subscribes to many topics in one call and gets each one's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_topics_on_one_feed() {
    let server = server().await;
    let s = scaler(&server).await;
    let mut feed = s.open_feed("inst").await.expect("feed");
    let n = 500;
    let topics: Vec<Topic> = (0..n).map(|i| Topic::channel(format!("ch-{i}"))).collect();
    feed.control.subscribe(&topics).await.expect("subscribe");
    for i in 0..n {
        s.publish(&format!("ch-{i}"), Bytes::from(format!("{i}")), &opts(10))
            .await
            .expect("publish");
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < n {
        match next_event(&mut feed).await {
            FeedEvent::Publication(p) => {
                assert_eq!(p.payload, Bytes::from(p.channel["ch-".len()..].to_owned()));
                assert!(got.insert(p.channel.to_string()), "delivered once");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Unsubscribing half of them stops exactly those.
    feed.control
        .unsubscribe(&topics[..n / 2])
        .await
        .expect("unsubscribe");
    s.publish("ch-0", Bytes::from_static(b"gone"), &opts(10))
        .await
        .expect("publish");
    s.publish(
        &format!("ch-{}", n - 1),
        Bytes::from_static(b"kept"),
        &opts(10),
    )
    .await
    .expect("publish");
    match next_event(&mut feed).await {
        FeedEvent::Publication(p) => assert_eq!(p.payload, Bytes::from_static(b"kept")),
        other => panic!("unexpected {other:?}"),
    }
}

/// A reader that does not keep up loses events, counted, and learns about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_is_counted_and_reported() {
    let server = server().await;
    let s = scaler(&server).await;
    let mut feed = s.open_feed("inst").await.expect("feed");
    let topic = Topic::user("flood");
    feed.control
        .subscribe(std::slice::from_ref(&topic))
        .await
        .expect("subscribe");
    let total = scaled_sockets_scaler::FEED_QUEUE_CAPACITY as u64 + 2000;
    for i in 0..total {
        s.send(&topic, Bytes::from(i.to_string()))
            .await
            .expect("send");
    }
    s.client().flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut messages = 0u64;
    let mut dropped = 0u64;
    let mut last = None;
    while messages + dropped < total {
        match next_event(&mut feed).await {
            FeedEvent::Message { payload, .. } => {
                let n: u64 = std::str::from_utf8(&payload)
                    .expect("utf8")
                    .parse()
                    .expect("number");
                assert!(last.is_none_or(|l| n > l), "order kept");
                last = Some(n);
                messages += 1;
            }
            FeedEvent::Overflowed { dropped: d } => dropped += d,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(messages + dropped, total, "every loss is counted");
    assert!(dropped > 0, "the queue overflowed");
    assert!(messages >= scaled_sockets_scaler::FEED_QUEUE_CAPACITY as u64);
}

/// Long recoveries (read through a consumer) and physical trimming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_recovery_and_trimming() {
    let server = server().await;
    let s = scaler(&server).await;
    let top = s.stream_top("big").await.expect("top");
    for i in 1..=300u64 {
        let pos = s
            .publish("big", Bytes::from(i.to_string()), &opts(1000))
            .await
            .expect("publish");
        assert_eq!(pos, StreamPosition::new(i, top.epoch.clone()));
    }
    let page = s
        .recover("big", StreamPosition::new(10, top.epoch.clone()), 1000)
        .await
        .expect("recover");
    assert!(page.recovered);
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (11..=300).collect::<Vec<_>>());
    assert!(
        page.publications
            .iter()
            .all(|p| p.payload == p.offset.to_string())
    );
    let all = s
        .recover("big", StreamPosition::new(0, top.epoch.clone()), 1000)
        .await
        .expect("recover all");
    assert!(all.recovered);
    assert_eq!(all.publications.len(), 300);

    // A small history is honoured exactly and trimmed physically.
    for i in 1..=100u64 {
        s.publish("small", Bytes::from(i.to_string()), &opts(50))
            .await
            .expect("publish");
    }
    let epoch = s.stream_top("small").await.expect("top").epoch;
    let page = s
        .recover("small", StreamPosition::new(50, epoch.clone()), 100)
        .await
        .expect("recover");
    assert!(page.recovered, "51..=100 are kept");
    assert_eq!(page.publications.len(), 50);
    let page = s
        .recover("small", StreamPosition::new(49, epoch.clone()), 100)
        .await
        .expect("recover");
    assert!(!page.recovered, "50 was trimmed");
    // Physically: at most 50 + 32 messages remain on the subject.
    let raw = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(raw);
    let stream = js.get_stream("nt_history").await.expect("stream");
    let subject = format!(
        "nt.hist.{}",
        scaled_sockets_nats::names::encode_token("small")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = subject_count(&stream, &subject).await;
        if count <= 82 {
            break;
        }
        assert!(Instant::now() < deadline, "{count} messages still stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lost epoch's messages are purged once a new epoch starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_epoch_is_purged() {
    let server = server().await;
    let s = scaler(&server).await;
    let short = PublishOptions {
        history_size: 100,
        history_ttl: Duration::from_millis(500),
    };
    let mut first = None;
    for i in 0..20 {
        let pos = s
            .publish("gone", Bytes::from(format!("{i}")), &short)
            .await
            .expect("publish");
        first.get_or_insert(pos);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let next = s
        .publish("gone", Bytes::from_static(b"new"), &short)
        .await
        .expect("publish");
    assert_eq!(next.offset, 1);
    assert_ne!(Some(&next.epoch), first.as_ref().map(|p| &p.epoch));
    let raw = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(raw);
    let stream = js.get_stream("nt_history").await.expect("stream");
    let subject = format!(
        "nt.hist.{}",
        scaled_sockets_nats::names::encode_token("gone")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if subject_count(&stream, &subject).await == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "old epoch not purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many messages the stream holds on `subject`.
async fn subject_count(stream: &async_nats::jetstream::stream::Stream, subject: &str) -> usize {
    use futures_util::TryStreamExt;
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(subject.to_owned())
        .await
        .expect("subject info")
        .try_collect()
        .await
        .expect("subject counts");
    counts
        .into_iter()
        .filter(|(s, _)| s == subject)
        .map(|(_, n)| n)
        .sum()
}

/// Tiny deterministic PRNG (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Random publishes (with changing history sizes, including 0) and recoveries
/// answer exactly like the in-memory reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_matches_memory_scaler() {
    let server = server().await;
    let nats = scaler(&server).await;
    let memory = MemoryScaler::new();
    let mut rng = Lcg(42);
    let channels = ["p0", "p1", "p2"];
    let sizes = [0usize, 1, 3, 5, 20, 100, 100, 100, 100];
    let mut tops: HashMap<&str, u64> = HashMap::new();
    let (mut recovered, mut not_recovered) = (0, 0);
    for step in 0..600 {
        let channel = channels[rng.next(channels.len() as u64) as usize];
        if rng.next(3) > 0 {
            let size = sizes[rng.next(sizes.len() as u64) as usize];
            let payload = Bytes::from(format!("{step}"));
            let a = memory
                .publish(channel, payload.clone(), &opts(size))
                .await
                .expect("memory");
            let b = nats
                .publish(channel, payload, &opts(size))
                .await
                .expect("nats");
            assert_eq!(a.offset, b.offset);
            tops.insert(channel, a.offset);
        } else {
            let top = tops.get(channel).copied().unwrap_or(0);
            // Mostly near the top (what reconnecting clients ask), sometimes
            // beyond it.
            let since = if rng.next(8) == 0 {
                top + rng.next(3)
            } else {
                top.saturating_sub(rng.next(30))
            };
            let limit = rng.next(40) as usize;
            let wrong_epoch = rng.next(10) == 0;
            let m_epoch = memory.stream_top(channel).await.expect("top").epoch;
            let n_epoch = nats.stream_top(channel).await.expect("top").epoch;
            let (me, ne) = if wrong_epoch {
                ("nope".into(), "nope".into())
            } else {
                (m_epoch, n_epoch)
            };
            let a = memory
                .history(
                    channel,
                    &HistoryRequest {
                        since: Some(StreamPosition::new(since, me)),
                        limit,
                        ..HistoryRequest::default()
                    },
                )
                .await
                .expect("memory");
            let b = nats
                .history(
                    channel,
                    &HistoryRequest {
                        since: Some(StreamPosition::new(since, ne)),
                        limit,
                        ..HistoryRequest::default()
                    },
                )
                .await
                .expect("nats");
            assert_eq!(a.top.offset, b.top.offset, "step {step}");
            assert_eq!(
                a.recovered, b.recovered,
                "step {step}: {channel} since {since} limit {limit}"
            );
            let pa: Vec<(u64, Bytes)> = a
                .publications
                .iter()
                .map(|p| (p.offset, p.payload.clone()))
                .collect();
            let pb: Vec<(u64, Bytes)> = b
                .publications
                .iter()
                .map(|p| (p.offset, p.payload.clone()))
                .collect();
            assert_eq!(pa, pb, "step {step}");
            if a.recovered && !pa.is_empty() {
                recovered += 1;
            } else if !a.recovered {
                not_recovered += 1;
            }
        }
    }
    assert!(
        recovered >= 20 && not_recovered >= 20,
        "both outcomes exercised: {recovered} recovered, {not_recovered} not"
    );
}

/// History is on disk: it survives a server restart with the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_restart() {
    let mut server = server().await;
    let s = scaler(&server).await;
    let mut last = None;
    for i in 1..=5 {
        last = Some(
            s.publish("durable", Bytes::from(format!("{i}")), &opts(100))
                .await
                .expect("publish"),
        );
    }
    let last = last.expect("published");
    server.stop();
    let started = Instant::now();
    let err = s.stream_top("durable").await.expect_err("down");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        match s
            .recover("durable", StreamPosition::new(2, last.epoch.clone()), 100)
            .await
        {
            Ok(page) => break page,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("history still failing after restart: {e}"),
        }
    };
    assert!(page.recovered);
    assert_eq!(page.top, last);
    assert_eq!(page.publications.len(), 3);
}

/// Connecting to nothing fails fast with `Unavailable`; bad configs are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures() {
    let port = scaled_sockets_test_harness::free_port();
    let started = Instant::now();
    let err = NatsScaler::connect(NatsConfig::from_url(format!("nats://127.0.0.1:{port}")))
        .await
        .expect_err("nobody listens");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = NatsScaler::connect(NatsConfig::from_url("nats://127.0.0.1:1").with_prefix("a.b"))
        .await
        .expect_err("bad prefix");
    assert!(matches!(err, ScalerError::InvalidArgument(_)));
}

/// Dropping a feed's control ends its event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_control_closes_the_feed() {
    let server = server().await;
    let s = scaler(&server).await;
    let Feed {
        control,
        mut events,
    } = s.open_feed("inst").await.expect("feed");
    control
        .subscribe(&[Topic::channel("x")])
        .await
        .expect("subscribe");
    drop(control);
    let end = timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("closed in time");
    assert!(end.is_none());
}

/// A stream that vanished (storage lost, deleted by an operator) is re-created:
/// calls fail retryably for a moment, then work again in a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_streams_are_recreated() {
    let server = server().await;
    let s = scaler(&server).await;
    let before = s
        .publish("phoenix", Bytes::from_static(b"1"), &opts(10))
        .await
        .expect("publish");
    s.session_put("sess", Bytes::from_static(b"v"), Duration::from_secs(30))
        .await
        .expect("session");
    let raw = async_nats::connect(server.url()).await.expect("raw client");
    let js = async_nats::jetstream::new(raw);
    js.delete_stream("nt_history")
        .await
        .expect("delete history");
    js.delete_stream("KV_nt_kv")
        .await
        .expect("delete the key-value bucket");
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match s
            .publish("phoenix", Bytes::from_static(b"2"), &opts(10))
            .await
        {
            Ok(pos) => break pos,
            Err(e) => {
                assert!(e.is_unavailable(), "retryable, got {e:?}");
                assert!(Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(after.offset, 1, "history was lost: a new epoch");
    assert_ne!(after.epoch, before.epoch);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.session_get("sess").await {
            Ok(value) => {
                assert_eq!(value, None, "the session was lost with its bucket");
                break;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "retryable, got {e:?}");
                assert!(Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    s.session_put("sess", Bytes::from_static(b"w"), Duration::from_secs(30))
        .await
        .expect("session put after repair");
}
