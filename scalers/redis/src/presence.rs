//! Presence on Redis: one hash per channel (client id -> entry JSON), plus one
//! set per instance naming the channels it added entries to.
//!
//! Entries do not outlive their instance: when it unregisters, or a registry
//! read finds its registration expired (`instances()` reports each such id
//! once), the instance's channels are swept in the background and its set
//! deleted. Entries of instances that left are also never returned, and the
//! read that finds them deletes them.

use crate::{scaler::RedisScaler, scripts};
use scaled_sockets_scaler::{PresenceEntry, Result, check::check_channel, records};
use std::collections::{BTreeSet, HashSet};

impl RedisScaler {
    pub(crate) async fn presence_put(&self, channel: &str, entry: &PresenceEntry) -> Result<()> {
        check_channel(channel)?;
        let keys = self.keys();
        // Two slots (the channel's and the instance's), so a pipeline rather
        // than a script: the entry, and the channel in the instance's set for
        // the sweep when the instance leaves. One round trip. On a cluster the
        // two slots may live on different nodes: two commands, sent at once.
        if self.is_cluster() {
            let mut entry_cmd = redis::cmd("HSET");
            entry_cmd
                .arg(keys.channel_presence(channel))
                .arg(&entry.client)
                .arg(records::encode_presence(entry));
            let mut index_cmd = redis::cmd("SADD");
            index_cmd
                .arg(keys.instance_presence(&entry.instance))
                .arg(channel);
            let (a, b) = tokio::join!(
                self.pool().query::<i64>(&entry_cmd),
                self.pool().query::<i64>(&index_cmd)
            );
            return a.and(b).map(drop);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(keys.channel_presence(channel))
            .arg(&entry.client)
            .arg(records::encode_presence(entry))
            .ignore()
            .cmd("SADD")
            .arg(keys.instance_presence(&entry.instance))
            .arg(channel)
            .ignore();
        self.pool().pipe::<()>(&pipe).await
    }

    pub(crate) async fn presence_delete(&self, channel: &str, client: &str) -> Result<()> {
        check_channel(channel)?;
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.keys().channel_presence(channel)).arg(client);
        self.pool().query::<i64>(&cmd).await.map(drop)
    }

    pub(crate) async fn presence_list(&self, channel: &str) -> Result<Vec<PresenceEntry>> {
        check_channel(channel)?;
        let keys = self.keys();
        let hash = keys.channel_presence(channel);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&hash);
        let raw: Vec<(String, Vec<u8>)> = self.pool().query(&cmd).await?;
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::with_capacity(raw.len());
        let mut corrupt = Vec::new();
        for (client, value) in raw {
            match records::decode_presence(Some(&client), &value) {
                Some(entry) => entries.push(entry),
                None => corrupt.push(client),
            }
        }
        // Which of the instances named are registered (one round trip; the
        // registry keys share one slot).
        let instances: Vec<&str> = entries
            .iter()
            .map(|e| e.instance.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut pipe = redis::pipe();
        for id in &instances {
            pipe.cmd("EXISTS").arg(keys.instance(id));
        }
        let exists: Vec<i64> = self.pool().pipe(&pipe).await?;
        let live: HashSet<String> = instances
            .iter()
            .zip(&exists)
            .filter(|(_, e)| **e > 0)
            .map(|(id, _)| (*id).to_owned())
            .collect();
        let (kept, dead) = records::split_live(entries, &live);
        let mut stale = corrupt;
        stale.extend(dead);
        if !stale.is_empty() {
            // Lazy cleanup of entries whose instance left; failure only delays it.
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(&hash).arg(&stale);
            if let Err(e) = self.pool().query::<i64>(&cmd).await {
                tracing::debug!(error = %e, "presence cleanup failed");
            }
        }
        Ok(kept)
    }

    /// Deletes, in the background, every presence entry of these instances.
    pub(crate) fn sweep_presence_later(&self, instances: Vec<String>) {
        if instances.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            for id in instances {
                if let Err(e) = this.sweep_presence(&id).await {
                    tracing::warn!(instance = %id, error = %e, "presence sweep failed; entries stay hidden");
                }
            }
        });
    }

    pub(crate) async fn sweep_presence(&self, id: &str) -> Result<()> {
        let keys = self.keys();
        let set = keys.instance_presence(id);
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(&set);
        let channels: Vec<String> = self.pool().query(&cmd).await?;
        for channel in &channels {
            let mut call = scripts::PRESENCE_SWEEP.prepare_invoke();
            call.key(keys.channel_presence(channel)).arg(id);
            self.pool().script::<i64>(&call).await?;
        }
        // Only what was swept: a channel added meanwhile stays in the set.
        if !channels.is_empty() {
            let mut cmd = redis::cmd("SREM");
            cmd.arg(&set).arg(&channels);
            self.pool().query::<i64>(&cmd).await?;
        }
        Ok(())
    }
}
