//! [`RedisConfig`]: where Redis is and how the scaler talks to it.

use redis::IntoConnectionInfo;
use scaled_sockets_scaler::{FEED_QUEUE_CAPACITY, Result, ScalerError};
use std::{fmt, time::Duration};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "ss";
/// Default bound on every Redis call.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Default number of multiplexed command connections.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default quiet time after which a feed probes its subscriber connection.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a probe may take to come back before the connection counts as dead.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default number of topics per `SUBSCRIBE` command.
pub const DEFAULT_SUBSCRIBE_BATCH: usize = 500;
/// Default first reconnect delay of a feed (before jitter).
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Default cap on the reconnect delay of a feed.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Default [`RedisConfig::sweep_interval`].
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// How to reach Redis and how to behave towards it.
///
/// Build one with [`RedisConfig::from_url`] and adjust it with the `with_*`
/// methods (or by assigning the public fields).
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[[user]:pass@]host[:port][/db]` or `rediss://...` (TLS), or a
    /// Redis Cluster: `redis+cluster://[[user]:pass@]host:port[,host:port...]`
    /// (`rediss+cluster://` with TLS), any reachable nodes of it; or a primary
    /// watched by Redis Sentinel:
    /// `redis+sentinel://[[user]:pass@]host:port[,host:port...]/<service>[/db]`
    /// (the Sentinels' addresses, the monitored service name; the credentials
    /// and database are the primary's).
    pub url: String,
    /// Every key and pub/sub channel starts with `"{prefix}:"`. Must be non-empty
    /// and must not contain `{` or `}` (those would change the hash tag of keys).
    pub prefix: String,
    /// Bound on every Redis call, connecting included. A call that cannot complete
    /// in time fails with [`ScalerError::Timeout`] or
    /// [`ScalerError::Unavailable`].
    pub command_timeout: Duration,
    /// Number of multiplexed command connections (each pipelines any number of
    /// concurrent calls). The first is opened by [`crate::RedisScaler::connect`],
    /// the others on first use.
    pub pool_size: usize,
    /// A feed whose subscriber connection has received nothing for this long
    /// publishes a probe to its own probe channel.
    pub probe_interval: Duration,
    /// A probe not received back within this long marks the subscriber connection
    /// as dead: the feed is interrupted and reconnects.
    pub probe_timeout: Duration,
    /// Capacity of each feed's event queue.
    pub feed_queue_capacity: usize,
    /// Topics per `SUBSCRIBE` command when (re)subscribing many at once.
    pub subscribe_batch: usize,
    /// First reconnect delay of a feed; doubles per failed attempt (with jitter).
    pub reconnect_min: Duration,
    /// Cap on the reconnect delay of a feed.
    pub reconnect_max: Duration,
    /// How often each scaler sweeps what expired but is still indexed (default
    /// 30 s): registrations whose TTL passed and the presence entries of those
    /// instances, and expired names in the key-value indexes. Redis expires the
    /// keys themselves; the sweep bounds how long their index entries and the
    /// presence of crashed instances stay (at most this long, plus one sweep,
    /// after the expiry).
    pub sweep_interval: Duration,
}

impl RedisConfig {
    /// A configuration for this URL with every other setting at its default.
    ///
    /// Accepts `redis://[[user]:pass@]host[:port][/db]` and `rediss://` (TLS, with
    /// the Mozilla root certificates), and for a Redis Cluster
    /// `redis+cluster://[[user]:pass@]host:port[,host:port...]` (or
    /// `rediss+cluster://`): the seed nodes, from which the whole cluster is
    /// discovered. The URL is checked here; nothing connects.
    pub fn from_url(url: impl Into<String>) -> Result<Self> {
        let url = url.into();
        let scheme_ok = [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
            "redis+sentinel://",
        ]
        .iter()
        .any(|s| url.starts_with(s));
        if !scheme_ok {
            return Err(ScalerError::InvalidArgument(format!(
                "redis URL must start with redis://, rediss://, redis+cluster://, rediss+cluster:// or redis+sentinel://, got {}",
                redact(&url)
            )));
        }
        if let Some(spec) = sentinel_spec(&url) {
            spec?;
            return Ok(Self::with_defaults(url));
        }
        match cluster_nodes(&url) {
            Some(nodes) => {
                for node in nodes? {
                    node.as_str().into_connection_info().map_err(|e| {
                        ScalerError::InvalidArgument(format!(
                            "invalid redis cluster URL {}: {e}",
                            redact(&url)
                        ))
                    })?;
                }
            }
            None => {
                url.as_str().into_connection_info().map_err(|e| {
                    ScalerError::InvalidArgument(format!("invalid redis URL {}: {e}", redact(&url)))
                })?;
            }
        }
        Ok(Self::with_defaults(url))
    }

