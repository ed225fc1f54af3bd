//! One conformance suite that every [`Scaler`] must pass.
//!
//! Each check is a public async function taking a [`TestBackend`]: something that
//! can hand out scaler handles connected to one backend (two handles = two
//! instances) and, where it can, stop and start the backend process. A backend's
//! author runs the whole suite with one line in a test file:
//!
//! ```ignore
//! scaled_sockets_conformance::conformance_tests!(my_crate_tests::backend());
//! ```
//!
//! where the expression evaluates to a future of something implementing
//! [`TestBackend`]. Every check uses fresh random channel, key and instance names,
//! so checks may share one backend process.
//!
//! Checks a backend cannot take part in are skipped only when its
//! [`Capabilities`](scaled_sockets_scaler::Capabilities) say so, and the skip is
//! printed; nothing is skipped silently.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use scaled_sockets_scaler::{
    Feed, FeedEvent, HistoryRequest, InstanceInfo, LeaseOutcome, PresenceEntry, Publication,
    PublishOptions, Scaler, ScalerExt, StreamPosition, Topic, types::now_ms,
};
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::time::{Instant, sleep, timeout};

/// What the suite needs from a backend under test.
pub trait TestBackend: Send + Sync {
    /// A new scaler handle on the backend (each acts as a separate instance).
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Scaler>>;
    /// Makes the backend unreachable (kills the process), if the harness can.
    /// Returns false when it cannot: restart checks are then skipped, loudly.
    fn stop(&self) -> BoxFuture<'_, bool>;
    /// Brings the backend back after [`TestBackend::stop`] (same address).
    fn start(&self) -> BoxFuture<'_, ()>;
}

/// How long any single expected event may take.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn opts() -> PublishOptions {
    PublishOptions::default()
}

/// Waits for the next publication on the feed, skipping other events.
pub async fn next_publication(feed: &mut Feed) -> Publication {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, feed.events.recv()).await {
            Ok(Some(FeedEvent::Publication(p))) => return p,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("feed closed while waiting for a publication"),
            Err(_) => panic!("no publication within {EVENT_WAIT:?}"),
        }
    }
}

/// Asserts that no publication or message arrives within `wait`.
pub async fn assert_quiet(feed: &mut Feed, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, feed.events.recv()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(FeedEvent::Publication(p))) => panic!("unexpected publication {p:?}"),
            Ok(Some(FeedEvent::Message { topic, .. })) => panic!("unexpected message on {topic:?}"),
            Ok(Some(_)) => continue,
        }
    }
}

async fn next_event_matching(feed: &mut Feed, want: impl Fn(&FeedEvent) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, feed.events.recv()).await {
            Ok(Some(ev)) if want(&ev) => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("feed closed while waiting for {what}"),
            Err(_) => panic!("no {what} within 30s"),
        }
    }
}

async fn register(scaler: &dyn Scaler, id: &str) {
    scaler
        .register_instance(
            &InstanceInfo {
                id: id.into(),
                address: "127.0.0.1:1".into(),
                connections: 3,
                cores: 1,
                updated_at_ms: now_ms(),
            },
            Duration::from_secs(30),
        )
        .await
        .expect("register instance");
}

/// The backend answers a ping.
pub async fn ping_answers(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    s.ping().await.expect("ping");
}

/// Publications reach a subscribed feed in publish order, with offsets 1, 2, 3...
/// in one epoch, and the payload bytes intact.
pub async fn delivery_in_order(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let channel = unique("order");
    let mut feed = s.open_feed(&unique("inst")).await.expect("open feed");
    feed.control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("subscribe");
    let mut epoch = None;
    for i in 1..=200u64 {
        let payload = Bytes::from(format!(
            "{{\"n\":{i},\"big\":123456789012345678901234567890}}"
        ));
        let pos = s
            .publish(&channel, payload, &opts())
            .await
            .expect("publish");
        assert_eq!(pos.offset, i, "offsets count from 1 without gaps");
        assert_eq!(
            epoch.get_or_insert_with(|| pos.epoch.clone()),
            &pos.epoch,
            "one epoch"
        );
    }
    for i in 1..=200u64 {
        let p = next_publication(&mut feed).await;
        assert_eq!(&*p.channel, channel.as_str());
        assert_eq!(p.offset, i, "per-channel order kept");
        assert_eq!(Some(&p.epoch), epoch.as_ref());
        assert_eq!(
            p.payload,
            Bytes::from(format!(
                "{{\"n\":{i},\"big\":123456789012345678901234567890}}"
            ))
        );
    }
}

