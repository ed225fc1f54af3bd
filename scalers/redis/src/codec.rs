//! What the scaler stores in Redis values and pub/sub messages.
//!
//! - Publication envelope (pub/sub message on a channel topic):
//!   `<offset>:<epoch>:<payload bytes>`, offset in decimal; epochs never contain
//!   `:`, the payload is raw and may contain anything.
//! - Other topics (user, session, instance): the raw payload.
//! - Instance registration and presence entries: small JSON objects.

use scaled_sockets_scaler::{InstanceInfo, PresenceEntry};
use serde::{Deserialize, Serialize};

/// Splits a publication envelope into `(offset, epoch, payload)`.
pub(crate) fn decode_envelope(message: &[u8]) -> Option<(u64, &str, &[u8])> {
    let first = message.iter().position(|&b| b == b':')?;
    let offset = std::str::from_utf8(&message[..first]).ok()?.parse().ok()?;
    let rest = &message[first + 1..];
    let second = rest.iter().position(|&b| b == b':')?;
    let epoch = std::str::from_utf8(&rest[..second]).ok()?;
    Some((offset, epoch, &rest[second + 1..]))
}

/// A new random epoch: 12 hex digits.
pub(crate) fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_owned()
}

#[derive(Serialize)]
struct InstanceOut<'a> {
    id: &'a str,
    address: &'a str,
    connections: u64,
    cores: u64,
    updated_at_ms: u64,
}

#[derive(Deserialize)]
struct InstanceIn {
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

pub(crate) fn encode_instance(info: &InstanceInfo) -> String {
    let stored = InstanceOut {
        id: &info.id,
        address: &info.address,
        connections: info.connections,
        cores: info.cores,
        updated_at_ms: info.updated_at_ms,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

pub(crate) fn decode_instance(raw: &[u8]) -> Option<InstanceInfo> {
    let s: InstanceIn = serde_json::from_slice(raw).ok()?;
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
    #[serde(rename = "u", default)]
    user: Option<String>,
    #[serde(rename = "i")]
    instance: String,
}

pub(crate) fn encode_presence(entry: &PresenceEntry) -> String {
    serde_json::to_string(&StoredPresence {
        user: entry.user.clone(),
        instance: entry.instance.clone(),
    })
    .unwrap_or_default()
}

pub(crate) fn decode_presence(client: String, raw: &[u8]) -> Option<PresenceEntry> {
    let s: StoredPresence = serde_json::from_slice(raw).ok()?;
    Some(PresenceEntry {
        client,
        user: s.user,
        instance: s.instance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        assert_eq!(
            decode_envelope(b"42:abc123:{\"a\":\"x:y\"}"),
            Some((42, "abc123", &b"{\"a\":\"x:y\"}"[..]))
        );
        assert_eq!(decode_envelope(b"1:e:"), Some((1, "e", &b""[..])));
        assert_eq!(decode_envelope(b"x:e:p"), None);
        assert_eq!(decode_envelope(b"1e"), None);
        assert!(!new_epoch().contains(':'));
    }

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
                decode_presence("c".into(), encode_presence(&e).as_bytes()),
                Some(e)
            );
        }
    }
}
