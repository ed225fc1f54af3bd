//! The key and pub/sub channel layout (see the crate docs for the table).
//!
//! Hash tags: Redis Cluster hashes only the part of a key between the first `{`
//! and the next `}`. Every key of one channel carries the channel name as its
//! tag, so a channel's keys live in one slot and one Lua script may touch them
//! all. Names may contain any character, `{` and `}` included, so the tag holds
//! the name *escaped*: `%` -> `%25`, `{` -> `%7B`, `}` -> `%7D`. The escaped form
//! has no `}`, so the tag ends exactly where the name ends, and the escape is
//! injective, so two names never share a key.
//!
//! Registry, lease and key-value keys each share one fixed tag (`{registry}`,
//! `{lease}`, `{kv}`): their scripts read keys computed from an index (and draw
//! from one counter), which is only legal on a cluster when all of them are in
//! one slot.

use scaled_sockets_scaler::Topic;
use std::borrow::Cow;

/// Escapes a name for use inside a `{...}` hash tag.
pub(crate) fn escape_tag(name: &str) -> Cow<'_, str> {
    if !name.contains(['%', '{', '}']) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The Redis Cluster slot of `key` (CRC16 of its hash tag, modulo 16384).
pub(crate) fn slot_of(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key).as_bytes()) % 16384
}

/// The hash tag Redis Cluster would hash for `key` (the whole key if it has none).
pub(crate) fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Builds every key and channel name under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn channel_key(&self, channel: &str, what: &str) -> String {
        format!("{}:ch:{{{}}}:{what}", self.prefix, escape_tag(channel))
    }

    /// Hash with the channel's epoch (`e`) and latest offset (`o`).
    pub(crate) fn channel_meta(&self, channel: &str) -> String {
        self.channel_key(channel, "meta")
    }

    /// Stream holding the channel's history; entry id `<offset>-0`, field `d`.
    pub(crate) fn channel_stream(&self, channel: &str) -> String {
        self.channel_key(channel, "stream")
    }

    /// Hash of presence entries: client id -> JSON entry.
    pub(crate) fn channel_presence(&self, channel: &str) -> String {
        self.channel_key(channel, "presence")
    }

    /// The pub/sub channel a topic is delivered on.
    pub(crate) fn topic_channel(&self, topic: &Topic) -> String {
        format!(
            "{}:{}:{{{}}}:pub",
            self.prefix,
            topic.kind_tag(),
            escape_tag(topic.name())
        )
    }

    /// A feed's own probe channel.
    pub(crate) fn probe_channel(&self, feed_id: &str) -> String {
        format!("{}:probe:{{{}}}", self.prefix, escape_tag(feed_id))
    }

    /// What registry instance keys start with (the id follows).
    pub(crate) fn instance_key_prefix(&self) -> String {
        format!("{}:{{registry}}:inst:", self.prefix)
    }

    /// One instance's registration (JSON), with the registration TTL.
    pub(crate) fn instance(&self, id: &str) -> String {
        format!("{}{id}", self.instance_key_prefix())
    }

    /// Sorted set of instance ids scored by expiry (server ms).
    pub(crate) fn instance_index(&self) -> String {
        format!("{}:{{registry}}:index", self.prefix)
    }

    /// Set of the channels an instance added presence entries to (no TTL; deleted
    /// by the sweep when the instance leaves the registry).
    pub(crate) fn instance_presence(&self, id: &str) -> String {
        format!("{}:ipres:{{{}}}", self.prefix, escape_tag(id))
    }

    /// What lease keys start with (the lease key follows).
    pub(crate) fn lease_key_prefix(&self) -> String {
        format!("{}:{{lease}}:k:", self.prefix)
    }

    /// One lease: the owner, with the lease TTL.
    pub(crate) fn lease(&self, key: &str) -> String {
        format!("{}{key}", self.lease_key_prefix())
    }

    /// Sorted set of lease keys scored by expiry (server ms).
    pub(crate) fn lease_index(&self) -> String {
        format!("{}:{{lease}}:index", self.prefix)
    }

    /// The counter fencing tokens are drawn from (all leases).
    pub(crate) fn lease_tokens(&self) -> String {
        format!("{}:{{lease}}:tokens", self.prefix)
    }

    /// What key-value item keys start with (the name follows).
    pub(crate) fn kv_key_prefix(&self) -> String {
        format!("{}:{{kv}}:k:", self.prefix)
    }

    /// One key-value item: hash `v` value, `r` revision, `f` fence; its TTL.
    pub(crate) fn kv_item(&self, name: &str) -> String {
        format!("{}{name}", self.kv_key_prefix())
    }

    /// Sorted set of every item name, all scored 0 (listed by lex range).
    pub(crate) fn kv_names(&self) -> String {
        format!("{}:{{kv}}:names", self.prefix)
    }

    /// Sorted set of item names with a TTL, scored by expiry (server ms).
    pub(crate) fn kv_expiry(&self) -> String {
        format!("{}:{{kv}}:exp", self.prefix)
    }

    /// The counter revisions are drawn from (all items).
    pub(crate) fn kv_revisions(&self) -> String {
        format!("{}:{{kv}}:rev", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_keys_share_one_tag_whatever_the_name() {
        let keys = Keys::new("ss");
        for name in [
            "news",
            "a{b}c",
            "}{",
            "{",
            "}",
            "x:y:{z}",
            "100%",
            "%7B",
            "ünï{cødé}",
        ] {
            let meta = keys.channel_meta(name);
            let stream = keys.channel_stream(name);
            let presence = keys.channel_presence(name);
            let pubsub = keys.topic_channel(&Topic::channel(name));
            let tag = hash_tag(&meta);
            assert_ne!(tag, meta, "{name}: the key has a tag");
            for other in [&stream, &presence, &pubsub] {
                assert_eq!(hash_tag(other), tag, "{name}: {other} vs {meta}");
            }
            assert!(meta.starts_with("ss:"));
        }
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of("a{}b"), slot_of("a{}b"));
    }

    #[test]
    fn escaping_is_injective() {
        let names = ["a{b", "a%7Bb", "a}b", "a%7Db", "a%b", "a%25b", "ab", "a{}b"];
        let tags: std::collections::HashSet<String> =
            names.iter().map(|n| escape_tag(n).into_owned()).collect();
        assert_eq!(tags.len(), names.len());
        for t in &tags {
            assert!(!t.contains(['{', '}']), "{t}");
        }
    }

    #[test]
    fn topic_kinds_never_collide() {
        let keys = Keys::new("ss");
        let names: std::collections::HashSet<String> = [
            Topic::channel("x"),
            Topic::user("x"),
            Topic::session("x"),
            Topic::instance("x"),
        ]
        .iter()
        .map(|t| keys.topic_channel(t))
        .collect();
        assert_eq!(names.len(), 4);
    }
}
