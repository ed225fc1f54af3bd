//! Removing channels whose history TTL has passed.
//!
//! A channel's history is *lost* once its head's server timestamp plus its
//! `Ss-Ttl-Ms` has passed (see the module docs), but the messages stay stored
//! until the stream's `max_age` (`NatsConfig::max_history_ttl`, 24 h by
//! default) unless something removes them. That includes the epoch marker a
//! `history()` read writes on a channel nobody publishes to. The sweep reads
//! the last message of every channel (headers only, one short-lived consumer)
//! and purges each lost channel *through its head*: a publication appended
//! after the head was read has a larger sequence and survives, and it starts
//! a new epoch anyway, since the head it saw was lost.

use super::{History, head::Head};
use crate::consume::{Next, read_all_headers};
use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use scaled_sockets_scaler::Result;

impl History {
    /// Purges every channel whose history has expired; how many were purged.
    pub async fn sweep_expired(&self) -> Result<usize> {
        let mut lost: Vec<(String, u64)> = Vec::new();
        read_all_headers(
            &self.stream,
            self.names.history_wildcard(),
            DeliverPolicy::LastPerSubject,
            "sweep history",
            self.timeout,
            |m| {
                let head = Head::parse(m.seq, m.headers, m.published, Bytes::new());
                if head.lost {
                    lost.push((m.subject.to_owned(), m.seq));
                }
                Ok(Next::More)
            },
        )
        .await?;
        for (subject, seq) in &lost {
            self.stream
                .purge()
                .filter(subject.clone())
                .sequence(seq + 1)
                .await
                .map_err(crate::errors::to_scaler("sweep history", self.timeout))?;
        }
        Ok(lost.len())
    }
}
