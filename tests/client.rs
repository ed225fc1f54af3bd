//! The Rust client against the real server: commands, server asks, and
//! reconnection that resumes the session and recovers missed publications.

mod support;

use scaled_sockets::{Config, Data, MemoryScaler, Server};
use scaled_sockets_client::{AskError, AskRequest, Client, Event};
use serde_json::json;
use std::{sync::Arc, time::Duration};
use support::{TestServer, WAIT, demo_app, test_config};
use tokio::time::timeout;

async fn next_message(
    sub: &mut scaled_sockets_client::Subscription,
) -> scaled_sockets_client::Message {
    timeout(WAIT, sub.recv())
        .await
        .expect("a message within the wait")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_server_asks() {
    let srv = TestServer::start(
        test_config("client-a"),
        Arc::new(MemoryScaler::new()),
        demo_app(),
    )
    .await;
    let client = Client::builder(srv.url()).connect().await.expect("connect");
    let info = client.connection_info().expect("connected");
    assert_eq!(info.instance, "client-a");
    let mut news = client.subscribe("news").await.expect("subscribe");
    let offset = client
        .publish("news", &json!({"n": 1}))
        .await
        .expect("publish");
    assert_eq!(offset, 1);
    let m = next_message(&mut news).await;
    assert_eq!((m.channel.as_str(), m.offset), ("news", 1));
    assert_eq!(m.data::<serde_json::Value>().unwrap(), json!({"n": 1}));
    let echoed = client.ask("echo", &json!([1, "two"])).await.expect("ask");
    assert_eq!(echoed.get(), r#"[1,"two"]"#);
    let err = client
        .ask("no-such-event", &json!(null))
        .await
        .expect_err("unknown ask");
    assert_eq!(
        err.code().map(|c| c.as_str().to_owned()),
        Some("not_found".to_owned())
    );
    // A server ask answered by the client's handler.
    client.on_ask("add", |req: AskRequest| async move {
        let [a, b]: [i64; 2] = req.data()?;
        Ok::<_, AskError>(a + b)
    });
    let answer = srv
        .sockets
        .ask_client(
            &info.client,
            "add",
            &Data::json(&[2, 3]).unwrap(),
            Duration::from_secs(5),
        )
        .await
        .expect("client answers");
    assert_eq!(answer, Data::json(&5).unwrap());
    // A tell round trip through the demo's echo handler.
    let mut events = client.events();
    client.tell("echo", &json!("hi")).await.expect("tell");
    let told = timeout(WAIT, async {
        loop {
            if let Some(Event::Tell { event, data, .. }) = events.recv().await {
                return (event, data.get().to_owned());
            }
        }
    })
    .await
    .expect("tell back");
    assert_eq!(told, ("echo".to_owned(), "\"hi\"".to_owned()));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_resumes_and_recovers_what_it_missed() {
    let srv = TestServer::start(
        test_config("client-b"),
        Arc::new(MemoryScaler::new()),
        demo_app(),
    )
    .await;
    let client = Client::builder(srv.url())
        .reconnect_backoff(Duration::from_millis(200), Duration::from_millis(400))
        .connect()
        .await
        .expect("connect");
    let first = client.connection_info().expect("connected");
    let mut feed = client.subscribe("feed").await.expect("subscribe");
    let data = |n: u64| Data::json(&n).unwrap();
    for n in 1..=3 {
        srv.sockets.publish("feed", &data(n)).await.unwrap();
    }
    for n in 1..=3 {
        assert_eq!(next_message(&mut feed).await.offset, n);
    }
    // The server drops the connection (as when an instance restarts); messages
    // are published before the client is back.
    srv.sockets
        .disconnect_client(&first.client, 1012, "restart", true)
        .await
        .unwrap();
    for n in 4..=8 {
        srv.sockets.publish("feed", &data(n)).await.unwrap();
    }
    for n in 4..=8 {
        let m = next_message(&mut feed).await;
        assert_eq!(m.offset, n, "recovered in order, without gap or duplicate");
        assert_eq!(m.data::<u64>().unwrap(), n);
    }
    let again = client.connection_info().expect("reconnected");
    assert_ne!(again.client, first.client, "a new connection");
    assert_eq!(again.session, first.session, "the same session");
    assert!(again.resumed);
    srv.sockets.publish("feed", &data(9)).await.unwrap();
    assert_eq!(next_message(&mut feed).await.offset, 9);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_an_instance_restart_on_the_same_address() {
    let scaler = MemoryScaler::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let start = |listener: tokio::net::TcpListener, id: &str| {
        let scaler = scaler.clone();
        let config = Config {
            drain_timeout: Duration::from_secs(2),
            ..test_config(id)
        };
        async move {
            let server = Server::start(config, Arc::new(scaler), demo_app())
                .await
                .unwrap();
            let sockets = server.sockets();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.serve(listener, async {
                let _ = stopped.await;
            }));
            (sockets, stop, task)
        }
    };
    let (sockets, stop, task) = start(listener, "gen-1").await;
    let client = Client::builder(format!("ws://{addr}/ws"))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let mut feed = client.subscribe("feed").await.unwrap();
    sockets
        .publish("feed", &Data::json(&1).unwrap())
        .await
        .unwrap();
    assert_eq!(next_message(&mut feed).await.offset, 1);
    // Drain (clients get 1012 and reconnect), publish while nobody serves.
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    sockets
        .publish("feed", &Data::json(&2).unwrap())
        .await
        .unwrap();
    sockets
        .publish("feed", &Data::json(&3).unwrap())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind the same address");
    let (sockets, _stop, _task) = start(listener, "gen-2").await;
    for n in 2..=3 {
        assert_eq!(next_message(&mut feed).await.offset, n);
    }
    assert_eq!(client.connection_info().unwrap().instance, "gen-2");
    sockets
        .publish("feed", &Data::json(&4).unwrap())
        .await
        .unwrap();
    assert_eq!(next_message(&mut feed).await.offset, 4);
}
