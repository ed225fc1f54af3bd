//! A connection's channel subscriptions: positions, ordered delivery, and
//! gap repair.
//!
//! Ordering and recovery are per subscription: the connection remembers the
//! last `(epoch, offset)` it delivered on each channel and drops duplicates.
//! When it sees a gap (an offset jump, an epoch change, or a gap check after
//! the scaler feed was interrupted) it buffers live publications, replays the
//! missing ones from history, then releases the buffer. If history no longer
//! holds them, the client gets `subscribed` with `recovered:false`. Nothing is
//! skipped silently.

use super::Conn;
use crate::{
    error::{CommandError, ErrorCode},
    hub::{Hub, ReadTicket, bounded},
    mailbox::{ConnEvent, Outbound, SharedPage, SharedPublication},
    metrics::Metrics,
    protocol::{self, SubscriptionRequest},
};
use scaled_sockets_scaler::{PresenceEntry, StreamPosition, Topic};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

#[derive(Debug)]
pub(super) struct ChannelSub {
    pub(super) generation: u64,
    /// Last position delivered to the client; `None` until subscribed.
    pub(super) position: Option<StreamPosition>,
    /// `Some` while subscribing or repairing a gap: live publications wait here.
    // Boxed on purpose: `None` (the usual case) then costs 8 bytes, not 24.
    #[allow(clippy::box_collection)]
    pub(super) buffer: Option<Box<Vec<Arc<SharedPublication>>>>,
    /// Check for a gap again once the current repair is done.
    pub(super) recheck: bool,
    /// Failed history reads in a row (for the retry backoff).
    pub(super) retries: u8,
    /// Buffering since the feed resumed, until the next gap check.
    pub(super) held: bool,
}

