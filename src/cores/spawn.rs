//! Placement and the app-facing operations: spawn a core on the
//! least-loaded instance offering its kind, stop it, list the running ones.

use super::{
    Cores,
    kind::{Candidate, least_loaded},
    records::{self, Kinds, Spec},
    wire::Wire,
};
use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
    protocol,
};
use bytes::Bytes;
use scaled_sockets_scaler::{PutMode, PutOptions};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Instances placement may try for one core before giving up.
const MAX_PLACEMENT_TRIES: usize = 3;

/// A running core, as [`crate::Sockets::cores`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoreInfo {
    /// The core's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// The instance hosting it.
    pub instance: String,
}

impl Cores {
    /// The live, non-draining instances offering `kind`, with their load,
    /// minus `exclude`.
    async fn candidates(
        &self,
        kind: &str,
        exclude: &[&str],
    ) -> Result<Vec<Candidate>, CommandError> {
        let scaler = &self.hub.scaler;
        let offers = scaler.kv_list(records::KINDS_PREFIX).await?;
        let offering: HashSet<&str> = offers
            .iter()
            .filter(|(_, v)| {
                serde_json::from_slice::<Kinds>(&v.value)
                    .is_ok_and(|k| k.kinds.iter().any(|k| k == kind))
            })
            .filter_map(|(key, _)| key.strip_prefix(records::KINDS_PREFIX))
            .collect();
        let mut list: Vec<Candidate> = scaler
            .instances()
            .await?
            .into_iter()
            .filter(|i| offering.contains(i.id.as_str()) && !exclude.contains(&i.id.as_str()))
            .map(|i| Candidate {
                instance: i.id,
                connections: i.connections,
                cores: i.cores,
            })
            .collect();
        list.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(list)
    }

    /// Where a new core of `kind` goes: the app's placement, or the least
    /// loaded candidate.
    pub(super) async fn place(&self, kind: &str, exclude: &[&str]) -> Result<String, CommandError> {
        let candidates = self.candidates(kind, exclude).await?;
        if candidates.is_empty() {
            return Err(CommandError::new(
                ErrorCode::Unavailable,
                format!("no live instance offers core kind `{kind}`"),
            ));
        }
        let chosen = match &self.registered.placement {
            Some(place) => place(kind, &candidates),
            None => least_loaded(kind, &candidates),
        };
        match chosen {
            Some(id) if candidates.iter().any(|c| c.instance == id) => Ok(id),
            Some(id) => Err(CommandError::internal(format!(
                "placement chose `{id}`, which is not a candidate"
            ))),
            None => Err(CommandError::new(
                ErrorCode::Unavailable,
                format!("placement found no instance for core kind `{kind}`"),
            )),
        }
    }

