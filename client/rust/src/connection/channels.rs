//! Per-channel subscription state: local subscribers, the pending
//! `subscribe`, the last delivered position, and delivery in offset order
//! without gaps or duplicates (resynchronised by `reply` and `subscribed`).

use std::borrow::Cow;
use std::collections::HashSet;

use scaled_sockets_protocol::{ClientFrame, Reply, SubscriptionRequest};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace};

use super::conn::{Conn, Exit, Pending};
use super::{SubInfo, Task};
use crate::error::Error;
use crate::position::Position;
use crate::types::{Event, Message};

/// One local [`Subscription`](crate::Subscription) stream of a channel.
pub(super) struct Subscriber {
    pub(super) id: u64,
    pub(super) tx: mpsc::UnboundedSender<Message>,
}

/// Where a channel's subscription stands on the current connection.
pub(super) enum ChanState {
    /// A `subscribe` is in flight.
    Pending {
        id: u64,
        waiters: Vec<oneshot::Sender<Result<SubInfo, Error>>>,
        /// Messages that arrived before the answer.
        buffer: Vec<Message>,
        requested: Option<Position>,
    },
    Active {
        last: Position,
    },
}

/// A subscribed channel: its local streams and its state.
pub(super) struct Channel {
    pub(super) subscribers: Vec<Subscriber>,
    pub(super) state: ChanState,
}

impl Channel {
    /// Hands `msg` to every live subscriber. Returns true when the last
    /// subscriber turned out to be gone.
    pub(super) fn fanout(&mut self, msg: Message) -> bool {
        if self.subscribers.is_empty() {
            return false;
        }
        let last = self.subscribers.len() - 1;
        let mut msg = Some(msg);
        let mut i = 0;
        self.subscribers.retain(|s| {
            let m = if i == last {
                msg.take().expect("taken once")
            } else {
                msg.clone().expect("present until last")
            };
            i += 1;
            s.tx.send(m).is_ok()
        });
        self.subscribers.is_empty()
    }
}

impl Task {
    pub(super) fn subscription_positions(&self) -> Vec<SubscriptionRequest> {
        self.channels
            .iter()
            .filter_map(|(channel, ch)| match &ch.state {
                ChanState::Active { last } => Some(SubscriptionRequest {
                    channel: channel.clone(),
                    offset: Some(last.offset),
                    epoch: Some(last.epoch.clone()),
                }),
                ChanState::Pending { .. } => None,
            })
            .collect()
    }

    /// Removes one subscriber; true when it was the channel's last one.
    pub(super) fn remove_subscriber(&mut self, channel: &str, sub_id: u64) -> bool {
        let Some(ch) = self.channels.get_mut(channel) else {
            return false;
        };
        let before = ch.subscribers.len();
        ch.subscribers.retain(|s| s.id != sub_id);
        before != ch.subscribers.len() && ch.subscribers.is_empty()
    }

    pub(super) async fn unsubscribe_stale(
        &mut self,
        conn: &mut Conn,
        channels: HashSet<String>,
    ) -> Result<(), Exit> {
        for channel in channels {
            if self.channels.contains_key(&channel) {
                continue;
            }
            self.send_unsubscribe(conn, channel, None).await?;
        }
        Ok(())
    }

