//! Reading many messages of one stream through a short-lived ephemeral
//! consumer (bucket listings, long history recoveries).

use crate::errors::{classify, to_scaler};
use async_nats::{
    HeaderMap,
    datetime::DateTime,
    jetstream::{
        consumer::{AckPolicy, DeliverPolicy, pull},
        stream::Stream,
    },
};
use bytes::Bytes;
use futures_util::StreamExt;
use scaled_sockets_scaler::Result;
use std::time::Duration;

/// How long a fetch from an ephemeral consumer may stay silent before the
/// messages are taken to be all there is.
pub const FETCH_IDLE: Duration = Duration::from_millis(500);

/// One message as the consumer delivered it.
#[derive(Debug)]
pub struct Delivered<'a> {
    /// Its subject.
    pub subject: &'a str,
    /// Its stream sequence.
    pub seq: u64,
    /// The server's timestamp of the write.
    pub published: DateTime,
    /// Its headers.
    pub headers: Option<&'a HeaderMap>,
    /// Its payload.
    pub payload: &'a Bytes,
}

/// What the visitor wants after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep reading.
    More,
    /// Enough.
    Stop,
}

/// Feeds every message of `stream` matching `filter` from `deliver` on to
/// `visit`, until there is nothing more pending, `visit` says stop, or the
/// consumer stays silent for [`FETCH_IDLE`]. The consumer is deleted in the
/// background afterwards (it also expires by itself after 10 s idle).
pub async fn read_all(
    stream: &Stream,
    filter: String,
    deliver: DeliverPolicy,
    what: &'static str,
    timeout: Duration,
    visit: impl FnMut(Delivered<'_>) -> Result<Next>,
) -> Result<()> {
    read(stream, filter, deliver, false, what, timeout, visit).await
}

/// [`read_all`] delivering headers only (payloads are left on the server;
/// `payload` is empty): for sweeps that decide on headers alone.
pub async fn read_all_headers(
    stream: &Stream,
    filter: String,
    deliver: DeliverPolicy,
    what: &'static str,
    timeout: Duration,
    visit: impl FnMut(Delivered<'_>) -> Result<Next>,
) -> Result<()> {
    read(stream, filter, deliver, true, what, timeout, visit).await
}

async fn read(
    stream: &Stream,
    filter: String,
    deliver: DeliverPolicy,
    headers_only: bool,
    what: &'static str,
    timeout: Duration,
    mut visit: impl FnMut(Delivered<'_>) -> Result<Next>,
) -> Result<()> {
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: deliver,
            filter_subject: filter,
            headers_only,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(to_scaler(what, timeout))?;
    let name = consumer.cached_info().name.clone();
    let mut pending = consumer.cached_info().num_pending;
    let result: Result<()> = async {
        while pending > 0 {
            let mut batch = consumer
                .fetch()
                .max_messages(pending.min(1000) as usize)
                .messages()
                .await
                .map_err(to_scaler(what, timeout))?;
            let mut got = 0;
            // A message counted in `pending` may be purged before it is
            // fetched; the server then keeps the request waiting. Stop after a
            // short silence instead of waiting for it.
            while let Ok(Some(msg)) = tokio::time::timeout(FETCH_IDLE, batch.next()).await {
                let msg = msg.map_err(|e| classify(what, &*e, timeout))?;
                got += 1;
                let info = msg.info().map_err(|e| classify(what, &*e, timeout))?;
                pending = info.pending;
                let next = visit(Delivered {
                    subject: msg.subject.as_str(),
                    seq: info.stream_sequence,
                    published: info.published,
                    headers: msg.headers.as_ref(),
                    payload: &msg.payload,
                })?;
                if next == Next::Stop {
                    return Ok(());
                }
            }
            if got == 0 {
                break;
            }
        }
        Ok(())
    }
    .await;
    let stream = stream.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
    result
}
