//! [`SessionData`]: a small key-value map per session, for apps.
//!
//! It lives in the scaler (never in an instance), under `sessdata/<session>`,
//! with the resume window as its TTL, so every connection of the session (two
//! tabs, a client resuming on another instance after a crash) sees the same
//! data. Writes are compare-and-set on the record's revision and retried, so
//! two connections writing different keys at once both land; two writing the
//! same key at once: the last one wins, neither is lost half-way.

use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
};
use bytes::Bytes;
use scaled_sockets_scaler::{PutMode, PutOptions, Scaler, ScalerError};
use serde_json::value::RawValue;
use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

/// Most keys in one session's data.
pub const MAX_SESSION_KEYS: usize = 64;
/// Largest key, in bytes.
pub const MAX_SESSION_KEY_BYTES: usize = 128;
/// Largest value (its JSON), in bytes.
pub const MAX_SESSION_VALUE_BYTES: usize = 8 * 1024;
/// Largest session data in all (its JSON), in bytes.
pub const MAX_SESSION_DATA_BYTES: usize = 32 * 1024;

/// Compare-and-set attempts before a write gives up with `unavailable`.
const WRITE_ATTEMPTS: u32 = 40;

type Map = BTreeMap<String, Box<RawValue>>;

/// One session's data. Cheap to clone; every call reaches the scaler.
#[derive(Clone)]
pub struct SessionData {
    scaler: Arc<dyn Scaler>,
    key: String,
    ttl: Duration,
}

impl fmt::Debug for SessionData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionData")
            .field("key", &self.key)
            .finish()
    }
}

impl SessionData {
    pub(crate) fn new(scaler: Arc<dyn Scaler>, session: &str, ttl: Duration) -> Self {
        Self {
            scaler,
            key: format!("sessdata/{session}"),
            ttl,
        }
    }

    /// The value stored under `key`, `None` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<Data>, CommandError> {
        let (map, _) = self.read().await?;
        Ok(map.get(key).map(|raw| Data::from(&**raw)))
    }

    /// Every key and value.
    pub async fn all(&self) -> Result<BTreeMap<String, Data>, CommandError> {
        let (map, _) = self.read().await?;
        Ok(map
            .iter()
            .map(|(k, v)| (k.clone(), Data::from(&**v)))
            .collect())
    }

    /// Stores `value` under `key` (and renews the data's lifetime).
    pub async fn set(&self, key: &str, value: &Data) -> Result<(), CommandError> {
        if key.is_empty() || key.len() > MAX_SESSION_KEY_BYTES {
            return Err(CommandError::bad_request(format!(
                "a session data key is 1 to {MAX_SESSION_KEY_BYTES} bytes"
            )));
        }
        if value.get().len() > MAX_SESSION_VALUE_BYTES {
            return Err(limit(format!(
                "a session data value is at most {MAX_SESSION_VALUE_BYTES} bytes"
            )));
        }
        let raw = RawValue::from_string(value.get().to_owned())
            .map_err(|e| CommandError::bad_request(e.to_string()))?;
        self.update(|map| {
            if !map.contains_key(key) && map.len() >= MAX_SESSION_KEYS {
                return Err(limit(format!(
                    "a session holds at most {MAX_SESSION_KEYS} keys"
                )));
            }
            map.insert(key.to_owned(), raw.clone());
            Ok(())
        })
        .await
    }

    /// Removes `key`; true when it was there.
    pub async fn remove(&self, key: &str) -> Result<bool, CommandError> {
        let mut removed = false;
        self.update(|map| {
            removed = map.remove(key).is_some();
            Ok(())
        })
        .await?;
        Ok(removed)
    }

    /// Renews the data's lifetime (the session is still in use), if it has any.
    pub(crate) async fn touch(&self) -> Result<(), CommandError> {
        let current = self.scaler.kv_get(&self.key).await?;
        if let Some(current) = current {
            let options = PutOptions {
                mode: PutMode::IfRevision(current.revision),
                ttl: Some(self.ttl),
            };
            match self.scaler.kv_put(&self.key, current.value, &options).await {
                // Written meanwhile: that write renewed it.
                Ok(_) | Err(ScalerError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn read(&self) -> Result<(Map, Option<u64>), CommandError> {
        match self.scaler.kv_get(&self.key).await? {
            None => Ok((Map::new(), None)),
            Some(v) => {
                let map = serde_json::from_slice(&v.value)
                    .map_err(|e| CommandError::internal(format!("session data unreadable: {e}")))?;
                Ok((map, Some(v.revision)))
            }
        }
    }

    /// Read, change, write back if nobody wrote meanwhile; else again.
    async fn update(
        &self,
        mut change: impl FnMut(&mut Map) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        for attempt in 0..WRITE_ATTEMPTS {
            if attempt > 0 {
                // Others won the last round: back off a little, with jitter,
                // so a burst of writers does not keep colliding.
                let cap_ms = 1u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..=cap_ms))).await;
            }
            let (mut map, revision) = self.read().await?;
            change(&mut map)?;
            let bytes = serde_json::to_vec(&map)
                .map_err(|e| CommandError::internal(format!("session data: {e}")))?;
            if bytes.len() > MAX_SESSION_DATA_BYTES {
                return Err(limit(format!(
                    "a session's data is at most {MAX_SESSION_DATA_BYTES} bytes"
                )));
            }
            let options = PutOptions {
                mode: revision.map_or(PutMode::Create, PutMode::IfRevision),
                ttl: Some(self.ttl),
            };
            match self
                .scaler
                .kv_put(&self.key, Bytes::from(bytes), &options)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ScalerError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::new(
            ErrorCode::Unavailable,
            "session data is being written by others: try again",
        ))
    }
}

fn limit(message: String) -> CommandError {
    CommandError::new(ErrorCode::LimitExceeded, message)
}