    /// Places core `id` (its record exists) and has the chosen instance start
    /// it; returns its owner. `handover`: never this instance.
    pub(super) async fn place_and_start(
        &self,
        id: &str,
        handover: bool,
    ) -> Result<String, CommandError> {
        let spec = self
            .read_spec(id)
            .await?
            .ok_or_else(|| CommandError::not_found(format!("no core `{id}`")))?;
        let me = self.instance().to_owned();
        let mut exclude: Vec<String> = if handover {
            vec![me.clone()]
        } else {
            Vec::new()
        };
        // An instance that refuses (it began draining since its record was
        // read) is left out and placement runs again.
        loop {
            let refs: Vec<&str> = exclude.iter().map(String::as_str).collect();
            let chosen = self.place(&spec.kind, &refs).await?;
            let result = if chosen == me {
                self.host(id, false).await
            } else {
                let timeout = self.hub.config.ask_timeout;
                self.request(&chosen, timeout, None, |request, reply_to| Wire::Start {
                    core: id.to_owned(),
                    request,
                    reply_to,
                })
                .await
                .and_then(|reply| {
                    reply
                        .instance
                        .ok_or_else(|| CommandError::internal("start answered without an instance"))
                })
            };
            match result {
                Err(e)
                    if e.code == ErrorCode::Unavailable && exclude.len() < MAX_PLACEMENT_TRIES =>
                {
                    tracing::debug!(core = id, instance = %chosen, error = %e, "placement refused; trying another instance");
                    exclude.push(chosen);
                }
                Ok(owner) => {
                    if handover {
                        crate::metrics::Metrics::inc(&self.hub.metrics.core_respawns_total);
                    }
                    return Ok(owner);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_spec(&self, id: &str) -> Result<Option<Spec>, CommandError> {
        let Some(v) = self.hub.scaler.kv_get(&records::spec_key(id)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&v.value)
            .map(Some)
            .map_err(|e| CommandError::internal(format!("bad record of core `{id}`: {e}")))
    }

    /// Spawns core `id` of `kind` with `params` on the least-loaded instance
    /// offering `kind`; returns the hosting instance. A core that already
    /// runs is not spawned again: the answer is where it runs.
    pub(crate) async fn spawn(
        &self,
        kind: &str,
        id: &str,
        params: &Data,
    ) -> Result<String, CommandError> {
        protocol::validate_name(id, "core").map_err(CommandError::bad_request)?;
        protocol::validate_name(kind, "kind").map_err(CommandError::bad_request)?;
        self.hub.check_data_size(params.get())?;
        let scaler = &self.hub.scaler;
        if let Some(lease) = scaler.lease(&records::lease_key(id)).await? {
            let live = self.hub.live_instance_ids(Some(&lease.owner)).await?;
            if lease.owner == self.instance() || live.contains(&lease.owner) {
                return Ok(lease.owner);
            }
            // Its owner died: the respawn scan brings it back shortly.
            return Err(CommandError::new(
                ErrorCode::Unavailable,
                format!("core `{id}` is being respawned; try again"),
            ));
        }
        let spec = Spec {
            kind: kind.to_owned(),
            params: serde_json::value::RawValue::from_string(params.get().to_owned())
                .map_err(|e| CommandError::bad_request(e.to_string()))?,
        };
        let bytes = serde_json::to_vec(&spec).map_err(|e| CommandError::internal(e.to_string()))?;
        let created = match scaler
            .kv_put(
                &records::spec_key(id),
                Bytes::from(bytes),
                &PutOptions::mode(PutMode::Create),
            )
            .await
        {
            Ok(_) => true,
            Err(e) if e.is_conflict() => false,
            Err(e) => return Err(e.into()),
        };
        if !created {
            // Spawned concurrently, or waiting for a respawn: same core.
            if let Some(existing) = self.read_spec(id).await? {
                if existing.kind != kind {
                    return Err(CommandError::bad_request(format!(
                        "core `{id}` exists with kind `{}`",
                        existing.kind
                    )));
                }
            }
        }
        match self.place_and_start(id, false).await {
            Ok(owner) => Ok(owner),
            Err(e) => {
                if created && e.code != ErrorCode::Timeout {
                    // Nothing runs it and nobody should try again.
                    let _ = scaler.kv_delete(&records::spec_key(id), PutMode::Any).await;
                }
                Err(e)
            }
        }
    }

    /// Stops core `id` for good, wherever it runs; false when it was not
    /// running (its record is deleted anyway).
    pub(crate) async fn stop(&self, id: &str) -> Result<bool, CommandError> {
        protocol::validate_name(id, "core").map_err(CommandError::bad_request)?;
        let scaler = &self.hub.scaler;
        // First, so nobody respawns it meanwhile.
        scaler
            .kv_delete(&records::spec_key(id), PutMode::Any)
            .await?;
        let Some(lease) = scaler.lease(&records::lease_key(id)).await? else {
            let _ = scaler.kv_delete(&records::snap_key(id), PutMode::Any).await;
            return Ok(false);
        };
        let limit = self.hub.config.ask_timeout;
        if lease.owner == self.instance() {
            return Ok(self
                .stop_local(id, super::actor::StopKind::Stopped, limit)
                .await);
        }
        let reply = self
            .request(&lease.owner, limit, None, |request, reply_to| Wire::Stop {
                core: id.to_owned(),
                request,
                reply_to,
            })
            .await?;
        Ok(reply.data.is_some_and(|d| d.get() == "true"))
    }

    /// The running cores of the cluster, sorted by id.
    pub(crate) async fn list(&self) -> Result<Vec<CoreInfo>, CommandError> {
        let scaler = &self.hub.scaler;
        let specs = scaler.kv_list(records::SPEC_PREFIX).await?;
        let leases = scaler.leases(records::LEASE_PREFIX).await?;
        let kinds: HashMap<&str, String> = specs
            .iter()
            .filter_map(|(k, v)| {
                let spec: Spec = serde_json::from_slice(&v.value).ok()?;
                Some((k.strip_prefix(records::SPEC_PREFIX)?, spec.kind))
            })
            .collect();
        Ok(leases
            .into_iter()
            .filter_map(|(key, lease)| {
                let id = key.strip_prefix(records::LEASE_PREFIX)?;
                Some(CoreInfo {
                    id: id.to_owned(),
                    kind: kinds.get(id)?.clone(),
                    instance: lease.owner,
                })
            })
            .collect())
    }
}
