//! What an application implements to define a core kind: the [`Core`] trait
//! (one value per running core) and the factory that makes them.

use super::context::CoreContext;
use crate::{data::Data, error::CommandError};
use async_trait::async_trait;
use std::time::Duration;

/// One running core: stateful code that lives on exactly one instance of the
/// cluster and that clients on every instance `join`, `ask` and `tell`.
///
/// The hooks of one core never run concurrently: each gets `&mut self`, in
/// the order the messages reached the core. A hook that panics restarts the
/// core from its last snapshot (see [`CoreContext::save_snapshot`]); its
/// members are told `left` with `rejoin: true`. A hook should not wait long:
/// the core handles nothing else meanwhile.
#[async_trait]
pub trait Core: Send + 'static {
    /// Runs first, on the instance that hosts the core: `params` as given to
    /// `spawn_core`, `snapshot` the last one saved (after a restart, a
    /// failover or a handover), `None` for a new core. An error stops the core.
    async fn start(
        &mut self,
        cx: &CoreContext,
        params: Data,
        snapshot: Option<Data>,
    ) -> Result<(), CommandError> {
        let _ = (cx, params, snapshot);
        Ok(())
    }

    /// A client joins; the reply is the `data` of its `join` answer. An error
    /// refuses it (it does not become a member).
    async fn join(
        &mut self,
        cx: &CoreContext,
        member: &str,
        data: Data,
    ) -> Result<Data, CommandError>;

    /// A member left (its `leave`, or its connection closed).
    async fn leave(&mut self, cx: &CoreContext, member: &str) {
        let _ = (cx, member);
    }

    /// A client sent a `tell` naming this core. `member` is its client id;
    /// clients need not have joined to tell or ask a core (a core that
    /// wants only members checks [`CoreContext::members`]).
    async fn tell(&mut self, cx: &CoreContext, member: &str, event: &str, data: Data) {
        let _ = (cx, member, event, data);
    }

    /// A client sent an `ask` naming this core; the result answers it.
    async fn ask(
        &mut self,
        cx: &CoreContext,
        member: &str,
        event: &str,
        data: Data,
    ) -> Result<Data, CommandError> {
        let _ = (cx, member, data);
        Err(CommandError::not_found(format!(
            "core `{}` has no ask `{event}`",
            cx.id()
        )))
    }

    /// How often [`Core::tick`] runs (read after `start`); `None`: never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Runs every [`Core::tick_interval`].
    async fn tick(&mut self, cx: &CoreContext) {
        let _ = cx;
    }

    /// Runs when the core stops here: stopped by the app, handed over by a
    /// draining instance (save a snapshot here to move the state along), or
    /// after its lease was lost (saving then fails: another owner took over).
    async fn stop(&mut self, cx: &CoreContext) {
        let _ = cx;
    }
}

/// Makes new [`Core`] values of one kind; registered with
/// [`crate::App::core`]. Implemented for any `Fn() -> C` closure.
pub trait CoreFactory: Send + Sync + 'static {
    /// A fresh core (its [`Core::start`] runs next).
    fn create(&self) -> Box<dyn Core>;
}

impl<F, C> CoreFactory for F
where
    F: Fn() -> C + Send + Sync + 'static,
    C: Core,
{
    fn create(&self) -> Box<dyn Core> {
        Box::new(self())
    }
}

/// An instance that may host a core of some kind, with its load, as
/// placement sees it (counts at most one heartbeat interval old).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The instance id.
    pub instance: String,
    /// Its open connections.
    pub connections: u64,
    /// The cores it hosts.
    pub cores: u64,
}

/// Chooses where a new core of `kind` runs among the candidates (live,
/// not draining, offering the kind; never empty); returns an instance id.
/// Replaces [`least_loaded`] with [`crate::App::core_placement`].
pub type PlacementFn = dyn Fn(&str, &[Candidate]) -> Option<String> + Send + Sync;

/// The default placement: the candidate with the fewest connections plus
/// cores; ties go to the smallest instance id, so concurrent spawns agree.
pub fn least_loaded(_kind: &str, candidates: &[Candidate]) -> Option<String> {
    candidates
        .iter()
        .min_by(|a, b| {
            (a.connections + a.cores, &a.instance).cmp(&(b.connections + b.cores, &b.instance))
        })
        .map(|c| c.instance.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_counts_connections_and_cores() {
        let c = |i: &str, connections, cores| Candidate {
            instance: i.into(),
            connections,
            cores,
        };
        let list = [c("a", 3, 0), c("b", 1, 1), c("c", 0, 3)];
        assert_eq!(least_loaded("k", &list).as_deref(), Some("b"));
        let tie = [c("z", 1, 0), c("y", 0, 1)];
        assert_eq!(least_loaded("k", &tie).as_deref(), Some("y"));
        assert_eq!(least_loaded("k", &[]), None);
    }
}
