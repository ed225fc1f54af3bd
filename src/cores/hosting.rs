//! The owner side: starting a core here under a fenced lease, renewing the
//! leases of every local core, stopping them, respawning orphaned cores,
//! and handing cores over when the instance drains.

use super::{
    Cores,
    actor::{Actor, Op, OpSender, StopKind, send_op},
    context::CoreContext,
    records::{self, Kinds, Snapshot, Spec},
};
use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
    hub::lock,
    metrics::Metrics,
};
use bytes::Bytes;
use scaled_sockets_scaler::{LeaseOutcome, PutMode, PutOptions};
use std::{
    collections::{BTreeSet, HashSet},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot};

/// A core hosted here.
pub(super) struct LocalCore {
    pub token: u64,
    pub ops: OpSender,
    /// When the lease was last confirmed by the backend.
    pub renewed: Instant,
}

/// An orphan is taken by any candidate (not only the one placement picks)
/// after this many scans: the picked one may be dead but still listed.
const ORPHAN_PATIENCE: u32 = 3;

impl Cores {
    /// True when core `id` runs here with lease `token`.
    pub(super) fn hosts(&self, id: &str, token: u64) -> bool {
        lock(&self.local).get(id).is_some_and(|c| c.token == token)
    }

    /// The op queue and token of a local core.
    pub(super) fn local_core(&self, id: &str) -> Option<(OpSender, u64)> {
        lock(&self.local).get(id).map(|c| (c.ops.clone(), c.token))
    }

    /// The queue of core `id` hosted here under `route`'s fencing token; a
    /// core that is gone or hosted under another token has moved.
    pub(super) fn local_ops(
        &self,
        id: &str,
        route: &super::Route,
    ) -> Result<OpSender, CommandError> {
        match self.local_core(id) {
            Some((ops, token)) if token == route.token => Ok(ops),
            _ => Err(super::relay::moved(id)),
        }
    }

    /// Hosts core `id` here unless another instance holds its lease; returns
    /// the owner's instance id. `respawn` counts it as a takeover.
    pub(super) async fn host(&self, id: &str, respawn: bool) -> Result<String, CommandError> {
        if lock(&self.local).contains_key(id) {
            return Ok(self.instance().to_owned());
        }
        if self.draining.load(Ordering::SeqCst) || self.hub.is_stopping() {
            return Err(CommandError::new(
                ErrorCode::Unavailable,
                "this instance is draining; it takes no new cores",
            ));
        }
        let scaler = &self.hub.scaler;
        let spec: Spec = match scaler.kv_get(&records::spec_key(id)).await? {
            Some(v) => serde_json::from_slice(&v.value)
                .map_err(|e| CommandError::internal(format!("bad record of core `{id}`: {e}")))?,
            None => return Err(CommandError::not_found(format!("no core `{id}`"))),
        };
        let Some(factory) = self.registered.kinds.get(spec.kind.as_str()).cloned() else {
            return Err(CommandError::bad_request(format!(
                "instance `{}` offers no core kind `{}`",
                self.instance(),
                spec.kind
            )));
        };
        let ttl = self.hub.config.core_lease_ttl;
        let token = match scaler
            .acquire_lease(&records::lease_key(id), self.instance(), ttl)
            .await?
        {
            LeaseOutcome::HeldBy { owner, .. } => return Ok(owner),
            LeaseOutcome::Acquired { token } => token,
        };
        // Another task of this instance may have won the same lease (it is
        // re-entrant for one owner): the first to register runs the core.
        let (tx, rx) = mpsc::unbounded_channel::<Op>();
        {
            let mut local = lock(&self.local);
            if local.contains_key(id) {
                return Ok(self.instance().to_owned());
            }
            local.insert(
                id.to_owned(),
                LocalCore {
                    token,
                    ops: tx,
                    renewed: Instant::now(),
                },
            );
        }
        self.count_hosted();
        match self.launch(id, token, &spec, factory, rx).await {
            Ok(()) => {
                if respawn {
                    Metrics::inc(&self.hub.metrics.core_respawns_total);
                }
                tracing::info!(core = id, kind = %spec.kind, token, respawn, "core started");
                Ok(self.instance().to_owned())
            }
            Err(e) => {
                tracing::warn!(core = id, error = %e, "core did not start");
                self.unhost(id, token, StopKind::Handover).await;
                Err(e)
            }
        }
    }

