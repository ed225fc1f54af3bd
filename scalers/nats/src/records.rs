//! A thin key-value layer over JetStream KV buckets, with per-record TTLs.
//!
//! The buckets are ordinary JetStream KV buckets (created with
//! `create_key_value`, so `nats kv ls/get` show them), but the scaler talks to
//! their streams directly, because it needs what the KV API hides:
//!
//! - **per-record TTLs**: a bucket has one `max_age`, while every registration,
//!   lease and session has its own TTL. Each record carries its TTL in the
//!   `Ss-Ttl-Ms` header; it is expired once the server timestamp of the write plus
//!   the TTL has passed. Expired records read as absent. The bucket's `max_age`
//!   (`NatsConfig::max_record_ttl`) removes them physically at the latest then.
//! - **compare-and-set** by revision (the record's stream sequence) with the
//!   `Nats-Expected-Last-Subject-Sequence` header: revision 0 means "must not
//!   exist".
//! - **listing with values** in one pass (an ephemeral `LastPerSubject` consumer)
//!   instead of one request per key.
//! - **removal without tombstones** where no compare-and-set is needed (a subject
//!   purge), so keys that come and go (presence) leave nothing behind.

use crate::{
    consume::{Next, read_all},
    errors::{classify, to_scaler},
};
use async_nats::{
    HeaderMap, HeaderValue,
    datetime::{self, DateTime},
    header,
    jetstream::{
        Context,
        consumer::DeliverPolicy,
        context::PublishErrorKind,
        stream::{Config, DiscardPolicy, LastRawMessageErrorKind, StorageType, Stream},
    },
};
use bytes::Bytes;
use scaled_sockets_scaler::{Result, ScalerError};
use std::{collections::HashMap, time::Duration};

/// Header holding a record's TTL in milliseconds.
pub const TTL_HEADER: &str = "Ss-Ttl-Ms";
/// Header holding a key-value record's fence (see `PutMode::Fenced`).
pub const FENCE_HEADER: &str = "Ss-Fence";
const KV_OPERATION: &str = "KV-Operation";

/// One record as last written.
#[derive(Clone, Debug)]
pub struct Record {
    /// The (encoded) key.
    pub key: String,
    /// Stream sequence of the write: the revision for compare-and-set.
    pub revision: u64,
    /// The value.
    pub value: Bytes,
    /// True when the record is a delete marker (or purge marker).
    pub deleted: bool,
    /// True when its TTL has passed.
    pub expired: bool,
    /// The fence stored with it (0: none).
    pub fence: u64,
}

impl Record {
    /// Neither deleted nor expired.
    pub fn is_live(&self) -> bool {
        !self.deleted && !self.expired
    }
}

