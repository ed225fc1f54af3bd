//! [`NatsScaler`]: the [`Scaler`] implementation.

use crate::{
    NatsConfig,
    conn::{ConnState, HasClient, spawn_driver},
    errors::{classify, suggests_missing_stream},
    feed,
    history::History,
    names::{Names, check_name, encode_token},
    records::{Bucket, Record},
};
use async_nats::{Client, ConnectOptions, connection::State, jetstream};
use async_trait::async_trait;
use bytes::Bytes;
use scaled_sockets_scaler::{
    Capabilities, Feed, HistoryPage, HistoryRequest, InstanceInfo, Lease, LeaseOutcome,
    PresenceEntry, PublishOptions, PutMode, PutOptions, Result, Scaler, ScalerError,
    StreamPosition, Topic, Versioned, check, records,
};
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, watch};

/// The NATS scaler: one core NATS connection for pub/sub, JetStream for channel
/// history and key-value buckets for the registry, leases, presence and the
/// key-value family.
///
/// Cheap to clone; clones share the connection. See the crate docs for the
/// layout and guarantees.
#[derive(Clone)]
pub struct NatsScaler {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsScaler")
            .field("url", &self.inner.config.url)
            .field("prefix", &self.inner.config.prefix)
            .field("connection", &self.inner.client.connection_state())
            .finish()
    }
}

pub(crate) struct Inner {
    config: NatsConfig,
    names: Names,
    client: Client,
    pub(crate) history: History,
    instances: Bucket,
    pub(crate) leases: Bucket,
    pub(crate) presence: Bucket,
    pub(crate) kv: Bucket,
    state: watch::Receiver<ConnState>,
    /// When streams were last checked after an error suggested one is missing.
    last_repair: std::sync::Mutex<Option<Instant>>,
}

impl Inner {
    /// Re-creates whatever stream vanished.
    async fn repair(&self) {
        let results = [
            self.history.repair().await,
            self.instances.repair().await,
            self.leases.repair().await,
            self.presence.repair().await,
            self.kv.repair().await,
        ];
        for err in results.into_iter().filter_map(Result::err) {
            tracing::warn!(%err, "re-creating a NATS stream failed");
        }
    }
}

impl HasClient for Inner {
    fn client(&self) -> &Client {
        &self.client
    }
}

fn decode_instance(record: &Record) -> Option<InstanceInfo> {
    let decoded = records::decode_instance(&record.value);
    if decoded.is_none() {
        tracing::warn!(key = %record.key, "skipping an unreadable registration");
    }
    decoded
}

/// How many compare-and-set rounds a lease operation tries before giving up
/// (each lost round means another owner wrote; the call's timeout bounds it too).
pub(crate) const CAS_ROUNDS: usize = 64;