    pub(super) async fn send_unsubscribe(
        &mut self,
        conn: &mut Conn,
        channel: String,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Result<(), Exit> {
        let id = conn.next_id();
        conn.send(&ClientFrame::Unsubscribe {
            id,
            channel: Cow::Borrowed(&channel),
        })
        .await?;
        self.unsubscribing.insert(channel.clone());
        conn.pending
            .insert(id, Pending::Unsubscribe { channel, done });
        Ok(())
    }

    pub(super) async fn on_subscribe_answer(
        &mut self,
        conn: &mut Conn,
        channel: String,
        id: u64,
        answer: Result<Reply, Error>,
    ) -> Result<(), Exit> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        if !matches!(ch.state, ChanState::Pending { id: pid, .. } if pid == id) {
            return Ok(());
        }
        let answer = answer.and_then(|r| match (r.offset, r.epoch) {
            (Some(offset), Some(epoch)) => Ok((offset, epoch, r.recovered)),
            _ => Err(Error::Protocol(
                "subscribe reply without offset or epoch".into(),
            )),
        });
        let (offset, epoch, recovered) = match answer {
            Ok(v) => v,
            Err(e) => {
                if let Some(Channel {
                    state: ChanState::Pending { waiters, .. },
                    ..
                }) = self.channels.remove(&channel)
                {
                    for w in waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
                return Ok(());
            }
        };
        let placeholder = ChanState::Active {
            last: Position::new(epoch.clone(), offset),
        };
        let ChanState::Pending {
            waiters,
            buffer,
            requested,
            ..
        } = std::mem::replace(&mut ch.state, placeholder)
        else {
            unreachable!("checked above");
        };
        let mut last = Position::resync(requested, &epoch, offset, recovered);
        for w in waiters {
            let _ = w.send(Ok(SubInfo {
                offset,
                epoch: epoch.clone(),
                recovered,
            }));
        }
        // Messages that raced ahead of the answer: only those after the
        // position it establishes are new.
        for msg in buffer {
            if last.advance(&msg.epoch, msg.offset) {
                ch.fanout(msg);
            }
        }
        ch.state = ChanState::Active { last };
        ch.subscribers.retain(|s| !s.tx.is_closed());
        if ch.subscribers.is_empty() {
            // Every caller gave up (timeout, drop) before the answer.
            self.channels.remove(&channel);
            self.send_unsubscribe(conn, channel, None).await?;
        }
        Ok(())
    }

    pub(super) fn on_subscribed(
        &mut self,
        channel: String,
        offset: u64,
        epoch: String,
        recovered: Option<bool>,
    ) {
        debug!(%channel, offset, %epoch, ?recovered, "subscribed");
        match self.channels.get_mut(&channel) {
            Some(ch) => {
                if let ChanState::Active { last } = &mut ch.state {
                    let old = last.clone();
                    *last = Position::resync(Some(old), &epoch, offset, recovered);
                }
            }
            None if self.unsubscribing.contains(&channel) => {}
            None => {
                // A subscription the server made: track it so it survives
                // reconnects; `subscribe` attaches a stream to it.
                self.channels.insert(
                    channel.clone(),
                    Channel {
                        subscribers: Vec::new(),
                        state: ChanState::Active {
                            last: Position::new(epoch.clone(), offset),
                        },
                    },
                );
            }
        }
        self.shared.emit(Event::Subscribed {
            channel,
            offset,
            epoch,
            recovered: recovered.unwrap_or(true),
        });
    }

    pub(super) async fn deliver(&mut self, conn: &mut Conn, msg: Message) -> Result<(), Exit> {
        let Some(ch) = self.channels.get_mut(&msg.channel) else {
            if !self.unsubscribing.contains(&msg.channel) {
                // A subscription nobody here knows about (e.g. restored with
                // a resumed session after its stream was dropped).
                debug!(channel = %msg.channel, "message for an unknown channel: unsubscribing");
                self.send_unsubscribe(conn, msg.channel, None).await?;
            }
            return Ok(());
        };
        match &mut ch.state {
            ChanState::Pending { buffer, .. } => buffer.push(msg),
            ChanState::Active { last } => {
                if !last.advance(&msg.epoch, msg.offset) {
                    trace!(channel = %msg.channel, offset = msg.offset, "duplicate dropped");
                    return Ok(());
                }
                let channel = msg.channel.clone();
                if ch.fanout(msg) {
                    self.channels.remove(&channel);
                    self.send_unsubscribe(conn, channel, None).await?;
                }
            }
        }
        Ok(())
    }
}
