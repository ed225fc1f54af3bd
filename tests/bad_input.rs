//! Every bad input of the wire protocol (docs/protocol.md) gets its documented error or close code, and
//! the server never panics: table-driven.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scaled_sockets::{App, CommandError, Config, Context, Data, JwtAuthenticator, MemoryScaler};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use support::{Ended, Raw, TestServer, test_config};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"test-secret";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn alice() -> String {
    token(
        json!({"sub": "alice", "exp": now() + 600, "channels": ["chat:*", "news"], "publish": ["chat:*"]}),
    )
}

async fn server(config: Config) -> TestServer {
    let app = App::new()
        .authenticator(JwtAuthenticator::new(SECRET))
        .ask("echo", |_cx: Context, data: Data| async move {
            Ok::<_, CommandError>(data)
        })
        .ask("slow", |_cx: Context, data: Data| async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok::<_, CommandError>(data)
        });
    TestServer::start(config, Arc::new(MemoryScaler::new()), app).await
}

fn limited_config() -> Config {
    Config {
        max_frame_bytes: 1024,
        max_subscriptions: 2,
        publish_rate: 5,
        handshake_timeout: Duration::from_millis(400),
        ..test_config("bad-input")
    }
}

enum First {
    Text(String),
    Binary,
    Nothing,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_close_with_documented_codes() {
    let srv = server(limited_config()).await;
    let expired = token(json!({"sub": "a", "exp": now() - 120}));
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "a", "exp": now() + 60}),
        &EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    let connect = |t: &str| First::Text(json!({"type": "connect", "token": t}).to_string());
    // (case, first frame, error code answered first (if any), close code)
    let cases: Vec<(&str, First, Option<&str>, u16)> = vec![
        (
            "first frame not connect",
            First::Text(json!({"type":"subscribe","id":1,"channel":"news"}).to_string()),
            Some("bad_request"),
            4000,
        ),
        (
            "first frame not JSON",
            First::Text("hello".into()),
            Some("bad_request"),
            4000,
        ),
        (
            "first frame JSON but not an object",
            First::Text("[1,2]".into()),
            Some("bad_request"),
            4000,
        ),
        (
            "connect with wrong field types",
            First::Text(json!({"type":"connect","token":5}).to_string()),
            Some("bad_request"),
            4000,
        ),
        ("binary first frame", First::Binary, None, 1003),
        ("no connect in time", First::Nothing, None, 4009),
        (
            "missing token",
            First::Text(json!({"type":"connect"}).to_string()),
            Some("unauthorized"),
            4001,
        ),
        (
            "expired token",
            connect(&expired),
            Some("unauthorized"),
            4001,
        ),
        (
            "token signed with another key",
            connect(&wrong_key),
            Some("unauthorized"),
            4001,
        ),
        (
            "unsigned token (alg none)",
            connect(alg_none),
            Some("unauthorized"),
            4001,
        ),
        (
            "malformed token",
            connect("not.a.jwt"),
            Some("unauthorized"),
            4001,
        ),
        (
            "oversized first frame",
            First::Text(format!(
                "{{\"type\":\"connect\",\"token\":\"{}\"}}",
                "x".repeat(4000)
            )),
            None,
            1009,
        ),
    ];
    for (case, first, error, close) in cases {
        let mut raw = Raw::open(&srv.url()).await;
        match first {
            First::Text(t) => raw.send_text(&t).await,
            First::Binary => raw.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap(),
            First::Nothing => {}
        }
        if let Some(code) = error {
            let frame = raw.recv().await;
            assert_eq!(frame["type"], "error", "{case}: {frame}");
            assert_eq!(frame["code"], code, "{case}: {frame}");
        }
        assert_eq!(raw.closed().await, Ended::Closed(close), "{case}");
    }
    srv.shutdown().await;
}

