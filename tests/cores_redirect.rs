//! `join` with `"redirect": true` (an addition to the contract): when the
//! core runs on another instance, the answer is that instance's advertised
//! address instead of a relayed membership; the client connects there.

mod support;

use scaled_sockets::{CommandError, Sockets};
use scaled_sockets::{Config, Core, CoreContext, Data, cli::scaler_from_url};
use scaled_sockets_test_harness::RedisServer;
use serde_json::json;
use std::time::Duration;
use support::{Raw, TestServer, demo_app, eventually, test_config};

/// `join` answers its value; the tell `incr` broadcasts the new value.
#[derive(Default)]
struct Counter {
    value: u64,
}

#[scaled_sockets::async_trait]
impl Core for Counter {
    async fn join(&mut self, _cx: &CoreContext, _m: &str, _d: Data) -> Result<Data, CommandError> {
        Data::json(&json!({ "value": self.value }))
    }

    async fn tell(&mut self, cx: &CoreContext, _m: &str, event: &str, _d: Data) {
        if event == "incr" {
            self.value += 1;
            let data = Data::json(&json!({ "value": self.value })).unwrap();
            cx.broadcast("value", &data).unwrap();
        }
    }
}

/// Two instances on one private Redis; only `n2` offers `counter`.
async fn cluster(redis: &RedisServer) -> (TestServer, TestServer) {
    let prefix = format!("r{}", uuid::Uuid::new_v4().simple());
    let mut nodes = Vec::new();
    for (id, offers) in [("n1", false), ("n2", true)] {
        let scaler = scaler_from_url(&redis.url(), &prefix).await.unwrap();
        let mut app = demo_app();
        if offers {
            app = app.core("counter", Counter::default);
        }
        let config = Config {
            core_scan_interval: Duration::from_millis(300),
            ..test_config(id)
        };
        nodes.push(TestServer::start(config, scaler, app).await);
    }
    let n2 = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    (n1, n2)
}

async fn live(sockets: &Sockets, count: usize) {
    let sockets = sockets.clone();
    eventually(Duration::from_secs(5), "both instances registered", || {
        let sockets = sockets.clone();
        async move { sockets.instances().await.unwrap().len() == count }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_join_answers_the_owners_address_and_joins_nothing() {
    let redis = tokio::task::block_in_place(RedisServer::start);
    let (n1, n2) = cluster(&redis).await;
    live(&n1.sockets, 2).await;
    let owner = n1
        .sockets
        .spawn_core("counter", "m", &Data::null())
        .await
        .unwrap();
    assert_eq!(owner, "n2");

    // On n1, the core lives elsewhere: the answer is where.
    let (mut far, _) = Raw::connect(&n1.url()).await;
    let answer = far
        .call(json!({"type": "join", "id": 1, "core": "m", "data": {}, "redirect": true}))
        .await;
    assert_eq!(
        answer,
        json!({"type": "reply", "id": 1,
               "data": {"redirect": n2.addr.to_string(), "instance": "n2"}})
    );

    // Connecting there, the same join is a plain join.
    let address = answer["data"]["redirect"].as_str().unwrap();
    let (mut near, _) = Raw::connect(&format!("ws://{address}/ws")).await;
    let joined = near
        .call(json!({"type": "join", "id": 1, "core": "m", "data": {}, "redirect": true}))
        .await;
    assert_eq!(
        joined,
        json!({"type": "reply", "id": 1, "data": {"value": 0}})
    );
    near.send(json!({"type": "tell", "core": "m", "event": "incr", "data": null}))
        .await;
    let tell = near.recv_type("tell").await;
    assert_eq!(tell["data"], json!({"value": 1}), "{tell}");
    // The redirected client is no member: the broadcast does not reach it.
    far.quiet(Duration::from_millis(500)).await;

    // Without `redirect`, n1 relays as before.
    let relayed = far
        .call(json!({"type": "join", "id": 2, "core": "m", "data": {}}))
        .await;
    assert_eq!(relayed["data"], json!({"value": 1}), "{relayed}");
    near.send(json!({"type": "tell", "core": "m", "event": "incr", "data": null}))
        .await;
    assert_eq!(far.recv_type("tell").await["data"], json!({"value": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_join_checks_its_flag_and_the_core() {
    let redis = tokio::task::block_in_place(RedisServer::start);
    let (n1, _n2) = cluster(&redis).await;
    let (mut client, _) = Raw::connect(&n1.url()).await;
    let bad = client
        .call(json!({"type": "join", "id": 1, "core": "m", "redirect": "yes"}))
        .await;
    assert_eq!(bad["type"], "error", "{bad}");
    assert_eq!(bad["code"], "bad_request", "{bad}");
    let missing = client
        .call(json!({"type": "join", "id": 2, "core": "absent", "redirect": true}))
        .await;
    assert_eq!(missing["code"], "not_found", "{missing}");
    // `null` and `false` mean no redirect.
    let plain = client
        .call(json!({"type": "join", "id": 3, "core": "absent", "redirect": null}))
        .await;
    assert_eq!(plain["code"], "not_found", "{plain}");
}
