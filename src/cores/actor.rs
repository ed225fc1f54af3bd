//! The task running one core: its hooks one at a time, in the order their
//! messages arrived; a panicking hook restarts the core from its last
//! snapshot.

use super::{context::CoreContext, kind::Core, wire::Reply};
use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
    hub::{instance_of, lock},
    metrics::Metrics,
};
use futures_util::FutureExt;
use serde_json::value::RawValue;
use std::{panic::AssertUnwindSafe, sync::atomic::Ordering, time::Duration};
use tokio::sync::{mpsc, oneshot};

/// Where the answer of a join or ask goes: a waiting task here, or a reply
/// message to the requesting instance. The actor answers itself, so a reply
/// leaves before any message the core sends afterwards.
pub(super) enum Responder {
    Local(oneshot::Sender<Result<Data, CommandError>>),
    Remote { reply_to: String, request: u64 },
}

/// Why a core stops here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopKind {
    /// Stopped by the app: gone for good.
    Stopped,
    /// Handed over by a draining instance: another one respawns it.
    Handover,
    /// The lease was lost: another owner exists or will.
    Lost,
}

pub(super) enum Op {
    Join {
        member: String,
        data: Data,
        respond: Responder,
    },
    Leave {
        member: String,
    },
    Tell {
        member: String,
        event: String,
        data: Data,
    },
    Ask {
        member: String,
        event: String,
        data: Data,
        respond: Responder,
    },
    Stop {
        kind: StopKind,
        done: Option<oneshot::Sender<()>>,
    },
}

/// A hook panicked.
struct Panicked;

pub(super) struct Actor {
    pub cx: CoreContext,
    pub core: Box<dyn Core>,
    pub params: Data,
}

