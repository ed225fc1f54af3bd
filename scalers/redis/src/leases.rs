//! Fenced leases on Redis: `{prefix}:{lease}:k:<key>` holds `<token>:<owner>`
//! with the lease TTL; tokens come from the counter `{prefix}:{lease}:tokens`
//! (see [`crate::scripts::ACQUIRE`]).

use crate::{
    scaler::{RedisScaler, backend, ms},
    scripts,
};
use scaled_sockets_scaler::{
    Lease, LeaseOutcome, Result,
    check::{check_key, check_owner},
};
use std::time::Duration;

/// Splits a stored `<token>:<owner>`.
fn parse(value: &str) -> Option<Lease> {
    let (token, owner) = value.split_once(':')?;
    Some(Lease {
        owner: owner.to_owned(),
        token: token.parse().ok()?,
    })
}

fn stored(owner: &str, token: u64) -> String {
    format!("{token}:{owner}")
}

impl RedisScaler {
    pub(crate) async fn lease_acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseOutcome> {
        check_key(key, "lease key")?;
        check_owner(owner)?;
        let keys = self.keys();
        let mut call = scripts::ACQUIRE.prepare_invoke();
        call.key(keys.lease(key))
            .key(keys.lease_index())
            .key(keys.lease_tokens())
            .arg(owner)
            .arg(ms(ttl))
            .arg(key);
        let (won, holder, token): (i64, String, String) = self.pool().script(&call).await?;
        let token = token.parse().map_err(|_| backend("lease token"))?;
        Ok(if won == 1 {
            LeaseOutcome::Acquired { token }
        } else {
            LeaseOutcome::HeldBy {
                owner: holder,
                token,
            }
        })
    }

    pub(crate) async fn lease_renew(
        &self,
        key: &str,
        owner: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool> {
        let keys = self.keys();
        let mut call = scripts::RENEW.prepare_invoke();
        call.key(keys.lease(key))
            .key(keys.lease_index())
            .arg(stored(owner, token))
            .arg(ms(ttl))
            .arg(key);
        Ok(self.pool().script::<i64>(&call).await? == 1)
    }

    pub(crate) async fn lease_release(&self, key: &str, owner: &str, token: u64) -> Result<bool> {
        let keys = self.keys();
        let mut call = scripts::RELEASE.prepare_invoke();
        call.key(keys.lease(key))
            .key(keys.lease_index())
            .arg(stored(owner, token))
            .arg(key);
        Ok(self.pool().script::<i64>(&call).await? == 1)
    }

    pub(crate) async fn lease_get(&self, key: &str) -> Result<Option<Lease>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys().lease(key));
        let value: Option<String> = self.pool().query(&cmd).await?;
        value
            .map(|v| parse(&v).ok_or_else(|| backend("lease value")))
            .transpose()
    }

    pub(crate) async fn lease_list(&self, prefix: &str) -> Result<Vec<(String, Lease)>> {
        let keys = self.keys();
        let mut call = scripts::LEASES.prepare_invoke();
        call.key(keys.lease_index())
            .arg(keys.lease_key_prefix())
            .arg(prefix);
        let flat: Vec<String> = self.pool().script(&call).await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            match parse(&pair[1]) {
                Some(lease) => out.push((pair[0].clone(), lease)),
                None => tracing::warn!(key = %pair[0], "ignoring a malformed lease in redis"),
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_colons_in_owners() {
        let lease = parse(&stored("node:1", 42)).expect("parse");
        assert_eq!((lease.owner.as_str(), lease.token), ("node:1", 42));
        assert!(parse("x:y").is_none());
        assert!(parse("nocolon").is_none());
    }
}
