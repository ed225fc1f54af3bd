//! Frames POSTed by HTTP-fallback clients, routed to the instance that holds
//! the client's event stream.
//!
//! A client on the fallback has one stream (on the instance that answered its
//! `GET /sse`) and sends its frames in POSTs that any instance may receive.
//! Each stream registers an inbox here under its client id; a POST that lands
//! elsewhere is forwarded to the stream's instance (the client id names it)
//! as a peer message, and the answer comes back like an ask's reply. The hub
//! only routes: ordering by `seq` is the connection's business.

use super::{Hub, PeerMessage, instance_of, lock};
use crate::error::{CommandError, ErrorCode};
use serde_json::value::RawValue;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// How long a POST waits for the stream's instance to take its frames.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Uploads waiting for a stream's loop; beyond this many the POST is refused
/// (`rate_limited`) rather than queued without bound.
const INBOX_CAPACITY: usize = 16;

/// One POST's frames, handed to the connection that owns the stream.
#[derive(Debug)]
pub(crate) struct Upload {
    pub seq: u64,
    pub frames: Vec<Box<RawValue>>,
    /// Answered once the frames are applied, held in order, or refused.
    pub reply: oneshot::Sender<Result<(), CommandError>>,
}

/// One open stream's entry: the session that owns it, and its inbox.
#[derive(Debug)]
struct Inbox {
    session: Arc<str>,
    tx: mpsc::Sender<Upload>,
}

/// The open streams of this instance, by client id.
#[derive(Debug, Default)]
pub(crate) struct Uploads(Mutex<HashMap<Arc<str>, Inbox>>);

impl Hub {
    /// Opens the inbox of a stream's connection; closed by [`Hub::close_uploads`].
    pub(crate) fn open_uploads(
        &self,
        client: &Arc<str>,
        session: &Arc<str>,
    ) -> mpsc::Receiver<Upload> {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        lock(&self.uploads.0).insert(
            client.clone(),
            Inbox {
                session: session.clone(),
                tx,
            },
        );
        rx
    }

    pub(crate) fn close_uploads(&self, client: &str) {
        lock(&self.uploads.0).remove(client);
    }

    /// Hands a POST's frames to the stream of `client`, here or on its
    /// instance, and waits until that stream took them.
    ///
    /// `not_found` when `session` does not own `client` or the stream is gone;
    /// `timeout` when the stream's instance did not answer in time.
    pub(crate) async fn upload(
        &self,
        session: &str,
        client: &str,
        seq: u64,
        frames: Vec<Box<RawValue>>,
    ) -> Result<(), CommandError> {
        let Some(instance) = instance_of(client) else {
            return Err(CommandError::not_found("no such stream"));
        };
        if instance == &*self.id {
            return self.upload_local(session, client, seq, frames).await;
        }
        let send = |request| {
            let message = PeerMessage::Upload {
                session: session.to_owned(),
                client: client.to_owned(),
                seq,
                frames,
                request,
                reply_to: self.id.to_string(),
            };
            self.send_to_live_instance(client, instance, message)
        };
        self.peer_request(
            send,
            FORWARD_TIMEOUT,
            "the stream's instance did not answer in time",
        )
        .await
        .map(drop)
    }

    /// The stream's side: checks the session and queues the frames.
    pub(crate) async fn upload_local(
        &self,
        session: &str,
        client: &str,
        seq: u64,
        frames: Vec<Box<RawValue>>,
    ) -> Result<(), CommandError> {
        let inbox = match lock(&self.uploads.0).get(client) {
            // The same answer for a wrong session as for no stream: a forged
            // session learns nothing about which clients exist.
            Some(inbox) if *inbox.session == *session => inbox.tx.clone(),
            _ => return Err(CommandError::not_found("no such stream")),
        };
        let (reply, answer) = oneshot::channel();
        match inbox.try_send(Upload { seq, frames, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(CommandError::new(
                    ErrorCode::RateLimited,
                    "too many POSTs waiting for this stream",
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(CommandError::not_found("no such stream"));
            }
        }
        match tokio::time::timeout(FORWARD_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommandError::not_found("the stream ended")),
            Err(_) => Err(CommandError::new(
                ErrorCode::Timeout,
                "the stream did not take the frames in time",
            )),
        }
    }

    /// Answers an upload forwarded by another instance.
    pub(super) async fn answer_upload(&self, message: PeerMessage) {
        let PeerMessage::Upload {
            session,
            client,
            seq,
            frames,
            request,
            reply_to,
        } = message
        else {
            return;
        };
        let result = self.upload_local(&session, &client, seq, frames).await;
        // Not `null`: an absent `data` is how an error reply reads.
        let reply = PeerMessage::reply(
            request,
            result.map(|()| RawValue::from_string("true".to_owned()).ok()),
        );
        if let Err(e) = self.send_to_peer(&reply_to, &reply).await {
            tracing::warn!(error = %e, "could not answer a forwarded upload");
        }
    }
}
