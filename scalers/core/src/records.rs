//! The JSON every backend stores for instance registrations and presence
//! entries, and the presence filter that hides entries of dead instances.
//!
//! - Instance: `{"id":..,"address":..,"connections":..,"cores":..,"updated_at_ms":..}`.
//! - Presence entry: `{"c":client,"u":user,"i":instance}` (`c` may be left out
//!   when the backend keys entries by client; the long names `client`, `user`,
//!   `instance` are read too).

use crate::{InstanceInfo, PresenceEntry};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Serialize, Deserialize)]
struct StoredInstance {
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    connections: u64,
    #[serde(default)]
    cores: u64,
    #[serde(default)]
    updated_at_ms: u64,
}

/// The JSON of a registration.
pub fn encode_instance(info: &InstanceInfo) -> String {
    let stored = StoredInstance {
        id: info.id.clone(),
        address: info.address.clone(),
        connections: info.connections,
        cores: info.cores,
        updated_at_ms: info.updated_at_ms,
    };
    // Serializing strings and integers cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// Reads [`encode_instance`]'s JSON; `None` when unreadable.
pub fn decode_instance(raw: &[u8]) -> Option<InstanceInfo> {
    let s: StoredInstance = serde_json::from_slice(raw).ok()?;
    Some(InstanceInfo {
        id: s.id,
        address: s.address,
        connections: s.connections,
        cores: s.cores,
        updated_at_ms: s.updated_at_ms,
    })
}

#[derive(Serialize, Deserialize)]
struct StoredPresence {
    #[serde(rename = "c", alias = "client", default)]
    client: Option<String>,
    #[serde(rename = "u", alias = "user", default)]
    user: Option<String>,
    #[serde(rename = "i", alias = "instance")]
    instance: String,
}

/// The JSON of a presence entry (with the client id in it).
pub fn encode_presence(entry: &PresenceEntry) -> String {
    serde_json::to_string(&StoredPresence {
        client: Some(entry.client.clone()),
        user: entry.user.clone(),
        instance: entry.instance.clone(),
    })
    .unwrap_or_default()
}

/// Reads [`encode_presence`]'s JSON. `client` is used when the JSON has none
/// (entries keyed by client id). `None` when unreadable.
pub fn decode_presence(client: Option<&str>, raw: &[u8]) -> Option<PresenceEntry> {
    let s: StoredPresence = serde_json::from_slice(raw).ok()?;
    Some(PresenceEntry {
        client: s.client.or_else(|| client.map(str::to_owned))?,
        user: s.user,
        instance: s.instance,
    })
}

/// Splits presence entries into those whose instance is live (sorted, as
/// [`crate::Scaler::presence`] returns them) and the client ids of the others,
/// which the backend may delete.
pub fn split_live(
    entries: Vec<PresenceEntry>,
    live: &HashSet<String>,
) -> (Vec<PresenceEntry>, Vec<String>) {
    let (mut kept, stale): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|e| live.contains(&e.instance));
    kept.sort();
    (kept, stale.into_iter().map(|e| e.client).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips() {
        let info = InstanceInfo {
            id: "i\"1".into(),
            address: "10.0.0.1:80".into(),
            connections: 7,
            cores: 2,
            updated_at_ms: 99,
        };
        assert_eq!(
            decode_instance(encode_instance(&info).as_bytes()),
            Some(info)
        );
        for user in [None, Some(String::new()), Some("alice".to_owned())] {
            let e = PresenceEntry {
                client: "c".into(),
                user,
                instance: "i".into(),
            };
            assert_eq!(
                decode_presence(None, encode_presence(&e).as_bytes()),
                Some(e)
            );
        }
        // Older layouts: keyed by client without "c", or long field names.
        let short = decode_presence(Some("k"), br#"{"u":null,"i":"x"}"#).expect("short");
        assert_eq!((short.client.as_str(), short.instance.as_str()), ("k", "x"));
        let long =
            decode_presence(None, br#"{"client":"c","user":"u","instance":"x"}"#).expect("long");
        assert_eq!(long.user.as_deref(), Some("u"));
        assert_eq!(
            decode_presence(None, br#"{"i":"x"}"#),
            None,
            "no client at all"
        );
        assert_eq!(decode_presence(None, b"nope"), None);
    }

    #[test]
    fn split_keeps_live_sorted() {
        let e = |c: &str, i: &str| PresenceEntry {
            client: c.into(),
            user: None,
            instance: i.into(),
        };
        let live: HashSet<String> = ["a".to_owned()].into();
        let (kept, stale) = split_live(vec![e("2", "a"), e("9", "b"), e("1", "a")], &live);
        assert_eq!(kept, vec![e("1", "a"), e("2", "a")]);
        assert_eq!(stale, vec!["9".to_owned()]);
    }
}
