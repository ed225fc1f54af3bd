//! Session data for apps (the demo's `session_set` / `session_get`): shared
//! by every connection of a session, kept in the scaler, intact after the
//! instance that wrote it dies; concurrent writers do not lose updates.

mod support;

use scaled_sockets_test_harness::RedisServer;
use serde_json::{Value, json};
use support::{BinaryInstance, Raw, demo_binary};

fn demo(redis: &RedisServer, id: &str) -> BinaryInstance {
    let url = redis.url();
    BinaryInstance::start_program(
        &demo_binary(),
        &[
            "--allow-anonymous",
            "--scaler",
            &url,
            "--scaler-prefix",
            "sessions",
            "--instance-id",
            id,
        ],
        &[],
    )
}

async fn ask(raw: &mut Raw, id: u64, event: &str, data: Value) -> Value {
    raw.call(json!({"type":"ask","id":id,"event":event,"data":data}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_data_is_shared_and_survives_its_instance() {
    let redis = RedisServer::start();
    let mut a = demo(&redis, "sess-a");
    let b = demo(&redis, "sess-b");
    let (mut tab1, welcome) = Raw::connect(&a.url()).await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let r = ask(
        &mut tab1,
        1,
        "session_set",
        json!({"key":"cart","value":{"items":[1,2]}}),
    )
    .await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["data"], json!({}));

    // A second tab of the session, on the other instance, sees it.
    let (mut tab2, welcome) =
        Raw::connect_with(&b.url(), json!({"type":"connect","session":session})).await;
    assert_eq!(welcome["resumed"], true);
    let r = ask(&mut tab2, 1, "session_get", json!({"key":"cart"})).await;
    assert_eq!(r["data"], json!({"value":{"items":[1,2]}}));
    let r = ask(&mut tab2, 2, "session_get", json!({"key":"nothing"})).await;
    assert_eq!(r["data"], json!({"value":null}));

    // Both tabs write different keys at once: neither update is lost.
    for i in 0..10 {
        tab1.send(json!({"type":"ask","id":100 + i,"event":"session_set","data":{"key":format!("a{i}"),"value":i}}))
            .await;
        tab2.send(json!({"type":"ask","id":100 + i,"event":"session_set","data":{"key":format!("b{i}"),"value":i}}))
            .await;
    }
    for tab in [&mut tab1, &mut tab2] {
        let mut answered = 0;
        while answered < 10 {
            let frame = tab.recv().await;
            if frame["type"] == "reply" || frame["type"] == "error" {
                assert_eq!(frame["type"], "reply", "{frame}");
                answered += 1;
            }
        }
    }

    // The instance that held the first tab dies; the data is in the scaler.
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let (mut back, welcome) =
        Raw::connect_with(&b.url(), json!({"type":"connect","session":session})).await;
    assert_eq!(welcome["resumed"], true);
    let r = ask(&mut back, 1, "session_get", json!({"key":"cart"})).await;
    assert_eq!(r["data"], json!({"value":{"items":[1,2]}}));
    for i in 0..10 {
        for prefix in ["a", "b"] {
            let r = ask(
                &mut back,
                10 + i,
                "session_get",
                json!({"key":format!("{prefix}{i}")}),
            )
            .await;
            assert_eq!(r["data"], json!({"value": i}), "{prefix}{i}");
        }
    }

    // Another session sees none of it; limits answer limit_exceeded.
    let (mut stranger, _) = Raw::connect(&b.url()).await;
    let r = ask(&mut stranger, 1, "session_get", json!({"key":"cart"})).await;
    assert_eq!(r["data"], json!({"value":null}));
    let big = "x".repeat(9000);
    let r = ask(
        &mut stranger,
        2,
        "session_set",
        json!({"key":"big","value":big}),
    )
    .await;
    assert_eq!(r["code"], "limit_exceeded", "{r}");
}
