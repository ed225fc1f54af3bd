//! The sweep: what expired leaves Redis within a bounded time, even if nobody
//! reads it again.
//!
//! Redis expires the keys that carry a TTL (registrations, leases, key-value
//! items, channel streams) by itself. What has no TTL of its own is indexed
//! state that points at them: the registry index, the key-value name indexes,
//! and the presence hashes (entries stay as long as the instance that wrote
//! them; they have no TTL because an instance does not refresh them). Reads
//! clean those up as they meet them, but a quiet cluster may never read
//! them. So every scaler runs one background task that, every
//! [`crate::RedisConfig::sweep_interval`] (plus up to 10 % jitter):
//! 1. reads the registry (the `INSTANCES` script drops expired ids from the
//!    index and reports each exactly once) and deletes the presence entries
//!    of the instances it found gone, retrying next round any sweep that
//!    failed;
//! 2. drops up to 1000 expired names from the key-value indexes.
//!
//! The task holds a weak reference and ends when the last handle is dropped.

use crate::{
    scaler::{Inner, RedisScaler},
    scripts,
};
use scaled_sockets_scaler::Result;
use std::{sync::Weak, time::Duration};

/// Starts the sweep task of a scaler.
pub(crate) fn spawn(inner: Weak<Inner>, interval: Duration) {
    tokio::spawn(async move {
        // Instances whose presence sweep failed: retried every round.
        let mut retry: Vec<String> = Vec::new();
        loop {
            tokio::time::sleep(jittered(interval)).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let scaler = RedisScaler { inner };
            retry = scaler.sweep_round(retry).await;
        }
    });
}

/// `interval` plus up to 10 % of it.
fn jittered(interval: Duration) -> Duration {
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    interval + interval / 10 * jitter / 1000
}

impl RedisScaler {
    /// One round; returns the instances whose presence sweep must be retried.
    pub(crate) async fn sweep_round(&self, mut pending: Vec<String>) -> Vec<String> {
        match self.read_registry().await {
            Ok((_, gone)) => pending.extend(gone),
            Err(err) => tracing::debug!(%err, "redis sweep: registry read failed"),
        }
        let mut failed = Vec::new();
        for id in pending {
            if let Err(err) = self.sweep_presence(&id).await {
                tracing::warn!(instance = %id, %err, "presence sweep failed; retried next round");
                failed.push(id);
            }
        }
        if let Err(err) = self.sweep_kv_index().await {
            tracing::debug!(%err, "redis sweep: key-value index sweep failed");
        }
        failed
    }

    async fn sweep_kv_index(&self) -> Result<()> {
        let keys = self.keys();
        let mut call = scripts::KV_SWEEP_EXPIRED.prepare_invoke();
        call.key(keys.kv_names()).key(keys.kv_expiry());
        self.pool().script::<i64>(&call).await.map(drop)
    }
}
