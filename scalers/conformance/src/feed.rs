//! Feeds: delivery, order, topic selection, several instances on one backend.

use crate::{EVENT_WAIT, TestBackend, assert_quiet, next_publication, opts, unique};
use bytes::Bytes;
use scaled_sockets_scaler::{FeedEvent, Topic};
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::time::{Instant, timeout};

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