/// A feed receives only the topics it subscribed to: an instance never gets every
/// channel's traffic.
pub async fn feed_gets_only_its_topics(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let mine = unique("mine");
    let other = unique("other");
    let mut feed = s.open_feed(&unique("inst")).await.expect("open feed");
    feed.control
        .subscribe(&[Topic::channel(mine.as_str())])
        .await
        .expect("subscribe");
    s.publish(&other, Bytes::from_static(b"1"), &opts())
        .await
        .expect("publish other");
    s.send(&Topic::user(unique("user")), Bytes::from_static(b"x"))
        .await
        .expect("send user");
    s.publish(&mine, Bytes::from_static(b"2"), &opts())
        .await
        .expect("publish mine");
    let p = next_publication(&mut feed).await;
    assert_eq!(
        &*p.channel,
        mine.as_str(),
        "only the subscribed channel arrives"
    );
    assert_quiet(&mut feed, Duration::from_millis(300)).await;
}

/// After unsubscribe, nothing more arrives; subscribing twice delivers once.
pub async fn unsubscribe_stops_delivery(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let channel = unique("unsub");
    let topic = Topic::channel(channel.as_str());
    let mut feed = s.open_feed(&unique("inst")).await.expect("open feed");
    feed.control
        .subscribe(std::slice::from_ref(&topic))
        .await
        .expect("subscribe");
    feed.control
        .subscribe(std::slice::from_ref(&topic))
        .await
        .expect("subscribe twice");
    s.publish(&channel, Bytes::from_static(b"1"), &opts())
        .await
        .expect("publish");
    assert_eq!(next_publication(&mut feed).await.offset, 1);
    assert_quiet(&mut feed, Duration::from_millis(200)).await;
    feed.control
        .unsubscribe(std::slice::from_ref(&topic))
        .await
        .expect("unsubscribe");
    s.publish(&channel, Bytes::from_static(b"2"), &opts())
        .await
        .expect("publish");
    assert_quiet(&mut feed, Duration::from_millis(300)).await;
}

/// Two instances on one backend: a publication from either reaches both, and
/// user, session and instance messages reach the feeds subscribed to them.
pub async fn two_instances_share_one_backend(backend: &dyn TestBackend) {
    let a = backend.connect().await;
    let b = backend.connect().await;
    let channel = unique("shared");
    let user = Topic::user(unique("u"));
    let session = Topic::session(unique("s"));
    let inbox_b = Topic::instance(unique("b"));
    let mut feed_a = a.open_feed(&unique("a")).await.expect("feed a");
    let mut feed_b = b.open_feed(inbox_b.name()).await.expect("feed b");
    feed_a
        .control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("sub a");
    feed_b
        .control
        .subscribe(&[
            Topic::channel(channel.as_str()),
            user.clone(),
            session.clone(),
            inbox_b.clone(),
        ])
        .await
        .expect("sub b");
    a.publish(&channel, Bytes::from_static(b"from-a"), &opts())
        .await
        .expect("publish a");
    b.publish(&channel, Bytes::from_static(b"from-b"), &opts())
        .await
        .expect("publish b");
    for feed in [&mut feed_a, &mut feed_b] {
        let first = next_publication(feed).await;
        let second = next_publication(feed).await;
        assert_eq!((first.offset, second.offset), (1, 2));
        assert_eq!(first.payload, Bytes::from_static(b"from-a"));
        assert_eq!(second.payload, Bytes::from_static(b"from-b"));
    }
    for (topic, body) in [
        (&user, "to-user"),
        (&session, "to-session"),
        (&inbox_b, "to-inbox"),
    ] {
        a.send(topic, Bytes::from(body)).await.expect("send");
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, feed_b.events.recv()).await {
                Ok(Some(FeedEvent::Message { topic: t, payload })) => {
                    assert_eq!(&t, topic);
                    assert_eq!(payload, Bytes::from(body));
                    break;
                }
                Ok(Some(_)) => continue,
                other => panic!("no message on {topic:?}: {other:?}"),
            }
        }
    }
    assert_quiet(&mut feed_a, Duration::from_millis(200)).await;
}

/// Concurrent publishers on several handles get gap-free, unique offsets.
pub async fn concurrent_publishers_get_gap_free_offsets(backend: &dyn TestBackend) {
    let channel = Arc::new(unique("race"));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = backend.connect().await;
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for _ in 0..50 {
                offsets.push(
                    s.publish(&channel, Bytes::from_static(b"x"), &opts())
                        .await
                        .expect("publish")
                        .offset,
                );
            }
            offsets
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for o in t.await.expect("task") {
            assert!(all.insert(o), "offset {o} given twice");
        }
    }
    assert_eq!(all, (1..=200).collect::<HashSet<u64>>());
}

