//! This instance in the scaler's registry: a heartbeat while it runs, leaving
//! when it stops, and a cached view of the live instances for routing.

use super::{Hub, bounded, lock};
use scaled_sockets_scaler::{InstanceInfo, ScalerError, types::now_ms};
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

impl Hub {
    pub(super) async fn heartbeat(&self) -> Result<(), ScalerError> {
        let info = InstanceInfo {
            id: self.id.to_string(),
            address: self.config.advertised_address.clone(),
            connections: self.connection_count() as u64,
            cores: self.cores_hosted.load(std::sync::atomic::Ordering::Relaxed),
            updated_at_ms: now_ms(),
        };
        let ttl = self.config.heartbeat_interval * 5;
        self.scaler.register_instance(&info, ttl).await
    }

    /// The ids of the live instances, read from the registry at most once per
    /// heartbeat interval. When `expecting` is absent from a cached view that
    /// is not brand new, the registry is read again: it may have just joined.
    pub(crate) async fn live_instance_ids(
        &self,
        expecting: Option<&str>,
    ) -> Result<Arc<HashSet<String>>, ScalerError> {
        let max_age = self.config.heartbeat_interval;
        let cached = lock(&self.live_instances).clone();
        if let Some((read_at, ids)) = cached {
            let fresh = read_at.elapsed() < max_age;
            let recent = read_at.elapsed() < Duration::from_millis(100);
            if fresh && (recent || expecting.is_none_or(|id| ids.contains(id))) {
                return Ok(ids);
            }
        }
        let list = self.scaler.instances().await?;
        let ids: Arc<HashSet<String>> = Arc::new(list.into_iter().map(|i| i.id).collect());
        *lock(&self.live_instances) = Some((Instant::now(), ids.clone()));
        Ok(ids)
    }
}

/// Refreshes the registry entry every heartbeat interval until shutdown, then
/// closes the remaining connections and leaves the registry. Leaving here, in
/// the same task, means no heartbeat can be in flight afterwards and put the
/// entry back.
pub(super) async fn run_heartbeat(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(hub.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = hub.heartbeat().await {
            tracing::warn!(error = %e, "instance heartbeat failed");
        }
    }
    // A server dropped without draining still has connections: they must not
    // stay attached to an instance that left the cluster.
    hub.close_all(crate::protocol::close::RESTARTING, "instance stopping");
    let limit = hub.config.scaler_timeout.min(Duration::from_secs(1));
    if let Err(e) = bounded(limit, hub.scaler.unregister_instance(&hub.id)).await {
        tracing::warn!(error = %e, "could not leave the cluster registry; the entry will expire");
    }
}