use futures_util::SinkExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_answered_and_the_connection_survives() {
    let srv = server(limited_config()).await;
    // (case, frame, expected code, expected id)
    let cases: Vec<(&str, String, &str, Option<u64>)> = vec![
        ("not JSON", "{nope".into(), "bad_request", None),
        (
            "JSON that is not an object",
            "[1,2,3]".into(),
            "bad_request",
            None,
        ),
        ("a JSON string", "\"subscribe\"".into(), "bad_request", None),
        (
            "missing type",
            json!({"id": 1}).to_string(),
            "bad_request",
            Some(1),
        ),
        (
            "type not a string",
            json!({"type": 7, "id": 2}).to_string(),
            "bad_request",
            Some(2),
        ),
        (
            "unknown type",
            json!({"type": "zap", "id": 3}).to_string(),
            "bad_request",
            Some(3),
        ),
        (
            "channel of the wrong type",
            json!({"type": "subscribe", "id": 4, "channel": 5}).to_string(),
            "bad_request",
            Some(4),
        ),
        (
            "offset of the wrong type",
            json!({"type": "subscribe", "id": 5, "channel": "news", "offset": "x"}).to_string(),
            "bad_request",
            Some(5),
        ),
        (
            "missing channel",
            json!({"type": "publish", "id": 6, "data": 1}).to_string(),
            "bad_request",
            Some(6),
        ),
        (
            "missing data",
            json!({"type": "publish", "id": 7, "channel": "chat:a"}).to_string(),
            "bad_request",
            Some(7),
        ),
        (
            "empty channel",
            json!({"type": "subscribe", "id": 8, "channel": ""}).to_string(),
            "bad_request",
            Some(8),
        ),
        (
            "command without id",
            json!({"type": "publish", "channel": "chat:a", "data": 1}).to_string(),
            "bad_request",
            None,
        ),
        (
            "id zero is not usable",
            json!({"type": "subscribe", "id": 0, "channel": "news"}).to_string(),
            "bad_request",
            None,
        ),
        (
            "id as a string is not usable",
            json!({"type": "subscribe", "id": "9", "channel": "news"}).to_string(),
            "bad_request",
            None,
        ),
        (
            "second connect",
            json!({"type": "connect"}).to_string(),
            "bad_request",
            None,
        ),
    ];
    // At most 10 bad frames per connection: an 11th within 10 s closes it.
    for chunk in cases.chunks(10) {
        let (mut raw, _) =
            Raw::connect_with(&srv.url(), json!({"type":"connect","token": alice()})).await;
        for (case, frame, code, id) in chunk {
            raw.send_text(frame).await;
            let answer = raw.recv().await;
            assert_eq!(answer["type"], "error", "{case}: {answer}");
            assert_eq!(answer["code"], *code, "{case}: {answer}");
            assert_eq!(
                answer.get("id").and_then(Value::as_u64),
                *id,
                "{case}: {answer}"
            );
            assert!(
                answer["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{case}: human text"
            );
        }
        // The connection is still usable after all of that.
        let echo = raw
            .call(json!({"type": "ask", "id": 100, "event": "echo", "data": {"ok": true}}))
            .await;
        assert_eq!(echo["data"], json!({"ok": true}));
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_get_their_codes() {
    let srv = server(limited_config()).await;
    let (mut raw, _) =
        Raw::connect_with(&srv.url(), json!({"type":"connect","token": alice()})).await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "forbidden subscribe",
            json!({"type": "subscribe", "id": 1, "channel": "secret"}),
            "forbidden",
        ),
        (
            "forbidden publish",
            json!({"type": "publish", "id": 2, "channel": "news", "data": 1}),
            "forbidden",
        ),
        (
            "forbidden presence",
            json!({"type": "presence", "id": 3, "channel": "secret"}),
            "forbidden",
        ),
        (
            "unknown ask event",
            json!({"type": "ask", "id": 4, "event": "nope"}),
            "not_found",
        ),
        (
            "ask to an unknown core",
            json!({"type": "ask", "id": 5, "event": "get", "core": "match-1"}),
            "not_found",
        ),
        (
            "join an unknown core",
            json!({"type": "join", "id": 6, "core": "match-1"}),
            "not_found",
        ),
        (
            "leave an unknown core",
            json!({"type": "leave", "id": 7, "core": "match-1"}),
            "not_found",
        ),
    ];
    for (case, frame, code) in cases {
        let answer = raw.call(frame).await;
        assert_eq!(answer["type"], "error", "{case}: {answer}");
        assert_eq!(answer["code"], code, "{case}: {answer}");
    }
    // Unknown tell: no id to answer, so an error without one.
    raw.send(json!({"type": "tell", "event": "nope", "data": 1}))
        .await;
    let answer = raw.recv().await;
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert!(answer.get("id").is_none());
    // Too many subscriptions (limit 2).
    for (id, channel) in [(10, "chat:a"), (11, "chat:b")] {
        let ok = raw
            .call(json!({"type": "subscribe", "id": id, "channel": channel}))
            .await;
        assert_eq!(ok["type"], "reply", "{ok}");
    }
    let over = raw
        .call(json!({"type": "subscribe", "id": 12, "channel": "chat:c"}))
        .await;
    assert_eq!(over["code"], "limit_exceeded", "{over}");
    // A duplicate pending id: the second frame is refused, the first answered.
    raw.send(json!({"type": "ask", "id": 20, "event": "slow", "data": "first"}))
        .await;
    raw.send(json!({"type": "ask", "id": 20, "event": "echo", "data": "second"}))
        .await;
    let dup = raw.recv().await;
    assert_eq!(
        (
            dup["type"].as_str(),
            dup["code"].as_str(),
            dup["id"].as_u64()
        ),
        (Some("error"), Some("bad_request"), Some(20)),
        "{dup}"
    );
    let first = raw.recv().await;
    assert_eq!(
        (first["type"].as_str(), first["data"].as_str()),
        (Some("reply"), Some("first")),
        "{first}"
    );
    // A publish flood: rate 5/s, burst 10. Some are refused with rate_limited,
    // none is lost silently (each gets exactly one answer).
    for id in 100..140u64 {
        raw.send(json!({"type": "publish", "id": id, "channel": "chat:a", "data": id}))
            .await;
    }
    let mut replies = 0;
    let mut limited = 0;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 40 {
        let v = raw.recv().await;
        if v["type"] == "message" {
            continue;
        }
        assert!(
            seen.insert(v["id"].as_u64().unwrap()),
            "one answer per id: {v}"
        );
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("reply"), _) => replies += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    assert!(limited > 0, "a flood is rate limited");
    assert!(replies >= 10, "the burst goes through, got {replies}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_inputs_after_the_handshake_close_the_connection() {
    let srv = server(limited_config()).await;
    let url = srv.url();
    // Oversized frame: 1009.
    let (mut raw, _) = Raw::connect_with(&url, json!({"type":"connect","token": alice()})).await;
    raw.send(json!({"type": "publish", "id": 1, "channel": "chat:a", "data": "x".repeat(2000)}))
        .await;
    assert_eq!(raw.closed().await, Ended::Closed(1009));
    // Binary frame: 1003.
    let (mut raw, _) = Raw::connect_with(&url, json!({"type":"connect","token": alice()})).await;
    raw.ws.send(Message::binary(vec![0u8; 4])).await.unwrap();
    assert_eq!(raw.closed().await, Ended::Closed(1003));
    // More than 10 bad frames within 10 s: 4000.
    let (mut raw, _) = Raw::connect_with(&url, json!({"type":"connect","token": alice()})).await;
    for _ in 0..11 {
        raw.send_text("garbage").await;
    }
    assert_eq!(raw.closed().await, Ended::Closed(4000));
    // The server is unharmed.
    let (mut raw, _) = Raw::connect_with(&url, json!({"type":"connect","token": alice()})).await;
    let echo = raw
        .call(json!({"type": "ask", "id": 1, "event": "echo", "data": 1}))
        .await;
    assert_eq!(echo["data"], 1);
    srv.shutdown().await;
}