/// An empty channel reports offset 0 and keeps its epoch: the epoch a subscriber
/// sees first is the one the first publication carries. History returns exactly
/// what was missed.
pub async fn history_recovers_missed(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    if !s.capabilities().history {
        eprintln!(
            "SKIPPED history_recovers_missed: {} declares no history",
            s.name()
        );
        return;
    }
    let channel = unique("hist");
    let top = s.stream_top(&channel).await.expect("top");
    assert_eq!(top.offset, 0);
    let again = s.stream_top(&channel).await.expect("top again");
    assert_eq!(top.epoch, again.epoch, "epoch stable while nothing is lost");
    for i in 1..=10 {
        let pos = s
            .publish(&channel, Bytes::from(format!("{i}")), &opts())
            .await
            .expect("publish");
        assert_eq!(
            pos.epoch, top.epoch,
            "publish keeps the epoch subscribers saw"
        );
    }
    let page = s
        .recover(&channel, StreamPosition::new(4, top.epoch.clone()), 100)
        .await
        .expect("recover");
    assert!(page.recovered);
    assert_eq!(page.top, StreamPosition::new(10, top.epoch.clone()));
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (5..=10).collect::<Vec<_>>());
    assert_eq!(page.publications[0].payload, Bytes::from_static(b"5"));
    let none_missed = s
        .recover(&channel, StreamPosition::new(10, top.epoch.clone()), 100)
        .await
        .expect("recover at top");
    assert!(none_missed.recovered && none_missed.publications.is_empty());
    let too_many = s
        .recover(&channel, StreamPosition::new(0, top.epoch.clone()), 3)
        .await
        .expect("recover over limit");
    assert!(
        !too_many.recovered,
        "more missed than the limit is not recovered"
    );
    let wrong_epoch = s
        .recover(&channel, StreamPosition::new(4, "not-the-epoch"), 100)
        .await
        .expect("recover wrong epoch");
    assert!(!wrong_epoch.recovered);
    assert_eq!(wrong_epoch.top.offset, 10);
    let from_future = s
        .recover(&channel, StreamPosition::new(11, top.epoch.clone()), 100)
        .await
        .expect("recover from the future");
    assert!(
        !from_future.recovered,
        "a position beyond the top is not recoverable"
    );
}

/// Trimmed history cannot recover what was trimmed, and says so.
pub async fn trimmed_history_is_not_recovered(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    if !s.capabilities().history {
        eprintln!(
            "SKIPPED trimmed_history_is_not_recovered: {} declares no history",
            s.name()
        );
        return;
    }
    let channel = unique("trim");
    let small = PublishOptions {
        history_size: 5,
        history_ttl: Duration::from_secs(60),
    };
    let mut epoch = None;
    for i in 0..12 {
        let pos = s
            .publish(&channel, Bytes::from(format!("{i}")), &small)
            .await
            .expect("publish");
        epoch = Some(pos.epoch);
    }
    let epoch = epoch.expect("epoch");
    let lost = s
        .recover(&channel, StreamPosition::new(2, epoch.clone()), 100)
        .await
        .expect("recover");
    assert!(!lost.recovered, "offsets 3..7 were trimmed");
    let kept = s
        .recover(&channel, StreamPosition::new(7, epoch.clone()), 100)
        .await
        .expect("recover");
    assert!(kept.recovered);
    assert_eq!(
        kept.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        vec![8, 9, 10, 11, 12]
    );
}

/// When a channel's history expires, the epoch changes and old positions are not
/// recoverable.
pub async fn epoch_changes_when_history_expires(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    if !s.capabilities().history {
        eprintln!(
            "SKIPPED epoch_changes_when_history_expires: {} declares no history",
            s.name()
        );
        return;
    }
    let channel = unique("ttl");
    let short = PublishOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(1),
    };
    let pos = s
        .publish(&channel, Bytes::from_static(b"a"), &short)
        .await
        .expect("publish");
    sleep(Duration::from_millis(2500)).await;
    let page = s
        .recover(&channel, pos.clone(), 100)
        .await
        .expect("recover");
    assert!(!page.recovered, "expired history is not recovered");
    assert_ne!(page.top.epoch, pos.epoch, "a new epoch after history loss");
    let next = s
        .publish(&channel, Bytes::from_static(b"b"), &short)
        .await
        .expect("publish after expiry");
    assert_eq!(next.epoch, page.top.epoch);
    assert_eq!(next.offset, 1, "a new epoch counts from 1");
}

