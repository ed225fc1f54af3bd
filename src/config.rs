//! Server limits and timeouts, with the documented defaults.

use scaled_sockets_scaler::PublishOptions;
use std::time::Duration;

/// Everything tunable about one server instance. `Config::default()` holds the
/// defaults documented in docs/protocol.md ("The standalone server").
#[derive(Debug, Clone)]
pub struct Config {
    /// This instance's id in the cluster (a new UUID by default).
    pub instance_id: String,
    /// The address peers and `/api/cluster` show for this instance.
    pub advertised_address: String,
    /// Largest accepted WebSocket frame (and message); larger: close 1009.
    pub max_frame_bytes: usize,
    /// Subscriptions per connection; more: `limit_exceeded`.
    pub max_subscriptions: usize,
    /// Publishes per second per connection (burst twice that); 0 = unlimited.
    pub publish_rate: u32,
    /// Server ping period; a client silent for two periods is closed with 4010.
    pub ping_interval: Duration,
    /// Time allowed between the upgrade and `connect`; then close 4009.
    pub handshake_timeout: Duration,
    /// Bound on a graceful shutdown.
    pub drain_timeout: Duration,
    /// How long a session stays resumable after its last connection closed.
    pub resume_window: Duration,
    /// The write coalescing window: after a connection is woken for queued
    /// frames, it waits this long for more before writing, so frames that
    /// arrive close together share one socket write. Fewer system calls per
    /// delivered frame at the price of up to this much extra latency per
    /// frame. Zero (the default) writes as soon as the connection is woken.
    pub write_delay: Duration,
    /// Frames queued for one connection before it counts as a slow consumer
    /// (closed with 4008), so one slow client never stalls the others.
    pub outbound_queue: usize,
    /// Initial capacity of a socket's read buffer, and the most read from the
    /// socket in one call, in bytes. Small, because an idle socket should cost
    /// little (the buffer grows for large frames, which then take several
    /// reads); raise it for connections that publish large frames at high rates.
    pub read_buffer_bytes: usize,
    /// How channel history is kept (size and TTL).
    pub history: PublishOptions,
    /// Most publications replayed to one recovering subscription.
    pub recovery_limit: usize,
    /// Bound on any scaler call made for a client (then `unavailable`).
    pub scaler_timeout: Duration,
    /// Time an `ask` handler (or a client answering a server ask) may take.
    pub ask_timeout: Duration,
    /// Registry heartbeat period; the registry forgets an instance after
    /// `heartbeat_interval * 5` without one.
    pub heartbeat_interval: Duration,
    /// More bad frames than this within 10 s close the connection with 4000.
    pub max_bad_frames: u32,
    /// Largest `data` the server puts in a frame it builds (publications,
    /// tells, asks, replies), in bytes; larger: `limit_exceeded` (HTTP 413).
    /// Bounds every frame a client receives, so none is too big to send.
    pub max_data_bytes: usize,
    /// Commands with an id awaiting their answer, per connection; more:
    /// `limit_exceeded`. Bounds what one client can have the server do at once.
    pub max_in_flight: usize,
    /// `subscribe`, `unsubscribe` and `presence` per second per connection
    /// (burst twice that); 0 = unlimited. These reach the backend.
    pub subscribe_rate: u32,
    /// Most entries in a `presence` answer; more: the answer says
    /// `truncated: true`.
    pub max_presence: usize,
    /// How often each connection saves its session record when its
    /// positions moved (a client resuming after this instance died recovers
    /// from positions at most this old).
    pub session_save_interval: Duration,
    /// How often every subscribed channel is checked against its stream's top,
    /// so a publication lost in live delivery is repaired even on a quiet
    /// channel.
    pub gap_check_interval: Duration,
    /// Key for the HTTP API (`/api/*`); `None` disables it (404).
    pub api_key: Option<String>,
    /// Lease of a hosted core: the owner renews it every third of this; when
    /// the owner dies, the core is respawned elsewhere after at most this
    /// plus [`Config::core_scan_interval`].
    pub core_lease_ttl: Duration,
    /// How often each instance looks for cores that should run but have no
    /// owner (their instance died), to respawn them.
    pub core_scan_interval: Duration,
    /// Connections between their TCP accept and the end of their handshake
    /// (`welcome` sent or refused) at once, each counted at most 2 s; 0 = no
    /// bound. Beyond it the server stops accepting and connections wait in
    /// the listen backlog.
    pub max_handshakes: usize,
    /// Connections accepted per second; 0 = no limit. Beyond it, too,
    /// connections wait rather than fail (a reconnect storm becomes a queue).
    pub handshake_rate: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance_id: uuid::Uuid::new_v4().to_string(),
            advertised_address: String::new(),
            max_frame_bytes: 65_536,
            max_subscriptions: 128,
            publish_rate: 1000,
            ping_interval: Duration::from_millis(25_000),
            handshake_timeout: Duration::from_millis(10_000),
            drain_timeout: Duration::from_millis(10_000),
            resume_window: Duration::from_secs(120),
            write_delay: Duration::ZERO,
            outbound_queue: 1024,
            read_buffer_bytes: 256,
            history: PublishOptions {
                history_size: 1000,
                history_ttl: Duration::from_secs(600),
            },
            recovery_limit: 1000,
            scaler_timeout: Duration::from_secs(5),
            ask_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            max_bad_frames: 10,
            max_data_bytes: 65_536,
            max_in_flight: 64,
            subscribe_rate: 100,
            max_presence: 1000,
            gap_check_interval: Duration::from_secs(10),
            session_save_interval: Duration::from_secs(2),
            api_key: None,
            core_lease_ttl: Duration::from_secs(5),
            core_scan_interval: Duration::from_secs(1),
            max_handshakes: 256,
            handshake_rate: 10_000,
        }
    }
}
