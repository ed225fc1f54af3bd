//! The sweep: what expired is removed from NATS, not only hidden.
//!
//! NATS 2.9 has no per-message TTL, and a stream has one `max_age`, while
//! every registration, key-value entry and channel has its own TTL. Reads
//! already treat expired records as absent and remove what they find, but
//! state nobody reads again (a session that was never resumed, a channel
//! that was only read, the presence of an instance that crashed) would stay
//! stored until a stream limit, or forever in the buckets without `max_age`.
//!
//! So every scaler runs one background task that, every
//! [`crate::NatsConfig::sweep_interval`] (with up to 10 % jitter, so the
//! instances of a cluster spread out), removes:
//! 1. registrations whose TTL passed, and the presence entries of those
//!    instances (through the registry read, `list_instances`);
//! 2. presence entries naming an instance that is not registered, once two
//!    consecutive rounds found the same entry (same revision) orphaned: an
//!    instance that registers during a round is seen by the next one, so no
//!    live entry is removed for being read between the two scans;
//! 3. key-value entries whose TTL passed (sessions included);
//! 4. channels whose history TTL passed (see `history::sweep`).
//!
//! Every removal is conditional on the revision read (or purges only through
//! the sequence read), so a write racing with the sweep survives it. The task
//! holds only a weak reference: it ends when the last scaler handle and feed
//! are dropped. Each step is bounded by ten request timeouts; a failed step
//! is logged and retried next round. Every instance sweeps: the work is
//! idempotent, and one pass costs one short-lived consumer per bucket.

use crate::scaler::{Inner, NatsScaler};
use scaled_sockets_scaler::{Result, ScalerError, records};
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Weak,
    time::Duration,
};

/// Starts the sweep task of a scaler.
pub(crate) fn spawn(inner: Weak<Inner>, interval: Duration) {
    tokio::spawn(async move {
        let mut suspects = HashMap::new();
        loop {
            tokio::time::sleep(jittered(interval)).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let scaler = NatsScaler { inner };
            if scaler.is_connected() {
                suspects = scaler.sweep_round(suspects).await;
            }
        }
    });
}

/// `interval` plus up to 10 % of it.
fn jittered(interval: Duration) -> Duration {
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    interval + interval / 10 * jitter / 1000
}

impl NatsScaler {
    /// Runs `op` bounded by ten request timeouts (a sweep reads whole buckets).
    async fn bounded<T>(&self, what: &str, op: impl Future<Output = Result<T>>) -> Option<T> {
        let limit = self.config().request_timeout * 10;
        let result = match tokio::time::timeout(limit, op).await {
            Ok(result) => result,
            Err(_) => Err(ScalerError::Timeout(limit)),
        };
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::warn!(step = what, %err, "NATS sweep step failed; retried next round");
                None
            }
        }
    }

    /// One round; returns the orphaned presence entries seen, for the next.
    pub(crate) async fn sweep_round(&self, suspects: HashMap<String, u64>) -> HashMap<String, u64> {
        let mut next = HashMap::new();
        if let Some(live) = self
            .bounded("registrations", self.list_instances_for_sweep())
            .await
        {
            next = self
                .bounded("presence", self.sweep_orphans(&live, &suspects))
                .await
                .unwrap_or_default();
        }
        if let Some(n) = self
            .bounded("key-value", self.inner.kv.sweep_expired())
            .await
        {
            tracing::debug!(removed = n, "swept expired key-value entries");
        }
        if let Some(n) = self
            .bounded("history", self.inner.history.sweep_expired())
            .await
        {
            tracing::debug!(purged = n, "swept expired channels");
        }
        next
    }

    async fn list_instances_for_sweep(&self) -> Result<HashSet<String>> {
        Ok(self
            .list_instances()
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect())
    }

    /// Removes presence entries found orphaned in this round and the last one
    /// (same key, same revision); returns this round's orphans.
    async fn sweep_orphans(
        &self,
        live: &HashSet<String>,
        suspects: &HashMap<String, u64>,
    ) -> Result<HashMap<String, u64>> {
        let presence = &self.inner.presence;
        let mut orphans = HashMap::new();
        for record in presence.scan(">").await? {
            let owner_live = records::decode_presence(None, &record.value)
                .is_some_and(|entry| live.contains(&entry.instance));
            if owner_live {
                continue;
            }
            if suspects.get(&record.key) == Some(&record.revision) {
                presence.remove_if(&record.key, record.revision).await?;
            } else {
                orphans.insert(record.key, record.revision);
            }
        }
        Ok(orphans)
    }
}
