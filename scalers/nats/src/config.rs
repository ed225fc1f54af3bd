//! [`NatsConfig`]: where the NATS server is and how the scaler lays out its state.

use scaled_sockets_scaler::ScalerError;
use std::time::Duration;

/// Default [`NatsConfig::max_history_bytes`]: 1 GiB.
pub const DEFAULT_MAX_HISTORY_BYTES: u64 = 1 << 30;
/// Default [`NatsConfig::max_publication_bytes`]: 64 KiB, the server's default
/// data limit.
pub const DEFAULT_MAX_PUBLICATION_BYTES: usize = 64 * 1024;
/// Default [`NatsConfig::sweep_interval`]: 30 s.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Room for the scaler's own headers on top of a publication's payload in the
/// history stream's `max_msg_size`.
pub const HEADER_ROOM_BYTES: usize = 4096;

/// How a [`crate::NatsScaler`] connects and where it keeps its state.
///
/// Every instance of one cluster must use the same `url` (or servers of one NATS
/// cluster) and the same `prefix`; the other settings are applied to the streams
/// and buckets when they are created, and updated by the instance that connects
/// last when they differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222`; several may be given separated
    /// by commas.
    pub url: String,
    /// Prefix of every subject, stream and bucket name (default `"ss"`). Only
    /// ASCII letters, digits, `-` and `_`, at most 32 characters. Two clusters
    /// sharing one NATS account use different prefixes.
    pub prefix: String,
    /// Upper bound of every scaler call (default 3 s): a NATS server that does not
    /// answer yields [`ScalerError::Timeout`] or [`ScalerError::Unavailable`] within
    /// it, never a hang.
    pub request_timeout: Duration,
    /// Most publications the history stream keeps per channel (the stream's
    /// `max_msgs_per_subject`, default 1000). `PublishOptions::history_size` above
    /// it is capped to it; below it is honoured exactly.
    pub max_history_size: u64,
    /// Longest history TTL (the history stream's `max_age`, default 24 h).
    /// `PublishOptions::history_ttl` above it is capped to it; below it is honoured
    /// exactly.
    pub max_history_ttl: Duration,
    /// Most bytes the history stream holds over all channels (its `max_bytes`,
    /// default [`DEFAULT_MAX_HISTORY_BYTES`], 1 GiB). When it is full the oldest
    /// publications (of any channel) are discarded; a channel that loses
    /// publications answers `recovered: false` for them, and one that loses its
    /// last message starts a new epoch.
    pub max_history_bytes: u64,
    /// Largest publication payload (default [`DEFAULT_MAX_PUBLICATION_BYTES`],
    /// 64 KiB, the server's default `--max-data-bytes`). A larger publish fails
    /// with [`ScalerError::InvalidArgument`]; the stream's `max_msg_size` is this
    /// plus room for the scaler's headers.
    pub max_publication_bytes: usize,
    /// How often each scaler sweeps what expired but is still stored (default
    /// [`DEFAULT_SWEEP_INTERVAL`], 30 s): expired key-value entries and
    /// registrations, presence entries of instances that left the registry,
    /// and channels whose history TTL passed (epoch markers of channels that
    /// were only read included). Such state is physically gone at most this
    /// long (plus one sweep's duration) after it expired.
    pub sweep_interval: Duration,
    /// Longest TTL of an instance registration or lease (the `max_age`
    /// of those buckets, default 24 h): longer TTLs are capped to it.
    pub max_record_ttl: Duration,
    /// JetStream replicas of every stream and bucket (default 1, or 3 when
    /// the URL names three or more servers; see [`NatsConfig::from_url`]).
    pub replicas: usize,
    /// Connection name shown by the NATS server (`connz`); default
    /// `scaled-sockets`.
    pub connection_name: String,
    /// Longest wait between two reconnect attempts (default 1 s). Attempts go on
    /// forever.
    pub reconnect_max_delay: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "ss".into(),
            request_timeout: Duration::from_secs(3),
            max_history_size: 1000,
            max_history_ttl: Duration::from_secs(24 * 3600),
            max_record_ttl: Duration::from_secs(24 * 3600),
            max_history_bytes: DEFAULT_MAX_HISTORY_BYTES,
            max_publication_bytes: DEFAULT_MAX_PUBLICATION_BYTES,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            replicas: 1,
            connection_name: "scaled-sockets".into(),
            reconnect_max_delay: Duration::from_secs(1),
        }
    }
}

