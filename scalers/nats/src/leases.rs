//! Fenced leases on the `{prefix}_leases` bucket.
//!
//! A lease record is `{"owner":..,"token":..}` with the lease TTL. The fencing
//! token is the revision (stream sequence) of the write that acquired the lease;
//! renewals carry it on in `token`. Stream sequences only grow, so every
//! acquisition, after a release (a delete marker, itself a later sequence) or an
//! expiry, by anyone, gets a larger token. (Deleting the bucket's stream by hand
//! restarts sequences: do not.) Every change is a compare-and-set on the
//! record's revision, so exactly one of many contenders wins.

use crate::{
    names::{check_name, decode_token, encode_token},
    records::Record,
    scaler::{CAS_ROUNDS, NatsScaler},
};
use bytes::Bytes;
use scaled_sockets_scaler::{
    Lease, LeaseOutcome, Result, ScalerError,
    check::{check_key, check_owner},
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    /// Absent on the acquiring write: its own revision is the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
}

fn encode(owner: &str, token: Option<u64>) -> Result<Bytes> {
    serde_json::to_vec(&LeaseRecord {
        owner: owner.to_owned(),
        token,
    })
    .map(Bytes::from)
    .map_err(|e| ScalerError::backend("encode lease").with_source(e))
}

/// The lease a live record holds.
fn lease_of(record: &Record) -> Option<Lease> {
    match serde_json::from_slice::<LeaseRecord>(&record.value) {
        Ok(r) => Some(Lease {
            owner: r.owner,
            token: r.token.unwrap_or(record.revision),
        }),
        Err(err) => {
            tracing::warn!(key = %record.key, %err, "skipping an unreadable lease");
            None
        }
    }
}

fn contended(key: &str) -> ScalerError {
    ScalerError::backend(format!(
        "lease {key:?}: no decision after {CAS_ROUNDS} contended rounds"
    ))
}

impl NatsScaler {
    pub(crate) async fn lease_acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome> {
        check_key(key, "lease key")?;
        check_owner(owner)?;
        check_name(key, "lease key")?;
        let k = encode_token(key);
        let leases = &self.inner.leases;
        self.call(async {
            for _ in 0..CAS_ROUNDS {
                let record = leases.get(&k).await?;
                let held = record.as_ref().filter(|r| r.is_live()).and_then(lease_of);
                let (value, revision, kept) = match (&record, held) {
                    (_, Some(lease)) if lease.owner != owner => {
                        return Ok(LeaseOutcome::HeldBy {
                            owner: lease.owner,
                            token: lease.token,
                        });
                    }
                    // Ours: renew, keeping the token.
                    (Some(r), Some(lease)) => (
                        encode(owner, Some(lease.token))?,
                        r.revision,
                        Some(lease.token),
                    ),
                    (record, _) => (
                        encode(owner, None)?,
                        record.as_ref().map_or(0, |r| r.revision),
                        None,
                    ),
                };
                if let Some(seq) = leases.put_if(&k, value, Some(ttl), revision).await? {
                    return Ok(LeaseOutcome::Acquired {
                        token: kept.unwrap_or(seq),
                    });
                }
            }
            Err(contended(key))
        })
        .await
    }

    /// The live record of `key` if `owner` holds it with `token`.
    async fn held(&self, k: &str, owner: &str, token: u64) -> Result<Option<Record>> {
        let Some(record) = self.inner.leases.get_live(k).await? else {
            return Ok(None);
        };
        Ok(lease_of(&record)
            .is_some_and(|l| l.owner == owner && l.token == token)
            .then_some(record))
    }

    pub(crate) async fn lease_renew(
        &self,
        key: &str,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool> {
        check_name(key, "lease key")?;
        let k = encode_token(key);
        let value = encode(owner, Some(token))?;
        self.call(async {
            for _ in 0..CAS_ROUNDS {
                let Some(record) = self.held(&k, owner, token).await? else {
                    return Ok(false);
                };
                let written = self
                    .inner
                    .leases
                    .put_if(&k, value.clone(), Some(ttl), record.revision)
                    .await?;
                if written.is_some() {
                    return Ok(true);
                }
            }
            Err(contended(key))
        })
        .await
    }

    pub(crate) async fn lease_release(&self, key: &str, owner: &str, token: u64) -> Result<bool> {
        check_name(key, "lease key")?;
        let k = encode_token(key);
        self.call(async {
            for _ in 0..CAS_ROUNDS {
                let Some(record) = self.held(&k, owner, token).await? else {
                    return Ok(false);
                };
                // A delete marker (not a purge): its sequence keeps later tokens
                // above this one even after the record aged out.
                if self
                    .inner
                    .leases
                    .delete_if(&k, record.revision)
                    .await?
                    .is_some()
                {
                    return Ok(true);
                }
            }
            Err(contended(key))
        })
        .await
    }

    pub(crate) async fn lease_get(&self, key: &str) -> Result<Option<Lease>> {
        check_name(key, "lease key")?;
        let k = encode_token(key);
        self.call(async {
            Ok(self
                .inner
                .leases
                .get_live(&k)
                .await?
                .as_ref()
                .and_then(lease_of))
        })
        .await
    }

    pub(crate) async fn lease_list(&self, prefix: &str) -> Result<Vec<(String, Lease)>> {
        self.call(async {
            let mut out = Vec::new();
            for record in self.inner.leases.scan(">").await? {
                if record.expired {
                    continue;
                }
                let Some(key) = decode_token(&record.key) else {
                    continue;
                };
                if !key.starts_with(prefix) {
                    continue;
                }
                if let Some(lease) = lease_of(&record) {
                    out.push((key, lease));
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}
