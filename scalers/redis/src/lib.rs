//! The Redis backend of Scaled Sockets: a [`Scaler`](scaled_sockets_scaler::Scaler)
//! that keeps cluster state in one Redis (possibly found through Sentinel:
//! `redis+sentinel://host:port[,...]/service`), or in a Redis Cluster
//! (`redis+cluster://host:port[,host:port...]`, Redis 7.0 or later).
//!
//! ```no_run
//! # async fn demo() -> Result<(), scaled_sockets_scaler::ScalerError> {
//! use scaled_sockets_redis::{RedisConfig, RedisScaler};
//! use scaled_sockets_scaler::Scaler;
//! use std::sync::Arc;
//!
//! let config = RedisConfig::from_url("redis://:secret@127.0.0.1:6379/0")?.with_prefix("chat");
//! let scaler: Arc<dyn Scaler> = Arc::new(RedisScaler::connect(config).await?);
//! # Ok(()) }
//! ```
//!
//! # Key layout
//!
//! Every key and pub/sub channel starts with `{prefix}:` (default `ss`). `<tag>`
//! is a name escaped for use as a Redis Cluster hash tag: `%` -> `%25`,
//! `{` -> `%7B`, `}` -> `%7D`, everything else as is. The escaped form contains no
//! `}`, so the hash tag is exactly the name, whatever characters it contains, and
//! distinct names never share a key.
//!
//! | key / channel | type | content |
//! |---|---|---|
//! | `{prefix}:ch:{<tag>}:meta` | hash | `e` = epoch, `o` = latest offset, `n` = node id (cluster only); TTL = history TTL |
//! | `{prefix}:ch:{<tag>}:stream` | stream | history: entry id `<offset>-0`, field `d` = payload; `MAXLEN` = history size; TTL = history TTL |
//! | `{prefix}:ch:{<tag>}:presence` | hash | client id -> `{"c":client,"u":user,"i":instance}` |
//! | `{prefix}:ipres:{<tag>}` | set | channels an instance added presence entries to |
//! | `{prefix}:ch:{<tag>}:pub` | pub/sub (sharded on a cluster) | publications: `<offset>:<epoch>:<payload>` |
//! | `{prefix}:user:{<tag>}:pub`, `:sess:`, `:inst:` | pub/sub | raw payloads sent to a user, session, instance |
//! | `{prefix}:probe:{<feed id>}` | pub/sub | a feed's liveness probes |
//! | `{prefix}:{registry}:inst:<id>` | string | instance JSON; TTL = registration TTL |
//! | `{prefix}:{registry}:index` | zset | instance ids scored by expiry (server ms) |
//! | `{prefix}:{lease}:k:<key>` | string | `<token>:<owner>`; TTL = lease TTL |
//! | `{prefix}:{lease}:index` | zset | lease keys scored by expiry (server ms) |
//! | `{prefix}:{lease}:tokens` | string | counter fencing tokens are drawn from (no TTL) |
//! | `{prefix}:{kv}:k:<key>` | hash | `v` value, `r` revision, `f` fence; TTL = put TTL |
//! | `{prefix}:{kv}:names` | zset | every key-value name, score 0 (prefix listing by lex range) |
//! | `{prefix}:{kv}:exp` | zset | names with a TTL scored by expiry (server ms) |
//! | `{prefix}:{kv}:rev` | string | counter revisions are drawn from (no TTL) |
//!
//! Sessions are key-value items named `session/<id>`.
//!
//! All keys of one channel share its hash tag, so the publish and history
//! scripts touch one slot. The registry keys share the tag `{registry}`, the
//! lease keys `{lease}` and the key-value keys `{kv}`: their scripts read keys
//! found through an index and draw from one counter, which a cluster allows only
//! within one slot (so on a Redis Cluster each of the three lives on one node). Presence reads its channel's hash, then checks the instances it
//! names in the registry slot: two slots, two round trips, no cross-slot command.
//!
//! # Redis Cluster
//!
//! Commands go over one cluster connection (per-node multiplexed connections,
//! routed by slot, `MOVED`/`ASK` followed). Publish ends in `SPUBLISH` and
//! feeds use `SSUBSCRIBE` (see `shard_feed`), so a channel's traffic stays on
//! its shard. The publish and history scripts record the id of the node that
//! wrote a channel and start a new epoch when another node runs them: a
//! replica promoted after a failover may lack acknowledged publications, whose
//! offsets must not be reused under the old epoch.
//!
//! With Sentinel, every (re)connect asks the Sentinels for the primary, and
//! the scripts start a new epoch when a primary with another run id runs them.
//!
//! # Guarantees
//!
//! - **Publish is one Lua script**: creates the epoch if the channel has none
//!   (random, from the caller), `HINCRBY`s the offset, `XADD`s with an exact
//!   `MAXLEN` (history size 0 deletes the stream: offsets still advance), renews
//!   the TTL of both keys and `PUBLISH`es the envelope. Offsets are therefore
//!   gap-free and ordered per channel across every instance, and delivery order
//!   on the pub/sub channel is offset order.
//! - **History** is a script too: it creates the epoch when missing (so the
//!   epoch a subscriber sees is the one later publications carry) and answers
//!   `recovered: false` for a wrong epoch, a position beyond the top, more missed
//!   than the limit, or anything missed that was trimmed or expired. When a
//!   channel's keys expire, the next publish or history call starts a new epoch
//!   and offsets restart at 1.
//! - **Every call is bounded** by the command timeout (default 3 s), connecting
//!   included; a Redis that is down or silent yields
//!   [`ScalerError::Unavailable`](scaled_sockets_scaler::ScalerError::Unavailable)
//!   or [`ScalerError::Timeout`](scaled_sockets_scaler::ScalerError::Timeout),
//!   never a hang. Connections are replaced after an I/O error or a timeout.
//! - **Feeds**: one dedicated subscriber connection per feed for all its topics;
//!   the reader never blocks (full queue: drop, count in [`RedisScaler::stats`],
//!   then `Overflowed`); per-topic order is kept; a lost or silent connection
//!   (liveness probe) gives `Interrupted`, reconnection with backoff and jitter,
//!   re-subscription in batches ([`RedisConfig::subscribe_batch`], default 500
//!   per `SUBSCRIBE`); `is_live()` turns true as `Resumed` is queued. A failed
//!   `subscribe` leaves nothing behind: while the connection is down it records
//!   nothing and returns `Unavailable` (the server answers `unavailable`); a
//!   `SUBSCRIBE` not confirmed in time returns `Timeout` and its topics are
//!   dropped and unsubscribed again. `unsubscribe` always succeeds and takes
//!   effect at once.
//!   Dropping the feed (either half) closes its connection.
//! - **Registry, leases, key-value items** expire by Redis TTLs; listings skip
//!   (and clean up) expired index entries. Lease acquire, renew and release are
//!   scripts checking owner and token, so exactly one of many contenders wins
//!   and a stale holder is refused. Fencing tokens and revisions come from one
//!   counter each, so they only grow per key, across release and expiry too.
//! - **Key-value puts and deletes** are one script each: the precondition
//!   (create-only, revision, fence) is decided and the write made atomically.
//!   `kv_list` answers by lex range on the name index, at most
//!   [`KV_LIST_LIMIT`](scaled_sockets_scaler::KV_LIST_LIMIT) entries.
//! - **Presence** entries of instances that left the registry are not returned
//!   and are deleted: by the read that finds them, and by a background sweep of
//!   the instance's channels when it unregisters or when `instances()` finds its
//!   registration expired (each expired id is reported to one caller), or the
//!   periodic sweep ([`RedisConfig::sweep_interval`], 30 s) does; a failed
//!   sweep is retried every round.
//!
//! Commands run on a few multiplexed connections ([`RedisConfig::pool_size`]):
//! concurrent calls are pipelined on them, never one round trip per message.
//! They speak RESP3, which lets a connection report its own disconnection, so
//! after a Redis restart the next call reconnects instead of failing once per
//! stale connection. Subscriber connections use the protocol of the URL (RESP2
//! by default).
//!
//! # Module map
//! - `config`: [`RedisConfig`] (URL, prefix, timeouts, pool size, probe, feed
//!   queue capacity, subscribe batch, reconnect backoff).
//! - `scaler`: [`RedisScaler`], the `Scaler` implementation.
//! - `leases`: fenced leases.
//! - `presence`: presence entries and their sweep.
//! - `kv`: the versioned key-value family.
//! - `feed`: the subscriber connection, its reader task, the probe and the
//!   reconnect loop.
//! - `shard_feed`: the feed on a Redis Cluster (sharded pub/sub).
//! - `pubsub`: batched `SUBSCRIBE`/`UNSUBSCRIBE` and their confirmation.
//! - `pool`: the command connections (or the cluster connection), timeouts and
//!   error mapping.
//! - `scripts`: the Lua scripts.
//! - `keys`: the key layout above and the hash-tag escaping.
//! - `codec`: the publication envelope (registry and presence JSON is
//!   `scaled_sockets_scaler::records`).
//! - `stats`: [`RedisStats`].
//! - `sweep`: the periodic sweep of expired registrations, their presence
//!   and expired key-value index entries.
//!
//! # Requirements
//! Redis 6.2 or later (RESP3, streams, `SET ... NX PX`, multi-field `HSET`,
//! script effects replication); Redis 7.0 or later for a Redis Cluster
//! (sharded pub/sub). `rediss://` uses rustls with the Mozilla roots; the
//! ring crypto provider is installed if the process has none.

mod codec;
mod config;
mod feed;
mod keys;
mod kv;
mod leases;
mod pool;
mod presence;
mod pubsub;
mod scaler;
mod scripts;
mod shard_feed;
mod stats;
mod sweep;

pub use config::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_PREFIX, DEFAULT_PROBE_INTERVAL,
    DEFAULT_PROBE_TIMEOUT, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, DEFAULT_SUBSCRIBE_BATCH,
    DEFAULT_SWEEP_INTERVAL, RedisConfig,
};
pub use scaler::RedisScaler;
pub use scripts::publish_script_source;
pub use stats::RedisStats;
