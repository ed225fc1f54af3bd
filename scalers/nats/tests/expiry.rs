//! What expires is removed from NATS, not only hidden: epoch markers of
//! channels that are only read, expired channels, key-value entries (sessions)
//! with a TTL, and the presence of instances that crashed. Also the size
//! limits of the history stream. Each test owns a private `nats-server -js`
//! and inspects the raw streams.

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use bytes::Bytes;
use scaled_sockets_nats::{
    NatsConfig, NatsScaler,
    names::{Names, encode_token, kv_subject},
};
use scaled_sockets_scaler::{
    HistoryRequest, InstanceInfo, PresenceEntry, PublishOptions, PutOptions, Scaler, ScalerError,
    ScalerExt,
};
use scaled_sockets_test_harness::NatsServer;
use std::time::Duration;
use tokio::time::{Instant, sleep};

const PREFIX: &str = "gx";
/// The sweep interval these tests run with.
const SWEEP: Duration = Duration::from_millis(500);

async fn server() -> NatsServer {
    tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("start nats-server")
}

fn config(server: &NatsServer) -> NatsConfig {
    NatsConfig::from_url(server.url())
        .with_prefix(PREFIX)
        .with_sweep_interval(SWEEP)
}

async fn scaler(config: NatsConfig) -> NatsScaler {
    NatsScaler::connect(config).await.expect("connect")
}

/// A raw JetStream view of the server, for inspecting what is stored.
struct Raw {
    js: jetstream::Context,
}

impl Raw {
    async fn new(server: &NatsServer) -> Self {
        let client = async_nats::connect(server.url())
            .await
            .expect("raw connect");
        Self {
            js: jetstream::new(client),
        }
    }

    /// True when `stream` holds a message on `subject`.
    async fn holds(&self, stream: &str, subject: &str) -> bool {
        let stream = self.js.get_stream(stream).await.expect("stream");
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(_) => true,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => false,
            Err(e) => panic!("reading {subject}: {e}"),
        }
    }

    /// Waits until `subject` of `stream` holds nothing; panics after `within`.
    async fn gone_within(&self, stream: &str, subject: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while self.holds(stream, subject).await {
            assert!(
                Instant::now() < deadline,
                "{what}: still stored {within:?} later"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }
}

fn history_stream() -> String {
    format!("{PREFIX}_history")
}

fn bucket_stream(bucket: &str) -> String {
    format!("KV_{PREFIX}_{bucket}")
}

/// `history()` on a channel nobody publishes to writes an epoch marker; it is
/// purged once the request's TTL has passed, without anyone reading the channel
/// again. A channel published with a short TTL goes the same way; a channel
/// within its TTL stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_channels_leave_nothing_after_their_ttl() {
    let server = server().await;
    let s = scaler(config(&server)).await;
    let raw = Raw::new(&server).await;
    let names = Names::new(PREFIX);
    let short = HistoryRequest {
        ttl: Duration::from_secs(1),
        ..HistoryRequest::default()
    };
    let page = s.history("only-read", &short).await.expect("history");
    assert_eq!(page.top.offset, 0);
    let marker = names.history_subject("only-read");
    assert!(
        raw.holds(&history_stream(), &marker).await,
        "the read created the epoch marker"
    );
    s.publish(
        "short-lived",
        Bytes::from_static(b"x"),
        &PublishOptions {
            history_size: 10,
            history_ttl: Duration::from_secs(1),
        },
    )
    .await
    .expect("publish");
    s.history("kept", &HistoryRequest::default())
        .await
        .expect("history");
    // TTL 1 s + one sweep interval (+10 % jitter) + one sweep's duration, with
    // room for a loaded machine (without the sweep: the stream's 24 h max_age).
    let within = Duration::from_secs(6);
    raw.gone_within(
        &history_stream(),
        &marker,
        within,
        "epoch marker of a read-only channel",
    )
    .await;
    raw.gone_within(
        &history_stream(),
        &names.history_subject("short-lived"),
        within,
        "expired channel",
    )
    .await;
    assert!(
        raw.holds(&history_stream(), &names.history_subject("kept"))
            .await,
        "a channel within its TTL is kept"
    );
    // The purged channel starts over in a new epoch.
    let again = s.history("only-read", &short).await.expect("history again");
    assert_ne!(again.top.epoch, page.top.epoch);
}

