//! Connection lifecycle and the HTTP surface: pings and silent clients, token
//! expiry, slow consumers, graceful drain, health, readiness, metrics and the
//! key-protected API.

mod support;

use scaled_sockets::{App, Config, JwtAuthenticator, MemoryScaler};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use support::{Ended, Raw, TestServer, WAIT, demo_app, http, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_silent_clients() {
    let config = Config {
        ping_interval: Duration::from_millis(300),
        ..test_config("ping")
    };
    let srv = TestServer::start(config, Arc::new(MemoryScaler::new()), demo_app()).await;
    let (mut silent, welcome) = Raw::connect(&srv.url()).await;
    assert_eq!(welcome["ping_interval"], 300);
    let (mut lively, _) = Raw::connect(&srv.url()).await;
    // The lively one answers pings; the silent one never sends anything.
    let lively_task = tokio::spawn(async move {
        for _ in 0..6 {
            let msg = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut lively.ws))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
            assert_eq!(v["type"], "ping");
            lively.send(json!({"type":"pong"})).await;
        }
        lively
    });
    assert_eq!(silent.closed().await, Ended::Closed(4010));
    let mut lively = lively_task.await.unwrap();
    let echo = lively
        .call(json!({"type":"ask","id":1,"event":"echo","data":"still here"}))
        .await;
    assert_eq!(echo["data"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_connection_with_4001() {
    let secret = b"expiry";
    let app = App::new().authenticator(JwtAuthenticator::new(secret));
    let config = Config {
        ping_interval: Duration::from_millis(250),
        ..test_config("expiry")
    };
    let srv = TestServer::start(config, Arc::new(MemoryScaler::new()), app).await;
    let now = scaled_sockets::scaler::types::now_ms() / 1000;
    // Expired 28 s ago: still inside the 30 s leeway at connect, out of it soon.
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"a","exp": now - 28}),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    let (mut raw, _) = Raw::connect_with(&srv.url(), json!({"type":"connect","token":token})).await;
    let pinger = async {
        loop {
            let msg = futures_util::StreamExt::next(&mut raw.ws)
                .await
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
            if v["type"] == "disconnect" {
                return v;
            }
            raw.send(json!({"type":"pong"})).await;
        }
    };
    let d = tokio::time::timeout(Duration::from_secs(8), pinger)
        .await
        .expect("closed within the leeway");
    assert_eq!(d["code"], 4001);
    assert_eq!(raw.closed().await, Ended::Closed(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_never_stalls_the_others() {
    let config = Config {
        outbound_queue: 16,
        publish_rate: 0,
        ..test_config("slow")
    };
    let srv = TestServer::start(config, Arc::new(MemoryScaler::new()), demo_app()).await;
    let (mut slow, _) = Raw::connect(&srv.url()).await;
    slow.call(json!({"type":"subscribe","id":1,"channel":"firehose"}))
        .await;
    let (mut fast, _) = Raw::connect(&srv.url()).await;
    fast.call(json!({"type":"subscribe","id":1,"channel":"firehose"}))
        .await;
    let (mut publisher, _) = Raw::connect(&srv.url()).await;
    // ~12 MiB in total: more than the kernel buffers between the server and a
    // client that does not read.
    let blob = "x".repeat(40_000);
    let total = 300u64;
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while n < total {
            let v = fast.recv().await;
            if v["type"] == "message" {
                n += 1;
                assert_eq!(
                    v["offset"].as_u64(),
                    Some(n),
                    "the fast client misses nothing"
                );
            }
        }
        fast
    });
    for i in 0..total {
        publisher
            .send(json!({"type":"publish","id": i + 1,"channel":"firehose","data": blob}))
            .await;
        if i % 50 == 0 {
            // Let the dispatcher run: the point is the slow socket, not the publisher.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _fast = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("fast client kept up")
        .unwrap();
    let (_, metrics) = http("GET", &srv.http("/metrics"), &[], "").await;
    assert!(
        metrics.contains("scaled_sockets_slow_consumer_closes_total{instance=\"slow\"} 1"),
        "{metrics}"
    );
    // The slow client finds its connection closed once it reads.
    let end = async {
        loop {
            match futures_util::StreamExt::next(&mut slow.ws).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                    return Some(u16::from(f.code));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    };
    let code = tokio::time::timeout(WAIT, end)
        .await
        .expect("slow client's socket ended");
    assert!(
        code.is_none() || code == Some(4008),
        "closed as a slow consumer, got {code:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_tells_clients_to_reconnect() {
    let config = Config {
        drain_timeout: Duration::from_secs(5),
        ..test_config("drain")
    };
    let scaler = MemoryScaler::new();
    let srv = TestServer::start(config, Arc::new(scaler.clone()), demo_app()).await;
    let url = srv.url();
    let (mut a, _) = Raw::connect(&url).await;
    let (mut b, _) = Raw::connect(&url).await;
    let readyz = srv.http("/readyz");
    assert_eq!(http("GET", &readyz, &[], "").await.0, 200);
    let stopping = tokio::spawn(srv.shutdown());
    // While the clients have not answered the close yet, the instance is
    // draining: it still answers, but not ready, and refuses new upgrades.
    support::eventually(WAIT, "readyz 503 while draining", || {
        let readyz = readyz.clone();
        async move { http("GET", &readyz, &[], "").await.0 == 503 }
    })
    .await;
    let refused = tokio_tungstenite::connect_async(&url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("a new upgrade while draining must get 503, got {other:?}"),
    }
    for raw in [&mut a, &mut b] {
        let d = raw.recv_type("disconnect").await;
        assert_eq!(
            (d["code"].as_u64(), d["reconnect"].as_bool()),
            (Some(1012), Some(true))
        );
        assert_eq!(raw.closed().await, Ended::Closed(1012));
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped within the drain bound")
        .unwrap();
    use scaled_sockets::Scaler;
    assert!(
        scaler.instances().await.unwrap().is_empty(),
        "the instance left the cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_metrics_and_api() {
    let config = Config {
        api_key: Some("sekret".into()),
        ..test_config("http-node")
    };
    let srv = TestServer::start(config, Arc::new(MemoryScaler::new()), demo_app()).await;
    assert_eq!(http("GET", &srv.http("/healthz"), &[], "").await.0, 200);
    assert_eq!(http("GET", &srv.http("/readyz"), &[], "").await.0, 200);
    assert_eq!(http("GET", &srv.http("/nope"), &[], "").await.0, 404);
    assert_eq!(
        http("GET", &srv.http("/ws"), &[], "").await.0,
        400,
        "not an upgrade"
    );
    let (mut sub, _) = Raw::connect(&srv.url()).await;
    sub.call(json!({"type":"subscribe","id":1,"channel":"api"}))
        .await;
    let publish = |headers: &'static [(&'static str, &'static str)], body: &'static str| {
        let url = srv.http("/api/publish");
        async move { http("POST", &url, headers, body).await }
    };
    assert_eq!(publish(&[], r#"{"channel":"api","data":1}"#).await.0, 401);
    assert_eq!(
        publish(
            &[("Authorization", "Bearer wrong")],
            r#"{"channel":"api","data":1}"#
        )
        .await
        .0,
        401
    );
    let auth: &'static [(&'static str, &'static str)] = &[("Authorization", "Bearer sekret")];
    assert_eq!(publish(auth, "not json").await.0, 400);
    assert_eq!(publish(auth, r#"{"channel":"api"}"#).await.0, 400);
    assert_eq!(publish(auth, r#"{"channel":"","data":1}"#).await.0, 400);
    let (status, body) = publish(
        auth,
        r#"{"channel":"api","data":{"from":"http","n":123456789012345678901234567890}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["offset"], 1);
    assert!(body["epoch"].is_string());
    let m = sub.recv_type("message").await;
    assert_eq!(m["data"]["from"], "http");
    let (status, body) = http("GET", &srv.http("/api/cluster"), auth, "").await;
    assert_eq!(status, 200);
    let cluster: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cluster["instances"][0]["id"], "http-node");
    assert_eq!(cluster["instances"][0]["address"], srv.addr.to_string());
    assert!(cluster["instances"][0]["connections"].is_u64());
    assert_eq!(cluster["cores"], json!([]));
    let (status, metrics) = http("GET", &srv.http("/metrics"), &[], "").await;
    assert_eq!(status, 200);
    for name in [
        "connections",
        "publications_total",
        "frames_queued_total",
        "slow_consumer_closes_total",
        "ready",
    ] {
        assert!(
            metrics.contains(&format!("scaled_sockets_{name}")),
            "{name} in {metrics}"
        );
    }
}

/// A server dropped without draining must not stay in the registry as a ghost
/// instance, nor keep its background tasks or connections alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_leaves_the_registry_and_closes_its_connections() {
    let scaler: Arc<dyn scaled_sockets::Scaler> = Arc::new(MemoryScaler::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = scaled_sockets::Server::start(test_config("dropped"), scaler.clone(), demo_app())
        .await
        .unwrap();
    let service = server.service();
    // Serve with hyper directly, so dropping `server` is the only signal.
    let accept = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let (mut client, _) = Raw::connect(&format!("ws://{addr}/ws")).await;
    let listed = scaler.instances().await.unwrap();
    assert!(listed.iter().any(|i| i.id == "dropped"), "{listed:?}");

    drop(server);

    // Gone from the registry well before its entry would expire (5 heartbeats).
    support::eventually(
        Duration::from_millis(800),
        "instance left the registry",
        || {
            let scaler = scaler.clone();
            async move {
                !scaler
                    .instances()
                    .await
                    .unwrap()
                    .iter()
                    .any(|i| i.id == "dropped")
            }
        },
    )
    .await;
    let disconnect = client.recv_type("disconnect").await;
    assert_eq!(disconnect["code"], 1012);
    assert_eq!(disconnect["reconnect"], true);
    assert_eq!(client.closed().await, Ended::Closed(1012));
    // And no heartbeat puts it back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !scaler
            .instances()
            .await
            .unwrap()
            .iter()
            .any(|i| i.id == "dropped"),
        "a heartbeat re-registered the dropped instance"
    );
    accept.abort();
}
