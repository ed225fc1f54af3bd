//! The presence sweep: entries do not outlive their instance.
//!
//! When an instance unregisters, or a registry read finds its registration
//! expired, every presence entry naming it is purged in the background (one
//! pass over the presence bucket through a short-lived consumer). Several
//! instances may notice the same expiry; the sweep is idempotent. Entries of
//! instances that left are also never returned, and the read that finds them
//! deletes them.

use crate::scaler::NatsScaler;
use scaled_sockets_scaler::{Result, records};

impl NatsScaler {
    /// Deletes, in the background, every presence entry of these instances.
    pub(crate) fn sweep_presence_later(&self, instances: Vec<String>) {
        if instances.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.call(this.sweep_presence(&instances)).await {
                tracing::warn!(?instances, error = %e, "presence sweep failed; entries stay hidden");
            }
        });
    }

    async fn sweep_presence(&self, instances: &[String]) -> Result<()> {
        let presence = &self.inner.presence;
        for record in presence.scan(">").await? {
            let Some(entry) = records::decode_presence(None, &record.value) else {
                continue;
            };
            if instances.contains(&entry.instance) {
                presence.remove(&record.key).await?;
            }
        }
        Ok(())
    }
}
