//! Users and sessions from app code, wherever their connections are: list
//! them (`partial` when an instance is silent, within the timeout), ask any
//! of them (first answer wins), disconnect them all. On the in-memory scaler
//! and on a private Redis.

mod support;

use scaled_sockets::{
    App, Authenticator, CommandError, Data, Identity, MemoryScaler, Scaler, cli::scaler_from_url,
    scaler::InstanceInfo,
};
use scaled_sockets_test_harness::RedisServer;
use serde_json::{Value, json};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use support::{Ended, Raw, TestServer, test_config};

/// The token is the user id (no token: anonymous).
#[derive(Debug)]
struct TokenIsUser;

#[scaled_sockets::async_trait]
impl Authenticator for TokenIsUser {
    async fn authenticate(&self, token: Option<&str>) -> Result<Identity, CommandError> {
        Ok(token.map_or_else(Identity::anonymous, Identity::user))
    }
}

fn app() -> App {
    App::new().authenticator(TokenIsUser)
}

const LIST: Duration = Duration::from_secs(3);

async fn connect(srv: &TestServer, user: &str, session: Option<&str>) -> (Raw, Value) {
    let mut frame = json!({"type":"connect","token":user});
    if let Some(session) = session {
        frame["session"] = json!(session);
    }
    Raw::connect_with(&srv.url(), frame).await
}

fn clients(list: &scaled_sockets::ConnectionList) -> Vec<&str> {
    list.connections.iter().map(|c| c.client.as_str()).collect()
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}

