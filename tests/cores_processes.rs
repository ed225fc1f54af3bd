//! The demo's `counter` core across three real `demo` processes sharing a
//! private Redis, with the default lease and heartbeat settings: one
//! instance is killed with SIGKILL, and the core is back on a survivor within
//! the 15 s the contract promises, its members told to rejoin.
//!
//! Runs the `demo` example's binary, which `cargo test -p scaled-sockets`
//! builds with the tests (`cargo build --example demo` builds it alone).

mod support;

use scaled_sockets_test_harness::RedisServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{BinaryInstance, Raw, http};

const API_KEY: &str = "cores-processes-key";

async fn rejoin(client: &mut Raw, core: &str, deadline: Instant) -> Value {
    let mut id = 100;
    loop {
        let answer = client
            .call(json!({"type": "join", "id": id, "core": core, "data": {}}))
            .await;
        if answer["type"] == "reply" {
            return answer;
        }
        assert!(Instant::now() < deadline, "not back in time: {answer}");
        id += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owners_counter_is_respawned_within_15_s() {
    let demo = support::demo_binary();
    let redis = tokio::task::block_in_place(RedisServer::start);
    let url = redis.url();
    let prefix = format!("coresproc{}", std::process::id());
    let mut nodes: Vec<Option<BinaryInstance>> = tokio::task::block_in_place(|| {
        (1..=3)
            .map(|i| {
                let id = format!("node-{i}");
                let args = [
                    "--scaler",
                    url.as_str(),
                    "--scaler-prefix",
                    prefix.as_str(),
                    "--instance-id",
                    id.as_str(),
                    "--allow-anonymous",
                    "--api-key",
                    API_KEY,
                ];
                Some(BinaryInstance::start_program(&demo, &args, &[]))
            })
            .collect()
    });
    let node = |nodes: &[Option<BinaryInstance>], i: usize| nodes[i].as_ref().unwrap().url();
    let (mut spawner, _) = Raw::connect(&node(&nodes, 0)).await;
    let spawned = spawner
        .call(json!({"type": "ask", "id": 1, "event": "spawn",
            "data": {"kind": "counter", "core": "c"}}))
        .await;
    let owner = spawned["data"]["instance"]
        .as_str()
        .expect("spawned")
        .to_owned();
    assert_eq!(spawned["data"]["core"], "c", "{spawned}");
    let dead = owner["node-".len()..].parse::<usize>().unwrap() - 1;
    let mut members = Vec::new();
    for i in (0..3).filter(|i| *i != dead) {
        let (mut client, _) = Raw::connect(&node(&nodes, i)).await;
        let joined = client
            .call(json!({"type": "join", "id": 1, "core": "c", "data": {}}))
            .await;
        assert_eq!(joined["data"], json!({"value": 0}), "{joined}");
        members.push(client);
    }
    members[0]
        .send(json!({"type": "tell", "core": "c", "event": "incr", "data": null}))
        .await;
    for client in &mut members {
        let tell = client.recv_type("tell").await;
        assert_eq!(
            tell,
            json!({"type": "tell", "core": "c", "event": "value", "data": {"value": 1}})
        );
    }

    // SIGKILL: no drain, no release; the lease has to expire.
    let killed_at = Instant::now();
    drop(nodes[dead].take());
    let deadline = killed_at + Duration::from_secs(15);
    for client in &mut members {
        let left = client.recv_type("left").await;
        assert_eq!(left["core"], "c", "{left}");
        assert_eq!(left["rejoin"], true, "{left}");
    }
    for client in &mut members {
        let answer = rejoin(client, "c", deadline).await;
        assert_eq!(answer["data"], json!({"value": 0}), "fresh state");
    }
    let elapsed = killed_at.elapsed();
    let got = members[1]
        .call(json!({"type": "ask", "id": 500, "core": "c", "event": "get", "data": null}))
        .await;
    let host = got["data"]["instance"]
        .as_str()
        .expect("answered")
        .to_owned();
    assert_ne!(host, owner);
    eprintln!("core back on {host} {elapsed:?} after the kill");
    let survivor = nodes.iter().flatten().next().unwrap();
    let (status, body) = http(
        "GET",
        &survivor.http("/api/cluster"),
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        view["cores"],
        json!([{"id": "c", "kind": "counter", "instance": host}])
    );
}
