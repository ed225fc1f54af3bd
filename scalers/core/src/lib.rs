//! The seam between Scaled Sockets server instances and the backend that holds
//! cluster state.
//!
//! Every piece of state that must survive one instance, or be seen by all of them,
//! lives behind the [`Scaler`] trait: messages between instances, the instance
//! registry, fenced leases for cores, presence, per-channel history and a
//! versioned key-value family (sessions and core snapshots live there). An
//! instance keeps only what it can rebuild: its own sockets and which of them want
//! what.
//!
//! # Module map
//! - [`scaler`]: the object-safe [`Scaler`] trait (use it as `Arc<dyn Scaler>`)
//!   and [`ScalerExt`], conveniences built on it (session helpers included).
//! - [`feed`]: an instance's single backend subscription ([`Feed`]) and the
//!   [`FeedEvent`]s it yields, including the *interrupted/resumed* signals the
//!   server uses to repair gaps after a backend reconnect.
//! - [`types`]: the values that cross the seam: [`Topic`], [`StreamPosition`],
//!   [`Publication`], [`HistoryPage`], [`InstanceInfo`], [`PresenceEntry`],
//!   [`Lease`], [`Versioned`], [`PutOptions`]...
//! - [`error`]: [`ScalerError`], the one error enum of this crate.
//! - [`timeout`]: [`TimeoutScaler`], one time bound around any scaler.
//! - [`memory`]: [`MemoryScaler`], the embedded default; several instances in one
//!   process can share one, which makes cluster behaviour testable without a
//!   network. It can also simulate an outage for fault tests.
//! - For backend authors: [`check`] (argument checks and the key-value
//!   precondition rules), [`records`] (the JSON of registrations and presence,
//!   the dead-instance presence filter), [`outbox`] (the lossy bounded feed
//!   hand-off).
//!
//! Backends live in sibling crates (`scaled-sockets-redis`, `scaled-sockets-nats`)
//! and all pass one shared conformance suite (`scaled-sockets-conformance`).

pub mod check;
pub mod error;
pub mod feed;
pub mod memory;
pub mod outbox;
pub mod records;
pub mod scaler;
pub mod timeout;
pub mod types;

pub use error::{Result, ScalerError};
pub use feed::{FEED_QUEUE_CAPACITY, Feed, FeedControl, FeedEvent};
pub use memory::MemoryScaler;
pub use scaler::{SESSION_PREFIX, Scaler, ScalerExt};
pub use timeout::TimeoutScaler;
pub use types::{
    Capabilities, HistoryPage, HistoryRequest, InstanceInfo, KV_LIST_LIMIT, Lease, LeaseOutcome,
    PresenceEntry, Publication, PublishOptions, PutMode, PutOptions, StreamPosition, Topic,
    Versioned,
};
