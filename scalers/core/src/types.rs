//! Values that cross the scaler seam.

use bytes::Bytes;
use std::{fmt, sync::Arc, time::Duration};

/// Something an instance can subscribe its [`crate::Feed`] to.
///
/// Channels carry [`Publication`]s with stream positions; the other topics carry
/// opaque payloads addressed to the connections of one user, one session, or one
/// instance. Names are opaque to the scaler; backends map each topic to their own
/// key or subject and must keep topics of different kinds apart.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// A pub/sub channel with history.
    Channel(Arc<str>),
    /// All connections of one user, on every instance.
    User(Arc<str>),
    /// All connections of one session, on every instance.
    Session(Arc<str>),
    /// One instance's inbox (requests routed to a connection it hosts, replies...).
    Instance(Arc<str>),
}

impl Topic {
    /// A channel topic.
    pub fn channel(name: impl Into<Arc<str>>) -> Self {
        Self::Channel(name.into())
    }
    /// A user topic.
    pub fn user(id: impl Into<Arc<str>>) -> Self {
        Self::User(id.into())
    }
    /// A session topic.
    pub fn session(id: impl Into<Arc<str>>) -> Self {
        Self::Session(id.into())
    }
    /// An instance inbox topic.
    pub fn instance(id: impl Into<Arc<str>>) -> Self {
        Self::Instance(id.into())
    }
    /// The name without its kind.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::Channel(n) | Self::User(n) | Self::Session(n) | Self::Instance(n) => n,
        }
    }
    /// A short tag for the kind, stable across versions: backends may use it in keys.
    pub fn kind_tag(&self) -> &'static str {
        match self {
            Self::Channel(_) => "ch",
            Self::User(_) => "user",
            Self::Session(_) => "sess",
            Self::Instance(_) => "inst",
        }
    }
    /// The inverse of [`Topic::kind_tag`].
    pub fn from_tag(tag: &str, name: &str) -> Option<Self> {
        let name: Arc<str> = name.into();
        Some(match tag {
            "ch" => Self::Channel(name),
            "user" => Self::User(name),
            "sess" => Self::Session(name),
            "inst" => Self::Instance(name),
            _ => return None,
        })
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind_tag(), self.name())
    }
}

/// A position in a channel's stream: `offset` counts publications from 1 within one
/// `epoch`; a new epoch starts when the channel's history is lost or reset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct StreamPosition {
    /// Offset of a publication (0 = before the first one).
    pub offset: u64,
    /// Identifies one continuous life of the stream.
    pub epoch: Arc<str>,
}

impl StreamPosition {
    /// Builds a position.
    pub fn new(offset: u64, epoch: impl Into<Arc<str>>) -> Self {
        Self {
            offset,
            epoch: epoch.into(),
        }
    }
}

/// One publication on a channel, as stored in history and delivered to feeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// The channel.
    pub channel: Arc<str>,
    /// Its position in the channel's stream.
    pub offset: u64,
    /// The stream epoch it was published in.
    pub epoch: Arc<str>,
    /// The payload, opaque to the scaler (the server stores the raw JSON `data`).
    pub payload: Bytes,
}

/// How a publication is kept in history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishOptions {
    /// Keep at most this many publications per channel (0 = keep none: offsets still
    /// advance, recovery then always fails).
    pub history_size: usize,
    /// Drop a channel's history (and start a new epoch) after this long without a
    /// publication.
    pub history_ttl: Duration,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
        }
    }
}

/// What [`crate::Scaler::history`] should return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Return publications after this position. `None`: only report the top.
    pub since: Option<StreamPosition>,
    /// Return at most this many publications; if more were missed, the page is not
    /// `recovered`.
    pub limit: usize,
    /// When the channel has no stream yet, `history` creates its epoch; the epoch
    /// is kept this long unless a publication renews it (with its own
    /// [`PublishOptions::history_ttl`]). Pass the same TTL the channel is
    /// published with. Default: the default `history_ttl` (300 s).
    pub ttl: Duration,
}

impl Default for HistoryRequest {
    fn default() -> Self {
        Self {
            since: None,
            limit: 0,
            ttl: PublishOptions::default().history_ttl,
        }
    }
}

