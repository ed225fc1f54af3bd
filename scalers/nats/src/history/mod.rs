//! Channel streams: gap-free offsets, epochs, history and recovery on one
//! JetStream stream.
//!
//! # Layout
//! One stream, `{prefix}_history`, captures `{prefix}.hist.>`; each channel has
//! its own subject `{prefix}.hist.{base64url(channel)}`. Every message carries its
//! stream position and bookkeeping in headers:
//!
//! | header         | meaning                                                        |
//! |----------------|----------------------------------------------------------------|
//! | `Ss-Offset`    | the publication's offset (0 = an *epoch marker*, see below)    |
//! | `Ss-Epoch`     | the stream epoch                                               |
//! | `Ss-Oldest`    | the oldest offset history still answers for after this write   |
//! | `Ss-Ttl-Ms`    | the channel's history TTL as of this write                     |
//! | `Ss-Prev`      | stream sequence of the channel's previous message (0: none)    |
//! | `Ss-Epoch-Seq` | a stream sequence no message of this epoch is below            |
//!
//! The **last message on a channel's subject is the channel's state** (its head):
//! top offset, epoch, how far back history reaches and when it expires. There is
//! no second record to keep in step with it, so no torn state.
//!
//! # Offsets: compare-and-set on the subject
//! A publish reads the head (or uses the one its own last publish produced),
//! computes offset = head + 1 and appends with
//! `Nats-Expected-Last-Subject-Sequence: <head's stream sequence>`. If anyone
//! appended in between, JetStream refuses (`wrong last sequence`) and the publish
//! re-reads and retries, until the call's deadline. So offsets are gap-free and
//! unique cluster-wide, and a refused attempt leaves no trace.
//!
//! # Live delivery: RePublish
//! The stream is configured to *republish* every message it stores to
//! `{prefix}.live.{base64url(channel)}` (JetStream `RePublish`). Feeds subscribe to
//! those core subjects. The server republishes in storage order, only what it
//! stored, and as part of storing it, so subscribers see each channel in offset
//! order, never a refused attempt, and never miss a stored publication while
//! connected (even if the publisher dies right after its publish).
//!
//! # Epochs, TTL and size
//! The stream has one `max_age` and one `max_msgs_per_subject`, while
//! `PublishOptions` are per call; both are emulated per channel:
//! - **TTL**: a channel's history is lost when the head's server timestamp plus its
//!   `Ss-Ttl-Ms` has passed. The next `publish` or `history` then starts a new
//!   epoch (offsets restart at 1) and the old epoch's messages are purged in the
//!   background. A channel that is absent (never published, or aged out by the
//!   stream's `max_age`, or purged by an operator) also starts a new epoch.
//!   `history()` on such a channel writes an *epoch marker* (offset 0, empty
//!   payload, the request's TTL) so the epoch a subscriber is given is the one later
//!   publications carry; feeds skip markers. Expired channels, markers
//!   included, are purged by the periodic sweep (`sweep`), so a channel that
//!   is only read leaves nothing behind once its TTL has passed.
//! - **Size**: `Ss-Oldest` records, per write, the oldest offset history may
//!   answer for (exactly the `MemoryScaler` deque semantics, including
//!   `history_size == 0` and sizes changing between calls). The stream's
//!   `max_msgs_per_subject` (= `NatsConfig::max_history_size`) bounds storage; a
//!   smaller `history_size` is trimmed physically every 32nd publication with a
//!   subject purge keeping `history_size` messages.
//!
//! # Recovery
//! A page is `recovered` only if the epoch matches, nothing missed is older than
//! `Ss-Oldest`, the count is within the limit, and every missed message is
//! actually read back (offsets `since+1..=top`, gap-free, same epoch). Up to 16
//! missed messages are read by walking the `Ss-Prev` chain back from the head;
//! more through a short-lived ephemeral consumer on the channel's subject.
//!
//! # Files
//! - `mod.rs`: the stream, publish (append by compare-and-set), the head cache,
//!   `history`.
//! - `head`: the headers and what a channel's last message says (`Head`).
//! - `read`: reading heads and missed publications back.
//! - `sweep`: purging channels whose history expired (epoch markers of
//!   channels that were only read included).

