//! Backend outages: bounded failures, Interrupted/Resumed, recovery.

use crate::{TestBackend, next_event_matching, next_publication, opts, unique};
use bytes::Bytes;
use scaled_sockets_scaler::{FeedEvent, HistoryRequest, Topic};
use std::time::Duration;
use tokio::time::{Instant, sleep};

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

/// A subscribe that fails because the backend is down leaves nothing behind:
/// once the backend is back and the feed resumed, the topic gets no traffic
/// (callers do not unsubscribe after a failed subscribe, so a topic the feed
/// kept would be delivered, and re-subscribed, for the feed's whole life),
/// while a topic subscribed before the outage is delivered again.
pub async fn failed_subscribe_leaves_nothing(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    if !s.capabilities().survives_backend_restart {
        eprintln!(
            "SKIPPED failed_subscribe_leaves_nothing: {} declares it cannot restart",
            s.name()
        );
        return;
    }
    let kept = unique("kept");
    let failed = unique("failed");
    let mut feed = s.open_feed(&unique("inst")).await.expect("feed");
    feed.control
        .subscribe(&[Topic::channel(kept.as_str())])
        .await
        .expect("subscribe");
    if !backend.stop().await {
        eprintln!("SKIPPED failed_subscribe_leaves_nothing: the harness cannot stop this backend");
        return;
    }
    next_event_matching(&mut feed, |e| *e == FeedEvent::Interrupted, "Interrupted").await;
    let err = feed
        .control
        .subscribe(&[Topic::channel(failed.as_str())])
        .await
        .expect_err("subscribe must fail while the backend is down");
    assert!(err.is_unavailable(), "down means unavailable, got {err:?}");
    backend.start().await;
    next_event_matching(&mut feed, |e| *e == FeedEvent::Resumed, "Resumed").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s
            .publish(&failed, Bytes::from_static(b"unwanted"), &opts())
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish still failing 30 s after restart: {e}"),
        }
    }
    s.publish(&kept, Bytes::from_static(b"wanted"), &opts())
        .await
        .expect("publish");
    let p = next_publication(&mut feed).await;
    assert_eq!(
        (&*p.channel, &p.payload[..]),
        (kept.as_str(), &b"wanted"[..]),
        "the failed subscribe left no topic behind; the earlier one is delivered"
    );
}