impl Conn {
    pub(super) fn check_subscribe(&self, channel: &str) -> Result<(), CommandError> {
        if !self.identity.subscribe.allows(channel) {
            return Err(CommandError::forbidden(
                "you may not subscribe to this channel",
            ));
        }
        if !self.subs.contains_key(channel) && self.subs.len() >= self.hub.config.max_subscriptions
        {
            return Err(CommandError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    self.hub.config.max_subscriptions
                ),
            ));
        }
        Ok(())
    }

    /// A subscription the server makes (connect list, session restore, app code):
    /// answered with a `subscribed` push, or `unsubscribed` with the reason.
    pub(super) fn server_subscribe(
        &mut self,
        request: SubscriptionRequest,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if let Err(e) = protocol::validate_name(&request.channel, "channel") {
            out.push(protocol::unsubscribed(&request.channel, &format!("bad_request: {e}")).into());
            return;
        }
        if self.subs.contains_key(request.channel.as_str()) {
            return;
        }
        match self.check_subscribe(&request.channel) {
            Ok(()) => self.start_subscription(None, request),
            Err(e) => out.push(
                protocol::unsubscribed(&request.channel, &format!("{}: {}", e.code, e.message))
                    .into(),
            ),
        }
    }

    pub(super) fn start_subscription(&mut self, id: Option<u64>, request: SubscriptionRequest) {
        let channel: Arc<str> = request.channel.as_str().into();
        let generation = self.next_generation;
        self.next_generation += 1;
        self.subs.insert(
            channel.clone(),
            ChannelSub {
                generation,
                position: None,
                buffer: Some(Box::default()),
                recheck: false,
                retries: 0,
                held: false,
            },
        );
        // A recovery position: offset with its epoch (an offset without an epoch
        // cannot be checked, so it recovers nothing: `recovered:false`).
        let since = match (request.offset, request.epoch) {
            (None, None) => None,
            (offset, epoch) => Some(StreamPosition::new(
                offset.unwrap_or(0),
                epoch.unwrap_or_default(),
            )),
        };
        let hub = self.hub.clone();
        let handle = self.handle.clone();
        let (previous, done) = self.presence_turn();
        tokio::spawn(async move {
            let timeout = hub.config.scaler_timeout;
            // This connection's presence writes happen in order: a remove of
            // an earlier subscription to this channel must not land after
            // this add (they may travel on different backend connections).
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            // One bound for the whole subscription (not per call), so a dead
            // backend is answered `unavailable` within the documented 5 s.
            let steps = async {
                hub.join_topic(&Topic::Channel(channel.clone()), &handle)
                    .await?;
                let ticket = hub.history_ticket();
                let entry = PresenceEntry {
                    client: handle.client.to_string(),
                    user: handle.user.as_deref().map(str::to_owned),
                    instance: hub.id.to_string(),
                };
                // The history is read after the join (so no publication falls
                // between the position it gives and the feed), beside the
                // presence write: one backend round trip instead of two.
                let (added, history) = tokio::join!(
                    hub.scaler.presence_add(&channel, &entry),
                    hub.read_history(channel.clone(), since.clone(), ticket)
                );
                added?;
                Ok(history)
            };
            let result = match bounded(timeout, steps).await {
                Ok(history) => history,
                Err(e) => Err(CommandError::from(e)),
            };
            let delivered = handle.push(Outbound::Event(Box::new(ConnEvent::Subscribed {
                id,
                channel: channel.clone(),
                generation,
                since,
                result,
            })));
            if !delivered {
                // The connection closed (its queue refuses items) while this
                // task waited on the backend: its cleanup may have run before
                // the join above, so undo it here. Nothing of a closed
                // connection may remain in the hub or the backend.
                hub.leave_topic(&Topic::Channel(channel.clone()), handle.key);
                remove_presence(&hub, &channel, &handle.client).await;
            }
            let _ = done.send(());
        });
    }

    pub(super) fn end_subscription(&mut self, channel: &str) {
        if self.subs.remove(channel).is_some() {
            self.leave_channel(channel);
        }
    }

    pub(super) fn leave_channel(&mut self, channel: &str) {
        self.hub
            .leave_topic(&Topic::channel(channel), self.handle.key);
        let hub = self.hub.clone();
        let channel = channel.to_owned();
        let client = self.handle.client.clone();
        let (previous, done) = self.presence_turn();
        tokio::spawn(async move {
            // After this connection's earlier presence writes (see
            // `presence_turn`), so the remove cannot overtake an add.
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            remove_presence(&hub, &channel, &client).await;
            let _ = done.send(());
        });
    }

    /// Answers the subscribes that waited for this channel's subscription to
    /// be set up: with its position, or its error.
    fn answer_waiting_subscribes(
        &mut self,
        channel: &Arc<str>,
        result: &SharedPage,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some(rare) = self
            .rare
            .as_mut()
            .filter(|r| !r.waiting_subscribes.is_empty())
        else {
            return;
        };
        let waiting = std::mem::take(&mut rare.waiting_subscribes);
        for (waited, id) in waiting {
            if waited != *channel {
                self.rare().waiting_subscribes.push((waited, id));
                continue;
            }
            self.pending.remove(&id);
            let frame = match result {
                Ok(page) => protocol::reply(id)
                    .u64("offset", page.top.offset)
                    .str("epoch", &page.top.epoch)
                    .finish(),
                Err(e) => protocol::error(Some(id), e.code.clone(), &e.message),
            };
            out.push(frame.into());
        }
    }

    /// Orders this connection's presence writes: returns the completion of
    /// the previous one (to await first) and the signal of this one.
    fn presence_turn(&mut self) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let previous = self.presence_chain.take();
        let (done, next) = oneshot::channel();
        self.presence_chain = Some(next);
        (previous, done)
    }

    pub(super) fn on_publication(&mut self, p: Arc<SharedPublication>, out: &mut Vec<Utf8Bytes>) {
        let limit = self.hub.config.outbound_queue;
        let Some(sub) = self.subs.get_mut(&p.channel) else {
            return;
        };
        if let Some(buffer) = &mut sub.buffer {
            if buffer.len() < limit {
                buffer.push(p);
            } else {
                // Too far behind to buffer: drop and repair again from history.
                sub.recheck = true;
            }
            return;
        }
        if !deliver_live(sub, &p, out) {
            self.start_repair(p.channel.clone(), Some(p));
        }
    }

    pub(super) fn start_repair(
        &mut self,
        channel: Arc<str>,
        first: Option<Arc<SharedPublication>>,
    ) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        let Some(since) = sub.position.clone() else {
            return;
        };
        // Publications held since a resume stay, in order, before `first`.
        let mut buffer = sub.buffer.take().unwrap_or_default();
        buffer.extend(first);
        sub.buffer = Some(buffer);
        sub.held = false;
        sub.recheck = false;
        let generation = sub.generation;
        let hub = self.hub.clone();
        let handle = self.handle.clone();
        // A retry after a failed read waits first (with backoff and jitter),
        // so a backend that is down is not hammered.
        let delay = retry_delay(sub.retries);
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = hub
                .read_history(channel.clone(), Some(since), ReadTicket::ANY)
                .await;
            handle.push(Outbound::Event(Box::new(ConnEvent::Repaired {
                channel,
                generation,
                result,
            })));
        });
    }

    pub(super) fn on_subscribed(
        &mut self,
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        since: Option<StreamPosition>,
        result: SharedPage,
        out: &mut Vec<Utf8Bytes>,
    ) {
        if let Some(id) = id {
            self.pending.remove(&id);
        }
        let current = self.subs.get(&channel).map(|s| s.generation);
        if current == Some(generation) {
            self.answer_waiting_subscribes(&channel, &result, out);
        } else {
            let gone = Err(CommandError::not_found(
                "unsubscribed before the subscription completed",
            ));
            self.answer_waiting_subscribes(&channel, &gone, out);
        }
        if current != Some(generation) {
            // Unsubscribed meanwhile. Undo what the task did, unless a newer
            // subscription to the channel now relies on it.
            if current.is_none() {
                self.leave_channel(&channel);
            }
            if let Some(id) = id {
                out.push(
                    protocol::error(
                        Some(id),
                        ErrorCode::NotFound,
                        "unsubscribed before the subscription completed",
                    )
                    .into(),
                );
            }
            return;
        }
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                self.subs.remove(&channel);
                self.leave_channel(&channel);
                match id {
                    Some(id) => out.push(protocol::error(Some(id), e.code, &e.message).into()),
                    None => out.push(
                        protocol::unsubscribed(&channel, &format!("{}: {}", e.code, e.message))
                            .into(),
                    ),
                }
                return;
            }
        };
        let recovering = since.is_some();
        // A client ahead of the stream's top in the same epoch saw
        // publications the backend has lost: nothing can be replayed to it.
        let lost = since
            .as_ref()
            .is_some_and(|since| rolled_back(&page.top, since));
        let page_recovered = page.recovered && !lost;
        let recovered = !recovering || page_recovered;
        if recovering {
            if page_recovered {
                Metrics::inc(&self.hub.metrics.recoveries_total);
            } else {
                Metrics::inc(&self.hub.metrics.recovery_failures_total);
            }
        }
        out.push(
            match id {
                Some(id) => {
                    let mut reply = protocol::reply(id)
                        .u64("offset", page.top.offset)
                        .str("epoch", &page.top.epoch);
                    if recovering {
                        reply = reply.bool("recovered", page_recovered);
                    }
                    reply.finish()
                }
                None => protocol::subscribed(&channel, page.top.offset, &page.top.epoch, recovered),
            }
            .into(),
        );
        if recovering && page_recovered {
            for p in &page.publications {
                out.push(encode_replayed(p));
            }
        }
        self.finish_buffering(&channel, page.top.clone(), out);
    }

    pub(super) fn on_repaired(
        &mut self,
        channel: Arc<str>,
        generation: u64,
        result: SharedPage,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        if sub.generation != generation || sub.buffer.is_none() {
            return;
        }
        let Some(from) = sub.position.clone() else {
            return;
        };
        if result.is_ok() {
            sub.retries = 0;
        }
        let position = match result {
            Ok(page) if page.recovered && !rolled_back(&page.top, &from) => {
                Metrics::inc(&self.hub.metrics.recoveries_total);
                for p in page.publications.iter().filter(|p| p.offset > from.offset) {
                    out.push(encode_replayed(p));
                }
                page.top.clone()
            }
            Ok(page) => {
                Metrics::inc(&self.hub.metrics.recovery_failures_total);
                out.push(
                    protocol::subscribed(&channel, page.top.offset, &page.top.epoch, false).into(),
                );
                page.top.clone()
            }
            Err(e) => {
                // History is unreachable. If live publications are waiting, the
                // ones before them are lost for this client: say so, then go on
                // from the first waiting one.
                let first = sub
                    .buffer
                    .as_ref()
                    .and_then(|b| b.first())
                    .map(|p| (p.offset, p.epoch.clone()));
                match first {
                    Some((offset, epoch)) => {
                        tracing::warn!(%channel, error = %e, "gap repair failed; telling the client recovered:false");
                        Metrics::inc(&self.hub.metrics.recovery_failures_total);
                        let position = StreamPosition::new(offset.saturating_sub(1), epoch);
                        out.push(
                            protocol::subscribed(&channel, position.offset, &position.epoch, false)
                                .into(),
                        );
                        position
                    }
                    None => {
                        // A gap may be there (a gap check said so) but nothing
                        // proves it yet: try again, with backoff, until the
                        // read succeeds. On a quiet channel no publication
                        // would ever trigger it.
                        tracing::debug!(%channel, error = %e, "gap repair read failed; retrying");
                        sub.retries = sub.retries.saturating_add(1);
                        sub.recheck = true;
                        from
                    }
                }
            }
        };
        self.finish_buffering(&channel, position, out);
    }

    /// Ends buffering at `position`: releases the waiting live publications in
    /// order (dropping what the client already has) and repairs any further gap.
    pub(super) fn finish_buffering(
        &mut self,
        channel: &Arc<str>,
        position: StreamPosition,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        let mut buffered = sub.buffer.take().map(|b| *b).unwrap_or_default();
        // Live publications of another epoch than the one history just gave
        // can never be delivered in order: keep them and every repair would
        // buffer them again, forever. Dropped, and one more check tells the
        // client (`recovered:false`) if the stream has moved to another epoch.
        let before = buffered.len();
        buffered.retain(|p| p.epoch == position.epoch);
        if buffered.len() != before {
            sub.recheck = true;
        }
        sub.position = Some(position);
        let mut gap_at = None;
        for (i, p) in buffered.iter().enumerate() {
            if !deliver_live(sub, p, out) {
                gap_at = Some(i);
                break;
            }
        }
        if let Some(i) = gap_at {
            let mut rest = buffered.into_iter().skip(i);
            let first = rest.next();
            self.start_repair(channel.clone(), first);
            if let Some(sub) = self.subs.get_mut(channel) {
                if let Some(buffer) = &mut sub.buffer {
                    buffer.extend(rest);
                }
            }
        } else if sub.recheck {
            self.start_repair(channel.clone(), None);
        }
    }
}

