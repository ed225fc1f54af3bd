//! The streams a [`Client`](crate::Client) hands out: [`Subscription`]
//! (one channel's messages) and [`Events`].

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{Command, Control};
use crate::error::Result;
use crate::types::{Event, Message};

/// The messages of one channel, in offset order. Created by
/// [`Client::subscribe`](crate::Client::subscribe); dropping it unsubscribes (in the background).
///
/// Implements [`Stream`]; [`Subscription::recv`] is the same without
/// importing `StreamExt`. The stream ends when the server ends the
/// subscription ([`Event::Unsubscribed`]) or the client stops.
pub struct Subscription {
    pub(crate) channel: String,
    pub(crate) sub_id: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Message>,
    pub(crate) offset: u64,
    pub(crate) epoch: String,
    pub(crate) recovered: Option<bool>,
    pub(crate) ctl: mpsc::UnboundedSender<Control>,
    /// Keeps the connection open while the subscription lives.
    pub(crate) _keep_alive: mpsc::Sender<Command>,
    pub(crate) detached: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
            .field("recovered", &self.recovered)
            .finish()
    }
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Offset of the channel's latest publication when subscribing.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The channel's epoch when subscribing.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// For [`Client::subscribe_from`](crate::Client::subscribe_from): whether every message since the given
    /// position is replayed. `None` for plain subscriptions.
    pub fn recovered(&self) -> Option<bool> {
        self.recovered
    }

    /// The next message; `None` once the subscription ended.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Unsubscribes and waits for the server's answer (dropping the
    /// subscription does the same in the background).
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.detached = true;
        let (tx, rx) = oneshot::channel();
        let sent = self.ctl.send(Control::Unsubscribe {
            channel: self.channel.clone(),
            sub_id: self.sub_id,
            done: Some(tx),
        });
        if sent.is_err() {
            return Ok(()); // the client has stopped: nothing to undo
        }
        rx.await.unwrap_or(Ok(()))
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.ctl.send(Control::Unsubscribe {
                channel: std::mem::take(&mut self.channel),
                sub_id: self.sub_id,
                done: None,
            });
        }
    }
}

/// A stream of [`Event`]s, from [`Client::events`](crate::Client::events).
#[derive(Debug)]
pub struct Events {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` after the client stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().rx.poll_recv(cx)
    }
}
