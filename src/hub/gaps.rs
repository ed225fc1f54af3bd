//! Gap checks: is every local subscriber at its channel's top?
//!
//! A check reads each locally subscribed channel's top once and lets every
//! local subscriber compare it with what it delivered; one behind replays from
//! history (or is told `recovered:false`), so a gap is never silent.
//!
//! Checks run after the feed was interrupted or overflowed, and periodically
//! (`gap_check_interval`): live delivery may lose a publication without any
//! signal (NATS delivers at most once), and on a quiet channel no later
//! publication would reveal the gap.
//!
//! Why coalesced: a burst of overflows or resumes must not start a burst of
//! full checks. One check runs at a time; a request meanwhile sets a dirty
//! flag and the running check goes round once more.

use super::{Hub, ReadTicket, lock};
use crate::mailbox::{ConnEvent, Mailbox, Outbound};
use futures_util::StreamExt;
use scaled_sockets_scaler::{PresenceEntry, StreamPosition, Topic};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Channels whose tops are read at once during a check.
const CONCURRENT_READS: usize = 16;

/// The coalescing state of one hub's gap checks.
#[derive(Debug, Default)]
pub(crate) struct GapChecks {
    running: AtomicBool,
    dirty: AtomicBool,
    restore_presence: AtomicBool,
    /// Every member must compare (after a resume or an overflow), not only
    /// the channels whose top moved past what was sent.
    full: AtomicBool,
}

impl Hub {
    /// Tells every connection to hold live delivery until its next gap check.
    pub(crate) fn hold_subscriptions(&self) {
        for conn in lock(&self.conns).values() {
            conn.push(Outbound::Event(Box::new(ConnEvent::Hold)));
        }
    }

    /// Asks for a gap check of every subscribed channel (and, with
    /// `restore_presence`, for this instance's presence entries to be written
    /// again). Returns at once; requests made while a check runs are folded
    /// into one more round.
    ///
    /// A `full` check tells every member of every channel the top (after the
    /// feed resumed or overflowed); a periodic one only the members of
    /// channels whose top moved past what the instance sent them, so a quiet
    /// channel costs one read per period and no connection is woken.
    pub(crate) fn request_gap_check(self: &Arc<Self>, restore_presence: bool, full: bool) {
        let checks = &self.gap_checks;
        if restore_presence {
            checks.restore_presence.store(true, Ordering::SeqCst);
        }
        if full {
            checks.full.store(true, Ordering::SeqCst);
        }
        checks.dirty.store(true, Ordering::SeqCst);
        if checks.running.swap(true, Ordering::SeqCst) {
            return; // the running check will see `dirty`
        }
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                while hub.gap_checks.dirty.swap(false, Ordering::SeqCst) {
                    let presence = hub
                        .gap_checks
                        .restore_presence
                        .swap(false, Ordering::SeqCst);
                    let full = hub.gap_checks.full.swap(false, Ordering::SeqCst);
                    check_gaps(&hub, presence, full).await;
                }
                hub.gap_checks.running.store(false, Ordering::SeqCst);
                // A request between the last swap and here found `running`
                // still set and left: take it over, unless another task did.
                if !hub.gap_checks.dirty.load(Ordering::SeqCst)
                    || hub.gap_checks.running.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
    }
}

async fn check_gaps(hub: &Arc<Hub>, restore_presence: bool, full: bool) {
    let channels = hub.channel_topics();
    futures_util::stream::iter(channels)
        .map(|channel| check_channel(hub, channel, restore_presence, full))
        .buffer_unordered(CONCURRENT_READS)
        .for_each(|()| async {})
        .await;
}

async fn check_channel(hub: &Arc<Hub>, channel: Arc<str>, restore_presence: bool, full: bool) {
    if restore_presence {
        restore_channel_presence(hub, &channel).await;
    }
    let top = match hub
        .read_history(channel.clone(), None, ReadTicket::ANY)
        .await
    {
        Ok(page) => page.top.clone(),
        Err(e) => {
            // Without a top we cannot tell who missed what: every subscriber
            // checks from its own position (and retries while that fails).
            tracing::warn!(%channel, error = %e, "gap check could not read the stream top");
            StreamPosition::new(u64::MAX, "")
        }
    };
    if !full && hub.sent_top(&channel).as_ref() == Some(&top) {
        return; // every member was sent this position already
    }
    let topic = Topic::Channel(channel.clone());
    // A failed read (the sentinel top) is no position to remember.
    let known = (!top.epoch.is_empty()).then(|| top.clone());
    hub.fan_out_at(&topic, known, || {
        Outbound::Event(Box::new(ConnEvent::GapCheck {
            channel: channel.clone(),
            top: top.clone(),
        }))
    });
}

/// A backend that restarted empty lost our presence entries: write them again
/// (idempotent when it kept them).
async fn restore_channel_presence(hub: &Hub, channel: &Arc<str>) {
    let topic = Topic::Channel(channel.clone());
    let members: Vec<Arc<Mailbox>> = lock(&hub.topics)
        .get(&topic)
        .map(|e| e.members.values().cloned().collect())
        .unwrap_or_default();
    for conn in members {
        let entry = PresenceEntry {
            client: conn.client.to_string(),
            user: conn.user.as_deref().map(str::to_owned),
            instance: hub.id.to_string(),
        };
        let add = hub.scaler.presence_add(channel, &entry);
        if let Err(e) = add.await {
            tracing::warn!(%channel, error = %e, "could not restore presence");
            return;
        }
        // Left meanwhile? Then take the entry back out.
        let still = lock(&hub.topics)
            .get(&topic)
            .is_some_and(|e| e.members.contains_key(&conn.key));
        if !still {
            let remove = hub.scaler.presence_remove(channel, &conn.client);
            let _ = remove.await;
        }
    }
}
