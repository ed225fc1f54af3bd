//! The client side of cores: `join`, `leave`, `ask` and `tell` from a client
//! of this instance, routed to the core's owner wherever it runs; the
//! memberships of this instance's clients; frames from owners delivered to
//! them (fenced by token); `left` when an owner goes away.

use super::{
    Cores, Route,
    actor::{Op, Responder, send_op},
    records,
    wire::Wire,
};
use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
    hub::{instance_of, lock},
    mailbox::Outbound,
    metrics::Metrics,
    protocol,
};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

fn raw(data: &Data) -> Result<Box<RawValue>, CommandError> {
    RawValue::from_string(data.get().to_owned())
        .map_err(|e| CommandError::bad_request(e.to_string()))
}

pub(super) fn moved(core: &str) -> CommandError {
    CommandError::new(
        ErrorCode::Unavailable,
        format!("core `{core}` is moving to another instance; try again"),
    )
}

impl Cores {
    // ----- memberships -------------------------------------------------------------

    pub(super) fn add_membership(&self, client: &str, core: &str, owner: &str, token: u64) {
        let route = Route {
            owner: owner.to_owned(),
            token,
        };
        // The client disconnected while its join was in flight: it leaves
        // again, or the core would keep a member nobody removes.
        if self.hub.local(client).is_none() {
            self.send_leave(client, core, &route);
            return;
        }
        lock(&self.members)
            .entry(client.to_owned())
            .or_default()
            .insert(core.to_owned(), route);
    }

    fn membership(&self, client: &str, core: &str) -> Option<Route> {
        lock(&self.members).get(client)?.get(core).cloned()
    }

    fn remove_membership(&self, client: &str, core: &str) -> Option<Route> {
        let mut members = lock(&self.members);
        let cores = members.get_mut(client)?;
        let route = cores.remove(core);
        if cores.is_empty() {
            members.remove(client);
        }
        route
    }

    /// Where core `id` runs now: its lease. `not_found` when it does not run;
    /// `unavailable` while its owner is gone and it waits to be respawned.
    async fn lookup(&self, core: &str) -> Result<Route, CommandError> {
        protocol::validate_name(core, "core").map_err(CommandError::bad_request)?;
        let Some(lease) = self.hub.scaler.lease(&records::lease_key(core)).await? else {
            return Err(CommandError::not_found(format!("no core `{core}`")));
        };
        if lease.owner != self.instance()
            && !self
                .hub
                .live_instance_ids(Some(&lease.owner))
                .await?
                .contains(&lease.owner)
        {
            return Err(moved(core));
        }
        Ok(Route {
            owner: lease.owner,
            token: lease.token,
        })
    }

    // ----- client commands ---------------------------------------------------------

    /// For a `join` with `redirect`: when core `core` runs on another
    /// instance, `{"redirect": its advertised address, "instance": its id}`
    /// (no membership is made); `None` when it runs here.
    pub(crate) async fn redirect(&self, core: &str) -> Result<Option<Data>, CommandError> {
        let route = self.lookup(core).await?;
        if route.owner == self.instance() {
            return Ok(None);
        }
        let owner = self
            .hub
            .scaler
            .instances()
            .await?
            .into_iter()
            .find(|i| i.id == route.owner)
            .ok_or_else(|| moved(core))?;
        if owner.address.is_empty() {
            return Err(CommandError::new(
                ErrorCode::Unavailable,
                format!("instance `{}` advertises no address", owner.id),
            ));
        }
        Data::json(&serde_json::json!({ "redirect": owner.address, "instance": owner.id }))
            .map(Some)
    }

    /// A client of this instance joins a core; the answer is the core's.
    pub(crate) async fn join(
        &self,
        client: &str,
        core: &str,
        data: Data,
    ) -> Result<Data, CommandError> {
        let route = self.lookup(core).await?;
        let timeout = self.hub.config.ask_timeout;
        if route.owner == self.instance() {
            let ops = self.local_ops(core, &route)?;
            let (tx, rx) = oneshot::channel();
            let op = Op::Join {
                member: client.to_owned(),
                data,
                respond: Responder::Local(tx),
            };
            return await_local(send_op(&ops, op), rx, timeout, core).await;
        }
        let data = raw(&data)?;
        let reply = self
            .request(
                &route.owner,
                timeout,
                Some((client.to_owned(), core.to_owned())),
                |request, reply_to| Wire::Join {
                    core: core.to_owned(),
                    token: route.token,
                    client: client.to_owned(),
                    data,
                    request,
                    reply_to,
                },
            )
            .await?;
        Ok(reply.data.map_or_else(Data::null, Data::from_raw))
    }