/// True when a write stamped `time` (server clock) with these headers has
/// outlived its TTL.
pub fn ttl_expired(headers: Option<&HeaderMap>, time: DateTime) -> bool {
    let Some(ttl_ms) = headers
        .and_then(|h| h.get(TTL_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
    else {
        return false;
    };
    match datetime::add_std_duration(time, Duration::from_millis(ttl_ms)) {
        Ok(expires) => expires <= datetime::now(),
        Err(_) => false,
    }
}

fn fence_of(headers: Option<&HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(FENCE_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

fn is_delete(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(KV_OPERATION))
        .is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"))
}

/// One bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    name: String,
    js: Context,
    stream: Stream,
    timeout: Duration,
    max_ttl: Option<Duration>,
    config: Config,
}

impl Bucket {
    /// Opens bucket `name`, creating it if needed. `max_age` zero = no age limit.
    ///
    /// The bucket's stream is created here with the settings `create_key_value`
    /// would use (`KV_{name}` on `$KV.{name}.>`, one value per key, rollups allowed,
    /// direct gets), because async-nats' `create_key_value` first reads the account
    /// info in a shape NATS 2.9 does not send.
    pub async fn open(
        js: &Context,
        name: &str,
        max_age: Duration,
        replicas: usize,
        timeout: Duration,
    ) -> Result<Self> {
        let config = Self::stream_config(name, max_age, replicas);
        let stream = crate::streams::ensure(js, &config, timeout).await?;
        Ok(Self {
            name: name.to_owned(),
            js: js.clone(),
            stream,
            timeout,
            max_ttl: (!max_age.is_zero()).then_some(max_age),
            config,
        })
    }

    /// The stream settings `create_key_value` would use.
    fn stream_config(name: &str, max_age: Duration, replicas: usize) -> Config {
        Config {
            name: format!("KV_{name}"),
            description: Some("Scaled Sockets key-value bucket".into()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_messages: -1,
            max_bytes: -1,
            max_message_size: -1,
            max_age,
            storage: StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: DiscardPolicy::New,
            duplicate_window: crate::streams::duplicate_window(max_age),
            ..Default::default()
        }
    }

    /// Re-creates the bucket's stream if it vanished (a NATS server that lost its
    /// storage, an operator's delete).
    pub async fn repair(&self) -> Result<()> {
        crate::streams::ensure(&self.js, &self.config, self.timeout)
            .await
            .map(drop)
    }

    fn subject(&self, key: &str) -> String {
        crate::names::kv_subject(&self.name, key)
    }

    /// TTL header value for `ttl`, capped at the bucket's `max_age`.
    fn ttl_headers(&self, ttl: Option<Duration>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(ttl) = ttl {
            let ttl = self.max_ttl.map_or(ttl, |max| ttl.min(max));
            headers.insert(
                TTL_HEADER,
                HeaderValue::from((ttl.as_millis() as u64).max(1)),
            );
        }
        headers
    }

    /// The record at `key`, deleted and expired ones included (flagged).
    pub async fn get(&self, key: &str) -> Result<Option<Record>> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(key))
            .await
        {
            Ok(msg) => Ok(Some(Record {
                key: key.to_owned(),
                revision: msg.sequence,
                deleted: is_delete(Some(&msg.headers)),
                expired: ttl_expired(Some(&msg.headers), msg.time),
                fence: fence_of(Some(&msg.headers)),
                value: msg.payload,
            })),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(classify("read record", &err, self.timeout)),
        }
    }

    /// The live value at `key`.
    pub async fn get_live(&self, key: &str) -> Result<Option<Record>> {
        Ok(self.get(key).await?.filter(Record::is_live))
    }

    /// Writes `value` at `key` unconditionally.
    pub async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<u64> {
        self.write(key, self.ttl_headers(ttl), value)
            .await?
            .ok_or_else(|| ScalerError::backend("unconditional write was refused"))
    }

    /// Writes `value` at `key` if its revision is still `revision` (0: if there is
    /// no record at all). `Ok(None)` when someone else wrote first.
    pub async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        revision: u64,
    ) -> Result<Option<u64>> {
        let mut headers = self.ttl_headers(ttl);
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(revision),
        );
        self.write(key, headers, value).await
    }

    /// [`Bucket::put_if`] storing a fence with the record.
    pub async fn put_fenced(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
        revision: u64,
        fence: u64,
    ) -> Result<Option<u64>> {
        let mut headers = self.ttl_headers(ttl);
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(revision),
        );
        if fence > 0 {
            headers.insert(FENCE_HEADER, HeaderValue::from(fence));
        }
        self.write(key, headers, value).await
    }

    /// Writes a delete marker if the revision is still `revision`; its revision,
    /// or `Ok(None)` when someone else wrote first.
    pub async fn delete_if(&self, key: &str, revision: u64) -> Result<Option<u64>> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(revision),
        );
        self.write(key, headers, Bytes::new()).await
    }

    async fn write(&self, key: &str, headers: HeaderMap, value: Bytes) -> Result<Option<u64>> {
        let ack = self
            .js
            .publish_with_headers(self.subject(key), headers, value)
            .await
            .map_err(to_scaler("write record", self.timeout))?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(err) => Err(classify("write record", &err, self.timeout)),
        }
    }

    /// Removes `key` entirely (no tombstone).
    pub async fn remove(&self, key: &str) -> Result<()> {
        self.stream
            .purge()
            .filter(self.subject(key))
            .await
            .map_err(to_scaler("remove record", self.timeout))?;
        Ok(())
    }

    /// Removes `key` if it is still at `revision`, leaving nothing behind (a
    /// delete marker by compare-and-set, then a purge through it). Losing the
    /// race to a new write is fine: the new write survives. True when removed.
    pub async fn remove_if(&self, key: &str, revision: u64) -> Result<bool> {
        match self.delete_if(key, revision).await? {
            Some(tombstone) => {
                self.purge_through(key, tombstone).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// [`Bucket::remove_if`] in the background (lazy cleanup of expired
    /// records found by a read).
    pub fn remove_later_if(&self, key: &str, revision: u64) {
        let bucket = self.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            if let Err(err) = bucket.remove_if(&key, revision).await {
                tracing::debug!(%err, "removing an expired record failed (the sweep retries)");
            }
        });
    }

    /// Removes every record whose TTL has passed; how many were removed.
    pub async fn sweep_expired(&self) -> Result<usize> {
        let mut removed = 0;
        for record in self.scan(">").await? {
            if record.expired && self.remove_if(&record.key, record.revision).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Purges `key`'s messages up to and including `tombstone` (a delete marker),
    /// nothing written after it. Revisions still only grow: they are stream
    /// sequences, which a purge does not reset.
    pub async fn purge_through(&self, key: &str, tombstone: u64) {
        if let Err(err) = self
            .stream
            .purge()
            .filter(self.subject(key))
            .sequence(tombstone + 1)
            .await
        {
            tracing::debug!(%err, "purging a delete marker failed (harmless)");
        }
    }

    /// The latest record of every key matching `pattern` (a subject pattern over
    /// keys, e.g. `>` or `abc.*`), deleted ones left out, expired ones flagged.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<Record>> {
        let prefix = format!("$KV.{}.", self.name);
        // Per key, its last write seen (None: deleted). The consumer also
        // delivers writes made while the scan runs, so a key can come twice.
        let mut latest: HashMap<String, (u64, Option<Record>)> = HashMap::new();
        let result = read_all(
            &self.stream,
            format!("{prefix}{pattern}"),
            DeliverPolicy::LastPerSubject,
            "list records",
            self.timeout,
            |m| {
                let Some(key) = m.subject.strip_prefix(&prefix) else {
                    return Ok(Next::More);
                };
                if latest.get(key).is_some_and(|(seen, _)| *seen > m.seq) {
                    return Ok(Next::More);
                }
                let record = (!is_delete(m.headers)).then(|| Record {
                    key: key.to_owned(),
                    revision: m.seq,
                    deleted: false,
                    expired: ttl_expired(m.headers, m.published),
                    fence: fence_of(m.headers),
                    value: m.payload.clone(),
                });
                latest.insert(key.to_owned(), (m.seq, record));
                Ok(Next::More)
            },
        )
        .await;
        result.map(|()| {
            let mut records: Vec<Record> = latest.into_values().filter_map(|(_, r)| r).collect();
            records.sort_by_key(|r| r.revision);
            records
        })
    }
}