impl Actor {
    /// Runs `start`; the caller learns whether the core is up.
    pub(super) async fn start(&mut self, snapshot: Option<Data>) -> Result<(), CommandError> {
        let params = self.params.clone();
        match AssertUnwindSafe(self.core.start(&self.cx, params, snapshot))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(_) => Err(CommandError::internal(format!(
                "core `{}` panicked in start",
                self.cx.id
            ))),
        }
    }

    /// Handles messages until the core stops here or the instance shuts down.
    pub(super) async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        let shutdown = self.cx.cores.hub.shutdown_token();
        let mut tick = self.core.tick_interval().map(new_tick);
        loop {
            let op = tokio::select! {
                // The instance died (or its server was dropped): stop
                // without a word; the lease expires and a survivor respawns.
                () = shutdown.cancelled() => return,
                op = ops.recv() => match op {
                    Some(op) => Some(op),
                    None => return,
                },
                _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => None,
            };
            let outcome = match op {
                None => self.hook_tick().await,
                Some(Op::Stop { kind, done }) => {
                    self.finish(kind).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                Some(op) => self.handle(op).await,
            };
            if outcome.is_err() {
                if !self.restart().await {
                    self.finish(StopKind::Lost).await;
                    return;
                }
                tick = self.core.tick_interval().map(new_tick);
            }
            if self.cx.stop_requested.load(Ordering::SeqCst) {
                self.finish(StopKind::Stopped).await;
                return;
            }
        }
    }

    async fn hook_tick(&mut self) -> Result<(), Panicked> {
        AssertUnwindSafe(self.core.tick(&self.cx))
            .catch_unwind()
            .await
            .map_err(|_| Panicked)
    }

    async fn handle(&mut self, op: Op) -> Result<(), Panicked> {
        let cx = &self.cx;
        match op {
            Op::Join {
                member,
                data,
                respond,
            } => {
                let result = AssertUnwindSafe(self.core.join(cx, &member, data))
                    .catch_unwind()
                    .await;
                let Ok(result) = result else {
                    self.respond(respond, Err(panicked(&self.cx.id)));
                    return Err(Panicked);
                };
                if result.is_ok() {
                    lock(&cx.members).insert(member.clone());
                    // A client of this instance is a member from now on,
                    // before anything the core sends next.
                    if instance_of(&member) == Some(cx.cores.instance()) {
                        let owner = cx.cores.instance().to_owned();
                        cx.cores.add_membership(&member, &cx.id, &owner, cx.token);
                    }
                }
                self.respond(respond, result);
            }
            Op::Leave { member } => {
                if lock(&cx.members).remove(&member) {
                    AssertUnwindSafe(self.core.leave(cx, &member))
                        .catch_unwind()
                        .await
                        .map_err(|_| Panicked)?;
                }
            }
            Op::Tell {
                member,
                event,
                data,
            } => {
                AssertUnwindSafe(self.core.tell(cx, &member, &event, data))
                    .catch_unwind()
                    .await
                    .map_err(|_| Panicked)?;
            }
            Op::Ask {
                member,
                event,
                data,
                respond,
            } => {
                let result = AssertUnwindSafe(self.core.ask(cx, &member, &event, data))
                    .catch_unwind()
                    .await;
                let Ok(result) = result else {
                    self.respond(respond, Err(panicked(&self.cx.id)));
                    return Err(Panicked);
                };
                self.respond(respond, result);
            }
            Op::Stop { .. } => {}
        }
        Ok(())
    }

    fn respond(&self, respond: Responder, result: Result<Data, CommandError>) {
        match respond {
            Responder::Local(tx) => {
                let _ = tx.send(result);
            }
            Responder::Remote { reply_to, request } => {
                let reply = match result {
                    Ok(data) => {
                        let raw = RawValue::from_string(data.get().to_owned()).ok();
                        Reply::ok(request, self.cx.token, raw)
                    }
                    Err(e) => Reply::err(request, &e),
                };
                self.cx.cores.answer(&reply_to, reply);
            }
        }
    }

    /// A hook panicked: a fresh core starts from the last snapshot, and the
    /// members are told to join again. False when it cannot be restarted.
    async fn restart(&mut self) -> bool {
        let cores = self.cx.cores.clone();
        Metrics::inc(&cores.hub.metrics.core_restarts_total);
        tracing::error!(core = %self.cx.id, kind = %self.cx.kind, "core panicked; restarting from its last snapshot");
        let members: Vec<String> = std::mem::take(&mut *lock(&self.cx.members))
            .into_iter()
            .collect();
        cores.notify_left(&self.cx.id, self.cx.token, &members, "restarted", true);
        let Some(factory) = cores.registered.kinds.get(&*self.cx.kind).cloned() else {
            return false;
        };
        self.core = factory.create();
        let snapshot = match cores.read_snapshot(&self.cx.id).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::error!(core = %self.cx.id, error = %e, "cannot read the snapshot to restart from");
                return false;
            }
        };
        match self.start(snapshot).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(core = %self.cx.id, error = %e, "core failed to restart");
                false
            }
        }
    }

    /// Stops here: the `stop` hook, then what the kind of stop requires.
    async fn finish(&mut self, kind: StopKind) {
        let _ = AssertUnwindSafe(self.core.stop(&self.cx))
            .catch_unwind()
            .await;
        let members: Vec<String> = std::mem::take(&mut *lock(&self.cx.members))
            .into_iter()
            .collect();
        let (reason, rejoin) = match kind {
            StopKind::Stopped => ("stopped", false),
            StopKind::Handover | StopKind::Lost => ("moved", true),
        };
        let cores = self.cx.cores.clone();
        cores.notify_left(&self.cx.id, self.cx.token, &members, reason, rejoin);
        cores.unhost(&self.cx.id, self.cx.token, kind).await;
    }
}

fn panicked(id: &str) -> CommandError {
    CommandError::new(
        ErrorCode::Internal,
        format!("core `{id}` failed and was restarted"),
    )
}

fn new_tick(every: Duration) -> tokio::time::Interval {
    let every = every.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Sends an op to a running actor; false when it is gone.
pub(super) fn send_op(tx: &mpsc::UnboundedSender<Op>, op: Op) -> bool {
    tx.send(op).is_ok()
}

pub(super) type OpSender = mpsc::UnboundedSender<Op>;
