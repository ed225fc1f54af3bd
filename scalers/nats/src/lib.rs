//! The NATS scaler for Scaled Sockets: core NATS for messages between instances,
//! JetStream for channel history and key-value buckets for shared state.
//!
//! ```no_run
//! # async fn run() -> Result<(), scaled_sockets_scaler::ScalerError> {
//! use scaled_sockets_nats::{NatsConfig, NatsScaler};
//! let scaler = NatsScaler::connect(NatsConfig::from_url("nats://127.0.0.1:4222")).await?;
//! # let _ = scaler; Ok(()) }
//! ```
//!
//! Needs a NATS server with JetStream enabled (`nats-server -js`), version 2.9 or
//! later (for stream `RePublish`; tested against 2.9.10). Every instance of a
//! Scaled Sockets cluster connects to the same NATS (cluster) with the same prefix.
//! The stream and buckets are created on first connect (and re-created if they
//! vanish later, e.g. a NATS server that lost its storage: the channels then start
//! new epochs).
//!
//! # Layout
//! With the default prefix `ss` (`b64(x)` = unpadded base64url of `x`, so names
//! with `.`, `*`, `>`, spaces or unicode become one safe token):
//!
//! | what | where |
//! |---|---|
//! | channel history (stored) | stream `ss_history`, subject `ss.hist.b64(channel)` |
//! | channel publications (live) | core subject `ss.live.b64(channel)`, republished by the stream |
//! | user / session / instance messages | core subject `ss.msg.{user,sess,inst}.b64(name)` |
//! | instance registry | KV bucket `ss_instances`, key `b64(instance id)` |
//! | leases | KV bucket `ss_leases`, key `b64(lease key)` |
//! | presence | KV bucket `ss_presence`, key `b64(channel).b64(client id)` |
//! | key-value family (sessions: `session/<id>`) | KV bucket `ss_kv`, key `b64(key)`, fence in header `Ss-Fence` |
//!
//! # Guarantees
//! - **One connection per scaler**: every feed's subscriptions, every publish and
//!   every request share one async-nats [`async_nats::Client`].
//! - **Offsets** are gap-free, unique and ordered per channel, cluster-wide:
//!   assigned by compare-and-set on the channel subject's last sequence
//!   (`Nats-Expected-Last-Subject-Sequence`); see [`history`].
//! - **Delivery order**: the history stream republishes each stored publication to
//!   the live subject as it stores it, so feeds see a channel in offset order and
//!   see only stored publications. A publish that returned `Ok` reaches every feed
//!   that was subscribed and connected.
//! - **Recovery** answers exactly like `MemoryScaler`: `recovered` only when every
//!   missed publication is returned, gap-free, in the same epoch.
//! - **Feeds never block the connection**: events go to the feed's bounded queue
//!   with `try_send`; losses are counted and reported as `Overflowed`, after
//!   which the server repairs channels from history. Messages async-nats itself
//!   drops for a slow subscription are reported the same way.
//! - **Outages**: while the connection is down every call fails at once with
//!   `Unavailable`, and any call that does not complete within
//!   [`NatsConfig::request_timeout`] (3 s) fails with `Timeout`; nothing hangs.
//!   Feeds emit `Interrupted` on disconnect and `Resumed` once reconnected *and*
//!   every subscription is confirmed again (async-nats re-subscribes by itself;
//!   a PING/PONG after the reconnect proves the server has the SUBs).
//!   `is_live()` is true only in between.
//! - **Leases** are exclusive: acquire, renew and release are compare-and-set
//!   on the record's revision. The fencing token is the stream sequence of the
//!   acquiring write, so tokens only grow per key (see `leases`).
//! - **Key-value** revisions are stream sequences (they only grow per key);
//!   preconditions are decided on a read and written by compare-and-set (see
//!   `kv`).
//!
//! # Limits (what differs from the in-memory reference)
//! - `PublishOptions::history_size` is capped at
//!   [`NatsConfig::max_history_size`] (default 1000) and `history_ttl` at
//!   [`NatsConfig::max_history_ttl`] (default 24 h): one stream has one
//!   `max_msgs_per_subject` and one `max_age`. Below the caps both are honoured
//!   exactly per call (emulated with per-message headers, see [`history`]).
//! - TTLs of registrations and leases are capped at
//!   [`NatsConfig::max_record_ttl`] (default 24 h). They are checked against the
//!   NATS server's write timestamp, so instance clocks must agree with the NATS
//!   server's clock within a small fraction of the shortest TTL (NTP).
//! - Names (channels, ids, keys) are limited to [`names::MAX_NAME_BYTES`] bytes so
//!   that no subject can exceed the NATS control-line limit.
//! - Presence entries of an instance that crashed are hidden at once (the
//!   registry decides) and removed by a background sweep of the presence bucket
//!   when a registry read, or the periodic sweep, finds the registration
//!   expired (or when that channel's presence is next read).
//! - A publish costs one JetStream round trip when this instance published the
//!   channel's previous message, two otherwise (read the head, then append), plus
//!   a retry per lost compare-and-set race. Recovering up to 16 publications
//!   costs one round trip each; more go through a short-lived consumer.
//! - On a NATS *cluster*, a confirmed `subscribe` is confirmed by the server the
//!   instance is connected to; interest reaches the other NATS servers
//!   asynchronously (normally within milliseconds). A publication in that window
//!   can miss the new subscription; the server then sees the gap at the channel's
//!   next publication and repairs it from history. Use NATS 2.10 or later for
//!   replicated (R3) history streams.
//! - Key-value entries with a TTL read as absent once expired and are removed
//!   by the read that finds them or by the periodic sweep
//!   ([`NatsConfig::sweep_interval`], 30 s): the bucket has no `max_age`, since
//!   entries without a TTL must stay. The sweep also removes expired
//!   registrations, orphaned presence entries and channels whose history TTL
//!   passed (epoch markers of channels that were only read included).
//! - Publications are limited to [`NatsConfig::max_publication_bytes`] (64 KiB)
//!   and the history stream to [`NatsConfig::max_history_bytes`] (1 GiB; the
//!   oldest publications are discarded beyond it).
//! - `instances()`, `leases()`, `kv_list()` and `presence()` each read a snapshot through a
//!   short-lived consumer (`presence()` reads the registry too): fine for
//!   periodic and per-request use, not for tight loops.
//!
//! # Module map
//! - [`config`]: the configuration, [`NatsConfig`].
//! - [`scaler`]: [`NatsScaler`], the [`scaled_sockets_scaler::Scaler`]
//!   implementation.
//! - [`history`]: channel streams on JetStream: offsets, epochs, TTL/size
//!   emulation, recovery.
//! - [`feed`]: feeds: per-topic core subscriptions and the forwarding task.
//! - [`conn`]: connection events to feed state (`Interrupted`/`Resumed`).
//! - [`records`]: the key-value layer with per-record TTLs and compare-and-set.
//! - `leases`, `kv`: fenced leases and the versioned key-value family on it.
//! - [`consume`]: reading many messages through a short-lived consumer.
//! - `sweep`: the periodic removal of everything that expired (records,
//!   orphaned presence, expired channels and epoch markers).
//! - [`streams`]: creating, checking and re-creating the streams.
//! - [`names`]: subject, stream, bucket and key names; the token encoding.
//! - [`errors`]: async-nats errors to [`scaled_sockets_scaler::ScalerError`].

pub mod config;
pub mod conn;
pub mod consume;
pub mod errors;
pub mod feed;
pub mod history;
mod kv;
mod leases;
pub mod names;
mod presence;
pub mod records;
pub mod scaler;
pub mod streams;
mod sweep;

pub use config::{
    DEFAULT_MAX_HISTORY_BYTES, DEFAULT_MAX_PUBLICATION_BYTES, DEFAULT_SWEEP_INTERVAL, NatsConfig,
};
pub use scaler::NatsScaler;
