//! The protocol's client-frame vectors (`protocol/vectors/client_frames.json`)
//! against a real server: every invalid frame gets the `error` the vector
//! names (same `id`, `bad_request`), every valid command gets an answer with
//! its id that is not `bad_request`, and the connection stays open.

mod support;

use scaled_sockets::{Config, MemoryScaler};
use serde_json::Value;
use std::{sync::Arc, time::Duration};
use support::{Raw, TestServer, demo_app, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_every_client_vector_as_it_says() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocol/vectors/client_frames.json"
    );
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() > 50, "vectors missing: {}", cases.len());
    let config = Config {
        max_bad_frames: 10_000,
        publish_rate: 0,
        subscribe_rate: 0,
        ..test_config("vectors")
    };
    let srv = TestServer::start(config, Arc::new(MemoryScaler::new()), demo_app()).await;
    let (mut raw, _) = Raw::connect(&srv.url()).await;
    let mut checked = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let frame = case["frame"].as_str().unwrap();
        let expect = &case["expect"];
        if let Some(error) = expect.get("error") {
            if error.get("connect").is_some() {
                continue; // fatal before the handshake: tests/bad_input.rs covers it
            }
            raw.send_text(frame).await;
            let answer = answer(&mut raw).await;
            assert_eq!(answer["type"], "error", "{name}: {answer}");
            assert_eq!(answer["code"], error["code"], "{name}: {answer}");
            let want_id = &error["id"];
            let got_id = answer.get("id").cloned().unwrap_or(Value::Null);
            assert_eq!(&got_id, want_id, "{name}: {answer}");
            checked += 1;
            continue;
        }
        let ok = &expect["ok"];
        let kind = ok["type"].as_str().unwrap();
        let Some(id) = ok.get("id").and_then(Value::as_u64) else {
            continue; // tell, pong, reply, error: no answer
        };
        // `reply` and `error` answer a server ask: they get no answer.
        if ["connect", "reply", "error"].contains(&kind) || id > u32::MAX as u64 {
            continue;
        }
        raw.send_text(frame).await;
        let answer = answer(&mut raw).await;
        assert_eq!(answer["id"].as_u64(), Some(id), "{name}: {answer}");
        assert_ne!(answer["code"], "bad_request", "{name}: {answer}");
        checked += 1;
    }
    assert!(checked > 40, "only {checked} vectors checked");
    raw.quiet(Duration::from_millis(200)).await;
}

/// The next answer (`reply` or `error`), skipping pushes such as the
/// `message`s of channels the vectors subscribed to.
async fn answer(raw: &mut Raw) -> Value {
    loop {
        let frame = raw.recv().await;
        if frame["type"] == "reply" || frame["type"] == "error" {
            return frame;
        }
    }
}