/// Registered instances are listed until unregistered or their TTL lapses.
pub async fn instance_registry_expires(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let a = unique("inst-a");
    let b = unique("inst-b");
    register(s.as_ref(), &a).await;
    s.register_instance(
        &InstanceInfo {
            id: b.clone(),
            address: "127.0.0.1:2".into(),
            connections: 0,
            cores: 0,
            updated_at_ms: now_ms(),
        },
        Duration::from_secs(1),
    )
    .await
    .expect("register b");
    let listed = s.instances().await.expect("instances");
    let info = listed.iter().find(|i| i.id == a).expect("a listed");
    assert_eq!((info.connections, info.cores), (3, 1));
    assert!(listed.iter().any(|i| i.id == b));
    sleep(Duration::from_millis(2500)).await;
    let listed = s.instances().await.expect("instances");
    assert!(listed.iter().any(|i| i.id == a));
    assert!(!listed.iter().any(|i| i.id == b), "b expired");
    s.unregister_instance(&a).await.expect("unregister");
    assert!(!s.instance_is_live(&a).await.expect("live?"));
}

/// Of many contending owners exactly one gets a lease; only the owner renews or
/// releases it; an expired lease can be taken by another.
pub async fn lease_exclusive_under_contention(backend: &dyn TestBackend) {
    let key = Arc::new(unique("core"));
    let mut tasks = Vec::new();
    for n in 0..16 {
        let s = backend.connect().await;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("owner-{n}");
            let outcome = s
                .acquire_lease(&key, &owner, Duration::from_secs(2))
                .await
                .expect("acquire");
            (owner, outcome)
        }));
    }
    let mut winners = Vec::new();
    let mut held_by = HashSet::new();
    for t in tasks {
        match t.await.expect("task") {
            (owner, LeaseOutcome::Acquired) => winners.push(owner),
            (_, LeaseOutcome::HeldBy(h)) => {
                held_by.insert(h);
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner, got {winners:?}");
    let winner = &winners[0];
    assert!(held_by.iter().all(|h| h == winner), "losers see the winner");
    let s = backend.connect().await;
    assert_eq!(
        s.lease_owner(&key).await.expect("owner").as_ref(),
        Some(winner)
    );
    assert!(
        !s.renew_lease(&key, "intruder", Duration::from_secs(2))
            .await
            .expect("renew")
    );
    assert!(!s.release_lease(&key, "intruder").await.expect("release"));
    assert!(
        s.renew_lease(&key, winner, Duration::from_secs(1))
            .await
            .expect("renew")
    );
    assert_eq!(
        s.acquire_lease(&key, winner, Duration::from_secs(1))
            .await
            .expect("reacquire"),
        LeaseOutcome::Acquired,
        "the owner re-acquiring renews"
    );
    let listed = s.leases(&key).await.expect("leases");
    assert_eq!(listed, vec![(key.to_string(), winner.clone())]);
    sleep(Duration::from_millis(2000)).await;
    assert_eq!(s.lease_owner(&key).await.expect("owner"), None, "expired");
    assert_eq!(
        s.acquire_lease(&key, "late", Duration::from_secs(5))
            .await
            .expect("acquire"),
        LeaseOutcome::Acquired
    );
    assert!(s.release_lease(&key, "late").await.expect("release"));
    assert_eq!(s.lease_owner(&key).await.expect("owner"), None);
}

/// Presence lists live connections; entries of an instance that left vanish.
pub async fn presence_follows_instances(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let channel = unique("presence");
    let a = unique("inst-a");
    let b = unique("inst-b");
    register(s.as_ref(), &a).await;
    register(s.as_ref(), &b).await;
    let entry = |client: &str, user: Option<&str>, instance: &str| PresenceEntry {
        client: client.into(),
        user: user.map(Into::into),
        instance: instance.into(),
    };
    s.presence_add(&channel, &entry("c1", Some("alice"), &a))
        .await
        .expect("add");
    s.presence_add(&channel, &entry("c2", None, &b))
        .await
        .expect("add");
    s.presence_add(&channel, &entry("c3", Some("bob"), &b))
        .await
        .expect("add");
    let mut got = s.presence(&channel).await.expect("presence");
    got.sort();
    assert_eq!(
        got,
        vec![
            entry("c1", Some("alice"), &a),
            entry("c2", None, &b),
            entry("c3", Some("bob"), &b)
        ]
    );
    s.presence_remove(&channel, "c2").await.expect("remove");
    s.unregister_instance(&b).await.expect("unregister b");
    let got = s.presence(&channel).await.expect("presence");
    assert_eq!(
        got,
        vec![entry("c1", Some("alice"), &a)],
        "b's entries are gone"
    );
    assert!(
        s.presence(&unique("empty"))
            .await
            .expect("presence")
            .is_empty()
    );
}

/// Session records are stored, replaced, deleted and expire.
pub async fn sessions_expire(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let id = unique("sess");
    assert_eq!(s.session_get(&id).await.expect("get"), None);
    s.session_put(&id, Bytes::from_static(b"one"), Duration::from_secs(30))
        .await
        .expect("put");
    s.session_put(&id, Bytes::from_static(b"two"), Duration::from_secs(1))
        .await
        .expect("put");
    assert_eq!(
        s.session_get(&id).await.expect("get"),
        Some(Bytes::from_static(b"two"))
    );
    sleep(Duration::from_millis(2200)).await;
    assert_eq!(s.session_get(&id).await.expect("get"), None, "expired");
    s.session_put(&id, Bytes::from_static(b"three"), Duration::from_secs(30))
        .await
        .expect("put");
    s.session_delete(&id).await.expect("delete");
    assert_eq!(s.session_get(&id).await.expect("get"), None);
}

/// While the backend is down, calls fail within 5 s (never hang) and the feed
/// says it is interrupted and not live; when it is back, the feed resumes by
/// itself, topics are re-subscribed, and publishing works again.
pub async fn survives_backend_restart(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    if !s.capabilities().survives_backend_restart {
        eprintln!(
            "SKIPPED survives_backend_restart: {} declares it cannot",
            s.name()
        );
        return;
    }
    let channel = unique("restart");
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel(channel.as_str())])
        .await
        .expect("subscribe");
    assert!(feed.control.is_live());
    if !backend.stop().await {
        eprintln!("SKIPPED survives_backend_restart: the harness cannot stop this backend");
        return;
    }
    next_event_matching(&mut feed, |e| *e == FeedEvent::Interrupted, "Interrupted").await;
    assert!(
        !feed.control.is_live(),
        "not live while the backend is down"
    );
    let started = Instant::now();
    let err = s
        .publish(&channel, Bytes::from_static(b"lost?"), &opts())
        .await
        .expect_err("publish must fail while the backend is down");
    assert!(err.is_unavailable(), "down means unavailable, got {err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "failed within 5 s, took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert!(s.ping().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "ping must not hang"
    );
    backend.start().await;
    next_event_matching(&mut feed, |e| *e == FeedEvent::Resumed, "Resumed").await;
    assert!(feed.control.is_live());
    // The same handle works again without being recreated.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pos = loop {
        match s
            .publish(&channel, Bytes::from_static(b"after"), &opts())
            .await
        {
            Ok(pos) => break pos,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish still failing 30 s after restart: {e}"),
        }
    };
    let p = next_publication(&mut feed).await;
    assert_eq!(p.offset, pos.offset, "the resumed feed delivers again");
    assert_eq!(p.payload, Bytes::from_static(b"after"));
    // History answers again too.
    let page = s
        .history(&channel, &HistoryRequest::default())
        .await
        .expect("history after restart");
    assert_eq!(page.top, pos);
}

