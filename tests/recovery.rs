//! Recovery: missed publications are replayed in order without gap or
//! duplicate, or the client is told `recovered:false`. Also what happens when
//! the scaler feed loses its backend connection while publishing continues
//! (the window in which other systems lose messages silently), and when the
//! backend is down altogether.

mod support;

use scaled_sockets::{Config, MemoryScaler, scaler::PublishOptions};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use support::{Raw, TestServer, WAIT, demo_app, eventually, http, test_config};

async fn publish(raw: &mut Raw, id: u64, channel: &str, data: Value) -> u64 {
    let r = raw
        .call(json!({"type":"publish","id":id,"channel":channel,"data":data}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    r["offset"].as_u64().unwrap()
}

async fn messages(raw: &mut Raw, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = raw.recv().await;
        if v["type"] == "message" {
            out.push(v);
        }
    }
    out
}

fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_a_position_replays_what_was_missed_then_live() {
    let srv = TestServer::start(
        test_config("rec"),
        Arc::new(MemoryScaler::new()),
        demo_app(),
    )
    .await;
    let (mut publisher, _) = Raw::connect(&srv.url()).await;
    let (mut sub, _) = Raw::connect(&srv.url()).await;
    let r = sub
        .call(json!({"type":"subscribe","id":1,"channel":"feed"}))
        .await;
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        publish(&mut publisher, i, "feed", json!(i)).await;
    }
    let seen = messages(&mut sub, 3).await;
    assert_eq!(offsets(&seen), vec![1, 2, 3]);
    drop(sub);
    for i in 4..=8 {
        publish(&mut publisher, i, "feed", json!(i)).await;
    }
    let (mut sub, _) = Raw::connect(&srv.url()).await;
    sub.send(json!({"type":"subscribe","id":1,"channel":"feed","offset":3,"epoch":epoch}))
        .await;
    publish(&mut publisher, 9, "feed", json!(9)).await;
    let reply = sub.recv().await;
    assert_eq!(reply["type"], "reply");
    assert_eq!(reply["recovered"], true);
    assert!(reply["offset"].as_u64().unwrap() >= 8);
    let got = messages(&mut sub, 6).await;
    assert_eq!(
        offsets(&got),
        vec![4, 5, 6, 7, 8, 9],
        "replayed in order, then live, no gap, no duplicate"
    );
    assert_eq!(got[0]["data"], 4);
    sub.quiet(Duration::from_millis(200)).await;
    // A wrong epoch cannot be recovered and says so.
    let r = sub
        .call(json!({"type":"subscribe","id":2,"channel":"other","offset":3,"epoch":"nope"}))
        .await;
    assert_eq!(r["recovered"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscriptions_and_session_resume() {
    let srv = TestServer::start(
        test_config("resume"),
        Arc::new(MemoryScaler::new()),
        demo_app(),
    )
    .await;
    let (mut publisher, _) = Raw::connect(&srv.url()).await;
    let (mut sub, welcome) = Raw::connect(&srv.url()).await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let r = sub
        .call(json!({"type":"subscribe","id":1,"channel":"a"}))
        .await;
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    publish(&mut publisher, 1, "a", json!("one")).await;
    assert_eq!(offsets(&messages(&mut sub, 1).await), vec![1]);
    sub.ws.close(None).await.unwrap();
    drop(sub);
    publish(&mut publisher, 2, "a", json!("two")).await;
    publish(&mut publisher, 3, "a", json!("three")).await;
    // Resume the session: its subscription comes back by itself, from the last
    // position this session delivered.
    let (mut sub, welcome) =
        Raw::connect_with(&srv.url(), json!({"type":"connect","session": session})).await;
    assert_eq!(welcome["resumed"], true);
    assert_eq!(welcome["session"], session.as_str());
    let pushed = sub.recv().await;
    assert_eq!(pushed["type"], "subscribed", "{pushed}");
    assert_eq!(
        (
            pushed["channel"].as_str(),
            pushed["recovered"].as_bool(),
            pushed["offset"].as_u64()
        ),
        (Some("a"), Some(true), Some(3))
    );
    assert_eq!(offsets(&messages(&mut sub, 2).await), vec![2, 3]);
    // A client's own list works without a session, and an unknown session is a
    // new one.
    let (mut fresh, welcome) = Raw::connect_with(
        &srv.url(),
        json!({"type":"connect","session":"no-such-session","subscriptions":[{"channel":"a","offset":1,"epoch":epoch}]}),
    )
    .await;
    assert_eq!(welcome["resumed"], false);
    assert_ne!(welcome["session"], "no-such-session");
    let pushed = fresh.recv().await;
    assert_eq!(
        (pushed["type"].as_str(), pushed["recovered"].as_bool()),
        (Some("subscribed"), Some(true))
    );
    assert_eq!(offsets(&messages(&mut fresh, 2).await), vec![2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_says_recovered_false() {
    let config = Config {
        history: PublishOptions {
            history_size: 2,
            history_ttl: Duration::from_secs(60),
        },
        recovery_limit: 2,
        ..test_config("trim")
    };
    let srv = TestServer::start(config, Arc::new(MemoryScaler::new()), demo_app()).await;
    let (mut publisher, _) = Raw::connect(&srv.url()).await;
    let mut epoch = String::new();
    for i in 1..=6 {
        publish(&mut publisher, i, "t", json!(i)).await;
    }
    let r = publisher
        .call(json!({"type":"subscribe","id":50,"channel":"t"}))
        .await;
    epoch.push_str(r["epoch"].as_str().unwrap());
    let (mut sub, _) = Raw::connect_with(
        &srv.url(),
        json!({"type":"connect","subscriptions":[{"channel":"t","offset":1,"epoch":epoch}]}),
    )
    .await;
    let pushed = sub.recv().await;
    assert_eq!(
        (
            pushed["type"].as_str(),
            pushed["recovered"].as_bool(),
            pushed["offset"].as_u64()
        ),
        (Some("subscribed"), Some(false), Some(6))
    );
    publish(&mut publisher, 7, "t", json!(7)).await;
    assert_eq!(
        offsets(&messages(&mut sub, 1).await),
        vec![7],
        "live continues after recovered:false"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_the_feed_was_down_are_repaired_from_history() {
    let scaler = MemoryScaler::new();
    let a = TestServer::start(test_config("gap-a"), Arc::new(scaler.clone()), demo_app()).await;
    let b = TestServer::start(test_config("gap-b"), Arc::new(scaler.clone()), demo_app()).await;
    let (mut publisher, _) = Raw::connect(&a.url()).await;
    let (mut sub, _) = Raw::connect(&b.url()).await;
    sub.call(json!({"type":"subscribe","id":1,"channel":"live"}))
        .await;
    publish(&mut publisher, 1, "live", json!(1)).await;
    assert_eq!(offsets(&messages(&mut sub, 1).await), vec![1]);
    // The feeds lose their connection; publishing still works (as with a
    // Redis pub/sub connection that dropped while commands succeed).
    scaler.set_feeds_connected(false);
    for i in 2..=6 {
        publish(&mut publisher, i, "live", json!(i)).await;
    }
    sub.quiet(Duration::from_millis(200)).await;
    let (status, _) = http("GET", &b.http("/readyz"), &[], "").await;
    assert_eq!(status, 503, "not ready while the feed is down");
    scaler.set_feeds_connected(true);
    let repaired = messages(&mut sub, 5).await;
    assert_eq!(
        offsets(&repaired),
        vec![2, 3, 4, 5, 6],
        "every missed publication, in order"
    );
    publish(&mut publisher, 7, "live", json!(7)).await;
    assert_eq!(offsets(&messages(&mut sub, 1).await), vec![7]);
    sub.quiet(Duration::from_millis(200)).await;
    let (status, _) = http("GET", &b.http("/readyz"), &[], "").await;
    assert_eq!(status, 200);
    let (_, metrics) = http("GET", &b.http("/metrics"), &[], "").await;
    assert!(
        metrics.contains("scaled_sockets_feed_interruptions_total{instance=\"gap-b\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_history_cannot_fill_is_reported() {
    let scaler = MemoryScaler::new();
    let config = |id: &str| Config {
        history: PublishOptions {
            history_size: 2,
            history_ttl: Duration::from_secs(60),
        },
        recovery_limit: 2,
        ..test_config(id)
    };
    let a = TestServer::start(config("hole-a"), Arc::new(scaler.clone()), demo_app()).await;
    let b = TestServer::start(config("hole-b"), Arc::new(scaler.clone()), demo_app()).await;
    let (mut publisher, _) = Raw::connect(&a.url()).await;
    let (mut sub, _) = Raw::connect(&b.url()).await;
    sub.call(json!({"type":"subscribe","id":1,"channel":"h"}))
        .await;
    scaler.set_feeds_connected(false);
    for i in 1..=5 {
        publish(&mut publisher, i, "h", json!(i)).await;
    }
    scaler.set_feeds_connected(true);
    let told = sub.recv_type("subscribed").await;
    assert_eq!(
        (told["recovered"].as_bool(), told["offset"].as_u64()),
        (Some(false), Some(5)),
        "never a silent hole"
    );
    publish(&mut publisher, 6, "h", json!(6)).await;
    assert_eq!(offsets(&messages(&mut sub, 1).await), vec![6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_outage_fails_loudly_and_recovers() {
    let scaler = MemoryScaler::new();
    let config = Config {
        api_key: Some("k".into()),
        ..test_config("outage")
    };
    let srv = TestServer::start(config, Arc::new(scaler.clone()), demo_app()).await;
    let (mut client, _) = Raw::connect(&srv.url()).await;
    client
        .call(json!({"type":"subscribe","id":1,"channel":"o"}))
        .await;
    scaler.set_available(false);
    let started = std::time::Instant::now();
    let r = client
        .call(json!({"type":"publish","id":2,"channel":"o","data":1}))
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = client
        .call(json!({"type":"subscribe","id":3,"channel":"p"}))
        .await;
    assert_eq!(r["code"], "unavailable", "{r}");
    let (status, body) = http(
        "POST",
        &srv.http("/api/publish"),
        &[("Authorization", "Bearer k")],
        r#"{"channel":"o","data":1}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"));
    let (status, _) = http("GET", &srv.http("/readyz"), &[], "").await;
    assert_eq!(status, 503);
    let (status, _) = http("GET", &srv.http("/healthz"), &[], "").await;
    assert_eq!(status, 200, "the process is alive");
    scaler.set_available(true);
    eventually(WAIT, "ready again", || {
        let url = srv.http("/readyz");
        async move { http("GET", &url, &[], "").await.0 == 200 }
    })
    .await;
    let offset = publish(&mut client, 4, "o", json!("after")).await;
    assert_eq!(offset, 1, "nothing was published during the outage");
    let m = client.recv_type("message").await;
    assert_eq!(m["data"], "after");
}

/// A client that resumes its session and subscribes again at once (a page
/// reload) races the server's restore of the same subscription: its
/// `subscribe` is answered when the restore completes, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_the_session_restores_the_channel_is_answered() {
    let faulty = support::faulty::FaultyScaler::new();
    let srv = TestServer::start(test_config("reload"), Arc::new(faulty.clone()), demo_app()).await;
    let (mut first, welcome) = Raw::connect(&srv.url()).await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    first
        .call(json!({"type":"subscribe","id":1,"channel":"reload"}))
        .await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The restore reads history slowly, so the client's subscribe arrives
    // while it is still being set up.
    faulty
        .faults
        .slow_history
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for round in 0..5 {
        let mut raw = Raw::open(&srv.url()).await;
        raw.send(json!({"type":"connect","session":session})).await;
        raw.send(json!({"type":"subscribe","id":7,"channel":"reload"}))
            .await;
        let welcome = raw.recv_type("welcome").await;
        assert_eq!(welcome["resumed"], true, "round {round}: {welcome}");
        let answer = loop {
            let frame = raw.recv().await;
            if frame["id"] == 7 {
                break frame;
            }
        };
        assert_eq!(answer["type"], "reply", "round {round}: {answer}");
        assert!(answer["epoch"].is_string(), "{answer}");
    }
}

/// A subscriber that joins a channel while another subscriber's history read
/// is on its way back must not take that read's top as its own: the read
/// predates a publication fanned out before it was a member, which it would
/// then never get (and if that publication is the channel's last, nothing
/// would ever tell it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_does_not_share_a_read_older_than_its_join() {
    let faulty = support::faulty::FaultyScaler::new();
    let srv = TestServer::start(test_config("stale"), Arc::new(faulty.clone()), demo_app()).await;
    let (mut early, _) = Raw::connect(&srv.url()).await;
    let (mut late, _) = Raw::connect(&srv.url()).await;
    faulty
        .faults
        .stale_history
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The early subscriber's read takes the top (nothing yet) and is slow to
    // come back; meanwhile a publication is fanned out to it.
    early
        .send(json!({"type":"subscribe","id":1,"channel":"stale"}))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let offset = srv
        .sockets
        .publish(
            "stale",
            &scaled_sockets::Data::json(&json!("last")).unwrap(),
        )
        .await
        .unwrap()
        .offset;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The late subscriber joins while that read is still in flight.
    let reply = late
        .call(json!({"type":"subscribe","id":1,"channel":"stale"}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    if reply["offset"].as_u64() != Some(offset) {
        let got = tokio::time::timeout(Duration::from_secs(1), late.recv_type("message"))
            .await
            .unwrap_or_else(|_| panic!("the late subscriber's top {reply} omits publication {offset}, which it never got"));
        assert_eq!(got["offset"], offset, "{got}");
    }
    let first = early.recv_type("message").await;
    assert_eq!(first["offset"], offset, "{first}");
}
