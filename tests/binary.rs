//! The standalone `scaled-sockets` binary, started exactly as docs/protocol.md ("The standalone server") says.

mod support;

use serde_json::json;
use std::{process::Command, time::Duration};
use support::{BinaryInstance, Ended, Raw, http};

#[test]
fn refuses_to_start_without_an_auth_choice() {
    let out = Command::new(env!("CARGO_BIN_EXE_scaled-sockets"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("SCALED_SOCKETS_TOKEN_SECRET")
        .env_remove("SCALED_SOCKETS_ALLOW_ANONYMOUS")
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token-secret") && stderr.contains("--allow-anonymous"),
        "says why: {stderr}"
    );
}

#[test]
fn rejects_an_unknown_scaler_url() {
    let out = Command::new(env!("CARGO_BIN_EXE_scaled-sockets"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allow-anonymous",
            "--scaler",
            "carrier-pigeon://x",
        ])
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported scaler URL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_then_drains_on_sigterm() {
    let mut instance = BinaryInstance::start(
        &[
            "--allow-anonymous",
            "--api-key",
            "k",
            "--instance-id",
            "bin-1",
            "--drain-timeout-ms",
            "3000",
        ],
        &[],
    );
    let (mut raw, welcome) = Raw::connect(&instance.url()).await;
    assert_eq!(welcome["instance"], "bin-1");
    raw.call(json!({"type":"subscribe","id":1,"channel":"c"}))
        .await;
    let (status, _) = http(
        "POST",
        &instance.http("/api/publish"),
        &[("Authorization", "Bearer k")],
        r#"{"channel":"c","data":"hi"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(raw.recv_type("message").await["data"], "hi");
    assert_eq!(http("GET", &instance.http("/readyz"), &[], "").await.0, 200);
    instance.terminate();
    let d = raw.recv_type("disconnect").await;
    assert_eq!(
        (d["code"].as_u64(), d["reconnect"].as_bool()),
        (Some(1012), Some(true))
    );
    assert_eq!(raw.closed().await, Ended::Closed(1012));
    let status = tokio::task::block_in_place(|| instance.wait_exit(Duration::from_secs(5)));
    assert!(status.success(), "exits 0 after draining: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_env_beat_config_file() {
    let dir = std::env::temp_dir().join(format!("ss-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("server.toml");
    std::fs::write(&file, "allow_anonymous = true\nping_interval_ms = 999\nmax_subscriptions = 1\ninstance_id = \"from-file\"\n").unwrap();
    let instance = BinaryInstance::start(
        &[
            "--config",
            file.to_str().unwrap(),
            "--instance-id",
            "from-flag",
        ],
        &[
            ("SCALED_SOCKETS_PING_INTERVAL_MS", "1234"),
            ("SCALED_SOCKETS_INSTANCE_ID", "from-env"),
        ],
    );
    let (mut raw, welcome) = Raw::connect(&instance.url()).await;
    assert_eq!(welcome["ping_interval"], 1234, "env beats the file");
    assert_eq!(welcome["instance"], "from-flag", "flags beat env");
    raw.call(json!({"type":"subscribe","id":1,"channel":"a"}))
        .await;
    let over = raw
        .call(json!({"type":"subscribe","id":2,"channel":"b"}))
        .await;
    assert_eq!(over["code"], "limit_exceeded", "the file's limit applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_anonymous_from_the_environment() {
    let instance = BinaryInstance::start(&[], &[("SCALED_SOCKETS_ALLOW_ANONYMOUS", "1")]);
    let (_raw, welcome) = Raw::connect(&instance.url()).await;
    assert_eq!(welcome["user"], serde_json::Value::Null);
}

/// With `--allow-anonymous` and no secret, a token cannot be verified: a
/// forged `sub` is refused (4001), never trusted; no token is anonymous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_a_forged_token_is_refused() {
    let instance = BinaryInstance::start(&["--allow-anonymous"], &[]);
    let exp = scaled_sockets::scaler::types::now_ms() / 1000 + 600;
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"alice","exp":exp}),
        &jsonwebtoken::EncodingKey::from_secret(b""),
    )
    .unwrap();
    let mut raw = Raw::open(&instance.url()).await;
    raw.send(json!({"type":"connect","token":forged})).await;
    let error = raw.recv().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(raw.closed().await, Ended::Closed(4001));
    let (_, welcome) = Raw::connect(&instance.url()).await;
    assert_eq!(welcome["user"], serde_json::Value::Null);
}

/// The browser client is served by the binary itself, embedded at build time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_javascript_client() {
    let instance = BinaryInstance::start(&["--allow-anonymous"], &[]);
    let (status, body) = http("GET", &instance.http("/scaled-sockets.js"), &[], "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("export class Client"),
        "{}",
        &body[..200.min(body.len())]
    );
    let (status, _) = http("GET", &instance.http("/"), &[], "").await;
    assert_eq!(status, 404, "the plain binary has no page");
}