    /// Every setting at its default, for a URL already checked.
    fn with_defaults(url: String) -> Self {
        Self {
            url,
            prefix: DEFAULT_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            feed_queue_capacity: FEED_QUEUE_CAPACITY,
            subscribe_batch: DEFAULT_SUBSCRIBE_BATCH,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }

    /// Sets [`RedisConfig::sweep_interval`].
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the bound on every Redis call.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the number of command connections.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets the liveness probe's quiet interval and timeout.
    pub fn with_probe(mut self, interval: Duration, timeout: Duration) -> Self {
        self.probe_interval = interval;
        self.probe_timeout = timeout;
        self
    }

    /// Sets the capacity of each feed's event queue.
    pub fn with_feed_queue_capacity(mut self, capacity: usize) -> Self {
        self.feed_queue_capacity = capacity;
        self
    }

    /// Sets how many topics go into one `SUBSCRIBE`.
    pub fn with_subscribe_batch(mut self, batch: usize) -> Self {
        self.subscribe_batch = batch;
        self
    }

    /// Sets the feed reconnect backoff bounds.
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// True for `rediss://` and `rediss+cluster://` URLs.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://") || self.url.starts_with("rediss+cluster://")
    }

    /// True for a Redis Cluster URL (`redis+cluster://`, `rediss+cluster://`).
    pub fn is_cluster(&self) -> bool {
        cluster_nodes(&self.url).is_some()
    }

    /// True for a Redis Sentinel URL (`redis+sentinel://`).
    pub fn is_sentinel(&self) -> bool {
        self.url.starts_with("redis+sentinel://")
    }

    /// What a Sentinel URL names; `None` for other URLs.
    pub(crate) fn sentinel_spec(&self) -> Option<Result<SentinelSpec>> {
        sentinel_spec(&self.url)
    }

    /// The seed nodes of a Redis Cluster URL as one `redis://` (or `rediss://`)
    /// URL each, credentials included; `None` for a single-server URL.
    pub(crate) fn cluster_node_urls(&self) -> Option<Result<Vec<String>>> {
        cluster_nodes(&self.url)
    }

    /// Checks every setting; [`crate::RedisScaler::connect`] calls it.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &str| Err(ScalerError::InvalidArgument(what.to_owned()));
        if self.prefix.is_empty() {
            return invalid("redis key prefix must not be empty");
        }
        if self.prefix.contains(['{', '}']) {
            return invalid("redis key prefix must not contain '{' or '}'");
        }
        if self.command_timeout.is_zero() {
            return invalid("redis command timeout must be positive");
        }
        if self.pool_size == 0 {
            return invalid("redis pool size must be at least 1");
        }
        if self.probe_interval.is_zero() || self.probe_timeout.is_zero() {
            return invalid("redis probe interval and timeout must be positive");
        }
        if self.feed_queue_capacity == 0 {
            return invalid("feed queue capacity must be at least 1");
        }
        if self.subscribe_batch == 0 {
            return invalid("subscribe batch must be at least 1");
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return invalid("reconnect backoff needs 0 < min <= max");
        }
        if self.sweep_interval < Duration::from_millis(100) {
            return invalid("sweep interval must be at least 100 ms");
        }
        Ok(())
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("pool_size", &self.pool_size)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("feed_queue_capacity", &self.feed_queue_capacity)
            .field("subscribe_batch", &self.subscribe_batch)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

/// What a `redis+sentinel://` URL names.
#[derive(Clone, Debug)]
pub(crate) struct SentinelSpec {
    /// One `redis://host:port` per Sentinel.
    pub(crate) sentinels: Vec<String>,
    /// The monitored service (master name).
    pub(crate) service: String,
    /// `redis://[userinfo@]127.0.0.1/<db>`: carries the primary's credentials
    /// and database (its address is the Sentinels' to give).
    pub(crate) primary: String,
}

/// Parses `redis+sentinel://[userinfo@]h1:p1[,h2:p2]/service[/db]`.
fn sentinel_spec(url: &str) -> Option<Result<SentinelSpec>> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    let invalid = |why: &str| {
        Err(ScalerError::InvalidArgument(format!(
            "invalid redis sentinel URL {}: {why}",
            redact(url)
        )))
    };
    let Some((authority, path)) = rest.split_once('/') else {
        return Some(invalid("the service name is missing (.../<service>)"));
    };
    let (service, db) = path.split_once('/').unwrap_or((path, "0"));
    if service.is_empty() {
        return Some(invalid("the service name is empty"));
    }
    if db.parse::<u16>().is_err() {
        return Some(invalid("the database must be a number"));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        let node = format!("redis://{host}");
        if host.is_empty() || !host.contains(':') || node.as_str().into_connection_info().is_err() {
            return Some(invalid("every Sentinel needs host:port"));
        }
        sentinels.push(node);
    }
    let primary = match userinfo {
        Some(u) => format!("redis://{u}@127.0.0.1/{db}"),
        None => format!("redis://127.0.0.1/{db}"),
    };
    if primary.as_str().into_connection_info().is_err() {
        return Some(invalid("bad credentials"));
    }
    Some(Ok(SentinelSpec {
        sentinels,
        service: service.to_owned(),
        primary,
    }))
}

