//! Reads the scaler feed and dispatches what it yields.
//!
//! A publication arrives once per instance; it is encoded here once and the
//! same frame is fanned out to every local subscriber. After the feed was
//! interrupted or overflowed, every subscribed channel is checked against its
//! stream's top, so a gap is repaired or reported, never silent.

use super::{Hub, bounded, lock, peers::PeerMessage};
use crate::{
    mailbox::{ConnEvent, Mailbox, Outbound, SharedPublication},
    metrics::Metrics,
    protocol,
};
use scaled_sockets_scaler::{FeedEvent, PresenceEntry, ScalerExt, StreamPosition, Topic};
use std::sync::{Arc, Weak, atomic::Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reads the feed and dispatches: publications and user/session frames to local
/// members, instance messages to their handler, and after an interruption a gap
/// check of every subscribed channel.
pub(super) async fn run_feed(
    hub: Weak<Hub>,
    mut events: mpsc::Receiver<FeedEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match event {
            FeedEvent::Publication(p) => {
                Metrics::inc(&hub.metrics.feed_publications_total);
                let Ok(data) = std::str::from_utf8(&p.payload) else {
                    tracing::error!(channel = %p.channel, "publication payload is not UTF-8 JSON; dropped");
                    continue;
                };
                // Encoded once, shared by every local subscriber.
                let shared = Arc::new(SharedPublication {
                    frame: protocol::message(&p.channel, data, p.offset, &p.epoch).into(),
                    channel: p.channel.clone(),
                    offset: p.offset,
                    epoch: p.epoch,
                });
                let topic = Topic::Channel(p.channel);
                hub.fan_out(&topic, || Outbound::Publication(shared.clone()));
            }
            FeedEvent::Message { topic, payload } => match &topic {
                Topic::Instance(_) => match serde_json::from_slice::<PeerMessage>(&payload) {
                    // Handled off the dispatcher: an ask may wait for a client.
                    Ok(message) => {
                        tokio::spawn(async move { hub.handle_peer_message(message).await });
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable instance message dropped"),
                },
                Topic::User(_) | Topic::Session(_) => {
                    let Ok(frame) = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(payload)
                    else {
                        tracing::warn!(?topic, "non-UTF-8 frame dropped");
                        continue;
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
                let restarted = matches!(event, FeedEvent::Resumed);
                tokio::spawn(check_gaps(hub.clone(), restarted));
            }
        }
    }
}

/// After the feed may have missed publications: reads each subscribed channel's
/// top once and lets every local subscriber compare it with what it delivered.
/// Subscribers behind the top replay from history (or are told
/// `recovered:false`): a gap is never silent.
async fn check_gaps(hub: Arc<Hub>, backend_restarted: bool) {
    for channel in hub.channel_topics() {
        if backend_restarted {
            // A backend that restarted empty lost our presence entries: write
            // them again (idempotent when it kept them).
            let members: Vec<Arc<Mailbox>> = lock(&hub.topics)
                .get(&Topic::Channel(channel.clone()))
                .map(|e| e.members.values().cloned().collect())
                .unwrap_or_default();
            for conn in members {
                let entry = PresenceEntry {
                    client: conn.client.to_string(),
                    user: conn.user.as_deref().map(str::to_owned),
                    instance: hub.id.to_string(),
                };
                let add = hub.scaler.presence_add(&channel, &entry);
                if let Err(e) = bounded(hub.config.scaler_timeout, add).await {
                    tracing::warn!(%channel, error = %e, "could not restore presence");
                    break;
                }
                // Left meanwhile? Then take the entry back out.
                let still = lock(&hub.topics)
                    .get(&Topic::Channel(channel.clone()))
                    .is_some_and(|e| e.members.contains_key(&conn.key));
                if !still {
                    let _ = bounded(
                        hub.config.scaler_timeout,
                        hub.scaler.presence_remove(&channel, &conn.client),
                    )
                    .await;
                }
            }
        }
        let top = bounded(hub.config.scaler_timeout, hub.scaler.stream_top(&channel)).await;
        let top = match top {
            Ok(top) => top,
            Err(e) => {
                // Without a top we cannot tell who missed what: check from each
                // subscriber's own position instead.
                tracing::warn!(%channel, error = %e, "gap check could not read the stream top");
                StreamPosition::new(u64::MAX, "")
            }
        };
        let topic = Topic::Channel(channel.clone());
        hub.fan_out(&topic, || {
            Outbound::Event(Box::new(ConnEvent::GapCheck {
                channel: channel.clone(),
                top: top.clone(),
            }))
        });
    }
}
