//! Two (or three) instances sharing one in-memory scaler behave as one server:
//! cross-instance publish, presence, user- and session-wide tells, app-driven
//! tells, asks and subscriptions, and only interested instances receive a
//! channel's traffic.

mod support;

use scaled_sockets::{
    App, Data, JwtAuthenticator, MemoryScaler, Scaler,
    scaler::{Topic, types::now_ms},
};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use support::{Raw, TestServer, WAIT, demo_app, eventually, test_config};

async fn pair() -> (MemoryScaler, TestServer, TestServer) {
    let scaler = MemoryScaler::new();
    let a = TestServer::start(test_config("node-a"), Arc::new(scaler.clone()), demo_app()).await;
    let b = TestServer::start(test_config("node-b"), Arc::new(scaler.clone()), demo_app()).await;
    (scaler, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_cross_instances_in_order_and_include_the_publisher() {
    let (_scaler, a, b) = pair().await;
    let (mut on_a, _) = Raw::connect(&a.url()).await;
    let (mut on_b, welcome_b) = Raw::connect(&b.url()).await;
    assert_eq!(welcome_b["instance"], "node-b");
    for raw in [&mut on_a, &mut on_b] {
        let r = raw
            .call(json!({"type":"subscribe","id":1,"channel":"room"}))
            .await;
        assert_eq!(r["offset"], 0);
    }
    // Both publish, interleaved; every subscriber sees every publication once,
    // in offset order, the same epoch, data untouched.
    for i in 0..50u64 {
        let (raw, id) = if i % 2 == 0 {
            (&mut on_a, 100 + i)
        } else {
            (&mut on_b, 100 + i)
        };
        raw.send(json!({"type":"publish","id": id,"channel":"room","data":{"i": i}}))
            .await;
    }
    for raw in [&mut on_a, &mut on_b] {
        let mut offsets = Vec::new();
        let mut seen_i = Vec::new();
        while offsets.len() < 50 {
            let v = raw.recv().await;
            if v["type"] == "message" {
                assert_eq!(v["channel"], "room");
                offsets.push(v["offset"].as_u64().unwrap());
                seen_i.push(v["data"]["i"].as_u64().unwrap());
            }
        }
        assert_eq!(
            offsets,
            (1..=50).collect::<Vec<_>>(),
            "strictly increasing, no gap, no duplicate"
        );
        seen_i.sort_unstable();
        assert_eq!(seen_i, (0..50).collect::<Vec<_>>());
    }
    // Raw data is relayed byte-exact, beyond 64-bit integers included.
    on_a.send_text(r#"{"type":"publish","id":999,"channel":"room","data":{"n":123456789012345678901234567890123}}"#).await;
    let msg = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut on_b.ws))
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            tokio_tungstenite::tungstenite::Message::Text(t)
                if t.as_str().contains("\"message\"") =>
            {
                break t;
            }
            _ => continue,
        }
    };
    assert!(
        msg.as_str()
            .contains(r#""data":{"n":123456789012345678901234567890123}"#),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_instances() {
    let (_scaler, a, b) = pair().await;
    let (mut on_a, wa) = Raw::connect(&a.url()).await;
    let (mut on_b, wb) = Raw::connect(&b.url()).await;
    for raw in [&mut on_a, &mut on_b] {
        raw.call(json!({"type":"subscribe","id":1,"channel":"lobby"}))
            .await;
    }
    let p = on_a
        .call(json!({"type":"presence","id":2,"channel":"lobby"}))
        .await;
    let mut clients: Vec<String> = p["data"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_owned())
        .collect();
    clients.sort();
    let mut expected = vec![
        wa["client"].as_str().unwrap().to_owned(),
        wb["client"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(clients, expected);
    on_b.call(json!({"type":"unsubscribe","id":3,"channel":"lobby"}))
        .await;
    eventually(WAIT, "b left presence", || {
        let sockets = a.sockets.clone();
        async move {
            sockets
                .presence("lobby")
                .await
                .map(|p| p.len() == 1)
                .unwrap_or(false)
        }
    })
    .await;
    // A closed connection leaves presence too.
    drop(on_a);
    eventually(WAIT, "a left presence", || {
        let sockets = b.sockets.clone();
        async move {
            sockets
                .presence("lobby")
                .await
                .map(|p| p.is_empty())
                .unwrap_or(false)
        }
    })
    .await;
}

const SECRET: &[u8] = b"cluster-secret";

fn token(user: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": now_ms() / 1000 + 600, "channels": ["*"], "publish": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_session_tells_reach_every_connection_on_every_instance() {
    let scaler = MemoryScaler::new();
    let app = || App::new().authenticator(JwtAuthenticator::new(SECRET));
    let a = TestServer::start(test_config("u-a"), Arc::new(scaler.clone()), app()).await;
    let b = TestServer::start(test_config("u-b"), Arc::new(scaler.clone()), app()).await;
    let connect = |user: &str| json!({"type":"connect","token": token(user)});
    let (mut alice_a, wa) = Raw::connect_with(&a.url(), connect("alice")).await;
    let (mut alice_b, _) = Raw::connect_with(&b.url(), connect("alice")).await;
    let (mut bob_b, _) = Raw::connect_with(&b.url(), connect("bob")).await;
    assert_eq!(wa["user"], "alice");
    a.sockets
        .tell_user("alice", "note", &Data::json(&json!({"hi": 1})).unwrap())
        .await
        .unwrap();
    for raw in [&mut alice_a, &mut alice_b] {
        let t = raw.recv().await;
        assert_eq!(t, json!({"type":"tell","event":"note","data":{"hi":1}}));
    }
    bob_b.quiet(Duration::from_millis(300)).await;
    // Session-wide: a second tab resuming the same session on another instance.
    let session = wa["session"].as_str().unwrap();
    b.sockets
        .tell_session(session, "s", &Data::json(&1).unwrap())
        .await
        .unwrap();
    let t = alice_a.recv().await;
    assert_eq!(t["event"], "s");
    alice_b.quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_code_reaches_a_client_on_another_instance() {
    let (_scaler, a, b) = pair().await;
    let (mut on_b, wb) = Raw::connect(&b.url()).await;
    let client = wb["client"].as_str().unwrap().to_owned();
    // tell
    a.sockets
        .tell_client(&client, "hello", &Data::json(&"x").unwrap())
        .await
        .unwrap();
    assert_eq!(
        on_b.recv().await,
        json!({"type":"tell","event":"hello","data":"x"})
    );
    // ask: the client answers, the answer travels back to instance a.
    let sockets = a.sockets.clone();
    let c = client.clone();
    let asking = tokio::spawn(async move {
        sockets
            .ask_client(
                &c,
                "add",
                &Data::json(&json!([1, 2])).unwrap(),
                Duration::from_secs(5),
            )
            .await
    });
    let ask = on_b.recv().await;
    assert_eq!(ask["type"], "ask");
    assert_eq!(ask["event"], "add");
    on_b.send(json!({"type":"reply","id": ask["id"],"data": 3}))
        .await;
    assert_eq!(asking.await.unwrap().unwrap(), Data::json(&3).unwrap());
    // An error answer is passed on with its code.
    let sockets = a.sockets.clone();
    let c = client.clone();
    let asking = tokio::spawn(async move {
        sockets
            .ask_client(&c, "x", &Data::null(), Duration::from_secs(5))
            .await
    });
    let ask = on_b.recv().await;
    on_b.send(json!({"type":"error","id": ask["id"],"code":"forbidden","message":"no"}))
        .await;
    let err = asking.await.unwrap().unwrap_err();
    assert_eq!(err.code, scaled_sockets::ErrorCode::Forbidden);
    // A client that never answers: timeout, not a hang.
    let err = a
        .sockets
        .ask_client(&client, "x", &Data::null(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.code, scaled_sockets::ErrorCode::Timeout);
    let _ = on_b.recv_type("ask").await;
    // Server-side subscribe and unsubscribe.
    a.sockets.subscribe_client(&client, "pushed").await.unwrap();
    let s = on_b.recv_type("subscribed").await;
    assert_eq!(
        (s["channel"].as_str(), s["recovered"].as_bool()),
        (Some("pushed"), Some(true))
    );
    a.sockets
        .publish("pushed", &Data::json(&"p").unwrap())
        .await
        .unwrap();
    assert_eq!(on_b.recv_type("message").await["data"], "p");
    a.sockets
        .unsubscribe_client(&client, "pushed")
        .await
        .unwrap();
    assert_eq!(on_b.recv_type("unsubscribed").await["channel"], "pushed");
    // Disconnect from another instance.
    a.sockets
        .disconnect_client(&client, 4008, "bye", false)
        .await
        .unwrap();
    let d = on_b.recv_type("disconnect").await;
    assert_eq!(
        (d["code"].as_u64(), d["reconnect"].as_bool()),
        (Some(4008), Some(false))
    );
    assert_eq!(on_b.closed().await, support::Ended::Closed(4008));
    // Unknown clients are not_found, quickly.
    let err = a
        .sockets
        .tell_client("node-b.nobody", "x", &Data::null())
        .await;
    assert!(
        err.is_ok(),
        "routing to a live instance succeeds; the instance drops it"
    );
    let err = a
        .sockets
        .tell_client("node-gone.nobody", "x", &Data::null())
        .await
        .unwrap_err();
    assert_eq!(err.code, scaled_sockets::ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_interested_instances_subscribe_once_per_channel() {
    let (scaler, a, b) = pair().await;
    let topic = Topic::channel("busy");
    let mut on_a = Vec::new();
    for _ in 0..5 {
        let (mut raw, _) = Raw::connect(&a.url()).await;
        raw.call(json!({"type":"subscribe","id":1,"channel":"busy"}))
            .await;
        on_a.push(raw);
    }
    // Five local subscribers, one backend subscription; instance b has none.
    assert_eq!(scaler.subscriber_count(&topic), 1);
    let (mut on_b, _) = Raw::connect(&b.url()).await;
    on_b.call(json!({"type":"publish","id":1,"channel":"busy","data":1}))
        .await;
    assert_eq!(
        scaler.subscriber_count(&topic),
        1,
        "a publisher does not subscribe"
    );
    for raw in &mut on_a {
        assert_eq!(raw.recv_type("message").await["data"], 1);
    }
    // When the last local subscriber leaves, the backend subscription goes.
    for (i, raw) in on_a.iter_mut().enumerate() {
        raw.call(json!({"type":"unsubscribe","id": 10 + i,"channel":"busy"}))
            .await;
    }
    eventually(WAIT, "backend subscription dropped", || {
        let scaler = scaler.clone();
        let topic = topic.clone();
        async move { scaler.subscriber_count(&topic) == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_queries_do_not_hang_on_a_dead_instance() {
    let scaler = MemoryScaler::new();
    let a = TestServer::start(test_config("live"), Arc::new(scaler.clone()), demo_app()).await;
    // A "crashed" instance: registered once, never again, its client in presence.
    scaler
        .register_instance(
            &scaled_sockets::scaler::InstanceInfo {
                id: "dead".into(),
                ..Default::default()
            },
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    scaler
        .presence_add(
            "room",
            &scaled_sockets::scaler::PresenceEntry {
                client: "dead.c1".into(),
                user: None,
                instance: "dead".into(),
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = std::time::Instant::now();
    let err = a
        .sockets
        .ask_client("dead.c1", "x", &Data::null(), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.code, scaled_sockets::ErrorCode::NotFound);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered promptly, not after the ask timeout"
    );
    assert!(
        a.sockets.presence("room").await.unwrap().is_empty(),
        "the dead instance's entries are gone"
    );
    let (status, body) = support::http("GET", &a.http("/api/cluster"), &[], "").await;
    assert_eq!(status, 404, "no API key configured: {body}");
    let ids: Vec<Value> = a
        .sockets
        .instances()
        .await
        .unwrap()
        .into_iter()
        .map(|i| json!(i.id))
        .collect();
    assert_eq!(ids, vec![json!("live")]);
}
