//! [`RedisScaler`]: the [`Scaler`] implementation.

use crate::{
    RedisConfig, RedisStats,
    feed::{self, FeedSettings},
    keys::Keys,
    pool::Pool,
    scripts,
    stats::Counters,
};
use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use scaled_sockets_scaler::{
    Feed, HistoryPage, HistoryRequest, InstanceInfo, Lease, LeaseOutcome, PresenceEntry,
    Publication, PublishOptions, PutMode, PutOptions, Result, Scaler, ScalerError, StreamPosition,
    Topic, Versioned,
    check::{check_channel, check_send_topic},
    records,
    types::new_epoch,
};
use std::{sync::Arc, time::Duration};

/// The Redis scaler. Cheap to clone; clones share connections and counters.
///
/// Every call is bounded by [`RedisConfig::command_timeout`] and fails with
/// [`ScalerError::Timeout`] or [`ScalerError::Unavailable`] when Redis does not
/// answer; the connection is replaced on the next call.
#[derive(Clone, Debug)]
pub struct RedisScaler {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    config: RedisConfig,
    keys: Keys,
    pool: Arc<Pool>,
    counters: Arc<Counters>,
}

/// The longest TTL passed to Redis (about 31,700 years): Redis rejects expiry
/// times that overflow when added to the current time.
const MAX_TTL_MS: u128 = 1_000_000_000_000_000;

/// Milliseconds for a TTL argument: at least 1 (Redis rejects 0), at most
/// [`MAX_TTL_MS`].
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, MAX_TTL_MS) as u64
}

pub(crate) fn backend(what: &str) -> ScalerError {
    ScalerError::backend(format!("unexpected reply from redis: {what}"))
}

pub(crate) fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn text(v: &Value) -> Option<&str> {
    std::str::from_utf8(bulk(v)?).ok()
}

pub(crate) fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// One call of the publish script for `channel` (single and pipelined
/// publishes build it alike). `flag`: [`RedisScaler::cluster_flag`].
fn publish_call(
    keys: &crate::keys::Keys,
    channel: &str,
    payload: &Bytes,
    options: &PublishOptions,
    flag: &str,
) -> scripts::Invocation<'static> {
    let mut call = scripts::PUBLISH.prepare_invoke();
    call.key(keys.channel_meta(channel))
        .key(keys.channel_stream(channel))
        .arg(payload.as_ref())
        .arg(options.history_size.min(i64::MAX as usize))
        .arg(ms(options.history_ttl))
        .arg(new_epoch())
        .arg(keys.topic_channel(&Topic::channel(channel)))
        .arg(flag);
    call
}

/// Parses a history stream id `<offset>-0`.
fn stream_offset(v: &Value) -> Option<u64> {
    text(v)?.split_once('-')?.0.parse().ok()
}

fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl RedisScaler {
    /// Checks the configuration and connects (one command connection, checked
    /// with the first call). Fails with [`ScalerError::InvalidArgument`] for a bad
    /// configuration and [`ScalerError::Unavailable`] / [`ScalerError::Timeout`]
    /// when Redis cannot be reached within the command timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        if config.is_tls() {
            ensure_crypto_provider();
        }
        let pool = match (config.cluster_node_urls(), config.sentinel_spec()) {
            (Some(nodes), _) => Pool::new_cluster(nodes?, config.command_timeout)?,
            (None, Some(spec)) => {
                Pool::new_sentinel(spec?, config.pool_size, config.command_timeout)?
            }
            (None, None) => {
                let client = redis::Client::open(config.url.as_str()).map_err(|e| {
                    ScalerError::InvalidArgument(format!(
                        "invalid redis URL {}: {e}",
                        config.redacted_url()
                    ))
                })?;
                Pool::new(client, config.pool_size, config.command_timeout)?
            }
        };
        let pool = Arc::new(pool);
        pool.warm_up().await?;
        tracing::debug!(url = %config.redacted_url(), prefix = %config.prefix, "redis scaler connected");
        let inner = Arc::new(Inner {
            keys: Keys::new(&config.prefix),
            config,
            pool,
            counters: Arc::default(),
        });
        crate::sweep::spawn(Arc::downgrade(&inner), inner.config.sweep_interval);
        Ok(Self { inner })
    }

    /// Counters of this scaler and its feeds (dropped events, overflows,
    /// interruptions, probes...).
    pub fn stats(&self) -> RedisStats {
        self.inner.counters.snapshot()
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// True on a Redis Cluster: sharded pub/sub, and a new epoch when another
    /// node runs a channel's scripts.
    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.pool.cluster_nodes().is_some()
    }

    /// The script argument saying how the server identifies itself: a
    /// cluster (`1`: node id, sharded pub/sub), a Sentinel-watched primary
    /// (`2`: run id), a single server (`0`: not at all).
    fn cluster_flag(&self) -> &'static str {
        if self.is_cluster() {
            "1"
        } else if self.inner.pool.is_sentinel() {
            "2"
        } else {
            "0"
        }
    }

    /// The registry's live registrations (JSON) and the ids found gone by this
    /// read (each reported by exactly one read; their presence must be swept).
    pub(crate) async fn read_registry(&self) -> Result<(Vec<Vec<u8>>, Vec<String>)> {
        let keys = self.keys();
        let mut call = scripts::INSTANCES.prepare_invoke();
        call.key(keys.instance_index())
            .arg(keys.instance_key_prefix());
        self.pool().script(&call).await
    }

    fn feed_settings(&self) -> FeedSettings {
        let c = &self.inner.config;
        FeedSettings {
            timeout: c.command_timeout,
            batch: c.subscribe_batch,
            probe_interval: c.probe_interval,
            probe_timeout: c.probe_timeout,
            reconnect_min: c.reconnect_min,
            reconnect_max: c.reconnect_max,
            queue_capacity: c.feed_queue_capacity,
        }
    }
}

