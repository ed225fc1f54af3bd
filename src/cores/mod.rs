//! Cores: stateful rooms, each hosted by exactly one instance of the
//! cluster, placed on the least-loaded one, reachable from every instance.
//! See docs/cores.md for the model.
//!
//! - [`kind`]: what an app implements: [`Core`], [`CoreFactory`], placement
//!   ([`Candidate`], [`least_loaded`]).
//! - [`context`]: [`CoreContext`], a running core's handle: tell, ask,
//!   broadcast, publish, snapshots, stop.
//! - `actor`: the task running one core: its hooks in order, panics caught
//!   and restarted from the last snapshot.
//! - `hosting`: the owner side: leases and their renewal, starting and
//!   stopping local cores, respawning orphans, handing over on drain.
//! - `relay`: the client side: `join`, `leave`, `ask` and `tell` routed to
//!   the owner wherever it is, memberships, and `left` when an owner goes.
//! - `spawn`: placement and the app-facing `spawn_core`, `stop_core`, `cores`.
//! - `inbound`: core messages from other instances, in arrival order.
//! - `wire`: the messages between instances, their ordered queues, requests.
//! - `records`: the keys and JSON kept in the scaler.

mod actor;
pub mod context;
mod hosting;
mod inbound;
pub mod kind;
mod records;
mod relay;
mod spawn;
mod wire;

pub use context::CoreContext;
pub use kind::{Candidate, Core, CoreFactory, PlacementFn, least_loaded};
pub use spawn::CoreInfo;

use crate::hub::{CoreSink, Hub, lock};
use serde_json::value::RawValue;
use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, Weak, atomic::AtomicBool},
};

/// The core kinds an app registered, and how it places cores.
#[derive(Clone, Default)]
pub(crate) struct CoreKinds {
    pub kinds: HashMap<Arc<str>, Arc<dyn CoreFactory>>,
    pub placement: Option<Arc<PlacementFn>>,
}

impl fmt::Debug for CoreKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreKinds")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .field("custom_placement", &self.placement.is_some())
            .finish()
    }
}

/// Where a client's core lives, as the client's instance knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub owner: String,
    pub token: u64,
}

/// One instance's part of the cores layer: the cores it hosts and the
/// memberships of its clients.
pub(crate) struct Cores {
    /// Itself, for the tasks it spawns.
    me: Weak<Cores>,
    hub: Arc<Hub>,
    registered: CoreKinds,
    /// Cores hosted here, by id.
    local: Mutex<HashMap<String, hosting::LocalCore>>,
    /// For each local client, the cores it joined and where they live.
    members: Mutex<HashMap<String, HashMap<String, Route>>>,
    links: wire::Links,
    draining: AtomicBool,
    /// Orphaned cores seen by the respawn scan: how many scans in a row.
    orphans: Mutex<HashMap<String, u32>>,
}

impl fmt::Debug for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cores")
            .field("instance", &self.hub.id)
            .field("kinds", &self.registered)
            .field("hosted", &lock(&self.local).len())
            .finish_non_exhaustive()
    }
}

impl Cores {
    /// Starts the cores layer of an instance: registers it as the hub's core
    /// inbox and starts its background task (lease renewal, respawn scan,
    /// membership checks), which stops with the hub.
    pub(crate) async fn start(hub: Arc<Hub>, registered: CoreKinds) -> Arc<Self> {
        let cores = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            hub,
            registered,
            local: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            links: wire::Links::default(),
            draining: AtomicBool::new(false),
            orphans: Mutex::new(HashMap::new()),
        });
        let sink: Arc<dyn CoreSink> = cores.clone();
        cores.hub.set_core_sink(Arc::downgrade(&sink));
        cores.publish_kinds().await;
        tokio::spawn(hosting::run_background(Arc::downgrade(&cores)));
        cores
    }

    /// The instance id.
    pub(crate) fn instance(&self) -> &str {
        &self.hub.id
    }

    /// Itself, strong (it is alive while `&self` is).
    fn arc(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }
}

impl CoreSink for Cores {
    fn deliver(&self, body: Box<RawValue>) {
        self.handle(&body);
    }
}
