//! Core messages arriving from other instances (and from this one), handed
//! over by the hub's feed dispatcher in arrival order.

use super::{
    Cores,
    actor::{Op, OpSender, Responder, StopKind, send_op},
    relay::moved,
    wire::{Reply, Wire},
};
use crate::data::Data;
use serde_json::value::RawValue;

impl Cores {
    /// Handles one core message (on the feed dispatcher: must not block).
    pub(super) fn handle(&self, body: &RawValue) {
        let message: Wire = match serde_json::from_str(body.get()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable core message dropped");
                return;
            }
        };
        match message {
            Wire::Reply(reply) => self.complete(reply),
            Wire::Deliver {
                core,
                token,
                clients,
                frame,
            } => self.deliver_local(&core, token, &clients, frame),
            Wire::Left {
                core,
                token,
                clients,
                reason,
                rejoin,
            } => self.left_local(&core, token, &clients, &reason, rejoin),
            Wire::Leave {
                core,
                token,
                client,
            } => {
                if let Some(ops) = self.owned(&core, token) {
                    send_op(&ops, Op::Leave { member: client });
                }
            }
            Wire::Tell {
                core,
                token,
                client,
                event,
                data,
            } => {
                if let Some(ops) = self.owned(&core, token) {
                    send_op(
                        &ops,
                        Op::Tell {
                            member: client,
                            event,
                            data: Data::from_raw(data),
                        },
                    );
                }
            }
            Wire::Join {
                core,
                token,
                client,
                data,
                request,
                reply_to,
            } => {
                let respond = Responder::Remote {
                    reply_to: reply_to.clone(),
                    request,
                };
                let op = Op::Join {
                    member: client,
                    data: Data::from_raw(data),
                    respond,
                };
                self.run_or_refuse(&core, token, op, &reply_to, request);
            }
            Wire::Ask {
                core,
                token,
                client,
                event,
                data,
                request,
                reply_to,
            } => {
                let respond = Responder::Remote {
                    reply_to: reply_to.clone(),
                    request,
                };
                let op = Op::Ask {
                    member: client,
                    event,
                    data: Data::from_raw(data),
                    respond,
                };
                self.run_or_refuse(&core, token, op, &reply_to, request);
            }
            Wire::Start {
                core,
                request,
                reply_to,
            } => {
                let Some(me) = self.arc() else { return };
                tokio::spawn(async move {
                    let reply = match me.host(&core, false).await {
                        Ok(owner) => Reply {
                            instance: Some(owner),
                            ..Reply::ok(request, 0, None)
                        },
                        Err(e) => Reply::err(request, &e),
                    };
                    me.answer(&reply_to, reply);
                });
            }
            Wire::Stop {
                core,
                request,
                reply_to,
            } => {
                let Some(me) = self.arc() else { return };
                tokio::spawn(async move {
                    let limit = me.hub.config.ask_timeout;
                    let stopped = me.stop_local(&core, StopKind::Stopped, limit).await;
                    let data = RawValue::from_string(stopped.to_string()).ok();
                    me.answer(&reply_to, Reply::ok(request, 0, data));
                });
            }
        }
    }

    /// The op queue of a local core when `token` is its tenure. A newer
    /// token means this instance is a stale owner: the core stops here.
    fn owned(&self, core: &str, token: u64) -> Option<OpSender> {
        let (ops, local_token) = self.local_core(core)?;
        if token > local_token {
            self.lost(core, local_token);
        }
        (token == local_token).then_some(ops)
    }

    fn run_or_refuse(&self, core: &str, token: u64, op: Op, reply_to: &str, request: u64) {
        let sent = self.owned(core, token).is_some_and(|ops| send_op(&ops, op));
        if !sent {
            self.answer(reply_to, Reply::err(request, &moved(core)));
        }
    }
}
