//! The app API reads like axum: typed `Json<T>` inputs, any `Serialize`
//! output, shared state through `State<S>`, raw `Data` beside them.

mod support;

use scaled_sockets::{
    AllowAnonymous, App, CommandError, Config, Context, Data, Json, MemoryScaler, Server, State,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use support::{Raw, TestServer, test_config};

#[derive(Deserialize)]
struct Add {
    n: u64,
}

#[derive(Serialize)]
struct Total {
    total: u64,
    by: Option<String>,
}

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

async fn add(
    cx: Context,
    State(counter): State<Counter>,
    Json(add): Json<Add>,
) -> Result<Total, CommandError> {
    let total = counter.0.fetch_add(add.n, Ordering::SeqCst) + add.n;
    Ok(Total {
        total,
        by: cx.user.as_deref().map(str::to_owned),
    })
}

async fn double(_cx: Context, Json(n): Json<i64>) -> Result<i64, CommandError> {
    n.checked_mul(2)
        .ok_or_else(|| CommandError::bad_request("too large to double"))
}

fn app(counter: Counter) -> App {
    App::new()
        .with_state(counter)
        .authenticator(AllowAnonymous)
        .ask("add", add)
        .ask("double", double)
        .ask("raw", |_cx: Context, data: Data| async move { Ok(data) })
        .tell(
            "bump",
            |_cx: Context, State(counter): State<Counter>, Json(add): Json<Add>| async move {
                counter.0.fetch_add(add.n, Ordering::SeqCst);
            },
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handlers_take_json_and_state_and_return_any_serialize() {
    let counter = Counter::default();
    let srv = TestServer::start(
        test_config("typed"),
        Arc::new(MemoryScaler::new()),
        app(counter.clone()),
    )
    .await;
    let (mut c, _) = Raw::connect(&srv.url()).await;

    let r = c
        .call(json!({"type":"ask","id":1,"event":"add","data":{"n":5}}))
        .await;
    assert_eq!(r["data"], json!({"total":5,"by":null}));
    let r = c
        .call(json!({"type":"ask","id":2,"event":"double","data":21}))
        .await;
    assert_eq!(r["data"], 42);

    // A payload that does not fit the type: bad_request with serde's words.
    let r = c
        .call(json!({"type":"ask","id":3,"event":"add","data":{"n":"five"}}))
        .await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["code"], "bad_request");
    let message = r["message"].as_str().unwrap();
    assert!(message.contains("invalid type"), "{message}");

    // Raw data still passes through untouched, big integers included.
    c.send_text(
        r#"{"type":"ask","id":4,"event":"raw","data":{"big":123456789012345678901234567890}}"#,
    )
    .await;
    let text = loop {
        let msg = futures_util::StreamExt::next(&mut c.ws)
            .await
            .unwrap()
            .unwrap();
        let text = msg.into_text().unwrap().to_string();
        if !text.contains("\"ping\"") {
            break text;
        }
    };
    assert!(text.contains("123456789012345678901234567890"), "{text}");

    // A typed tell: applied when it fits, refused with an error frame when not.
    c.send(json!({"type":"tell","event":"bump","data":{"n":10}}))
        .await;
    c.send(json!({"type":"tell","event":"bump","data":"ten"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "bad_request");
    assert!(e.get("id").is_none_or(|id| id.is_null()), "{e}");
    let r = c
        .call(json!({"type":"ask","id":5,"event":"add","data":{"n":0}}))
        .await;
    assert_eq!(r["data"]["total"], 15);
}

#[tokio::test]
async fn a_handler_reading_state_the_app_lacks_is_refused_at_start() {
    let app = App::new().authenticator(AllowAnonymous).ask("add", add);
    let err = Server::start(Config::default(), Arc::new(MemoryScaler::new()), app)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("State<") && text.contains("Counter"),
        "{text}"
    );

    let wrong = App::new()
        .with_state(42u32)
        .authenticator(AllowAnonymous)
        .ask("add", add);
    assert!(
        Server::start(Config::default(), Arc::new(MemoryScaler::new()), wrong)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn apps_serve_static_pages() {
    let app = App::new().authenticator(AllowAnonymous).page(
        "/",
        "text/html; charset=utf-8",
        "<h1>hello</h1>",
    );
    let srv = TestServer::start(test_config("pages"), Arc::new(MemoryScaler::new()), app).await;
    let (status, body) = support::http("GET", &srv.http("/"), &[], "").await;
    assert_eq!((status, body.as_str()), (200, "<h1>hello</h1>"));
    let (status, body) = support::http("GET", &srv.http("/scaled-sockets.js"), &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("export class Client"));
    let (status, _) = support::http("GET", &srv.http("/nope"), &[], "").await;
    assert_eq!(status, 404);
}