/// Reads the next server `ask` of `raw` and returns its id and event.
async fn next_ask(raw: &mut Raw) -> (u64, String) {
    let ask = raw.recv_type("ask").await;
    (
        ask["id"].as_u64().expect("ask id"),
        ask["event"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn lists_asks_and_disconnects(scaler_a: Arc<dyn Scaler>, scaler_b: Arc<dyn Scaler>) {
    let a = TestServer::start(test_config("dir-a"), scaler_a, app()).await;
    let b = TestServer::start(test_config("dir-b"), scaler_b, app()).await;
    let (mut alice1, w) = connect(&a, "alice", None).await;
    let alice1_client = w["client"].as_str().unwrap().to_owned();
    let session = w["session"].as_str().unwrap().to_owned();
    // A second tab of alice's session, on the other instance.
    let (mut alice_tab, w) = connect(&b, "alice", Some(&session)).await;
    assert_eq!(w["session"], session.as_str(), "the tab joined the session");
    let alice_tab_client = w["client"].as_str().unwrap().to_owned();
    let (mut alice2, w) = connect(&b, "alice", None).await;
    let alice2_client = w["client"].as_str().unwrap().to_owned();
    let (mut bob, w) = connect(&b, "bob", None).await;
    let bob_client = w["client"].as_str().unwrap().to_owned();
    let bob_session = w["session"].as_str().unwrap().to_owned();

    // Listing, from either instance.
    for sockets in [&a.sockets, &b.sockets] {
        let list = sockets.user_connections("alice", LIST).await.unwrap();
        assert!(!list.partial);
        assert_eq!(
            clients(&list),
            sorted(vec![&alice1_client, &alice_tab_client, &alice2_client])
        );
        let one = list
            .connections
            .iter()
            .find(|c| c.client == alice1_client)
            .unwrap();
        assert_eq!(
            (
                one.user.as_deref(),
                one.session.as_str(),
                one.instance.as_str()
            ),
            (Some("alice"), session.as_str(), "dir-a")
        );
        let list = sockets.session_connections(&session, LIST).await.unwrap();
        assert_eq!(
            clients(&list),
            sorted(vec![&alice1_client, &alice_tab_client])
        );
        let list = sockets.user_connections("nobody", LIST).await.unwrap();
        assert!(list.connections.is_empty() && !list.partial);
    }
    let err = a.sockets.user_connections("", LIST).await.unwrap_err();
    assert_eq!(err.code.as_str(), "bad_request");
    let err = a
        .sockets
        .session_connections(&"x".repeat(2000), LIST)
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "bad_request");

    // Ask a user: one connection refuses, one is silent, one answers: the
    // answer wins.
    let sockets = a.sockets.clone();
    let asking = tokio::spawn(async move {
        sockets
            .ask_user("alice", "pick", &Data::json(&json!({"q":1})).unwrap(), LIST)
            .await
    });
    let (id, event) = next_ask(&mut alice1).await;
    assert_eq!(event, "pick");
    alice1
        .send(json!({"type":"error","id":id,"code":"forbidden","message":"not me"}))
        .await;
    let _silent = next_ask(&mut alice2).await;
    let (id, _) = next_ask(&mut alice_tab).await;
    alice_tab
        .send(json!({"type":"reply","id":id,"data":{"from":"tab"}}))
        .await;
    let answer = asking.await.unwrap().unwrap();
    assert_eq!(answer.get(), r#"{"from":"tab"}"#);

    // Every connection of the session refuses: the client's error.
    let sockets = b.sockets.clone();
    let session_for_ask = session.clone();
    let asking = tokio::spawn(async move {
        sockets
            .ask_session(
                &session_for_ask,
                "pick",
                &Data::json(&json!(2)).unwrap(),
                LIST,
            )
            .await
    });
    for raw in [&mut alice1, &mut alice_tab] {
        let (id, _) = next_ask(raw).await;
        raw.send(json!({"type":"error","id":id,"code":"forbidden","message":"no"}))
            .await;
    }
    let err = asking.await.unwrap().unwrap_err();
    assert_eq!(err.code.as_str(), "forbidden", "{err:?}");

    // Nobody there: not_found. Nobody answers in time: timeout, in time.
    let err = a
        .sockets
        .ask_user("nobody", "pick", &Data::json(&json!(3)).unwrap(), LIST)
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "not_found");
    let started = Instant::now();
    let err = a
        .sockets
        .ask_user(
            "bob",
            "pick",
            &Data::json(&json!(4)).unwrap(),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let _ = next_ask(&mut bob).await;

    // Disconnect: codes outside 1000 and 3000-4999 are refused.
    for code in [1001, 1012, 2999, 5000] {
        let err = a
            .sockets
            .disconnect_user("alice", code, "bye", false, LIST)
            .await
            .unwrap_err();
        assert_eq!(err.code.as_str(), "bad_request", "{code}");
    }
    let told = a
        .sockets
        .disconnect_user("alice", 4100, "banned", false, LIST)
        .await
        .unwrap();
    assert_eq!(told.connections.len(), 3);
    for raw in [&mut alice1, &mut alice_tab, &mut alice2] {
        let frame = raw.recv_type("disconnect").await;
        assert_eq!(
            (frame["code"].as_u64(), frame["reconnect"].as_bool()),
            (Some(4100), Some(false))
        );
        assert_eq!(raw.closed().await, Ended::Closed(4100));
    }
    support::eventually(Duration::from_secs(5), "alice's connections gone", || {
        let sockets = b.sockets.clone();
        async move {
            sockets
                .user_connections("alice", LIST)
                .await
                .unwrap()
                .connections
                .is_empty()
        }
    })
    .await;
    let told = b
        .sockets
        .disconnect_session(&bob_session, 1000, "done", true, LIST)
        .await
        .unwrap();
    assert_eq!(clients(&told), vec![bob_client.as_str()]);
    assert_eq!(bob.recv_type("disconnect").await["code"], 1000);
}

/// An instance that is in the registry but never answers (killed, its entry
/// not yet expired): listing says `partial` within the timeout, and asking
/// still gets the live connections' answer.
async fn a_silent_instance_makes_the_list_partial_not_slow(scaler: Arc<dyn Scaler>) {
    let a = TestServer::start(test_config("quiet-a"), scaler.clone(), app()).await;
    let (mut carol, w) = connect(&a, "carol", None).await;
    let carol_client = w["client"].as_str().unwrap().to_owned();
    scaler
        .register_instance(
            &InstanceInfo {
                id: "quiet-ghost".into(),
                address: "127.0.0.1:9".into(),
                connections: 3,
                cores: 0,
                updated_at_ms: scaled_sockets::scaler::types::now_ms(),
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    // The live-instance view is cached for one heartbeat interval.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let list = a
        .sockets
        .user_connections("carol", Duration::from_millis(600))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(list.partial, "the ghost did not answer");
    assert_eq!(clients(&list), vec![carol_client.as_str()]);
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(1500),
        "bounded by the timeout: {took:?}"
    );
    let sockets = a.sockets.clone();
    let asking = tokio::spawn(async move {
        sockets
            .ask_user("carol", "ping", &Data::json(&json!(1)).unwrap(), LIST)
            .await
    });
    let (id, _) = next_ask(&mut carol).await;
    carol
        .send(json!({"type":"reply","id":id,"data":"pong"}))
        .await;
    assert_eq!(asking.await.unwrap().unwrap().get(), r#""pong""#);
    let _ = scaler.unregister_instance("quiet-ghost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lists_asks_and_disconnects_users_and_sessions() {
    let scaler: Arc<dyn Scaler> = Arc::new(MemoryScaler::new());
    lists_asks_and_disconnects(scaler.clone(), scaler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_silent_instance_makes_the_list_partial_not_slow() {
    a_silent_instance_makes_the_list_partial_not_slow(Arc::new(MemoryScaler::new())).await;
}

async fn redis_scaler(redis: &RedisServer, prefix: &str) -> Arc<dyn Scaler> {
    scaler_from_url(&redis.url(), prefix)
        .await
        .expect("connect to the private redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lists_asks_and_disconnects_users_and_sessions() {
    let redis = RedisServer::start();
    lists_asks_and_disconnects(
        redis_scaler(&redis, "dir").await,
        redis_scaler(&redis, "dir").await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_silent_instance_makes_the_list_partial_not_slow() {
    let redis = RedisServer::start();
    a_silent_instance_makes_the_list_partial_not_slow(redis_scaler(&redis, "quiet").await).await;
}
