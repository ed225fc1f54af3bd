//! What the Redis failover tests (Cluster failover, resharding, Sentinel)
//! share.

use scaled_sockets_redis::{RedisConfig, RedisScaler};
use scaled_sockets_scaler::Scaler;
use std::{sync::Arc, time::Duration};

/// A scaler instance on `url` tuned to notice a failover quickly: commands
/// time out after 2 s, the connection is probed every 500 ms, reconnects back
/// off from 100 ms to 1 s.
pub async fn failover_scaler(url: &str, prefix: &str) -> Arc<dyn Scaler> {
    let config = RedisConfig::from_url(url)
        .expect("url")
        .with_prefix(prefix)
        .with_command_timeout(Duration::from_secs(2))
        .with_probe(Duration::from_millis(500), Duration::from_secs(2))
        .with_reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1));
    Arc::new(RedisScaler::connect(config).await.expect("connect"))
}

/// `n` such instances sharing `prefix`.
pub async fn failover_instances(url: &str, prefix: &str, n: usize) -> Vec<Arc<dyn Scaler>> {
    let mut instances = Vec::with_capacity(n);
    for _ in 0..n {
        instances.push(failover_scaler(url, prefix).await);
    }
    instances
}
