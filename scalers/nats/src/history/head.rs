//! The history headers and what a channel's last message (its head) says.

use crate::records::ttl_expired;
use async_nats::HeaderMap;
use bytes::Bytes;
use scaled_sockets_scaler::Publication;
use std::sync::Arc;

/// Header: the publication's offset (0 = epoch marker).
pub const OFFSET_HEADER: &str = "Ss-Offset";
/// Header: the stream epoch.
pub const EPOCH_HEADER: &str = "Ss-Epoch";
pub(crate) const OLDEST_HEADER: &str = "Ss-Oldest";
pub(crate) const PREV_HEADER: &str = "Ss-Prev";
pub(crate) const EPOCH_SEQ_HEADER: &str = "Ss-Epoch-Seq";

/// A channel's state, as its last message says.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) epoch: Arc<str>,
    pub(crate) oldest: u64,
    pub(crate) prev: u64,
    pub(crate) epoch_seq: u64,
    /// History TTL passed (or the message is not ours): the stream is lost.
    pub(crate) lost: bool,
    pub(crate) payload: Bytes,
}

pub(crate) fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

impl Head {
    pub(crate) fn parse(
        seq: u64,
        headers: Option<&HeaderMap>,
        time: async_nats::datetime::DateTime,
        payload: Bytes,
    ) -> Self {
        let parsed = headers.and_then(|h| {
            Some(Self {
                seq,
                offset: header_u64(h, OFFSET_HEADER)?,
                epoch: Arc::from(h.get(EPOCH_HEADER)?.as_str()),
                oldest: header_u64(h, OLDEST_HEADER)?,
                prev: header_u64(h, PREV_HEADER)?,
                epoch_seq: header_u64(h, EPOCH_SEQ_HEADER)?,
                lost: ttl_expired(Some(h), time),
                payload: payload.clone(),
            })
        });
        parsed.unwrap_or_else(|| {
            tracing::warn!(
                seq,
                "history message without scaler headers; treating the channel as lost"
            );
            Self {
                seq,
                offset: 0,
                epoch: Arc::from(""),
                oldest: 1,
                prev: 0,
                epoch_seq: seq + 1,
                lost: true,
                payload,
            }
        })
    }

    pub(crate) fn publication(&self, channel: &Arc<str>) -> Publication {
        Publication {
            channel: channel.clone(),
            offset: self.offset,
            epoch: self.epoch.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// Parses a republished (live) message into a publication; `None` for epoch
/// markers and foreign messages.
pub fn live_publication(
    channel: &Arc<str>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Option<Publication> {
    let headers = headers?;
    let offset = header_u64(headers, OFFSET_HEADER)?;
    if offset == 0 {
        return None;
    }
    Some(Publication {
        channel: channel.clone(),
        offset,
        epoch: Arc::from(headers.get(EPOCH_HEADER)?.as_str()),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_publication_skips_markers_and_foreign_messages() {
        let ch: Arc<str> = Arc::from("c");
        let mut h = HeaderMap::new();
        h.insert(OFFSET_HEADER, "0");
        h.insert(EPOCH_HEADER, "e");
        assert!(live_publication(&ch, Some(&h), Bytes::new()).is_none());
        assert!(live_publication(&ch, None, Bytes::new()).is_none());
        let mut h = HeaderMap::new();
        h.insert(OFFSET_HEADER, "7");
        h.insert(EPOCH_HEADER, "e");
        let p = live_publication(&ch, Some(&h), Bytes::from_static(b"x")).expect("publication");
        assert_eq!((p.offset, &*p.epoch, &p.payload[..]), (7, "e", &b"x"[..]));
    }
}