impl NatsScaler {
    /// Connects to NATS and opens (creating when missing) the history stream and
    /// the buckets. Fails with [`ScalerError::Unavailable`] or
    /// [`ScalerError::Timeout`] when the server cannot be reached, and with
    /// [`ScalerError::InvalidArgument`] for a bad configuration.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let timeout = config.request_timeout;
        // Connecting opens a stream and four buckets: allow a few round trips.
        let budget = timeout * 4;
        match tokio::time::timeout(budget, Self::connect_inner(config)).await {
            Ok(result) => result,
            Err(_) => Err(ScalerError::Timeout(budget)),
        }
    }

    async fn connect_inner(config: NatsConfig) -> Result<Self> {
        let timeout = config.request_timeout;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let max_delay = config.reconnect_max_delay;
        let options = ConnectOptions::new()
            .name(&config.connection_name)
            .request_timeout(Some(timeout))
            .connection_timeout(timeout)
            .ping_interval(Duration::from_secs(10))
            .reconnect_delay_callback(move |attempts| {
                max_delay.min(Duration::from_millis(50 * attempts as u64))
            })
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event);
                }
            });
        let urls: Vec<String> = config
            .url
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let client = options.connect(urls.as_slice()).await.map_err(|e| {
            ScalerError::unavailable(format!("connect to NATS at {}: {e}", config.url))
                .with_source(e)
        })?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        jetstream_info(&client, timeout).await?;
        let names = Names::new(&config.prefix);
        let history = History::open(&js, &names, &config).await?;
        let record_age = config.max_record_ttl;
        let replicas = config.replicas;
        let instances =
            Bucket::open(&js, &names.instances_bucket, record_age, replicas, timeout).await?;
        let leases = Bucket::open(&js, &names.leases_bucket, record_age, replicas, timeout).await?;
        let presence = Bucket::open(
            &js,
            &names.presence_bucket,
            Duration::ZERO,
            replicas,
            timeout,
        )
        .await?;
        // No age limit: values without a TTL live until deleted.
        let kv = Bucket::open(&js, &names.kv_bucket, Duration::ZERO, replicas, timeout).await?;
        let (state_tx, state_rx) = watch::channel(ConnState {
            connected: client.connection_state() == State::Connected,
            generation: 0,
            slow: 0,
        });
        let inner = Arc::new(Inner {
            config,
            names,
            client,
            history,
            instances,
            leases,
            presence,
            kv,
            state: state_rx,
            last_repair: std::sync::Mutex::new(None),
        });
        // Events that happened while setting up wait in the channel and are
        // replayed now, against the real connection state.
        spawn_driver(Arc::downgrade(&inner), events_rx, state_tx, timeout);
        crate::sweep::spawn(Arc::downgrade(&inner), inner.config.sweep_interval);
        Ok(Self { inner })
    }

    /// The configuration this scaler was built with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The underlying connection (for diagnostics; do not close it).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Runs one scaler operation: fails at once while the connection is down, and
    /// with [`ScalerError::Timeout`] when it takes longer than the request timeout.
    pub(crate) async fn call<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        self.ensure_connected()?;
        let result = match tokio::time::timeout(self.timeout(), op).await {
            Ok(result) => result,
            Err(_) => Err(ScalerError::Timeout(self.timeout())),
        };
        if let Err(err) = &result
            && suggests_missing_stream(err)
        {
            self.repair_soon();
        }
        result
    }

    /// Checks (and re-creates) the streams in the background, at most once a
    /// second.
    fn repair_soon(&self) {
        let Ok(mut last) = self.inner.last_repair.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
        drop(last);
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.repair().await });
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    fn ensure_connected(&self) -> Result<()> {
        match self.inner.client.connection_state() {
            State::Connected => Ok(()),
            other => Err(ScalerError::unavailable(format!(
                "NATS connection is {other}"
            ))),
        }
    }

    async fn live_instance_ids(&self) -> Result<HashSet<String>> {
        Ok(self
            .list_instances()
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect())
    }

    pub(crate) async fn list_instances(&self) -> Result<Vec<InstanceInfo>> {
        let records = self.inner.instances.scan(">").await?;
        let mut out = Vec::with_capacity(records.len());
        let mut gone = Vec::new();
        for record in records {
            if record.expired {
                self.inner
                    .instances
                    .remove_later_if(&record.key, record.revision);
                gone.extend(crate::names::decode_token(&record.key));
                continue;
            }
            if let Some(info) = decode_instance(&record) {
                out.push(info);
            }
        }
        self.sweep_presence_later(gone);
        Ok(out)
    }
}

/// One JetStream API round trip (`$JS.API.INFO`): proves the server answers and
/// JetStream is enabled. (async-nats' `query_account` expects fields NATS 2.9
/// does not send.)
async fn jetstream_info(client: &Client, timeout: Duration) -> Result<()> {
    let reply = client
        .request("$JS.API.INFO", Bytes::new())
        .await
        .map_err(|e| classify("JetStream info (is JetStream enabled?)", &e, timeout))?;
    let value: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| ScalerError::backend("JetStream info").with_source(e))?;
    match value.get("error") {
        None => Ok(()),
        Some(error) => Err(ScalerError::unavailable(format!("JetStream info: {error}"))),
    }
}

fn check_channel(channel: &str) -> Result<()> {
    check::check_channel(channel)?;
    check_name(channel, "channel name")
}