#[async_trait]
impl Scaler for RedisScaler {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<()> {
        self.pool()
            .query::<String>(&redis::cmd("PING"))
            .await
            .map(drop)
    }

    async fn open_feed(&self, instance_id: &str) -> Result<Feed> {
        if self.is_cluster() {
            return crate::shard_feed::open(
                self.inner.pool.clone(),
                self.keys().clone(),
                self.feed_settings(),
                self.inner.counters.clone(),
                instance_id,
            )
            .await;
        }
        feed::open(
            self.inner.pool.clone(),
            self.keys().clone(),
            self.feed_settings(),
            self.inner.counters.clone(),
            instance_id,
        )
        .await
    }

    async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<StreamPosition> {
        check_channel(channel)?;
        let call = publish_call(self.keys(), channel, &payload, options, self.cluster_flag());
        let (offset, epoch): (String, String) = self.pool().script(&call).await?;
        let offset = offset.parse().map_err(|_| backend("publish offset"))?;
        Ok(StreamPosition::new(offset, epoch))
    }

    /// One pipeline of the publish script on one connection: one write, one
    /// round trip, applied in order. If the connection fails part way, what
    /// Redis applied is a prefix of the batch, and nothing is sent again. On a
    /// Redis Cluster the channels of a batch live on different shards, so
    /// there is no one connection to keep their order on: one at a time.
    async fn publish_ordered(
        &self,
        items: &[(String, Bytes)],
        options: &PublishOptions,
    ) -> Vec<Result<StreamPosition>> {
        if self.is_cluster()
            || items.len() < 2
            || items.iter().any(|(c, _)| check_channel(c).is_err())
        {
            // Nothing to gain, or per-item errors to report: one at a time.
            let mut results = Vec::with_capacity(items.len());
            let mut broken = false;
            for (channel, payload) in items {
                let result = if broken {
                    Err(ScalerError::unavailable(
                        "an earlier publish of the batch failed; this one was not sent",
                    ))
                } else {
                    self.publish(channel, payload.clone(), options).await
                };
                broken |=
                    matches!(&result, Err(e) if !matches!(e, ScalerError::InvalidArgument(_)));
                results.push(result);
            }
            return results;
        }
        let keys = self.keys();
        let flag = self.cluster_flag();
        let calls: Vec<_> = items
            .iter()
            .map(|(channel, payload)| publish_call(keys, channel, payload, options, flag))
            .collect();
        // By hash (`EVALSHA`); and, for a server that has not loaded the
        // script, the first by source (`EVAL` loads it there) and the rest by
        // hash. Errors are read per command, so one failed publish does not
        // hide the others' results.
        let pipeline = |first_by_source: bool| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (i, call) in calls.iter().enumerate() {
                pipe.add_command(call.cmd(first_by_source && i == 0));
            }
            pipe
        };
        let (by_hash, by_source) = (pipeline(false), pipeline(true));
        let (by_hash, by_source) = (&by_hash, &by_source);
        type Reply = Vec<redis::RedisResult<(String, String)>>;
        let no_script = |r: &redis::RedisResult<(String, String)>| matches!(r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript));
        let replies = self
            .pool()
            .run(|mut conn| async move {
                let replies: Reply = by_hash.query_async(&mut conn).await?;
                // Only when every command failed for want of the script did
                // none of them run; then sending them again applies each once.
                // (A mix, the script loaded by another connection meanwhile,
                // reports those publishes as failed rather than risk a repeat.)
                if replies.iter().all(no_script) {
                    return by_source.query_async::<Reply>(&mut conn).await;
                }
                Ok(replies)
            })
            .await;
        let timeout = self.inner.config.command_timeout;
        match replies {
            Ok(replies) if replies.len() == items.len() => replies
                .into_iter()
                .map(|reply| {
                    let (offset, epoch) = reply.map_err(|e| crate::pool::map_error(e, timeout))?;
                    let offset = offset.parse().map_err(|_| backend("publish offset"))?;
                    Ok(StreamPosition::new(offset, epoch))
                })
                .collect(),
            Ok(_) => items
                .iter()
                .map(|_| Err(backend("publish pipeline answer count")))
                .collect(),
            Err(e) => items.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn send(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        check_send_topic(topic)?;
        let mut cmd = redis::cmd(if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(self.keys().topic_channel(topic))
            .arg(payload.as_ref());
        self.pool().query::<i64>(&cmd).await.map(drop)
    }

    async fn history(&self, channel: &str, request: &HistoryRequest) -> Result<HistoryPage> {
        check_channel(channel)?;
        let keys = self.keys();
        let mut call = scripts::HISTORY.prepare_invoke();
        call.key(keys.channel_meta(channel))
            .key(keys.channel_stream(channel))
            .arg(new_epoch())
            .arg(ms(request.ttl));
        match &request.since {
            Some(since) => call
                .arg(since.offset)
                .arg(&*since.epoch)
                .arg(request.limit.min(i64::MAX as usize))
                .arg(format!("{}-0", since.offset.saturating_add(1))),
            None => call.arg("").arg("").arg(0).arg(""),
        };
        call.arg(self.cluster_flag());
        let reply: Value = self.pool().script(&call).await?;
        let Value::Array(items) = reply else {
            return Err(backend("history reply is not an array"));
        };
        let (Some(epoch), Some(top), Some(recovered)) = (
            items.first().and_then(text),
            items.get(1).and_then(number),
            items.get(2).and_then(number),
        ) else {
            return Err(backend("history header"));
        };
        let epoch: Arc<str> = Arc::from(epoch);
        let channel: Arc<str> = Arc::from(channel);
        let mut publications = Vec::with_capacity(items.len().saturating_sub(3) / 2);
        for pair in items[3..].chunks(2) {
            let [id, payload] = pair else {
                return Err(backend("history entries"));
            };
            let (Some(offset), Some(payload)) = (stream_offset(id), bulk(payload)) else {
                return Err(backend("history entry"));
            };
            publications.push(Publication {
                channel: channel.clone(),
                offset,
                epoch: epoch.clone(),
                payload: Bytes::copy_from_slice(payload),
            });
        }
        Ok(HistoryPage {
            top: StreamPosition { offset: top, epoch },
            publications,
            recovered: recovered == 1,
        })
    }

    async fn register_instance(&self, info: &InstanceInfo, ttl: Duration) -> Result<()> {
        let keys = self.keys();
        let mut call = scripts::REGISTER.prepare_invoke();
        call.key(keys.instance(&info.id))
            .key(keys.instance_index())
            .arg(records::encode_instance(info))
            .arg(ms(ttl))
            .arg(&info.id);
        self.pool().script::<i64>(&call).await.map(drop)
    }

    async fn unregister_instance(&self, id: &str) -> Result<()> {
        let keys = self.keys();
        let mut call = scripts::UNREGISTER.prepare_invoke();
        call.key(keys.instance(id))
            .key(keys.instance_index())
            .arg(id);
        self.pool().script::<i64>(&call).await?;
        self.sweep_presence_later(vec![id.to_owned()]);
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        let (raw, gone) = self.read_registry().await?;
        self.sweep_presence_later(gone);
        Ok(raw
            .iter()
            .filter_map(|r| {
                let info = records::decode_instance(r);
                if info.is_none() {
                    tracing::warn!("ignoring a malformed instance registration in redis");
                }
                info
            })
            .collect())
    }

    async fn acquire_lease(&self, key: &str, owner: &str, ttl: Duration) -> Result<LeaseOutcome> {
        self.lease_acquire(key, owner, ttl).await
    }

    async fn renew_lease(&self, key: &str, owner: &str, token: u64, ttl: Duration) -> Result<bool> {
        self.lease_renew(key, owner, token, ttl).await
    }

    async fn release_lease(&self, key: &str, owner: &str, token: u64) -> Result<bool> {
        self.lease_release(key, owner, token).await
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        self.lease_get(key).await
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<(String, Lease)>> {
        self.lease_list(prefix).await
    }

    async fn presence_add(&self, channel: &str, entry: &PresenceEntry) -> Result<()> {
        self.presence_put(channel, entry).await
    }

    async fn presence_remove(&self, channel: &str, client: &str) -> Result<()> {
        self.presence_delete(channel, client).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>> {
        self.presence_list(channel).await
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Versioned>> {
        self.item_get(key).await
    }

    async fn kv_put(&self, key: &str, value: Bytes, options: &PutOptions) -> Result<u64> {
        self.item_put(key, value, options).await
    }

    async fn kv_delete(&self, key: &str, mode: PutMode) -> Result<bool> {
        self.item_delete(key, mode).await
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        self.item_list(prefix).await
    }
}
