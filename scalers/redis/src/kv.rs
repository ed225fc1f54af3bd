//! The versioned key-value family on Redis (see [`crate::scripts::KV_PUT`]):
//! items `{prefix}:{kv}:k:<key>` are hashes (`v` value, `r` revision, `f`
//! fence) with their TTL; `{prefix}:{kv}:names` indexes names for prefix
//! listing, `{prefix}:{kv}:exp` their expiry, `{prefix}:{kv}:rev` is the
//! revision counter. All share the `{kv}` hash tag, so every script touches one
//! slot (on a Redis Cluster the key-value family lives on one node).

use crate::{
    scaler::{RedisScaler, backend, bulk, ms, number, text},
    scripts,
};
use bytes::Bytes;
use redis::Value;
use scaled_sockets_scaler::{
    KV_LIST_LIMIT, PutMode, PutOptions, Result, ScalerError, Versioned,
    check::{check_delete_mode, check_key},
};

/// A mode as the scripts take it: name and argument.
fn mode_args(mode: PutMode) -> Result<(&'static str, u64)> {
    Ok(match mode {
        PutMode::Any => ("any", 0),
        PutMode::Create => ("create", 0),
        PutMode::IfRevision(rev) => ("rev", rev),
        PutMode::Fenced(token) => ("fence", token),
        _ => return Err(ScalerError::Unsupported("this put mode")),
    })
}

/// Reads a script's `{1, x}` / `{0, conflict message}` answer.
fn decided(reply: Value) -> Result<Value> {
    let Value::Array(mut items) = reply else {
        return Err(backend("key-value reply is not an array"));
    };
    if items.len() != 2 {
        return Err(backend("key-value reply length"));
    }
    let second = items.pop().unwrap_or(Value::Nil);
    match items.first().and_then(number) {
        Some(1) => Ok(second),
        Some(0) => Err(ScalerError::Conflict(
            text(&second).unwrap_or("precondition failed").to_owned(),
        )),
        _ => Err(backend("key-value reply status")),
    }
}

/// The lex range of names starting with `prefix` (names are UTF-8, so no byte
/// 0xFF follows a prefix).
fn lex_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (b"-".to_vec(), b"+".to_vec());
    }
    let mut min = b"[".to_vec();
    min.extend_from_slice(prefix.as_bytes());
    let mut max = min.clone();
    max.push(0xFF);
    (min, max)
}

impl RedisScaler {
    pub(crate) async fn item_get(&self, key: &str) -> Result<Option<Versioned>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys().kv_item(key)).arg("v").arg("r");
        let (value, revision): (Option<Vec<u8>>, Option<u64>) = self.pool().query(&cmd).await?;
        Ok(match (value, revision) {
            (Some(value), Some(revision)) => Some(Versioned {
                value: Bytes::from(value),
                revision,
            }),
            _ => None,
        })
    }

    pub(crate) async fn item_put(
        &self,
        key: &str,
        value: Bytes,
        options: &PutOptions,
    ) -> Result<u64> {
        check_key(key, "key")?;
        let (mode, arg) = mode_args(options.mode)?;
        let keys = self.keys();
        let mut call = scripts::KV_PUT.prepare_invoke();
        call.key(keys.kv_item(key))
            .key(keys.kv_names())
            .key(keys.kv_expiry())
            .key(keys.kv_revisions())
            .arg(value.as_ref())
            .arg(mode)
            .arg(arg)
            .arg(options.ttl.map_or(0, ms))
            .arg(key);
        let reply: Value = self.pool().script(&call).await?;
        number(&decided(reply)?).ok_or_else(|| backend("key-value revision"))
    }

    pub(crate) async fn item_delete(&self, key: &str, mode: PutMode) -> Result<bool> {
        check_delete_mode(mode)?;
        let (mode, arg) = mode_args(mode)?;
        let keys = self.keys();
        let mut call = scripts::KV_DELETE.prepare_invoke();
        call.key(keys.kv_item(key))
            .key(keys.kv_names())
            .key(keys.kv_expiry())
            .arg(mode)
            .arg(arg)
            .arg(key);
        let reply: Value = self.pool().script(&call).await?;
        Ok(number(&decided(reply)?).ok_or_else(|| backend("key-value delete"))? > 0)
    }

    pub(crate) async fn item_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        let keys = self.keys();
        let (min, max) = lex_range(prefix);
        let mut call = scripts::KV_LIST.prepare_invoke();
        call.key(keys.kv_names())
            .key(keys.kv_expiry())
            .arg(keys.kv_key_prefix())
            .arg(min)
            .arg(max)
            .arg(KV_LIST_LIMIT);
        let reply: Value = self.pool().script(&call).await?;
        let Value::Array(items) = reply else {
            return Err(backend("key-value list is not an array"));
        };
        let mut out = Vec::with_capacity(items.len() / 3);
        for item in items.chunks(3) {
            let [name, value, revision] = item else {
                return Err(backend("key-value list entries"));
            };
            let (Some(name), Some(value), Some(revision)) =
                (text(name), bulk(value), number(revision))
            else {
                return Err(backend("key-value list entry"));
            };
            out.push((
                name.to_owned(),
                Versioned {
                    value: Bytes::copy_from_slice(value),
                    revision,
                },
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lex_ranges() {
        assert_eq!(lex_range(""), (b"-".to_vec(), b"+".to_vec()));
        let (min, max) = lex_range("ab");
        assert_eq!(min, b"[ab");
        assert_eq!(max, b"[ab\xff");
    }
}