/// Splits `redis+cluster://[userinfo@]h1:p1,h2:p2[/]` into one node URL per
/// host; `None` when the URL is not a cluster URL.
fn cluster_nodes(url: &str) -> Option<Result<Vec<String>>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss+cluster://")?)
    };
    let invalid = |why: &str| {
        Err(ScalerError::InvalidArgument(format!(
            "invalid redis cluster URL {}: {why}",
            redact(url)
        )))
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() && path != "0" {
        return Some(invalid("a Redis Cluster has only database 0"));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() || !host.contains(':') {
            return Some(invalid("every node needs host:port"));
        }
        nodes.push(match userinfo {
            Some(u) => format!("{scheme}://{u}@{host}"),
            None => format!("{scheme}://{host}"),
        });
    }
    Some(Ok(nodes))
}

/// Hides the userinfo part of a URL (`redis://:secret@host` -> `redis://***@host`).
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end + 3], &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_url_forms() {
        for url in [
            "redis://127.0.0.1:6390",
            "redis://:secret@127.0.0.1:6390",
            "redis://user:secret@127.0.0.1:6390/2",
            "redis://localhost",
            "rediss://cache.example.com:6380/0",
            "redis+cluster://127.0.0.1:7000",
            "redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
            "rediss+cluster://cache.example.com:7000/",
            "redis+sentinel://127.0.0.1:26379/mymaster",
            "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/main/2",
        ] {
            let c = RedisConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(c.prefix, "ss");
            assert_eq!(c.command_timeout, Duration::from_secs(3));
            assert_eq!(c.feed_queue_capacity, FEED_QUEUE_CAPACITY);
            c.validate().expect("defaults are valid");
        }
        assert!(RedisConfig::from_url("rediss://h:1").expect("tls").is_tls());
        assert!(
            !RedisConfig::from_url("redis://h:1")
                .expect("plain")
                .is_tls()
        );
        let c = RedisConfig::from_url("redis+cluster://u:pw@a:1,b:2").expect("cluster");
        assert!(c.is_cluster());
        assert_eq!(
            c.cluster_node_urls().expect("cluster").expect("nodes"),
            ["redis://u:pw@a:1", "redis://u:pw@b:2"]
        );
        assert!(
            !RedisConfig::from_url("redis://h:1")
                .expect("plain")
                .is_cluster()
        );
    }

    #[test]
    fn rejects_bad_urls_and_settings() {
        for url in [
            "http://127.0.0.1",
            "127.0.0.1:6379",
            "redis://h:notaport",
            "redis+cluster://h:1,,h:2",
            "redis+cluster://h",
            "redis+cluster://h:1/2",
            "redis+cluster://h:x",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h/svc",
            "redis+sentinel://h:1/svc/x",
        ] {
            assert!(
                matches!(
                    RedisConfig::from_url(url),
                    Err(ScalerError::InvalidArgument(_))
                ),
                "{url}"
            );
        }
        let c = RedisConfig::from_url("redis://h").expect("url");
        assert!(c.clone().with_prefix("").validate().is_err());
        assert!(c.clone().with_prefix("a{b").validate().is_err());
        assert!(c.clone().with_pool_size(0).validate().is_err());
        assert!(c.clone().with_feed_queue_capacity(0).validate().is_err());
        assert!(
            c.clone()
                .with_command_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let c = RedisConfig::from_url("redis://user:hunter2@127.0.0.1:6390/1").expect("url");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://***@127.0.0.1:6390/1"), "{shown}");
    }
}
