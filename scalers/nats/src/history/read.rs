//! Reading a channel back: its head, one message by sequence, and the
//! publications a subscriber missed (walking back from the head, or through a
//! short-lived consumer).

use super::{History, head::Head};
use crate::{
    consume::{Next, read_all},
    errors::classify,
};
use async_nats::jetstream::{consumer::DeliverPolicy, stream::LastRawMessageErrorKind};
use scaled_sockets_scaler::{Publication, Result};
use std::sync::Arc;

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
        let mut out: Vec<Publication> = Vec::new();
        let mut gap = false;
        read_all(
            &self.stream,
            subject.to_owned(),
            DeliverPolicy::ByStartSequence {
                start_sequence: head.epoch_seq.max(1),
            },
            "read history",
            self.timeout,
            |m| {
                if m.seq > head.seq {
                    return Ok(Next::Stop);
                }
                let h = Head::parse(m.seq, m.headers, m.published, m.payload.clone());
                if h.epoch != head.epoch || h.offset < from {
                    return Ok(Next::More);
                }
                if h.offset != from + out.len() as u64 {
                    gap = true;
                    return Ok(Next::Stop);
                }
                out.push(h.publication(channel));
                Ok(if m.seq == head.seq {
                    Next::Stop
                } else {
                    Next::More
                })
            },
        )
        .await?;
        let complete = !gap
            && out.first().is_some_and(|p| p.offset == from)
            && out.last().is_some_and(|p| p.offset == head.offset);
        Ok(complete.then_some(out))
    }
}