    /// A client of this instance leaves a core.
    pub(crate) fn leave(&self, client: &str, core: &str) -> Result<(), CommandError> {
        let Some(route) = self.remove_membership(client, core) else {
            return Err(CommandError::not_found(format!(
                "not a member of core `{core}`"
            )));
        };
        self.send_leave(client, core, &route);
        Ok(())
    }

    fn send_leave(&self, client: &str, core: &str, route: &Route) {
        if route.owner == self.instance() {
            if let Some((ops, token)) = self.local_core(core) {
                if token == route.token {
                    send_op(
                        &ops,
                        Op::Leave {
                            member: client.to_owned(),
                        },
                    );
                }
            }
            return;
        }
        let message = Wire::Leave {
            core: core.to_owned(),
            token: route.token,
            client: client.to_owned(),
        };
        if let Err(e) = self.send(&route.owner, &message) {
            tracing::warn!(core, error = %e, "leave not relayed");
        }
    }

    /// A client of this instance is gone: it leaves every core it joined.
    pub(crate) fn client_gone(&self, client: &str) {
        let joined = lock(&self.members).remove(client);
        for (core, route) in joined.into_iter().flatten() {
            self.send_leave(client, &core, &route);
        }
    }

    /// An `ask` naming a core, from a client of this instance.
    pub(crate) async fn ask(
        &self,
        client: &str,
        core: &str,
        event: &str,
        data: Data,
    ) -> Result<Data, CommandError> {
        let route = match self.membership(client, core) {
            Some(route) => route,
            None => self.lookup(core).await?,
        };
        let timeout = self.hub.config.ask_timeout;
        if route.owner == self.instance() {
            let ops = self.local_ops(core, &route)?;
            let (tx, rx) = oneshot::channel();
            let op = Op::Ask {
                member: client.to_owned(),
                event: event.to_owned(),
                data,
                respond: Responder::Local(tx),
            };
            return await_local(send_op(&ops, op), rx, timeout, core).await;
        }
        let data = raw(&data)?;
        let reply = self
            .request(&route.owner, timeout, None, |request, reply_to| Wire::Ask {
                core: core.to_owned(),
                token: route.token,
                client: client.to_owned(),
                event: event.to_owned(),
                data,
                request,
                reply_to,
            })
            .await?;
        // An answer from another tenure than the one asked is not trusted.
        if reply.token != route.token {
            Metrics::inc(&self.hub.metrics.core_stale_dropped_total);
            return Err(moved(core));
        }
        Ok(reply.data.map_or_else(Data::null, Data::from_raw))
    }

    /// A `tell` naming a core from a member: sent at once, so a member's
    /// tells reach the core in the order it sent them. `None` when the
    /// client is not a member: then the returned future routes it.
    pub(crate) fn tell_member(
        &self,
        client: &str,
        core: &str,
        event: &str,
        data: &Data,
    ) -> Result<bool, CommandError> {
        let Some(route) = self.membership(client, core) else {
            return Ok(false);
        };
        self.tell_route(client, core, event, data, &route)?;
        Ok(true)
    }

    /// A `tell` naming a core from a client that is not a member.
    pub(crate) async fn tell(
        &self,
        client: &str,
        core: &str,
        event: &str,
        data: Data,
    ) -> Result<(), CommandError> {
        let route = self.lookup(core).await?;
        self.tell_route(client, core, event, &data, &route)
    }

    fn tell_route(
        &self,
        client: &str,
        core: &str,
        event: &str,
        data: &Data,
        route: &Route,
    ) -> Result<(), CommandError> {
        if route.owner == self.instance() {
            let ops = self.local_ops(core, route)?;
            send_op(
                &ops,
                Op::Tell {
                    member: client.to_owned(),
                    event: event.to_owned(),
                    data: data.clone(),
                },
            );
            return Ok(());
        }
        let message = Wire::Tell {
            core: core.to_owned(),
            token: route.token,
            client: client.to_owned(),
            event: event.to_owned(),
            data: raw(data)?,
        };
        self.send(&route.owner, &message)
    }

    // ----- from owners to members --------------------------------------------------