    /// Raises the snapshot's fence to `token`, runs `start`, then the actor.
    async fn launch(
        &self,
        id: &str,
        token: u64,
        spec: &Spec,
        factory: Arc<dyn super::CoreFactory>,
        rx: mpsc::UnboundedReceiver<Op>,
    ) -> Result<(), CommandError> {
        let snapshot = self.read_snapshot(id).await?;
        // Writing the snapshot back under our token fences out the previous
        // owner at once: its later saves are refused.
        let record = Snapshot {
            s: snapshot
                .as_ref()
                .and_then(|d| serde_json::value::RawValue::from_string(d.get().to_owned()).ok()),
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        let options = PutOptions::mode(PutMode::Fenced(token));
        self.hub
            .scaler
            .kv_put(&records::snap_key(id), Bytes::from(bytes), &options)
            .await
            .map_err(|e| {
                if e.is_conflict() {
                    CommandError::new(ErrorCode::Unavailable, "a newer owner exists")
                } else {
                    e.into()
                }
            })?;
        let Some(me) = self.arc() else {
            return Err(CommandError::internal("instance stopping"));
        };
        let cx = CoreContext {
            cores: me,
            id: id.into(),
            kind: spec.kind.as_str().into(),
            token,
            members: Arc::new(Mutex::new(BTreeSet::new())),
            stop_requested: Arc::new(AtomicBool::new(false)),
        };
        let mut actor = Actor {
            cx,
            core: factory.create(),
            params: Data::from(&*spec.params),
        };
        actor.start(snapshot).await?;
        tokio::spawn(actor.run(rx));
        Ok(())
    }

    /// The last snapshot of core `id`.
    pub(super) async fn read_snapshot(&self, id: &str) -> Result<Option<Data>, CommandError> {
        let Some(v) = self.hub.scaler.kv_get(&records::snap_key(id)).await? else {
            return Ok(None);
        };
        let record: Snapshot = serde_json::from_slice(&v.value)
            .map_err(|e| CommandError::internal(format!("bad snapshot of core `{id}`: {e}")))?;
        Ok(record.s.map(Data::from_raw))
    }

    /// Forgets a core that stopped here (if `token` is still its tenure) and
    /// does what `kind` requires with its records and lease.
    pub(super) async fn unhost(&self, id: &str, token: u64, kind: StopKind) {
        {
            let mut local = lock(&self.local);
            if local.get(id).is_some_and(|c| c.token == token) {
                local.remove(id);
            }
        }
        self.count_hosted();
        let scaler = &self.hub.scaler;
        if kind == StopKind::Stopped {
            let _ = scaler.kv_delete(&records::spec_key(id), PutMode::Any).await;
            let _ = scaler
                .kv_delete(&records::snap_key(id), PutMode::Fenced(token))
                .await;
        }
        if kind != StopKind::Lost {
            let key = records::lease_key(id);
            if let Err(e) = scaler.release_lease(&key, self.instance(), token).await {
                tracing::warn!(core = id, error = %e, "could not release a core's lease; it will expire");
            }
        }
    }

    fn count_hosted(&self) {
        let n = lock(&self.local).len() as u64;
        self.hub.cores_hosted.store(n, Ordering::Relaxed);
        self.hub.metrics.cores.store(n, Ordering::Relaxed);
    }

    /// Asks a local core to stop (lease lost: no release).
    pub(super) fn lost(&self, id: &str, token: u64) {
        if let Some((ops, t)) = self.local_core(id) {
            if t == token {
                send_op(
                    &ops,
                    Op::Stop {
                        kind: StopKind::Lost,
                        done: None,
                    },
                );
            }
        }
    }

    /// Stops a local core and waits for it (bounded).
    pub(super) async fn stop_local(&self, id: &str, kind: StopKind, limit: Duration) -> bool {
        let Some((ops, _)) = self.local_core(id) else {
            return false;
        };
        let (done, wait) = oneshot::channel();
        if !send_op(
            &ops,
            Op::Stop {
                kind,
                done: Some(done),
            },
        ) {
            return false;
        }
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Checks with the backend that this instance still holds core `id`'s
    /// lease with `token` (renewing it); stops the core when it does not.
    pub(super) async fn confirm_lease(&self, id: &str, token: u64) -> Result<(), CommandError> {
        let ttl = self.hub.config.core_lease_ttl;
        let held = self
            .hub
            .scaler
            .renew_lease(&records::lease_key(id), self.instance(), token, ttl)
            .await?;
        if held {
            if let Some(c) = lock(&self.local).get_mut(id) {
                c.renewed = Instant::now();
            }
            Ok(())
        } else {
            self.lost(id, token);
            Err(CommandError::new(
                ErrorCode::Unavailable,
                format!("core `{id}` has a newer owner"),
            ))
        }
    }

    /// Writes the kinds this instance offers (deleted when draining).
    pub(super) async fn publish_kinds(&self) {
        if self.draining.load(Ordering::SeqCst) || self.registered.kinds.is_empty() {
            return;
        }
        let mut kinds: Vec<String> = self
            .registered
            .kinds
            .keys()
            .map(|k| k.to_string())
            .collect();
        kinds.sort();
        let bytes = serde_json::to_vec(&Kinds { kinds }).unwrap_or_default();
        let ttl = (self.hub.config.heartbeat_interval * 5).max(self.hub.config.core_lease_ttl);
        let options = PutOptions::mode(PutMode::Any).with_ttl(ttl);
        if let Err(e) = self
            .hub
            .scaler
            .kv_put(
                &records::kinds_key(self.instance()),
                Bytes::from(bytes),
                &options,
            )
            .await
        {
            tracing::warn!(error = %e, "could not publish the core kinds of this instance");
        }
    }

    /// Renews every local core's lease; a core whose lease is gone (or could
    /// not be confirmed for a whole TTL) stops here.
    async fn renew_all(&self) {
        let ttl = self.hub.config.core_lease_ttl;
        let list: Vec<(String, u64, Instant)> = lock(&self.local)
            .iter()
            .map(|(id, c)| (id.clone(), c.token, c.renewed))
            .collect();
        for (id, token, renewed) in list {
            match self.confirm_lease(&id, token).await {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::Unavailable && renewed.elapsed() < ttl => {
                    // Either lost (already stopping) or the backend is down.
                    tracing::warn!(core = %id, error = %e, "core lease not renewed");
                }
                Err(e) => {
                    tracing::warn!(core = %id, error = %e, "core lease not renewed");
                    if renewed.elapsed() >= ttl {
                        // Fenced by time: the lease may be someone else's now.
                        self.lost(&id, token);
                    }
                }
            }
        }
    }

    /// Starts cores that should run but have no owner, when placement
    /// picks this instance (or any candidate, after a few scans).
    async fn respawn_orphans(&self) {
        if self.draining.load(Ordering::SeqCst) || self.registered.kinds.is_empty() {
            return;
        }
        let scaler = &self.hub.scaler;
        let (specs, leases) = match (
            scaler.kv_list(records::SPEC_PREFIX).await,
            scaler.leases(records::LEASE_PREFIX).await,
        ) {
            (Ok(s), Ok(l)) => (s, l),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "core respawn scan failed");
                return;
            }
        };
        let leased: HashSet<&str> = leases
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(records::LEASE_PREFIX))
            .collect();
        let mut seen = HashSet::new();
        for (key, value) in &specs {
            let Some(id) = key.strip_prefix(records::SPEC_PREFIX) else {
                continue;
            };
            if leased.contains(id) {
                continue;
            }
            let Ok(spec) = serde_json::from_slice::<Spec>(&value.value) else {
                continue;
            };
            if !self.registered.kinds.contains_key(spec.kind.as_str()) {
                continue;
            }
            seen.insert(id.to_owned());
            let scans = {
                let mut orphans = lock(&self.orphans);
                let n = orphans.entry(id.to_owned()).or_insert(0);
                *n += 1;
                *n
            };
            let chosen = match self.place(&spec.kind, &[]).await {
                Ok(chosen) => chosen,
                Err(_) => continue,
            };
            if chosen == self.instance() || scans >= ORPHAN_PATIENCE {
                match self.host(id, true).await {
                    Ok(owner) => tracing::info!(core = id, %owner, "orphaned core respawned"),
                    Err(e) => tracing::warn!(core = id, error = %e, "could not respawn a core"),
                }
            }
        }
        lock(&self.orphans).retain(|id, _| seen.contains(id));
    }

    /// Draining: no new cores here; every local core saves and stops, then
    /// is started on another instance (or left for the respawn scan).
    pub(crate) async fn drain(&self, budget: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self
            .hub
            .scaler
            .kv_delete(&records::kinds_key(self.instance()), PutMode::Any)
            .await;
        let ids: Vec<String> = lock(&self.local).keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + budget;
        let stops = ids
            .iter()
            .map(|id| self.stop_local(id, StopKind::Handover, budget / 2));
        futures_util::future::join_all(stops).await;
        for id in &ids {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.place_and_start(id, true)).await {
                Ok(Ok(owner)) => tracing::info!(core = %id, %owner, "core handed over"),
                Ok(Err(e)) => {
                    tracing::warn!(core = %id, error = %e, "core not handed over; the respawn scan will")
                }
                Err(_) => break,
            }
        }
    }
}

/// The cores layer's background work until the hub shuts down: lease
/// renewal every third of the lease TTL, the respawn scan, the kinds record
/// and the membership check.
pub(super) async fn run_background(cores: Weak<Cores>) {
    let Some(first) = cores.upgrade() else {
        return;
    };
    let config = first.hub.config.clone();
    let shutdown = first.hub.shutdown_token();
    drop(first);
    let mut renew = tokio::time::interval(config.core_lease_ttl / 3);
    let mut scan = tokio::time::interval(config.core_scan_interval);
    let mut watch = tokio::time::interval(config.heartbeat_interval);
    for t in [&mut renew, &mut scan, &mut watch] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        enum Due {
            Renew,
            Scan,
            Watch,
        }
        let due = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = renew.tick() => Due::Renew,
            _ = scan.tick() => Due::Scan,
            _ = watch.tick() => Due::Watch,
        };
        let Some(cores) = cores.upgrade() else {
            return;
        };
        match due {
            Due::Renew => {
                cores.renew_all().await;
                cores.publish_kinds().await;
            }
            Due::Scan => cores.respawn_orphans().await,
            Due::Watch => cores.check_memberships().await,
        }
    }
}
