//! Tabs of one session: two live connections of a session (on two
//! instances) keep their own saved positions; a resume restores the channels
//! of the connections that are no longer open (closed, or on an instance
//! that died without a word), from the positions they saved, and not those
//! of a tab still open; `resumed:true` whenever a live session is joined; every
//! record expires with the resume window. In-memory scaler, private Redis and NATS.

mod support;

use scaled_sockets::{
    Config, Data, MemoryScaler, Scaler, cli::scaler_from_url, scaler::InstanceInfo,
};
use scaled_sockets_test_harness::{NatsServer, RedisServer};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use support::{Raw, TestServer, demo_app, eventually, test_config};

fn config(instance: &str) -> Config {
    Config {
        session_save_interval: Duration::from_millis(200),
        resume_window: Duration::from_secs(3),
        ..test_config(instance)
    }
}

async fn publish(srv: &TestServer, channel: &str, n: u64) -> u64 {
    srv.sockets
        .publish(channel, &Data::json(&json!(n)).unwrap())
        .await
        .unwrap()
        .offset
}

async fn subscribe(raw: &mut Raw, id: u64, channel: &str) {
    let r = raw
        .call(json!({"type":"subscribe","id":id,"channel":channel}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
}

/// The offsets of the next `n` messages of `channel` (other frames skipped).
async fn offsets(raw: &mut Raw, channel: &str, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = raw.recv_type("message").await;
        if frame["channel"] == channel {
            got.push(frame["offset"].as_u64().unwrap());
        }
    }
    got
}

/// The `subscribed` pushes that arrive within `wait`.
async fn pushed_channels(raw: &mut Raw, wait: Duration) -> Vec<String> {
    let mut channels = Vec::new();
    while let Ok(frame) = tokio::time::timeout(wait, raw.recv()).await {
        if frame["type"] == "subscribed" {
            channels.push(frame["channel"].as_str().unwrap().to_owned());
        }
    }
    channels.sort();
    channels
}

async fn session_keys(scaler: &Arc<dyn Scaler>, session: &str) -> Vec<String> {
    scaler
        .kv_list(&format!("sessconn/{session}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

async fn two_tabs_keep_their_own_positions(scaler: Arc<dyn Scaler>) {
    let a = TestServer::start(config("tabs-a"), scaler.clone(), demo_app()).await;
    let b = TestServer::start(config("tabs-b"), scaler.clone(), demo_app()).await;
    let (mut tab1, w1) = Raw::connect(&a.url()).await;
    let session = w1["session"].as_str().unwrap().to_owned();
    assert_eq!(w1["resumed"], false);
    subscribe(&mut tab1, 1, "tab-one").await;
    subscribe(&mut tab1, 2, "shared").await;

    // The second tab joins the live session (`resumed`), but nothing of the
    // first tab's comes back: it is open.
    let (mut tab2, w2) =
        Raw::connect_with(&b.url(), json!({"type":"connect","session":session})).await;
    assert_eq!(w2["session"], session.as_str());
    assert_eq!(w2["resumed"], true, "{w2}");
    assert_eq!(
        pushed_channels(&mut tab2, Duration::from_millis(300)).await,
        Vec::<String>::new()
    );
    subscribe(&mut tab2, 1, "tab-two").await;
    subscribe(&mut tab2, 2, "shared").await;

    // Both deliver; tab2 is ahead on "shared" (tab1 stops reading it).
    for n in 1..=3 {
        publish(&a, "tab-one", n).await;
        publish(&a, "tab-two", n).await;
    }
    assert_eq!(offsets(&mut tab1, "tab-one", 3).await, vec![1, 2, 3]);
    assert_eq!(offsets(&mut tab2, "tab-two", 3).await, vec![1, 2, 3]);
    publish(&a, "shared", 1).await;
    assert_eq!(offsets(&mut tab1, "shared", 1).await, vec![1]);
    assert_eq!(offsets(&mut tab2, "shared", 1).await, vec![1]);
    // Two records, one per tab, each with its own positions, saved in
    // batches while both are open (the first once a tab has channels).
    eventually(Duration::from_secs(2), "one record per tab", || {
        let scaler = scaler.clone();
        let session = session.clone();
        async move { session_keys(&scaler, &session).await.len() == 2 }
    })
    .await;
    // A tell to the session reaches both tabs, on both instances.
    a.sockets
        .tell_session(&session, "hello", &Data::json(&json!("both")).unwrap())
        .await
        .unwrap();
    assert_eq!(tab1.recv_type("tell").await["data"], "both");
    assert_eq!(tab2.recv_type("tell").await["data"], "both");

    // Let tab1's position on "shared" (1) be saved, then close tab1 while
    // more is published; tab2 goes on reading.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let tab1_client = w1["client"].as_str().unwrap().to_owned();
    tab1.ws.close(None).await.unwrap();
    drop(tab1);
    // Its server saw the close (what it writes to a closing socket counts
    // as delivered).
    eventually(Duration::from_secs(5), "tab1 gone", || {
        let sockets = a.sockets.clone();
        let (session, tab1_client) = (session.clone(), tab1_client.clone());
        async move {
            let list = sockets
                .session_connections(&session, Duration::from_secs(2))
                .await
                .unwrap();
            list.connections.len() == 1 && list.connections[0].client != tab1_client
        }
    })
    .await;
    for n in 4..=5 {
        publish(&b, "tab-one", n).await;
    }
    for n in 2..=3 {
        publish(&b, "shared", n).await;
    }
    assert_eq!(offsets(&mut tab2, "shared", 2).await, vec![2, 3]);
    tokio::time::sleep(Duration::from_millis(600)).await; // tab2 saves 3

    // The first tab comes back without positions: it gets its own channels
    // from its own saved positions (not tab2's newer "shared" position), and
    // not "tab-two", which the open tab holds.
    let (mut back, w) =
        Raw::connect_with(&b.url(), json!({"type":"connect","session":session})).await;
    assert_eq!(w["resumed"], true, "{w}");
    let mut subscribed: Vec<(String, bool)> = Vec::new();
    let mut messages: Vec<(String, u64)> = Vec::new();
    while messages.len() < 4 {
        let Ok(frame) = tokio::time::timeout(Duration::from_secs(5), back.recv()).await else {
            panic!("4 messages expected; got {messages:?} after {subscribed:?}");
        };
        let frame: Value = frame;
        match frame["type"].as_str() {
            Some("subscribed") => subscribed.push((
                frame["channel"].as_str().unwrap().to_owned(),
                frame["recovered"].as_bool().unwrap(),
            )),
            Some("message") => messages.push((
                frame["channel"].as_str().unwrap().to_owned(),
                frame["offset"].as_u64().unwrap(),
            )),
            _ => {}
        }
    }
    subscribed.sort();
    assert_eq!(
        subscribed,
        vec![("shared".into(), true), ("tab-one".into(), true)]
    );
    messages.sort();
    assert_eq!(
        messages,
        vec![
            ("shared".into(), 2),
            ("shared".into(), 3),
            ("tab-one".into(), 4),
            ("tab-one".into(), 5)
        ]
    );
    // The closed tab's record was taken over: one record per open tab.
    eventually(Duration::from_secs(3), "two records left", || {
        let scaler = scaler.clone();
        let session = session.clone();
        async move { session_keys(&scaler, &session).await.len() == 2 }
    })
    .await;
    // tab2 kept working all along.
    publish(&a, "tab-two", 4).await;
    assert_eq!(offsets(&mut tab2, "tab-two", 1).await, vec![4]);

    // Everything expires with the resume window once all tabs closed.
    drop(back);
    drop(tab2);
    eventually(Duration::from_secs(10), "session records expired", || {
        let scaler = scaler.clone();
        let session = session.clone();
        async move {
            session_keys(&scaler, &session).await.is_empty()
                && scaler
                    .kv_get(&format!("session/{session}"))
                    .await
                    .unwrap()
                    .is_none()
        }
    })
    .await;
}

/// A tab whose instance died without a word (its record still says open,
/// its instance is still in the registry but never answers): a resume waits
/// at most a moment for it, then restores its channels.
async fn a_dead_instances_tab_is_restored(scaler: Arc<dyn Scaler>) {
    let a = TestServer::start(config("dead-a"), scaler.clone(), demo_app()).await;
    let (mut tab, w) = Raw::connect(&a.url()).await;
    let session = w["session"].as_str().unwrap().to_owned();
    let epoch = tab
        .call(json!({"type":"subscribe","id":1,"channel":"crashed"}))
        .await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    publish(&a, "crashed", 1).await;
    publish(&a, "crashed", 2).await;
    // What a connection on a crashed instance leaves: its record, open.
    scaler
        .register_instance(
            &InstanceInfo {
                id: "dead-ghost".into(),
                address: "127.0.0.1:9".into(),
                connections: 1,
                cores: 0,
                updated_at_ms: scaled_sockets::scaler::types::now_ms(),
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let record =
        json!({"open":true,"subscriptions":[{"channel":"crashed","offset":1,"epoch":epoch}]});
    scaler
        .kv_put(
            &format!("sessconn/{session}/dead-ghost.0123"),
            serde_json::to_vec(&record).unwrap().into(),
            &scaled_sockets::scaler::PutOptions {
                ttl: Some(Duration::from_secs(3)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // the live view's cache
    let started = std::time::Instant::now();
    let (mut back, w) =
        Raw::connect_with(&a.url(), json!({"type":"connect","session":session})).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w["resumed"], true, "{w}");
    let subscribed = back.recv_type("subscribed").await;
    assert_eq!(subscribed["channel"], "crashed");
    // From the dead tab's position (1), not the open tab's (2): at least once.
    assert_eq!(offsets(&mut back, "crashed", 1).await, vec![2]);
    // The open tab is not taken over.
    assert_eq!(
        pushed_channels(&mut back, Duration::from_millis(300)).await,
        Vec::<String>::new()
    );
    drop(tab);
    let _ = scaler.unregister_instance("dead-ghost").await;
}

/// A live session with nothing to restore is still resumed (the same
/// session, its data); an unknown one is not: a new session starts.
async fn a_live_session_is_resumed_an_unknown_one_is_not(scaler: Arc<dyn Scaler>) {
    let a = TestServer::start(config("empty-a"), scaler.clone(), demo_app()).await;
    let (raw, w) = Raw::connect(&a.url()).await;
    let session = w["session"].as_str().unwrap().to_owned();
    drop(raw);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_raw, w) = Raw::connect_with(&a.url(), json!({"type":"connect","session":session})).await;
    assert_eq!(w["session"], session.as_str());
    assert_eq!(w["resumed"], true, "{w}");
    let unknown = uuid::Uuid::new_v4().to_string();
    let (_raw2, w) = Raw::connect_with(&a.url(), json!({"type":"connect","session":unknown})).await;
    assert_eq!(w["resumed"], false, "{w}");
    assert_ne!(w["session"], unknown.as_str());
}

/// A record says which channels to restore: a connection without channels
/// writes none (a connect costs no record write), not even at its close;
/// one with channels writes its own at the next save.
async fn a_connection_without_channels_writes_no_record(scaler: Arc<dyn Scaler>) {
    let a = TestServer::start(config("bare-a"), scaler.clone(), demo_app()).await;
    let (raw, w) = Raw::connect(&a.url()).await;
    let session = w["session"].as_str().unwrap().to_owned();
    // Three save intervals.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(session_keys(&scaler, &session).await, Vec::<String>::new());
    drop(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(session_keys(&scaler, &session).await, Vec::<String>::new());
    // The session itself lives on: a resume joins it.
    let (mut raw, w) =
        Raw::connect_with(&a.url(), json!({"type":"connect","session":session})).await;
    assert_eq!(w["resumed"], true, "{w}");
    subscribe(&mut raw, 1, "bare").await;
    eventually(
        Duration::from_secs(2),
        "the record once there is a channel",
        || {
            let scaler = scaler.clone();
            let session = session.clone();
            async move { session_keys(&scaler, &session).await.len() == 1 }
        },
    )
    .await;
}

/// A second tab may join a session the moment the first tab is welcomed
/// (the browser client reads the stored id before every attempt): the
/// session exists by then, on every instance.
async fn a_tab_joins_a_session_the_moment_it_is_welcomed(scaler: Arc<dyn Scaler>) {
    let a = TestServer::start(config("now-a"), scaler.clone(), demo_app()).await;
    let b = TestServer::start(config("now-b"), scaler, demo_app()).await;
    for _ in 0..30 {
        let (_first, w) = Raw::connect(&a.url()).await;
        let session = w["session"].as_str().unwrap().to_owned();
        let (_second, w) =
            Raw::connect_with(&b.url(), json!({"type":"connect","session":session})).await;
        assert_eq!(w["session"], session.as_str(), "the tab joined: {w}");
        assert_eq!(w["resumed"], true, "{w}");
    }
}

/// Two closed tabs held one channel at different positions: a resume
/// replays from the older one (at least once across tabs).
async fn two_closed_tabs_resume_from_the_oldest_position(scaler: Arc<dyn Scaler>) {
    let a = TestServer::start(config("oldest-a"), scaler.clone(), demo_app()).await;
    let open_tabs = |session: String| {
        let sockets = a.sockets.clone();
        async move {
            sockets
                .session_connections(&session, Duration::from_secs(2))
                .await
                .unwrap()
                .connections
                .len()
        }
    };
    let (mut early, w) = Raw::connect(&a.url()).await;
    let session = w["session"].as_str().unwrap().to_owned();
    subscribe(&mut early, 1, "both").await;
    publish(&a, "both", 1).await;
    assert_eq!(offsets(&mut early, "both", 1).await, vec![1]);
    let (mut late, _) =
        Raw::connect_with(&a.url(), json!({"type":"connect","session":session})).await;
    subscribe(&mut late, 1, "both").await;
    // `early` stops at 1; `late` goes on to 3.
    drop(early);
    eventually(Duration::from_secs(5), "early closed", || {
        let count = open_tabs(session.clone());
        async move { count.await == 1 }
    })
    .await;
    publish(&a, "both", 2).await;
    publish(&a, "both", 3).await;
    assert_eq!(offsets(&mut late, "both", 2).await, vec![2, 3]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(late);
    eventually(Duration::from_secs(5), "late closed", || {
        let count = open_tabs(session.clone());
        async move { count.await == 0 }
    })
    .await;
    // Both records are closed: "both" comes back from 1, the older.
    let (mut back, w) =
        Raw::connect_with(&a.url(), json!({"type":"connect","session":session})).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(offsets(&mut back, "both", 2).await, vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_two_closed_tabs_resume_from_the_oldest_position() {
    two_closed_tabs_resume_from_the_oldest_position(Arc::new(MemoryScaler::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_two_tabs_keep_their_own_positions() {
    two_tabs_keep_their_own_positions(Arc::new(MemoryScaler::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_dead_instances_tab_is_restored() {
    a_dead_instances_tab_is_restored(Arc::new(MemoryScaler::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_live_session_is_resumed_an_unknown_one_is_not() {
    a_live_session_is_resumed_an_unknown_one_is_not(Arc::new(MemoryScaler::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_tab_joins_a_session_the_moment_it_is_welcomed() {
    a_tab_joins_a_session_the_moment_it_is_welcomed(Arc::new(MemoryScaler::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_connection_without_channels_writes_no_record() {
    a_connection_without_channels_writes_no_record(Arc::new(MemoryScaler::new())).await;
}

async fn redis(redis: &RedisServer, prefix: &str) -> Arc<dyn Scaler> {
    scaler_from_url(&redis.url(), prefix)
        .await
        .expect("connect to the private redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_tabs_keep_their_own_positions() {
    let server = RedisServer::start();
    two_tabs_keep_their_own_positions(redis(&server, "tabs").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_dead_instances_tab_is_restored() {
    let server = RedisServer::start();
    a_dead_instances_tab_is_restored(redis(&server, "dead").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_live_session_is_resumed_an_unknown_one_is_not() {
    let server = RedisServer::start();
    a_live_session_is_resumed_an_unknown_one_is_not(redis(&server, "empty").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_tab_joins_a_session_the_moment_it_is_welcomed() {
    let server = RedisServer::start();
    a_tab_joins_a_session_the_moment_it_is_welcomed(redis(&server, "now").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_connection_without_channels_writes_no_record() {
    let server = RedisServer::start();
    a_connection_without_channels_writes_no_record(redis(&server, "bare").await).await;
}

async fn nats(server: &NatsServer, prefix: &str) -> Arc<dyn Scaler> {
    scaler_from_url(&server.url(), prefix)
        .await
        .expect("connect to the private nats-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_two_tabs_keep_their_own_positions() {
    let server = NatsServer::start();
    two_tabs_keep_their_own_positions(nats(&server, "tabs").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_two_closed_tabs_resume_from_the_oldest_position() {
    let server = NatsServer::start();
    two_closed_tabs_resume_from_the_oldest_position(nats(&server, "oldest").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_tab_joins_a_session_the_moment_it_is_welcomed() {
    let server = NatsServer::start();
    a_tab_joins_a_session_the_moment_it_is_welcomed(nats(&server, "now").await).await;
}
