//! The HTTP fallback with real processes: three `scaled-sockets` binaries on a
//! private Redis. A stream is opened on one instance and its POSTs are sent to
//! the others on purpose, so every one of them is forwarded over the scaler:
//! frames apply in `seq` order (seq 3 reaching an instance before seq 2),
//! retried `seq`s apply once, a forged session is refused everywhere, limits
//! and the slow-consumer policy hold as over WebSockets, and a drained
//! instance ends its streams with `disconnect`.
//! (Through nginx, with the JavaScript client and in a browser:
//! client/js/test/sse.test.js and browser-sse.test.js.)

mod support;

use scaled_sockets_test_harness::RedisServer;
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use support::{BinaryInstance, eventually, http};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    task::JoinHandle,
};

const API_KEY: &str = "sse-test-key";
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Three debug-build servers per test: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    nodes: Vec<BinaryInstance>,
    _redis: RedisServer,
}

impl Cluster {
    fn start(test: &str, extra: &[&str]) -> Self {
        tokio::task::block_in_place(|| {
            let redis = RedisServer::start();
            let url = redis.url();
            let prefix = format!("sse{test}{}", std::process::id());
            let nodes = (1..=3)
                .map(|i| {
                    let id = format!("sse-{i}");
                    let mut args = vec![
                        "--scaler",
                        &url,
                        "--scaler-prefix",
                        &prefix,
                        "--instance-id",
                        &id,
                        "--allow-anonymous",
                        "--api-key",
                        API_KEY,
                    ];
                    args.extend_from_slice(extra);
                    BinaryInstance::start(&args, &[])
                })
                .collect();
            Self {
                nodes,
                _redis: redis,
            }
        })
    }
}