/// Runs every check in sequence (for backends that prefer one test).
pub async fn run_all(backend: &dyn TestBackend) {
    ping_answers(backend).await;
    delivery_in_order(backend).await;
    feed_gets_only_its_topics(backend).await;
    unsubscribe_stops_delivery(backend).await;
    two_instances_share_one_backend(backend).await;
    concurrent_publishers_get_gap_free_offsets(backend).await;
    history_recovers_missed(backend).await;
    trimmed_history_is_not_recovered(backend).await;
    epoch_changes_when_history_expires(backend).await;
    instance_registry_expires(backend).await;
    lease_exclusive_under_contention(backend).await;
    presence_follows_instances(backend).await;
    sessions_expire(backend).await;
    survives_backend_restart(backend).await;
}

/// Generates one `#[tokio::test]` per conformance check. `$backend` is an
/// expression evaluating to a future of a [`TestBackend`]; it is evaluated once
/// per test, so each test may get its own backend process.
///
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
/// dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!(@each $backend;
            ping_answers,
            delivery_in_order,
            feed_gets_only_its_topics,
            unsubscribe_stops_delivery,
            two_instances_share_one_backend,
            concurrent_publishers_get_gap_free_offsets,
            history_recovers_missed,
            trimmed_history_is_not_recovered,
            epoch_changes_when_history_expires,
            instance_registry_expires,
            lease_exclusive_under_contention,
            presence_follows_instances,
            sessions_expire,
            survives_backend_restart
        );
    };
    (@each $backend:expr; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $backend.await;
                $crate::$check(&backend).await;
            }
        )+
    };
}
