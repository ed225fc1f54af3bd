//! `TimeoutScaler` against a scaler whose every call hangs.

use async_trait::async_trait;
use bytes::Bytes;
use scaled_sockets_scaler::{
    Feed, FeedControl, HistoryPage, HistoryRequest, InstanceInfo, Lease, LeaseOutcome,
    MemoryScaler, PresenceEntry, PublishOptions, PutMode, PutOptions, Result, Scaler, ScalerError,
    ScalerExt, StreamPosition, TimeoutScaler, Topic, Versioned,
};
use std::{future::pending, sync::Arc, time::Duration};
use tokio::{sync::mpsc, time::Instant};

/// Never answers (a backend whose socket went silent).
#[derive(Debug)]
struct Hanging;

#[derive(Debug)]
struct HangingControl;

#[async_trait]
impl FeedControl for HangingControl {
    async fn subscribe(&self, _: &[Topic]) -> Result<()> {
        pending().await
    }
    async fn unsubscribe(&self, _: &[Topic]) -> Result<()> {
        pending().await
    }
    fn is_live(&self) -> bool {
        true
    }
}

#[async_trait]
impl Scaler for Hanging {
    fn name(&self) -> &'static str {
        "hanging"
    }
    async fn ping(&self) -> Result<()> {
        pending().await
    }
    async fn open_feed(&self, _: &str) -> Result<Feed> {
        // Opening answers, so the feed's control can be tested.
        let (_tx, events) = mpsc::channel(1);
        Ok(Feed {
            control: Arc::new(HangingControl),
            events,
        })
    }
    async fn publish(&self, _: &str, _: Bytes, _: &PublishOptions) -> Result<StreamPosition> {
        pending().await
    }
    async fn send(&self, _: &Topic, _: Bytes) -> Result<()> {
        pending().await
    }
    async fn history(&self, _: &str, _: &HistoryRequest) -> Result<HistoryPage> {
        pending().await
    }
    async fn register_instance(&self, _: &InstanceInfo, _: Duration) -> Result<()> {
        pending().await
    }
    async fn unregister_instance(&self, _: &str) -> Result<()> {
        pending().await
    }
    async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        pending().await
    }
    async fn acquire_lease(&self, _: &str, _: &str, _: Duration) -> Result<LeaseOutcome> {
        pending().await
    }
    async fn renew_lease(&self, _: &str, _: &str, _: u64, _: Duration) -> Result<bool> {
        pending().await
    }
    async fn release_lease(&self, _: &str, _: &str, _: u64) -> Result<bool> {
        pending().await
    }
    async fn lease(&self, _: &str) -> Result<Option<Lease>> {
        pending().await
    }
    async fn leases(&self, _: &str) -> Result<Vec<(String, Lease)>> {
        pending().await
    }
    async fn presence_add(&self, _: &str, _: &PresenceEntry) -> Result<()> {
        pending().await
    }
    async fn presence_remove(&self, _: &str, _: &str) -> Result<()> {
        pending().await
    }
    async fn presence(&self, _: &str) -> Result<Vec<PresenceEntry>> {
        pending().await
    }
    async fn kv_get(&self, _: &str) -> Result<Option<Versioned>> {
        pending().await
    }
    async fn kv_put(&self, _: &str, _: Bytes, _: &PutOptions) -> Result<u64> {
        pending().await
    }
    async fn kv_delete(&self, _: &str, _: PutMode) -> Result<bool> {
        pending().await
    }
    async fn kv_list(&self, _: &str) -> Result<Vec<(String, Versioned)>> {
        pending().await
    }
}

async fn times_out<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T>>,
) {
    let limit = Duration::from_millis(100);
    let started = Instant::now();
    match call.await {
        Err(ScalerError::Timeout(l)) => assert_eq!(l, limit, "{what}"),
        other => panic!("{what}: expected Timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= limit && took < Duration::from_secs(2),
        "{what} took {took:?}"
    );
}

#[tokio::test]
async fn every_call_of_a_hanging_scaler_times_out() {
    let s = TimeoutScaler::new(Arc::new(Hanging), Duration::from_millis(100));
    let d = Duration::from_secs(1);
    let any = PutOptions::default();
    times_out("ping", s.ping()).await;
    times_out(
        "publish",
        s.publish("c", Bytes::new(), &PublishOptions::default()),
    )
    .await;
    times_out("send", s.send(&Topic::user("u"), Bytes::new())).await;
    times_out("history", s.history("c", &HistoryRequest::default())).await;
    times_out("register", s.register_instance(&InstanceInfo::default(), d)).await;
    times_out("unregister", s.unregister_instance("i")).await;
    times_out("instances", s.instances()).await;
    times_out("acquire", s.acquire_lease("k", "o", d)).await;
    times_out("renew", s.renew_lease("k", "o", 1, d)).await;
    times_out("release", s.release_lease("k", "o", 1)).await;
    times_out("lease", s.lease("k")).await;
    times_out("leases", s.leases("k")).await;
    let entry = PresenceEntry {
        client: "c".into(),
        user: None,
        instance: "i".into(),
    };
    times_out("presence_add", s.presence_add("c", &entry)).await;
    times_out("presence_remove", s.presence_remove("c", "c")).await;
    times_out("presence", s.presence("c")).await;
    times_out("kv_get", s.kv_get("k")).await;
    times_out("kv_put", s.kv_put("k", Bytes::new(), &any)).await;
    times_out("kv_delete", s.kv_delete("k", PutMode::Any)).await;
    times_out("kv_list", s.kv_list("k")).await;
    times_out("session_get", s.session_get("s")).await;
    let feed = s.open_feed("i").await.expect("open feed");
    times_out("subscribe", feed.control.subscribe(&[Topic::user("u")])).await;
    times_out("unsubscribe", feed.control.unsubscribe(&[Topic::user("u")])).await;
    assert!(feed.control.is_live());
}

#[tokio::test]
async fn a_fast_scaler_is_passed_through() {
    let s = TimeoutScaler::new(Arc::new(MemoryScaler::new()), Duration::from_secs(1));
    assert_eq!(s.name(), "memory");
    s.ping().await.expect("ping");
    s.session_put("x", Bytes::from_static(b"v"), Duration::from_secs(5))
        .await
        .expect("put");
    assert_eq!(
        s.session_get("x").await.expect("get"),
        Some(Bytes::from_static(b"v"))
    );
    let mut feed = s.open_feed("i").await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel("c")])
        .await
        .expect("subscribe");
    s.publish("c", Bytes::from_static(b"p"), &PublishOptions::default())
        .await
        .expect("publish");
    assert!(matches!(
        feed.events.recv().await,
        Some(scaled_sockets_scaler::FeedEvent::Publication(_))
    ));
}