/// An event stream read in the background: its frames in order, and whether
/// it ended.
struct Stream {
    frames: Arc<Mutex<Vec<Value>>>,
    ended: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET /sse?connect=…` on `addr`: the status, the headers (lowercased), and
/// the reader positioned at the body.
async fn get_sse(addr: SocketAddr, connect: &Value) -> (u16, String, BufReader<TcpStream>) {
    let query: String = form_urlencoded::byte_serialize(connect.to_string().as_bytes()).collect();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET /sse?connect={query} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(tcp);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("read head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, reader)
}

/// Reads a chunked event stream, keeping every `data:` event as JSON.
fn read_events(mut reader: BufReader<TcpStream>) -> Stream {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (f, e) = (frames.clone(), ended.clone());
    let task = tokio::spawn(async move {
        let mut text = String::new();
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                break;
            }
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            if reader.read_exact(&mut chunk).await.is_err() {
                break;
            }
            text.push_str(std::str::from_utf8(&chunk[..n]).expect("utf-8"));
            while let Some(i) = text.find("\n\n") {
                let event: String = text.drain(..i + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    let frame = serde_json::from_str(&data.join("\n")).expect("JSON event");
                    f.lock().unwrap().push(frame);
                }
            }
        }
        e.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Stream {
        frames,
        ended,
        task,
    }
}

impl Stream {
    async fn open(addr: SocketAddr) -> (Self, Value) {
        let (status, head, reader) = get_sse(addr, &json!({"type":"connect"})).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        assert!(head.contains("x-accel-buffering: no"), "{head}");
        let stream = read_events(reader);
        let welcome = stream.wait(|f| f["type"] == "welcome", "welcome").await;
        (stream, welcome)
    }

    fn frames(&self) -> Vec<Value> {
        self.frames.lock().unwrap().clone()
    }

    fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait(&self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        let mut found = None;
        eventually(Duration::from_secs(10), what, || {
            found = self.frames().into_iter().find(|f| pred(f));
            std::future::ready(found.is_some())
        })
        .await;
        found.expect("found")
    }

    fn messages(&self) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["data"].clone())
            .collect()
    }
}

async fn post(node: &BinaryInstance, body: &Value) -> u16 {
    http("POST", &node.http("/sse/send"), &[], &body.to_string())
        .await
        .0
}

fn send_body(welcome: &Value, seq: u64, frames: Value) -> Value {
    json!({"session": welcome["session"], "client": welcome["client"], "seq": seq, "frames": frames})
}

async fn metric(node: &BinaryInstance, name: &str) -> u64 {
    let (_, body) = http("GET", &node.http("/metrics"), &[], "").await;
    body.lines()
        .find(|l| l.starts_with(&format!("scaled_sockets_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} in {body}"))
}

async fn limited<F: std::future::Future<Output = ()>>(f: F) {
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_on_other_instances_apply_in_seq_order_and_once() {
    limited(async {
        let cluster = Cluster::start("order", &[]);
        let [home, a, b] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
        let (stream, w) = Stream::open(home.addr).await;
        assert_eq!(w["instance"], "sse-1");
        let subscribe = json!([{"type":"subscribe","id":1,"channel":"order"}]);
        assert_eq!(post(a, &send_body(&w, 1, subscribe)).await, 204);
        stream
            .wait(|f| f["type"] == "reply" && f["id"] == 1, "subscribed")
            .await;
        let publish =
            |id: u64, data: &str| json!([{"type":"publish","id":id,"channel":"order","data":data}]);
        // seq 3 reaches an instance before seq 2: held until seq 2 comes.
        assert_eq!(post(b, &send_body(&w, 3, publish(3, "second"))).await, 204);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            stream.messages().is_empty(),
            "seq 3 was applied before seq 2"
        );
        assert_eq!(post(a, &send_body(&w, 2, publish(2, "first"))).await, 204);
        // Retries, on any instance, the stream's own included: acknowledged, not applied.
        for node in [home, a, b] {
            assert_eq!(post(node, &send_body(&w, 2, publish(10, "dup"))).await, 204);
            assert_eq!(post(node, &send_body(&w, 3, publish(11, "dup"))).await, 204);
        }
        assert_eq!(post(b, &send_body(&w, 4, publish(4, "third"))).await, 204);
        eventually(Duration::from_secs(10), "three messages", || {
            std::future::ready(stream.messages().len() >= 3)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            stream.messages(),
            vec![json!("first"), json!("second"), json!("third")]
        );
        let replies: Vec<u64> = stream
            .frames()
            .iter()
            .filter(|f| f["type"] == "reply")
            .filter_map(|f| f["id"].as_u64())
            .collect();
        assert_eq!(
            replies,
            vec![1, 2, 3, 4],
            "one reply per applied publish, none for the retries"
        );
        assert!(metric(a, "sse_posts_forwarded_total").await >= 2);
        assert!(metric(b, "sse_posts_forwarded_total").await >= 2);
        assert_eq!(metric(home, "sse_streams").await, 1);

        // A forged session is refused by every instance, and so is an unknown client.
        for node in [home, a, b] {
            let mut forged = send_body(&w, 5, json!([]));
            forged["session"] = json!("forged-session");
            assert_eq!(post(node, &forged).await, 404);
            let mut unknown = send_body(&w, 5, json!([]));
            unknown["client"] = json!("sse-1.nobody");
            assert_eq!(post(node, &unknown).await, 404);
            let mut gone_instance = send_body(&w, 5, json!([]));
            gone_instance["client"] = json!("sse-9.nobody");
            assert_eq!(post(node, &gone_instance).await, 404);
        }

        // At most 64 POSTs wait for a missing seq; one more is refused (429).
        for seq in 6..70 {
            assert_eq!(
                post(a, &send_body(&w, seq, json!([]))).await,
                204,
                "held seq {seq}"
            );
        }
        assert_eq!(post(a, &send_body(&w, 70, json!([]))).await, 429);
        // seq 5 lets all of them apply.
        assert_eq!(post(b, &send_body(&w, 5, json!([]))).await, 204);
        assert_eq!(post(a, &send_body(&w, 70, publish(70, "after"))).await, 204);
        stream
            .wait(
                |f| f["type"] == "message" && f["data"] == "after",
                "seq 70 applied",
            )
            .await;
        assert!(!stream.ended());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_auth_and_rate_limits() {
    limited(async {
        let cluster = Cluster::start("bad", &["--publish-rate", "5"]);
        let (home, other) = (&cluster.nodes[0], &cluster.nodes[1]);
        // A bad connect parameter: 400 and no stream.
        for connect in [json!({"type":"ping"}), json!({"type":"connect","token":5}), json!("x")] {
            let (status, head, _) = get_sse(home.addr, &connect).await;
            assert_eq!(status, 400, "{connect}: {head}");
        }
        let (status, _) = http("GET", &home.http("/sse"), &[], "").await;
        assert_eq!(status, 400);

        let (stream, w) = Stream::open(home.addr).await;
        for body in [
            "{not json".to_owned(),
            json!({"session": w["session"], "client": w["client"], "seq": 0, "frames": []}).to_string(),
            json!({"session": w["session"], "client": w["client"], "seq": 1}).to_string(),
            json!({"session": w["session"], "client": w["client"], "seq": 1, "frames": vec![1; 65]}).to_string(),
            json!({"session": w["session"], "client": w["client"], "seq": 1, "frames": [], "extra": 1}).to_string(),
        ] {
            let (status, answer) = http("POST", &other.http("/sse/send"), &[], &body).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert!(answer.contains("bad_request"), "{answer}");
        }
        // Frames are judged as WebSocket frames are: `connect` and garbage are
        // bad_request on the stream, and the publish rate limit holds.
        let frames: Vec<Value> = (1..=20)
            .map(|id| json!({"type":"publish","id":id,"channel":"rate","data":id}))
            .chain([json!({"type":"connect","id":50}), json!({"type":"nonsense","id":51})])
            .collect();
        assert_eq!(post(other, &send_body(&w, 1, Value::Array(frames))).await, 204);
        stream.wait(|f| f["id"] == 51, "the last frame's answer").await;
        let frames = stream.frames();
        let code = |id: u64| {
            frames
                .iter()
                .find(|f| f["id"] == id)
                .map(|f| f["code"].clone())
                .unwrap_or_default()
        };
        assert_eq!(code(50), "bad_request");
        assert_eq!(code(51), "bad_request");
        let limited = (1..=20).filter(|id| code(*id) == "rate_limited").count();
        assert!(limited >= 5, "publish rate 5/s: {limited} of 20 refused");
        drop(stream);

        // A refused token: the `error` is the only event, then the stream ends.
        let cluster_auth = {
            let mut args = vec!["--token-secret", "s3cret"];
            args.extend(["--scaler", "memory://"]);
            tokio::task::block_in_place(|| BinaryInstance::start(&args, &[]))
        };
        let (status, _, reader) =
            get_sse(cluster_auth.addr, &json!({"type":"connect","token":"bad.token.here"})).await;
        assert_eq!(status, 200);
        let refused = read_events(reader);
        eventually(Duration::from_secs(10), "the refused stream to end", || {
            std::future::ready(refused.ended())
        })
        .await;
        let frames = refused.frames();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["type"], "error");
        assert_eq!(frames[0]["code"], "unauthorized");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_streams_with_disconnect_and_slow_readers_are_closed() {
    limited(async {
        let cluster = Cluster::start("drain", &["--outbound-queue", "16"]);
        let [home, a, b] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

        // A reader that stops reading fills its queue: closed like a slow WebSocket.
        let (status, _, reader) = get_sse(b.addr, &json!({"type":"connect"})).await;
        assert_eq!(status, 200);
        let mut reader = reader;
        let mut line = String::new();
        let welcome = loop {
            line.clear();
            reader.read_line(&mut line).await.expect("read");
            if let Some(json) = line.strip_prefix("data: ") {
                break serde_json::from_str::<Value>(json.trim()).expect("welcome");
            }
        };
        let subscribe = json!([{"type":"subscribe","id":1,"channel":"flood"}]);
        assert_eq!(post(a, &send_body(&welcome, 1, subscribe)).await, 204);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let data = "x".repeat(30_000);
        let body = json!({"channel":"flood","data":data}).to_string();
        let auth = format!("Bearer {API_KEY}");
        for _ in 0..2000 {
            let (status, answer) = http(
                "POST",
                &a.http("/api/publish"),
                &[("Authorization", &auth)],
                &body,
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            if metric(b, "slow_consumer_closes_total").await > 0 {
                break;
            }
        }
        assert_eq!(metric(b, "slow_consumer_closes_total").await, 1);
        eventually(
            Duration::from_secs(10),
            "the slow stream's inbox to close",
            || async { post(a, &send_body(&welcome, 2, json!([]))).await == 404 },
        )
        .await;
        drop(reader);

        // Drain: every stream gets `disconnect` (1012, reconnect) as its last
        // event, then ends; POSTs for it answer 404 afterwards.
        let (stream, w) = Stream::open(home.addr).await;
        home.terminate();
        eventually(Duration::from_secs(10), "the stream to end", || {
            std::future::ready(stream.ended())
        })
        .await;
        let frames = stream.frames();
        let last = frames.last().expect("frames");
        assert_eq!(last["type"], "disconnect", "{frames:?}");
        assert_eq!(last["code"], 1012);
        assert_eq!(last["reconnect"], true);
        // Once the instance left the registry, its clients are not found
        // (until then, a POST may time out: 504, and the client retries).
        let mut cluster = cluster;
        tokio::task::block_in_place(|| cluster.nodes[0].wait_exit(Duration::from_secs(10)));
        let a = &cluster.nodes[1];
        eventually(
            Duration::from_secs(20),
            "POSTs for the drained stream to answer 404",
            || async { post(a, &send_body(&w, 1, json!([]))).await == 404 },
        )
        .await;
    })
    .await;
}
