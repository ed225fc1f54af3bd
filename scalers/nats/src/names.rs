//! Subject, stream, bucket and key names.
//!
//! Channel names, user ids and the like may contain anything (`.`, `*`, `>`,
//! spaces, unicode), none of which may appear raw in a NATS subject token or KV
//! key. Every such name is therefore encoded as one token with unpadded
//! base64url (`A-Z a-z 0-9 - _`), which is valid in subjects and KV keys and never
//! splits into several tokens. The empty name becomes `_` (no base64 encoding is
//! one character long, so this cannot collide).

use scaled_sockets_scaler::{ScalerError, Topic};

/// Longest name (channel, user, session, instance, lease key, client id), in
/// bytes. Keeps every subject far below the NATS control-line limit (4 KiB), which
/// a client must never exceed (the server would close the connection).
pub const MAX_NAME_BYTES: usize = 1024;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Encodes a name as one subject token / KV key token.
pub fn encode_token(name: &str) -> String {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(ALPHABET[idx as usize] as char);
        }
    }
    out
}

/// Decodes [`encode_token`]; `None` when `token` is not one of its outputs.
pub fn decode_token(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let t = token.as_bytes();
    if t.is_empty() || t.len() % 4 == 1 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    for chunk in t.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    // Reject non-canonical encodings (unused low bits set).
    (encode_token(&decoded) == token).then_some(decoded)
}

/// Checks a name's length; `what` names it in the error.
pub fn check_name(name: &str, what: &str) -> Result<(), ScalerError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(ScalerError::InvalidArgument(format!(
            "{what} is {} bytes long; the NATS scaler accepts at most {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(())
}

/// Every name derived from the configured prefix.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
    /// The history stream.
    pub history_stream: String,
    /// The instance registry bucket.
    pub instances_bucket: String,
    /// The lease bucket.
    pub leases_bucket: String,
    /// The presence bucket.
    pub presence_bucket: String,
    /// The key-value bucket (sessions, snapshots...).
    pub kv_bucket: String,
}

impl Names {
    /// Names for `prefix` (already validated).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            history_stream: format!("{prefix}_history"),
            instances_bucket: format!("{prefix}_instances"),
            leases_bucket: format!("{prefix}_leases"),
            presence_bucket: format!("{prefix}_presence"),
            kv_bucket: format!("{prefix}_kv"),
        }
    }

    /// `{prefix}.hist.>`: what the history stream captures.
    pub fn history_wildcard(&self) -> String {
        format!("{}.hist.>", self.prefix)
    }

    /// `{prefix}.live.>`: where the history stream republishes what it stored.
    pub fn live_wildcard(&self) -> String {
        format!("{}.live.>", self.prefix)
    }

    /// The subject a channel's publications are stored on.
    pub fn history_subject(&self, channel: &str) -> String {
        format!("{}.hist.{}", self.prefix, encode_token(channel))
    }

    /// The core subject a feed subscribes to for `topic`.
    pub fn topic_subject(&self, topic: &Topic) -> String {
        match topic {
            Topic::Channel(name) => format!("{}.live.{}", self.prefix, encode_token(name)),
            other => format!(
                "{}.msg.{}.{}",
                self.prefix,
                other.kind_tag(),
                encode_token(other.name())
            ),
        }
    }
}

/// The subject a KV `key` of `bucket` is stored on.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_weird_names() {
        let names = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "chat.lobby",
            "*",
            ">",
            "a b\tc",
            "news.>.*",
            "ünïcødé 🎉",
            "$KV.x",
            "__",
            "_",
            "-",
        ];
        for n in names {
            let t = encode_token(n);
            assert!(!t.is_empty());
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{t:?} is not a clean token"
            );
            assert_eq!(decode_token(&t).as_deref(), Some(n), "round trip of {n:?}");
        }
    }

    #[test]
    fn encoding_is_injective_on_prefixes() {
        let mut seen = std::collections::HashSet::new();
        for n in ["", "a", "aa", "aaa", "aaaa", "b", "_", "A"] {
            assert!(seen.insert(encode_token(n)), "collision for {n:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for t in ["", "a", "a.b", "ab*", "abcde", "ab==", "AB"] {
            assert_ne!(
                decode_token(t).map(|s| encode_token(&s)),
                Some(t.to_owned()),
                "{t:?}"
            );
        }
    }

    #[test]
    fn subjects_keep_topic_kinds_apart() {
        let n = Names::new("ss");
        let subjects: std::collections::HashSet<String> = [
            Topic::channel("x"),
            Topic::user("x"),
            Topic::session("x"),
            Topic::instance("x"),
        ]
        .iter()
        .map(|t| n.topic_subject(t))
        .collect();
        assert_eq!(subjects.len(), 4);
        assert_eq!(n.topic_subject(&Topic::channel("a.b")), "ss.live.YS5i");
        assert_eq!(n.history_subject("a.b"), "ss.hist.YS5i");
    }

    #[test]
    fn long_names_are_refused() {
        assert!(check_name(&"x".repeat(MAX_NAME_BYTES), "channel").is_ok());
        assert!(check_name(&"x".repeat(MAX_NAME_BYTES + 1), "channel").is_err());
    }
}
