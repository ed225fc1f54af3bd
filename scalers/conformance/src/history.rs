//! Channel streams: offsets, epochs, recovery, trimming and expiry.

use crate::{TestBackend, opts, unique};
use bytes::Bytes;
use scaled_sockets_scaler::{HistoryRequest, PublishOptions, ScalerExt, StreamPosition};
use std::time::Duration;
use tokio::time::sleep;

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

/// The epoch `history` creates for an empty channel lives for the request's
/// `ttl`, not a backend default.
pub async fn history_epoch_uses_request_ttl(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    if !s.capabilities().history {
        eprintln!(
            "SKIPPED history_epoch_uses_request_ttl: {} declares no history",
            s.name()
        );
        return;
    }
    let channel = unique("epoch-ttl");
    let request = HistoryRequest {
        ttl: Duration::from_secs(1),
        ..HistoryRequest::default()
    };
    let first = s.history(&channel, &request).await.expect("history").top;
    assert_eq!(first.offset, 0);
    sleep(Duration::from_millis(2500)).await;
    let second = s.history(&channel, &request).await.expect("history").top;
    assert_ne!(
        first.epoch, second.epoch,
        "the empty stream expired after its ttl"
    );
    let long = HistoryRequest::default();
    let kept = s.history(&channel, &long).await.expect("history").top;
    assert_eq!(kept.epoch, second.epoch);
}

/// `publish_ordered` applies a batch in its order, across channels: offsets
/// follow the batch, history holds the payloads in that order, and an item the
/// backend refuses for its own arguments does not stop the others.
pub async fn ordered_publishes_keep_their_order(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let (a, b) = (unique("ord-a"), unique("ord-b"));
    let items: Vec<(String, Bytes)> = (1..=20)
        .map(|i| {
            let channel = if i % 3 == 0 { &b } else { &a };
            (channel.clone(), Bytes::from(format!("{i}")))
        })
        .collect();
    let results = s.publish_ordered(&items, &opts()).await;
    assert_eq!(results.len(), items.len(), "one result per item");
    let (mut next_a, mut next_b) = (1, 1);
    for ((channel, _), result) in items.iter().zip(&results) {
        let pos = result.as_ref().expect("ordered publish");
        let next = if channel == &a {
            &mut next_a
        } else {
            &mut next_b
        };
        assert_eq!(pos.offset, *next, "offsets follow the batch's order");
        *next += 1;
    }
    if s.capabilities().history {
        let top = s.stream_top(&a).await.expect("top");
        let page = s
            .recover(&a, StreamPosition::new(0, top.epoch.clone()), 100)
            .await
            .expect("recover");
        let payloads: Vec<String> = page
            .publications
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        let sent: Vec<String> = (1..=20)
            .filter(|i| i % 3 != 0)
            .map(|i| i.to_string())
            .collect();
        assert_eq!(payloads, sent, "history holds the batch in order");
    }
    let mixed = vec![
        (a.clone(), Bytes::from_static(b"x")),
        (String::new(), Bytes::from_static(b"bad channel")),
        (a.clone(), Bytes::from_static(b"y")),
    ];
    let results = s.publish_ordered(&mixed, &opts()).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_err(), "an empty channel name is refused");
    assert!(
        results[2].is_ok(),
        "a refused argument does not stop the items after it: {:?}",
        results[2]
    );
}