    /// Sends a frame of core `core` (tenure `token`) to members, grouped by
    /// the instance they are connected to.
    pub(super) fn deliver_to(&self, core: &str, token: u64, members: &[String], frame: String) {
        let mut by_instance: HashMap<&str, Vec<String>> = HashMap::new();
        for member in members {
            if let Some(instance) = instance_of(member) {
                by_instance
                    .entry(instance)
                    .or_default()
                    .push(member.clone());
            }
        }
        for (instance, clients) in by_instance {
            if instance == self.instance() {
                self.deliver_local(core, token, &clients, frame.clone());
                continue;
            }
            let message = Wire::Deliver {
                core: core.to_owned(),
                token,
                clients,
                frame: frame.clone(),
            };
            if let Err(e) = self.send(instance, &message) {
                tracing::warn!(core, %instance, error = %e, "core frame not relayed");
            }
        }
    }

    /// Pushes a core's frame to local clients that are members of that
    /// tenure of the core; anything else is stale and dropped.
    pub(super) fn deliver_local(&self, core: &str, token: u64, clients: &[String], frame: String) {
        let frame = std::sync::Arc::new(Utf8Bytes::from(frame));
        for client in clients {
            match self.membership(client, core) {
                Some(route) if route.token == token => {
                    if let Some(conn) = self.hub.local(client) {
                        conn.push(Outbound::Shared(frame.clone()));
                    }
                }
                Some(_) => Metrics::inc(&self.hub.metrics.core_stale_dropped_total),
                None => {}
            }
        }
    }

    /// Tells members they left a core (restarted, moved, stopped).
    pub(super) fn notify_left(
        &self,
        core: &str,
        token: u64,
        members: &[String],
        reason: &str,
        rejoin: bool,
    ) {
        let mut by_instance: HashMap<&str, Vec<String>> = HashMap::new();
        for member in members {
            if let Some(instance) = instance_of(member) {
                by_instance
                    .entry(instance)
                    .or_default()
                    .push(member.clone());
            }
        }
        for (instance, clients) in by_instance {
            let message = Wire::Left {
                core: core.to_owned(),
                token,
                clients,
                reason: reason.to_owned(),
                rejoin,
            };
            if let Err(e) = self.send(instance, &message) {
                tracing::warn!(core, %instance, error = %e, "`left` not relayed");
            }
        }
    }

    pub(super) fn left_local(
        &self,
        core: &str,
        token: u64,
        clients: &[String],
        reason: &str,
        rejoin: bool,
    ) {
        for client in clients {
            let current = self
                .membership(client, core)
                .is_some_and(|r| r.token == token);
            if !current {
                continue;
            }
            self.remove_membership(client, core);
            if let Some(conn) = self.hub.local(client) {
                let frame = protocol::left(core, reason, rejoin);
                conn.push(Outbound::Frame(Box::new(frame.into())));
            }
        }
    }

    /// Memberships whose owner left the cluster, or whose core has another
    /// tenure now, end with `left` (`rejoin: true`).
    pub(super) async fn check_memberships(&self) {
        let routes: Vec<(String, String, Route)> = lock(&self.members)
            .iter()
            .flat_map(|(client, cores)| {
                cores
                    .iter()
                    .map(move |(core, route)| (client.clone(), core.clone(), route.clone()))
            })
            .collect();
        if routes.is_empty() {
            return;
        }
        let (Ok(live), Ok(leases)) = (
            self.hub.live_instance_ids(None).await,
            self.hub.scaler.leases(records::LEASE_PREFIX).await,
        ) else {
            return;
        };
        let tokens: HashMap<&str, u64> = leases
            .iter()
            .filter_map(|(k, l)| Some((k.strip_prefix(records::LEASE_PREFIX)?, l.token)))
            .collect();
        let mut gone = HashSet::new();
        for (client, core, route) in routes {
            let owner_live = route.owner == self.instance() || live.contains(&route.owner);
            let same_tenure = tokens.get(core.as_str()) == Some(&route.token);
            if !owner_live || !same_tenure {
                gone.insert((client, core, route.token));
            }
        }
        for (client, core, token) in gone {
            self.left_local(&core, token, &[client], "moved", true);
        }
    }
}

async fn await_local(
    sent: bool,
    rx: oneshot::Receiver<Result<Data, CommandError>>,
    timeout: std::time::Duration,
    core: &str,
) -> Result<Data, CommandError> {
    if !sent {
        return Err(moved(core));
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(moved(core)),
        Err(_) => Err(CommandError::new(
            ErrorCode::Timeout,
            format!("core `{core}` did not answer in {timeout:?}"),
        )),
    }
}
