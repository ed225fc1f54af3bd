//! The seam between Scaled Sockets server instances and the backend that holds
//! cluster state.
//!
//! Every piece of state that must survive one instance, or be seen by all of them,
//! lives behind the [`Scaler`] trait: messages between instances, the instance
//! registry, leases for cores, presence, per-channel history and sessions. An
//! instance keeps only what it can rebuild: its own sockets and which of them want
//! what.
//!
//! # Module map
//! - [`scaler`]: the object-safe [`Scaler`] trait (use it as `Arc<dyn Scaler>`)
//!   and [`ScalerExt`], convenience methods built on it.
//! - [`feed`]: an instance's single backend subscription ([`Feed`]) and the
//!   [`FeedEvent`]s it yields, including the *interrupted/resumed* signals the
//!   server uses to repair gaps after a backend reconnect.
//! - [`types`]: the values that cross the seam: [`Topic`], [`StreamPosition`],
//!   [`Publication`], [`HistoryPage`], [`InstanceInfo`], [`PresenceEntry`], ...
//! - [`memory`]: [`MemoryScaler`], the embedded default; several instances in one
//!   process can share one, which makes cluster behaviour testable without a
//!   network. It can also simulate an outage for fault tests.
//! - [`error`]: [`ScalerError`], the one error enum of this crate.
//!
//! Backends live in sibling crates (`scaled-sockets-redis`, `scaled-sockets-nats`)
//! and all pass one shared conformance suite (`scaled-sockets-conformance`).

pub mod error;
pub mod feed;
pub mod memory;
pub mod scaler;
pub mod types;

pub use error::{Result, ScalerError};
pub use feed::{FEED_QUEUE_CAPACITY, Feed, FeedControl, FeedEvent};
pub use memory::MemoryScaler;
pub use scaler::{Scaler, ScalerExt};
pub use types::{
    Capabilities, HistoryPage, HistoryRequest, InstanceInfo, LeaseOutcome, PresenceEntry,
    Publication, PublishOptions, StreamPosition, Topic,
};
