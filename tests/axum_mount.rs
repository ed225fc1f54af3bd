//! The WebSocket endpoint mounted in an axum app (examples/axum_mount.rs).

mod support;

#[path = "../examples/axum_mount.rs"]
#[allow(dead_code)]
mod example;

use scaled_sockets::{AllowAnonymous, App, Config, Context, Data, MemoryScaler, Server};
use serde_json::json;
use std::sync::Arc;
use support::{Raw, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_host_routes_share_one_axum_server() {
    let app = App::new()
        .authenticator(AllowAnonymous)
        .ask("echo", |_cx: Context, data: Data| async move { Ok(data) });
    let server = Server::start(Config::default(), Arc::new(MemoryScaler::new()), app)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = example::router(&server);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (mut raw, _) = Raw::connect(&format!("ws://{addr}/ws")).await;
    raw.call(json!({"type":"subscribe","id":1,"channel":"news"}))
        .await;
    let echo = raw
        .call(json!({"type":"ask","id":2,"event":"echo","data":[1]}))
        .await;
    assert_eq!(echo["data"], json!([1]));
    let (status, body) = http("POST", &format!("http://{addr}/announce"), &[], "hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(raw.recv_type("message").await["data"], "hello");
    let (status, _) = http("GET", &format!("http://{addr}/"), &[], "").await;
    assert_eq!(status, 200);
}