/// The answer of [`crate::Scaler::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The channel's current position: latest offset (0 if none) and epoch.
    pub top: StreamPosition,
    /// Publications after `since`, oldest first, gap-free, ending at `top` when
    /// `recovered`.
    pub publications: Vec<Publication>,
    /// True when `publications` is exactly everything after `since`: same epoch, and
    /// nothing missed has been trimmed or expired. Always true when `since` is `None`.
    pub recovered: bool,
}

/// One instance as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InstanceInfo {
    /// Instance id (unique in the cluster).
    pub id: String,
    /// Address clients or peers can reach it at (informational).
    pub address: String,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Cores hosted.
    pub cores: u64,
    /// Milliseconds since the Unix epoch when this entry was written.
    pub updated_at_ms: u64,
}

/// One connection subscribed to a channel, for presence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceEntry {
    /// Connection id.
    pub client: String,
    /// User id, `None` when anonymous.
    pub user: Option<String>,
    /// The instance hosting the connection. Entries whose instance has left the
    /// registry (or whose registration expired) are never returned.
    pub instance: String,
}

/// A live lease: who holds it and the fencing token of this tenure.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    /// The owner.
    pub owner: String,
    /// The fencing token handed out when `owner` acquired it. Tokens of one key
    /// only grow: every acquisition (after a release or an expiry, by anyone)
    /// gets a larger one, so a write carrying an older token comes from a stale
    /// owner (see [`PutMode::Fenced`]).
    pub token: u64,
}

/// Outcome of [`crate::Scaler::acquire_lease`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease now. Newly acquired: a new, larger token. Already
    /// held by the caller: the TTL was renewed and the token kept.
    Acquired {
        /// The fencing token of this tenure.
        token: u64,
    },
    /// Another owner holds it.
    HeldBy {
        /// The holder.
        owner: String,
        /// The holder's token.
        token: u64,
    },
}

impl LeaseOutcome {
    /// The token when acquired.
    pub fn acquired(&self) -> Option<u64> {
        match self {
            Self::Acquired { token } => Some(*token),
            Self::HeldBy { .. } => None,
        }
    }
}

/// A value of the key-value family with its revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value, opaque to the scaler.
    pub value: Bytes,
    /// The revision of the write that stored it. Revisions of one key only grow,
    /// across deletes and expiry too (they are not consecutive).
    pub revision: u64,
}

/// The precondition of a [`crate::Scaler::kv_put`] or
/// [`crate::Scaler::kv_delete`]. When it does not hold, the call answers
/// [`crate::ScalerError::Conflict`] and writes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PutMode {
    /// No precondition. Keeps the key's fence.
    #[default]
    Any,
    /// Only if the key is absent (or expired). Not valid for deletes.
    Create,
    /// Only if the key's current revision is this one.
    IfRevision(u64),
    /// Only if this fencing token (from [`Lease::token`]) is at least the fence
    /// stored with the key (0 when none); stores this token as the new fence. A
    /// stale lease holder's writes are thereby refused once a newer holder wrote.
    Fenced(u64),
}

/// How [`crate::Scaler::kv_put`] writes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PutOptions {
    /// The precondition.
    pub mode: PutMode,
    /// Forget the key after this long (`None`: keep it until deleted). A put
    /// replaces the previous TTL.
    pub ttl: Option<Duration>,
}

impl PutOptions {
    /// Options with this mode and no TTL.
    pub fn mode(mode: PutMode) -> Self {
        Self { mode, ttl: None }
    }

    /// The same options with this TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Most entries one [`crate::Scaler::kv_list`] returns: the first ones in key
/// order. List narrower prefixes to see more.
pub const KV_LIST_LIMIT: usize = 1000;

/// What a backend can and cannot do; the conformance suite skips what a backend
/// declares it cannot, and the docs say what the user loses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// History and recovery are supported.
    pub history: bool,
    /// The conformance suite may restart the backend process to test reconnects.
    pub survives_backend_restart: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            history: true,
            survives_backend_restart: true,
        }
    }
}

/// A new random stream epoch: 12 hex digits (never contains `:`).
pub fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_owned()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