impl NatsConfig {
    /// The defaults with this server URL. A URL naming three or more servers
    /// (`nats://a:4222,nats://b:4222,nats://c:4222`, or `nats://a:4222,b:4222,c:4222`)
    /// is taken for a NATS cluster: [`NatsConfig::replicas`] is then 3, so
    /// history and every bucket survive the loss of one server with nothing
    /// acknowledged lost (JetStream acknowledges a write once a majority of
    /// the replicas stored it).
    pub fn from_url(url: impl Into<String>) -> Self {
        let url = url.into();
        let servers = url.split(',').filter(|u| !u.trim().is_empty()).count();
        Self {
            replicas: if servers >= 3 { 3 } else { 1 },
            url,
            ..Self::default()
        }
    }

    /// Sets [`NatsConfig::prefix`].
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`NatsConfig::request_timeout`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`NatsConfig::max_history_size`].
    pub fn with_max_history_size(mut self, size: u64) -> Self {
        self.max_history_size = size;
        self
    }

    /// Sets [`NatsConfig::max_history_ttl`].
    pub fn with_max_history_ttl(mut self, ttl: Duration) -> Self {
        self.max_history_ttl = ttl;
        self
    }

    /// Sets [`NatsConfig::max_history_bytes`].
    pub fn with_max_history_bytes(mut self, bytes: u64) -> Self {
        self.max_history_bytes = bytes;
        self
    }

    /// Sets [`NatsConfig::max_publication_bytes`].
    pub fn with_max_publication_bytes(mut self, bytes: usize) -> Self {
        self.max_publication_bytes = bytes;
        self
    }

    /// Sets [`NatsConfig::sweep_interval`].
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Sets [`NatsConfig::replicas`].
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Checks the values; [`ScalerError::InvalidArgument`] names the first bad one.
    pub fn validate(&self) -> Result<(), ScalerError> {
        let bad = |what: &str| Err(ScalerError::InvalidArgument(what.to_owned()));
        if self.url.trim().is_empty() {
            return bad("NATS url is empty");
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 32
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("NATS prefix must be 1-32 ASCII letters, digits, '-' or '_'");
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be positive");
        }
        if self.max_history_size == 0 || self.max_history_size > i64::MAX as u64 {
            return bad("max_history_size must be at least 1");
        }
        if self.max_history_ttl < Duration::from_secs(1) {
            return bad("max_history_ttl must be at least 1 s");
        }
        if self.max_record_ttl < Duration::from_secs(1) {
            return bad("max_record_ttl must be at least 1 s");
        }
        if self.max_publication_bytes == 0 || self.max_publication_bytes > 64 * 1024 * 1024 {
            return bad("max_publication_bytes must be 1 B..=64 MiB");
        }
        let smallest = ((self.max_publication_bytes + HEADER_ROOM_BYTES) as u64).max(1 << 20);
        if self.max_history_bytes < smallest || self.max_history_bytes > i64::MAX as u64 {
            return bad(
                "max_history_bytes must be at least 1 MiB and hold one largest publication",
            );
        }
        if self.sweep_interval < Duration::from_millis(100) {
            return bad("sweep_interval must be at least 100 ms");
        }
        if self.replicas == 0 || self.replicas > 5 {
            return bad("replicas must be 1..=5");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = NatsConfig::from_url("nats://127.0.0.1:1");
        assert_eq!(c.prefix, "ss");
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        c.validate().expect("valid");
        assert_eq!(c.replicas, 1);
    }

    #[test]
    fn three_servers_mean_three_replicas() {
        assert_eq!(NatsConfig::from_url("nats://a:1,nats://b:1").replicas, 1);
        assert_eq!(
            NatsConfig::from_url("nats://a:1,nats://b:1,nats://c:1").replicas,
            3
        );
        assert_eq!(NatsConfig::from_url("nats://a:1,b:1,c:1,d:1").replicas, 3);
        assert_eq!(
            NatsConfig::from_url("nats://a:1,b:1,c:1")
                .with_replicas(1)
                .replicas,
            1
        );
    }

    #[test]
    fn limits_are_checked() {
        let base = NatsConfig::from_url("nats://x:1");
        assert_eq!(base.max_publication_bytes, 65536);
        assert_eq!(base.max_history_bytes, 1 << 30);
        for bad in [
            base.clone().with_max_publication_bytes(0),
            base.clone().with_max_history_bytes(1000),
            base.clone().with_sweep_interval(Duration::from_millis(10)),
        ] {
            assert!(matches!(
                bad.validate(),
                Err(ScalerError::InvalidArgument(_))
            ));
        }
        base.with_max_history_bytes(1 << 20)
            .with_sweep_interval(Duration::from_millis(500))
            .validate()
            .expect("valid limits");
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for p in ["", "a.b", "a*", "a>", "a b", &"x".repeat(33)] {
            let c = NatsConfig::from_url("nats://x:1").with_prefix(p);
            assert!(c.validate().is_err(), "{p:?} accepted");
        }
        NatsConfig::from_url("nats://x:1")
            .with_prefix("my-app_2")
            .validate()
            .expect("valid prefix");
    }
}