mod head;
mod read;
mod sweep;

pub use head::{EPOCH_HEADER, OFFSET_HEADER, live_publication};

use crate::{
    NatsConfig,
    config::HEADER_ROOM_BYTES,
    errors::{classify, to_scaler},
    names::Names,
    records::TTL_HEADER,
};
use async_nats::{
    HeaderMap, HeaderValue, header,
    jetstream::{Context, context::PublishErrorKind, stream::Stream},
};
use bytes::Bytes;
use head::{EPOCH_SEQ_HEADER, Head, OLDEST_HEADER, PREV_HEADER};
use scaled_sockets_scaler::{
    HistoryPage, HistoryRequest, PublishOptions, Result, ScalerError, StreamPosition,
    types::new_epoch,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Missed publications read by walking back from the head; above this a consumer
/// reads them.
const WALK_MAX: u64 = 16;
/// A smaller-than-maximum history is trimmed physically every this many offsets.
const TRIM_EVERY: u64 = 32;
/// After a compare-and-set conflict, a channel's cached head is not used for this
/// long (several instances are publishing to it: reading first is cheaper).
const CONTENDED_FOR: Duration = Duration::from_secs(10);
/// Most channels whose head is cached.
const CACHE_MAX: usize = 10_000;

#[derive(Debug)]
struct Cached {
    head: Option<Head>,
    valid_until: Instant,
    contended_until: Option<Instant>,
}

/// The history stream and the per-channel logic on it.
#[derive(Debug)]
pub struct History {
    js: Context,
    stream: Stream,
    names: Names,
    timeout: Duration,
    max_size: u64,
    max_ttl: Duration,
    /// Largest payload a publish accepts.
    max_payload: usize,
    cache: Mutex<HashMap<String, Cached>>,
    config: async_nats::jetstream::stream::Config,
    /// One append in flight per channel from this process. Appends are a
    /// compare-and-set on the channel's last message: concurrent appends from
    /// one instance would only keep invalidating each other (and could retry
    /// until they time out), so they queue here and contend only with other
    /// instances.
    appending: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What one attempt to append found.
pub(crate) enum Append {
    Stored(u64),
    Conflict,
}

impl History {
    /// Opens (creating or updating) the history stream with the limits of
    /// `config` (`max_history_size`, `max_history_ttl`, `max_history_bytes`,
    /// `max_publication_bytes`, `replicas`).
    pub async fn open(js: &Context, names: &Names, config: &NatsConfig) -> Result<Self> {
        use async_nats::jetstream::stream::{
            Config, DiscardPolicy, Republish, RetentionPolicy, StorageType,
        };
        let timeout = config.request_timeout;
        let max_ttl = config.max_history_ttl;
        let stream_config = Config {
            name: names.history_stream.clone(),
            description: Some("Scaled Sockets channel history".into()),
            subjects: vec![names.history_wildcard()],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_messages_per_subject: config.max_history_size as i64,
            max_messages: -1,
            max_bytes: config.max_history_bytes as i64,
            // The payload plus the scaler's headers: a backstop behind the
            // check in `publish`, which gives the clear error.
            max_message_size: (config.max_publication_bytes + HEADER_ROOM_BYTES) as i32,
            max_age: max_ttl,
            storage: StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: crate::streams::duplicate_window(max_ttl),
            republish: Some(Republish {
                source: names.history_wildcard(),
                destination: names.live_wildcard(),
                headers_only: false,
            }),
            ..Default::default()
        };
        let stream = crate::streams::ensure(js, &stream_config, timeout).await?;
        Ok(Self {
            js: js.clone(),
            stream,
            names: names.clone(),
            timeout,
            max_size: config.max_history_size,
            max_ttl,
            max_payload: config.max_publication_bytes,
            cache: Mutex::new(HashMap::new()),
            appending: Mutex::new(HashMap::new()),
            config: stream_config,
        })
    }

    /// Re-creates the stream if it vanished (a NATS server that lost its storage,
    /// an operator's delete). Offsets then restart in new epochs.
    pub async fn repair(&self) -> Result<()> {
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
        crate::streams::ensure(&self.js, &self.config, self.timeout)
            .await
            .map(drop)
    }

    fn capped_ttl(&self, ttl: Duration) -> Duration {
        ttl.clamp(Duration::from_millis(1), self.max_ttl)
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        subject: &str,
        expected_seq: u64,
        offset: u64,
        epoch: &str,
        oldest: u64,
        epoch_seq: u64,
        ttl: Duration,
        payload: Bytes,
    ) -> Result<Append> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected_seq),
        );
        headers.insert(OFFSET_HEADER, HeaderValue::from(offset));
        headers.insert(EPOCH_HEADER, epoch);
        headers.insert(OLDEST_HEADER, HeaderValue::from(oldest));
        headers.insert(PREV_HEADER, HeaderValue::from(expected_seq));
        headers.insert(EPOCH_SEQ_HEADER, HeaderValue::from(epoch_seq));
        headers.insert(
            TTL_HEADER,
            HeaderValue::from((ttl.as_millis() as u64).max(1)),
        );
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(to_scaler("publish", self.timeout))?;
        match ack.await {
            Ok(ack) => Ok(Append::Stored(ack.sequence)),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(Append::Conflict),
            Err(err) => Err(classify("publish", &err, self.timeout)),
        }
    }

    /// Purges, in the background, a channel's messages of earlier epochs.
    fn purge_before(&self, subject: &str, seq: u64) {
        let purge = self.stream.purge().filter(subject.to_owned()).sequence(seq);
        tokio::spawn(async move {
            if let Err(err) = purge.await {
                tracing::debug!(%err, "purging a lost epoch failed (harmless)");
            }
        });
    }

    /// Trims, in the background, a channel to its last `keep` messages.
    fn trim(&self, subject: &str, keep: u64) {
        let purge = self.stream.purge().filter(subject.to_owned()).keep(keep);
        tokio::spawn(async move {
            if let Err(err) = purge.await {
                tracing::debug!(%err, "trimming history failed (harmless)");
            }
        });
    }

    fn cached_head(&self, subject: &str) -> Option<Head> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(subject)?;
        let now = Instant::now();
        if entry.contended_until.is_some_and(|t| now < t) || now >= entry.valid_until {
            return None;
        }
        entry.head.clone()
    }

    fn remember(&self, subject: &str, head: Head, valid_until: Instant) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX && !cache.contains_key(subject) {
                cache.clear();
            }
            let entry = cache.entry(subject.to_owned()).or_insert(Cached {
                head: None,
                valid_until,
                contended_until: None,
            });
            entry.head = Some(head);
            entry.valid_until = valid_until;
        }
    }

    fn contended(&self, subject: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(entry) = cache.get_mut(subject) {
                entry.head = None;
                entry.contended_until = Some(Instant::now() + CONTENDED_FOR);
            }
        }
    }

    /// Appends a publication; see the module docs.
    pub async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<StreamPosition> {
        if payload.len() > self.max_payload {
            return Err(ScalerError::InvalidArgument(format!(
                "publication of {} bytes exceeds the NATS scaler's limit of {} bytes \
                 (NatsConfig::max_publication_bytes)",
                payload.len(),
                self.max_payload
            )));
        }
        let subject = self.names.history_subject(channel);
        let gate = {
            let mut gates = self.appending.lock().unwrap_or_else(|p| p.into_inner());
            // Forget gates nobody waits on, so the map stays as small as the
            // set of channels being published to right now.
            if gates.len() > 1024 {
                gates.retain(|_, g| Arc::strong_count(g) > 1);
            }
            gates.entry(subject.clone()).or_default().clone()
        };
        let _turn = gate.lock().await;
        let ttl = self.capped_ttl(options.history_ttl);
        let size = (options.history_size as u64).min(self.max_size);
        let mut from_cache = self.cached_head(&subject);
        loop {
            let head = match from_cache.take() {
                Some(head) => Some(head),
                None => self.read_head(&subject).await?,
            };
            let expected_seq = head.as_ref().map_or(0, |h| h.seq);
            let (epoch, offset, prev_oldest, epoch_seq, new_epoch) = match &head {
                Some(h) if !h.lost => (h.epoch.clone(), h.offset + 1, h.oldest, h.epoch_seq, false),
                _ => (Arc::from(new_epoch()), 1, 1, expected_seq + 1, true),
            };
            let oldest = if size == 0 {
                offset + 1
            } else {
                prev_oldest.max((offset + 1).saturating_sub(size))
            };
            let sent_at = Instant::now();
            match self
                .append(
                    &subject,
                    expected_seq,
                    offset,
                    &epoch,
                    oldest,
                    epoch_seq,
                    ttl,
                    payload.clone(),
                )
                .await
            {
                Ok(Append::Stored(seq)) => {
                    // Trust the cached head a little less long than the TTL, so a
                    // local estimate never outlives the server-side expiry.
                    let valid_until = sent_at + ttl.mul_f64(0.9);
                    self.remember(
                        &subject,
                        Head {
                            seq,
                            offset,
                            epoch: epoch.clone(),
                            oldest,
                            prev: expected_seq,
                            epoch_seq,
                            lost: false,
                            payload: Bytes::new(),
                        },
                        valid_until,
                    );
                    if new_epoch && expected_seq > 0 {
                        self.purge_before(&subject, seq);
                    } else if size < self.max_size && offset % TRIM_EVERY == 0 {
                        self.trim(&subject, size.max(1));
                    }
                    return Ok(StreamPosition::new(offset, epoch));
                }
                Ok(Append::Conflict) => {
                    self.contended(&subject);
                    continue;
                }
                Err(err) => {
                    self.contended(&subject);
                    return Err(err);
                }
            }
        }
    }

    /// The channel's live head, starting a new epoch (with a marker) when it has
    /// none.
    async fn live_head(&self, subject: &str, ttl: Duration) -> Result<Head> {
        loop {
            let head = self.read_head(subject).await?;
            if let Some(head) = &head
                && !head.lost
            {
                return Ok(head.clone());
            }
            let expected_seq = head.as_ref().map_or(0, |h| h.seq);
            let epoch: Arc<str> = Arc::from(new_epoch());
            let ttl = self.capped_ttl(ttl);
            match self
                .append(
                    subject,
                    expected_seq,
                    0,
                    &epoch,
                    1,
                    expected_seq + 1,
                    ttl,
                    Bytes::new(),
                )
                .await?
            {
                Append::Stored(seq) => {
                    if expected_seq > 0 {
                        self.purge_before(subject, seq);
                    }
                    return Ok(Head {
                        seq,
                        offset: 0,
                        epoch,
                        oldest: 1,
                        prev: expected_seq,
                        epoch_seq: expected_seq + 1,
                        lost: false,
                        payload: Bytes::new(),
                    });
                }
                Append::Conflict => continue,
            }
        }
    }

    /// The channel's position and, with `since`, what was missed; see the module
    /// docs.
    pub async fn history(&self, channel: &str, request: &HistoryRequest) -> Result<HistoryPage> {
        let subject = self.names.history_subject(channel);
        let head = self.live_head(&subject, request.ttl).await?;
        let top = StreamPosition::new(head.offset, head.epoch.clone());
        let not_recovered = |top| HistoryPage {
            top,
            publications: Vec::new(),
            recovered: false,
        };
        let Some(since) = &request.since else {
            return Ok(HistoryPage {
                top,
                publications: Vec::new(),
                recovered: true,
            });
        };
        if since.epoch != head.epoch || since.offset > head.offset {
            return Ok(not_recovered(top));
        }
        let missed = head.offset - since.offset;
        if missed == 0 {
            return Ok(HistoryPage {
                top,
                publications: Vec::new(),
                recovered: true,
            });
        }
        if missed > request.limit as u64 || head.oldest > since.offset + 1 {
            return Ok(not_recovered(top));
        }
        let channel: Arc<str> = Arc::from(channel);
        let found = if missed <= WALK_MAX {
            self.walk_back(&subject, &channel, &head, since.offset + 1)
                .await?
        } else {
            self.read_forward(&subject, &channel, &head, since.offset + 1)
                .await?
        };
        Ok(match found {
            Some(publications) => HistoryPage {
                top,
                publications,
                recovered: true,
            },
            None => not_recovered(top),
        })
    }
}
