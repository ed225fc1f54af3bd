//! Reading a channel back: its head, one message by sequence, and the
//! publications a subscriber missed (walking back from the head, or through a
//! short-lived consumer).

use super::{History, head::Head};
use crate::{
    errors::{classify, to_scaler},
    records::FETCH_IDLE,
};
use async_nats::jetstream::{
    consumer::{AckPolicy, DeliverPolicy, pull},
    stream::LastRawMessageErrorKind,
};
use futures_util::StreamExt;
use scaled_sockets_scaler::{Publication, Result};
use std::{sync::Arc, time::Duration};

impl History {
    pub(super) async fn read_head(&self, subject: &str) -> Result<Option<Head>> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => Ok(Some(Head::parse(
                msg.sequence,
                Some(&msg.headers),
                msg.time,
                msg.payload,
            ))),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(classify("read channel head", &err, self.timeout)),
        }
    }

    pub(super) async fn read_seq(&self, seq: u64) -> Result<Option<(String, Head)>> {
        match self.stream.get_raw_message(seq).await {
            Ok(msg) => Ok(Some((
                msg.subject.to_string(),
                Head::parse(msg.sequence, Some(&msg.headers), msg.time, msg.payload),
            ))),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(classify("read history", &err, self.timeout)),
        }
    }

    /// Offsets `from..=head.offset` by following `Ss-Prev` back from the head.
    pub(super) async fn walk_back(
        &self,
        subject: &str,
        channel: &Arc<str>,
        head: &Head,
        from: u64,
    ) -> Result<Option<Vec<Publication>>> {
        let mut out = vec![head.publication(channel)];
        let mut current = head.clone();
        while current.offset > from {
            let Some((msg_subject, prev)) = self.read_seq(current.prev).await? else {
                return Ok(None);
            };
            if msg_subject != subject
                || prev.epoch != head.epoch
                || prev.offset + 1 != current.offset
            {
                return Ok(None);
            }
            out.push(prev.publication(channel));
            current = prev;
        }
        out.reverse();
        Ok(Some(out))
    }

    /// Offsets `from..=head.offset` through an ephemeral consumer on the channel's
    /// subject, starting at the epoch's first possible sequence.
    pub(super) async fn read_forward(
        &self,
        subject: &str,
        channel: &Arc<str>,
        head: &Head,
        from: u64,
    ) -> Result<Option<Vec<Publication>>> {
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: head.epoch_seq.max(1),
                },
                filter_subject: subject.to_owned(),
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(to_scaler("read history", self.timeout))?;
        let name = consumer.cached_info().name.clone();
        let mut pending = consumer.cached_info().num_pending;
        let mut out: Vec<Publication> = Vec::new();
        let result: Result<bool> = async {
            'outer: while pending > 0 {
                let mut batch = consumer
                    .fetch()
                    .max_messages(pending.min(1000) as usize)
                    .messages()
                    .await
                    .map_err(to_scaler("read history", self.timeout))?;
                let mut got = 0;
                // A message counted in `pending` may be purged before it is
                // fetched; the server then keeps the request waiting. Stop after
                // a short silence instead of waiting for it.
                while let Ok(Some(msg)) = tokio::time::timeout(FETCH_IDLE, batch.next()).await {
                    let msg = msg.map_err(|e| classify("read history", &*e, self.timeout))?;
                    got += 1;
                    let info = msg
                        .info()
                        .map_err(|e| classify("read history", &*e, self.timeout))?;
                    pending = info.pending;
                    let seq = info.stream_sequence;
                    if seq > head.seq {
                        break 'outer;
                    }
                    let h = Head::parse(
                        seq,
                        msg.headers.as_ref(),
                        info.published,
                        msg.payload.clone(),
                    );
                    if h.epoch != head.epoch || h.offset < from {
                        continue;
                    }
                    if h.offset != from + out.len() as u64 {
                        return Ok(false);
                    }
                    out.push(h.publication(channel));
                    if seq == head.seq {
                        break 'outer;
                    }
                }
                if got == 0 {
                    break;
                }
            }
            Ok(true)
        }
        .await;
        let stream = self.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        let complete = result?
            && out.first().is_some_and(|p| p.offset == from)
            && out.last().is_some_and(|p| p.offset == head.offset);
        Ok(complete.then_some(out))
    }
}