/// Writes a live publication if it is the next one. Returns false on a gap
/// (offset jump or epoch change): the caller repairs from history.
fn deliver_live(
    sub: &mut ChannelSub,
    p: &Arc<SharedPublication>,
    out: &mut Vec<Utf8Bytes>,
) -> bool {
    let Some(pos) = sub.position.as_mut() else {
        return true;
    };
    if p.epoch != pos.epoch {
        return false;
    }
    if p.offset <= pos.offset {
        return true; // already delivered (replayed from history): drop the duplicate
    }
    if p.offset != pos.offset + 1 {
        return false;
    }
    pos.offset = p.offset;
    out.push(p.frame.clone());
    true
}

fn encode_replayed(p: &scaled_sockets_scaler::Publication) -> Utf8Bytes {
    let data = std::str::from_utf8(&p.payload).unwrap_or("null");
    protocol::message(&p.channel, data, p.offset, &p.epoch).into()
}

async fn remove_presence(hub: &Hub, channel: &str, client: &str) {
    let remove = hub.scaler.presence_remove(channel, client);
    if let Err(e) = remove.await {
        tracing::debug!(error = %e, "presence remove failed; the entry expires with the instance");
    }
}

/// How long a repair waits after `retries` failed history reads in a row:
/// none at first, then 200 ms doubling up to 10 s, with full jitter so the
/// subscribers of a channel do not retry in step.
fn retry_delay(retries: u8) -> Duration {
    if retries == 0 {
        return Duration::ZERO;
    }
    let cap = Duration::from_millis(200)
        .saturating_mul(1 << retries.min(6))
        .min(Duration::from_secs(10));
    cap.mul_f64(rand::random_range(0.5..1.0))
}

/// True when the stream's `top` is behind `position` in the same epoch: the
/// backend lost publications that were delivered (a restart from a snapshot,
/// a replica promoted with replication lag), and their offsets will be reused.
pub(super) fn rolled_back(top: &StreamPosition, position: &StreamPosition) -> bool {
    top.epoch == position.epoch && top.offset < position.offset
}