fn presence_key(channel: &str, client: &str) -> String {
    format!("{}.{}", encode_token(channel), encode_token(client))
}

#[async_trait]
impl Scaler for NatsScaler {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            history: true,
            survives_backend_restart: true,
        }
    }

    async fn ping(&self) -> Result<()> {
        let timeout = self.timeout();
        self.call(jetstream_info(&self.inner.client, timeout)).await
    }

    async fn open_feed(&self, instance_id: &str) -> Result<Feed> {
        self.ensure_connected()?;
        tracing::debug!(instance = instance_id, "opening NATS feed");
        Ok(feed::open(feed::FeedContext {
            client: self.inner.client.clone(),
            names: self.inner.names.clone(),
            state: self.inner.state.clone(),
            timeout: self.timeout(),
            keep_alive: self.inner.clone(),
        }))
    }

    async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        options: &PublishOptions,
    ) -> Result<StreamPosition> {
        check_channel(channel)?;
        self.call(self.inner.history.publish(channel, payload, options))
            .await
    }

    async fn send(&self, topic: &Topic, payload: Bytes) -> Result<()> {
        check::check_send_topic(topic)?;
        check_name(topic.name(), "topic name")?;
        let subject = self.inner.names.topic_subject(topic);
        let timeout = self.timeout();
        self.call(async {
            self.inner
                .client
                .publish(subject, payload)
                .await
                .map_err(|e| classify("send", &e, timeout))
        })
        .await
    }

    async fn history(&self, channel: &str, request: &HistoryRequest) -> Result<HistoryPage> {
        check_channel(channel)?;
        self.call(self.inner.history.history(channel, request))
            .await
    }

    async fn register_instance(&self, info: &InstanceInfo, ttl: Duration) -> Result<()> {
        check_name(&info.id, "instance id")?;
        let value = Bytes::from(records::encode_instance(info));
        self.call(async {
            self.inner
                .instances
                .put(&encode_token(&info.id), value, Some(ttl))
                .await
                .map(drop)
        })
        .await
    }

    async fn unregister_instance(&self, id: &str) -> Result<()> {
        check_name(id, "instance id")?;
        self.call(self.inner.instances.remove(&encode_token(id)))
            .await?;
        self.sweep_presence_later(vec![id.to_owned()]);
        Ok(())
    }

    async fn instances(&self) -> Result<Vec<InstanceInfo>> {
        self.call(self.list_instances()).await
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
        check_name(channel, "channel name")?;
        check_name(&entry.client, "client id")?;
        let value = Bytes::from(records::encode_presence(entry));
        let key = presence_key(channel, &entry.client);
        self.call(async { self.inner.presence.put(&key, value, None).await.map(drop) })
            .await
    }

    async fn presence_remove(&self, channel: &str, client: &str) -> Result<()> {
        check_name(channel, "channel name")?;
        check_name(client, "client id")?;
        let key = presence_key(channel, client);
        self.call(self.inner.presence.remove(&key)).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>> {
        check_name(channel, "channel name")?;
        let pattern = format!("{}.*", encode_token(channel));
        self.call(async {
            let found = self.inner.presence.scan(&pattern).await?;
            if found.is_empty() {
                return Ok(Vec::new());
            }
            let live = self.live_instance_ids().await?;
            let mut entries = Vec::with_capacity(found.len());
            let mut revisions = HashMap::with_capacity(found.len());
            for record in found {
                match records::decode_presence(None, &record.value) {
                    Some(entry) => {
                        revisions.insert(entry.client.clone(), (record.key, record.revision));
                        entries.push(entry);
                    }
                    None => {
                        tracing::warn!(key = %record.key, "skipping an unreadable presence entry")
                    }
                }
            }
            let (kept, stale) = records::split_live(entries, &live);
            for client in stale {
                // Its instance left the registry: clean up lazily.
                if let Some((key, revision)) = revisions.get(&client) {
                    self.inner.presence.remove_later_if(key, *revision);
                }
            }
            Ok(kept)
        })
        .await
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