/// The history stream is bounded in bytes, and a publication above the
/// per-message limit is refused with `InvalidArgument`, not stored, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_in_bytes_and_per_message() {
    let server = server().await;
    let s = scaler(config(&server).with_max_history_bytes(8 << 20)).await;
    let raw = Raw::new(&server).await;
    let info = raw
        .js
        .get_stream(history_stream())
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.max_bytes, 8 << 20);
    assert!(info.config.max_message_size >= 65536);
    let opts = PublishOptions::default();
    let max = s.config().max_publication_bytes;
    assert_eq!(max, 65536, "the default matches the server's data limit");
    let exact = s
        .publish("big", Bytes::from(vec![b'x'; max]), &opts)
        .await
        .expect("a publication of exactly the limit is stored");
    assert_eq!(exact.offset, 1);
    match s
        .publish("big", Bytes::from(vec![b'x'; max + 1]), &opts)
        .await
    {
        Err(ScalerError::InvalidArgument(message)) => {
            assert!(message.contains("65537"), "names the size: {message}");
            assert!(message.contains("65536"), "names the limit: {message}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let page = s
        .history("big", &HistoryRequest::default())
        .await
        .expect("history");
    assert_eq!(
        page.top.offset, 1,
        "nothing of the refused publication stored"
    );
    // The server enforces the per-message size too, behind the scaler's check.
    let mut small = config(&server).with_max_publication_bytes(1024);
    small.prefix = "gy".into();
    let s2 = scaler(small).await;
    let info = raw
        .js
        .get_stream("gy_history")
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.max_message_size, 1024 + 4096);
    let ack = raw
        .js
        .publish("gy.hist.raw", Bytes::from(vec![0u8; 8192]))
        .await
        .expect("sent")
        .await;
    assert!(ack.is_err(), "the stream refuses oversized messages");
    assert!(matches!(
        s2.publish("c", Bytes::from(vec![0u8; 1025]), &opts).await,
        Err(ScalerError::InvalidArgument(_))
    ));
}

/// Sessions (key-value entries under `session/`) honour the TTL the caller
/// gives, and expired entries are removed from the bucket by the sweep even
/// if nobody reads them again; entries without a TTL are never swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ttl_is_honoured_and_expired_entries_are_removed() {
    let server = server().await;
    let s = scaler(config(&server)).await;
    let raw = Raw::new(&server).await;
    let kv = bucket_stream("kv");
    let bucket = format!("{PREFIX}_kv");
    let ttl = Duration::from_secs(1);
    s.session_put("read", Bytes::from_static(b"r"), ttl)
        .await
        .expect("put");
    s.session_put("never-read", Bytes::from_static(b"n"), ttl)
        .await
        .expect("put");
    s.kv_put("keep/me", Bytes::from_static(b"k"), &PutOptions::default())
        .await
        .expect("put without TTL");
    assert!(s.session_get("read").await.expect("get").is_some());
    sleep(Duration::from_millis(1300)).await;
    assert!(
        s.session_get("read").await.expect("get").is_none(),
        "the 1 s TTL is honoured"
    );
    let never_read = kv_subject(&bucket, &encode_token("session/never-read"));
    raw.gone_within(&kv, &never_read, Duration::from_secs(5), "expired session")
        .await;
    raw.gone_within(
        &kv,
        &kv_subject(&bucket, &encode_token("session/read")),
        Duration::from_secs(5),
        "expired session that was read",
    )
    .await;
    sleep(SWEEP * 3).await;
    assert!(
        raw.holds(&kv, &kv_subject(&bucket, &encode_token("keep/me")))
            .await,
        "an entry without a TTL survives sweeps"
    );
    assert_eq!(
        s.kv_get("keep/me").await.expect("get").map(|v| v.value),
        Some(Bytes::from_static(b"k"))
    );
}

fn entry(client: &str, instance: &str) -> PresenceEntry {
    PresenceEntry {
        client: client.into(),
        user: None,
        instance: instance.into(),
    }
}

fn presence_subject(channel: &str, client: &str) -> String {
    kv_subject(
        &format!("{PREFIX}_presence"),
        &format!("{}.{}", encode_token(channel), encode_token(client)),
    )
}

/// An instance that crashed (registration expired, never unregistered) leaves
/// no presence entry in the bucket within a bounded time, with nobody reading
/// the registry or the presence; a live instance's entry stays. An entry naming
/// an instance that never registered is removed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_crashed_instance_is_removed() {
    let server = server().await;
    let s = scaler(config(&server)).await;
    let raw = Raw::new(&server).await;
    let presence = bucket_stream("presence");
    let registry = bucket_stream("instances");
    let register = |id: &'static str, ttl: u64| {
        let s = s.clone();
        async move {
            s.register_instance(
                &InstanceInfo {
                    id: id.into(),
                    ..InstanceInfo::default()
                },
                Duration::from_secs(ttl),
            )
            .await
            .expect("register");
        }
    };
    register("crashed", 1).await;
    register("alive", 60).await;
    s.presence_add("room", &entry("c1", "crashed"))
        .await
        .expect("add");
    s.presence_add("room", &entry("c2", "alive"))
        .await
        .expect("add");
    s.presence_add("room", &entry("c3", "never-registered"))
        .await
        .expect("add");
    assert!(raw.holds(&presence, &presence_subject("room", "c1")).await);
    // TTL 1 s, then one sweep finds it expired; allow a few sweeps.
    let within = Duration::from_secs(8);
    raw.gone_within(
        &presence,
        &presence_subject("room", "c1"),
        within,
        "presence of a crashed instance",
    )
    .await;
    raw.gone_within(
        &registry,
        &kv_subject(&format!("{PREFIX}_instances"), &encode_token("crashed")),
        within,
        "expired registration",
    )
    .await;
    raw.gone_within(
        &presence,
        &presence_subject("room", "c3"),
        within,
        "presence naming an instance that never registered",
    )
    .await;
    assert!(
        raw.holds(&presence, &presence_subject("room", "c2")).await,
        "a live instance's presence stays"
    );
    assert_eq!(
        s.presence("room").await.expect("presence"),
        vec![entry("c2", "alive")]
    );
}
