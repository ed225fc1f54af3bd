//! Core messages between instances, the ordered per-destination send queues
//! they travel in, and the correlation of requests with their replies.
//!
//! Every message from an owner carries the fencing token of its lease
//! tenure; a receiver that knows a newer token for the core drops it. Every
//! request to an owner carries the token the sender believes current; an
//! owner that holds another one refuses it.

use super::Cores;
use crate::{
    error::{CommandError, ErrorCode},
    hub::{PeerMessage, lock},
    metrics::Metrics,
};
use bytes::Bytes;
use scaled_sockets_scaler::Topic;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{collections::HashMap, sync::Mutex, time::Duration};
use tokio::sync::{mpsc, oneshot};

/// Messages kept waiting for one destination before sends fail.
const QUEUE_CAPACITY: usize = 4096;
/// A destination's queue task ends after this long without messages.
const QUEUE_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Wire {
    /// Host this core (placement chose you). Reply: `instance` = its owner.
    Start {
        core: String,
        request: u64,
        reply_to: String,
    },
    /// Stop this core for good (the app stopped it).
    Stop {
        core: String,
        request: u64,
        reply_to: String,
    },
    Join {
        core: String,
        token: u64,
        client: String,
        data: Box<RawValue>,
        request: u64,
        reply_to: String,
    },
    Leave {
        core: String,
        token: u64,
        client: String,
    },
    Tell {
        core: String,
        token: u64,
        client: String,
        event: String,
        data: Box<RawValue>,
    },
    Ask {
        core: String,
        token: u64,
        client: String,
        event: String,
        data: Box<RawValue>,
        request: u64,
        reply_to: String,
    },
    /// A frame from the owner for some of the receiver's clients.
    Deliver {
        core: String,
        token: u64,
        clients: Vec<String>,
        frame: String,
    },
    /// These clients are no longer members of the core.
    Left {
        core: String,
        token: u64,
        clients: Vec<String>,
        reason: String,
        rejoin: bool,
    },
    Reply(Reply),
}

/// The answer to a request.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Reply {
    pub request: u64,
    /// The answering owner's token (0 when it is not an owner).
    #[serde(default)]
    pub token: u64,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl Reply {
    pub(super) fn ok(request: u64, token: u64, data: Option<Box<RawValue>>) -> Self {
        Self {
            request,
            token,
            instance: None,
            data,
            code: None,
            message: None,
        }
    }

    pub(super) fn err(request: u64, e: &CommandError) -> Self {
        Self {
            request,
            token: 0,
            instance: None,
            data: None,
            code: Some(e.code.as_str().to_owned()),
            message: Some(e.message.clone()),
        }
    }

    pub(super) fn into_result(self) -> Result<Self, CommandError> {
        match &self.code {
            None => Ok(self),
            Some(code) => Err(CommandError::new(
                ErrorCode::parse(code).unwrap_or(ErrorCode::Internal),
                self.message.unwrap_or_default(),
            )),
        }
    }
}

/// A request waiting for its reply; a join also records the membership
/// when its reply is handled (before any later delivery of the owner).
pub(super) struct Pending {
    pub tx: oneshot::Sender<Reply>,
    pub join: Option<(String, String, String)>,
}

/// Requests waiting for replies, and the send queue of each destination.
#[derive(Default)]
pub(super) struct Links {
    pub pending: Mutex<HashMap<u64, Pending>>,
    queues: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
}

impl Cores {
    /// Sends a core message to `instance` (handled inline when it is this
    /// one). Messages to one destination leave in the order they were given:
    /// each destination has one queue and one task sending from it.
    pub(super) fn send(&self, instance: &str, message: &Wire) -> Result<(), CommandError> {
        if instance == &*self.hub.id {
            // Through JSON anyway: one code path, and the message is owned.
            let body = serde_json::value::to_raw_value(message)
                .map_err(|e| CommandError::internal(format!("encode: {e}")))?;
            self.handle(&body);
            return Ok(());
        }
        let body = serde_json::value::to_raw_value(message)
            .map_err(|e| CommandError::internal(format!("encode: {e}")))?;
        let payload = serde_json::to_vec(&PeerMessage::Core { body })
            .map_err(|e| CommandError::internal(format!("encode: {e}")))?;
        Metrics::inc(&self.hub.metrics.core_relays_total);
        let mut queues = lock(&self.links.queues);
        let tx = queues
            .entry(instance.to_owned())
            .or_insert_with(|| self.spawn_queue(instance));
        match tx.try_send(Bytes::from(payload)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(CommandError::new(
                ErrorCode::Unavailable,
                format!("too many core messages waiting for instance `{instance}`"),
            )),
            Err(mpsc::error::TrySendError::Closed(payload)) => {
                // Its task ended (idle); a new one takes over.
                let tx = self.spawn_queue(instance);
                let _ = tx.try_send(payload);
                queues.insert(instance.to_owned(), tx);
                Ok(())
            }
        }
    }

    fn spawn_queue(&self, instance: &str) -> mpsc::Sender<Bytes> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE_CAPACITY);
        let scaler = self.hub.scaler.clone();
        let topic = Topic::instance(instance);
        let shutdown = self.hub.shutdown_token();
        tokio::spawn(async move {
            loop {
                let payload = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = tokio::time::timeout(QUEUE_IDLE, rx.recv()) => match next {
                        Ok(Some(payload)) => payload,
                        // Idle or dropped: closing the receiver makes the
                        // next send start a new task.
                        Ok(None) | Err(_) => return,
                    },
                };
                // Awaited one at a time: this is what keeps the order.
                if let Err(e) = scaler.send(&topic, payload).await {
                    tracing::warn!(?topic, error = %e, "core message not delivered");
                }
            }
        });
        tx
    }

    /// Sends a request built around a fresh request number and waits for its
    /// reply, at most `timeout`.
    pub(super) async fn request(
        &self,
        instance: &str,
        timeout: Duration,
        join: Option<(String, String)>,
        build: impl FnOnce(u64, String) -> Wire,
    ) -> Result<Reply, CommandError> {
        let request = self.hub.next_id();
        let (tx, rx) = oneshot::channel();
        let join = join.map(|(client, core)| (client, core, instance.to_owned()));
        lock(&self.links.pending).insert(request, Pending { tx, join });
        let sent = self.send(instance, &build(request, self.hub.id.to_string()));
        let result = match sent {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => reply.into_result(),
                Ok(Err(_)) => Err(CommandError::internal("request dropped")),
                Err(_) => Err(CommandError::new(
                    ErrorCode::Timeout,
                    format!("instance `{instance}` did not answer in {timeout:?}"),
                )),
            },
        };
        lock(&self.links.pending).remove(&request);
        result
    }

    /// Completes a request with its reply; a successful join becomes a
    /// membership right here, before later messages of the owner are handled.
    pub(super) fn complete(&self, reply: Reply) {
        let Some(pending) = lock(&self.links.pending).remove(&reply.request) else {
            return;
        };
        if let (Some((client, core, owner)), None) = (&pending.join, &reply.code) {
            self.add_membership(client, core, owner, reply.token);
        }
        let _ = pending.tx.send(reply);
    }

    /// Answers a request to `reply_to`.
    pub(super) fn answer(&self, reply_to: &str, reply: Reply) {
        if let Err(e) = self.send(reply_to, &Wire::Reply(reply)) {
            tracing::warn!(error = %e, "could not answer a core request");
        }
    }
}
