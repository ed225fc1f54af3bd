//! Reads the scaler feed and dispatches what it yields.
//!
//! A publication arrives once per instance; it is encoded here once and the
//! same frame is fanned out to every local subscriber. After the feed was
//! interrupted or overflowed, a gap check ([`super::gaps`]) runs.

use super::{Hub, peers::PeerMessage};
use crate::{
    mailbox::{Mailbox, Outbound, SharedPublication},
    metrics::Metrics,
    protocol,
};
use scaled_sockets_scaler::{FeedEvent, StreamPosition, Topic};
use std::sync::{Arc, Weak, atomic::Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most feed events dispatched before the connections they reached are woken.
const BATCH_EVENTS: usize = 64;

/// Reads the feed and dispatches: publications and user/session frames to local
/// members, instance messages to their handler, and after an interruption a gap
/// check of every subscribed channel.
///
/// Publications that are already waiting in the feed are dispatched as one
/// batch (up to [`BATCH_EVENTS`]): queued to every member first, then each
/// member woken once, so a connection drains and writes the whole batch with
/// one wake-up and one socket write rather than one per publication. The batch
/// only ever holds what had already arrived: nothing waits for more.
pub(super) async fn run_feed(
    hub: Weak<Hub>,
    mut events: mpsc::Receiver<FeedEvent>,
    shutdown: CancellationToken,
) {
    let mut wakes: Vec<Arc<Mailbox>> = Vec::new();
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let mut next = Some(first);
        let mut dispatched = 0;
        while let Some(event) = next.take() {
            dispatch(&hub, event, &mut wakes);
            dispatched += 1;
            if dispatched < BATCH_EVENTS {
                next = events.try_recv().ok();
            }
        }
        for conn in wakes.drain(..) {
            conn.wake();
        }
        if wakes.capacity() > 4096 {
            wakes = Vec::new();
        }
    }
}

/// Dispatches one feed event. Publications are queued without waking their
/// subscribers, which are listed in `wakes`.
fn dispatch(hub: &Arc<Hub>, event: FeedEvent, wakes: &mut Vec<Arc<Mailbox>>) {
    match event {
        FeedEvent::Publication(p) => {
            Metrics::inc(&hub.metrics.feed_publications_total);
            let Ok(data) = std::str::from_utf8(&p.payload) else {
                tracing::error!(channel = %p.channel, "publication payload is not UTF-8 JSON; dropped");
                return;
            };
            // Encoded once, shared by every local subscriber.
            let shared = Arc::new(SharedPublication {
                frame: protocol::message(&p.channel, data, p.offset, &p.epoch).into(),
                channel: p.channel.clone(),
                offset: p.offset,
                epoch: p.epoch,
            });
            let topic = Topic::Channel(p.channel);
            let top = StreamPosition {
                offset: shared.offset,
                epoch: shared.epoch.clone(),
            };
            hub.fan_out_deferred(
                &topic,
                Some(top),
                || Outbound::Publication(shared.clone()),
                wakes,
            );
        }
        FeedEvent::Message { topic, payload } => match &topic {
            Topic::Instance(_) => match serde_json::from_slice::<PeerMessage>(&payload) {
                // In arrival order, on the dispatcher: core messages
                // must keep their order (the sink never blocks).
                Ok(PeerMessage::Core { body }) => hub.deliver_core(body),
                // Handled off the dispatcher: an ask may wait for a client.
                Ok(message) => {
                    let hub = hub.clone();
                    tokio::spawn(async move { hub.handle_peer_message(message).await });
                }
                Err(e) => tracing::warn!(error = %e, "undecodable instance message dropped"),
            },
            Topic::User(_) | Topic::Session(_) => {
                let Ok(frame) = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(payload) else {
                    tracing::warn!(?topic, "non-UTF-8 frame dropped");
                    return;
                };
                let frame = Arc::new(frame);
                hub.fan_out(&topic, || Outbound::Shared(frame.clone()));
            }
            Topic::Channel(_) => {}
        },
        FeedEvent::Interrupted => {
            Metrics::inc(&hub.metrics.feed_interruptions_total);
            tracing::warn!("scaler feed interrupted; live delivery paused until it resumes");
        }
        FeedEvent::Resumed | FeedEvent::Overflowed { .. } => {
            if let FeedEvent::Overflowed { dropped } = event {
                hub.metrics
                    .feed_dropped_total
                    .fetch_add(dropped, Ordering::Relaxed);
                tracing::warn!(dropped, "scaler feed overflowed; repairing from history");
            } else {
                tracing::info!("scaler feed resumed; checking channels for gaps");
            }
            let resumed = matches!(event, FeedEvent::Resumed);
            if resumed {
                // Before any publication that follows the resume: hold
                // live delivery until the gap check, so offsets a rolled
                // back backend uses again are not taken for duplicates.
                hub.hold_subscriptions();
            }
            // A backend that resumed may have restarted empty: presence
            // entries are written again with the check.
            hub.request_gap_check(resumed, true);
        }
    }
}
