//! [`NatsConfig`]: where the NATS server is and how the scaler lays out its state.

use scaled_sockets_scaler::ScalerError;
use std::time::Duration;

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
    /// Longest TTL of an instance registration or lease (the `max_age`
    /// of those buckets, default 24 h): longer TTLs are capped to it.
    pub max_record_ttl: Duration,
    /// JetStream replicas of every stream and bucket (default 1; use 3 on a NATS
    /// cluster).
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
            replicas: 1,
            connection_name: "scaled-sockets".into(),
            reconnect_max_delay: Duration::from_secs(1),
        }
    }
}

impl NatsConfig {
    /// The defaults with this server URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
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
