//! The versioned key-value family on the `{prefix}_kv` bucket, key
//! `b64(key)`.
//!
//! The revision is the write's stream sequence, so it only grows per key,
//! across deletes and expiry. The fence travels in the `Ss-Fence` header. Every
//! write is a compare-and-set on the revision read just before, with the
//! precondition decided by `scaled_sockets_scaler::check::mode_holds` on what
//! was read: a lost race re-reads and decides again, so of many create-only puts
//! exactly one wins.
//!
//! The bucket has no `max_age` (values without a TTL live until deleted), so
//! expired records are removed lazily, by the `kv_get` or `kv_list` that finds
//! them. `kv_list` reads the whole bucket through one short-lived consumer and
//! filters by prefix: fine for occasional listings, not for tight loops.

use crate::{
    names::{check_name, decode_token, encode_token},
    scaler::{CAS_ROUNDS, NatsScaler},
};
use bytes::Bytes;
use scaled_sockets_scaler::{
    KV_LIST_LIMIT, PutMode, PutOptions, Result, ScalerError, Versioned,
    check::{check_delete_mode, check_key, fence_after, mode_holds},
};

fn contended(key: &str) -> ScalerError {
    ScalerError::backend(format!(
        "key {key:?}: no decision after {CAS_ROUNDS} contended rounds"
    ))
}

impl NatsScaler {
    pub(crate) async fn item_get(&self, key: &str) -> Result<Option<Versioned>> {
        check_name(key, "key")?;
        let k = encode_token(key);
        let kv = &self.inner.kv;
        self.call(async {
            match kv.get(&k).await? {
                Some(r) if r.is_live() => Ok(Some(Versioned {
                    value: r.value,
                    revision: r.revision,
                })),
                Some(r) => {
                    if r.expired && !r.deleted {
                        kv.remove_later_if(&k, r.revision);
                    }
                    Ok(None)
                }
                None => Ok(None),
            }
        })
        .await
    }

    pub(crate) async fn item_put(
        &self,
        key: &str,
        value: Bytes,
        options: &PutOptions,
    ) -> Result<u64> {
        check_key(key, "key")?;
        check_name(key, "key")?;
        let k = encode_token(key);
        let kv = &self.inner.kv;
        self.call(async {
            for _ in 0..CAS_ROUNDS {
                let record = kv.get(&k).await?;
                let live = record.as_ref().filter(|r| r.is_live());
                mode_holds(options.mode, live.map(|r| (r.revision, r.fence)))?;
                let fence = fence_after(options.mode, live.map_or(0, |r| r.fence));
                let expected = record.as_ref().map_or(0, |r| r.revision);
                if let Some(revision) = kv
                    .put_fenced(&k, value.clone(), options.ttl, expected, fence)
                    .await?
                {
                    return Ok(revision);
                }
            }
            Err(contended(key))
        })
        .await
    }

    pub(crate) async fn item_delete(&self, key: &str, mode: PutMode) -> Result<bool> {
        check_delete_mode(mode)?;
        check_name(key, "key")?;
        let k = encode_token(key);
        let kv = &self.inner.kv;
        self.call(async {
            for _ in 0..CAS_ROUNDS {
                let record = kv.get(&k).await?;
                let live = record.as_ref().filter(|r| r.is_live());
                mode_holds(mode, live.map(|r| (r.revision, r.fence)))?;
                let Some(live) = live else {
                    return Ok(false);
                };
                if let Some(tombstone) = kv.delete_if(&k, live.revision).await? {
                    kv.purge_through(&k, tombstone).await;
                    return Ok(true);
                }
            }
            Err(contended(key))
        })
        .await
    }

    pub(crate) async fn item_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        let kv = &self.inner.kv;
        self.call(async {
            let mut out = Vec::new();
            for record in kv.scan(">").await? {
                if record.expired {
                    kv.remove_later_if(&record.key, record.revision);
                    continue;
                }
                let Some(key) = decode_token(&record.key) else {
                    continue;
                };
                if key.starts_with(prefix) {
                    out.push((
                        key,
                        Versioned {
                            value: record.value,
                            revision: record.revision,
                        },
                    ));
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out.truncate(KV_LIST_LIMIT);
            Ok(out)
        })
        .await
    }
}
