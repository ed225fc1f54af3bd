//! The task's reactions to one event on a live connection: a server frame,
//! an answer, a server `ask`, a control message or a command.

use std::borrow::Cow;

use scaled_sockets_protocol::{ClientFrame, ErrorCode, Reply, ServerFrame, SubscriptionRequest};
use serde_json::value::RawValue;
use tracing::{debug, warn};

use super::channels::{ChanState, Channel, Subscriber};
use super::conn::{Conn, Exit, Pending};
use super::{Command, Control, Request, SubInfo, Task, lock};
use crate::error::Error;
use crate::types::{AskRequest, Event, Message};

impl Task {
    pub(super) async fn on_frame(
        &mut self,
        conn: &mut Conn,
        frame: ServerFrame,
    ) -> Result<(), Exit> {
        match frame {
            ServerFrame::Ping => conn.send(&ClientFrame::Pong).await?,
            ServerFrame::Reply(reply) => {
                let id = reply.id;
                self.on_answer(conn, id, Ok(reply)).await?;
            }
            ServerFrame::Error {
                id: Some(id),
                code,
                message,
            } => {
                self.on_answer(conn, id, Err(Error::Server { code, message }))
                    .await?
            }
            ServerFrame::Error {
                id: None,
                code,
                message,
            } => {
                warn!(%code, %message, "server error");
                conn.last_error = Some(format!("{code}: {message}"));
                self.shared.emit(Event::ServerError { code, message });
            }
            ServerFrame::Message {
                channel,
                data,
                offset,
                epoch,
            } => {
                self.deliver(
                    conn,
                    Message {
                        channel,
                        data,
                        offset,
                        epoch,
                    },
                )
                .await?
            }
            ServerFrame::Tell { event, data, core } => {
                self.shared.emit(Event::Tell { event, data, core });
            }
            ServerFrame::Ask {
                id,
                event,
                data,
                core,
            } => self.on_server_ask(conn, id, event, core, data).await?,
            ServerFrame::Subscribed {
                channel,
                offset,
                epoch,
                recovered,
            } => self.on_subscribed(channel, offset, epoch, recovered),
            ServerFrame::Unsubscribed { channel, reason } => {
                // Dropping the subscribers ends their streams.
                self.channels.remove(&channel);
                self.shared.emit(Event::Unsubscribed { channel, reason });
            }
            ServerFrame::Left {
                core,
                reason,
                rejoin,
            } => {
                self.shared.emit(Event::Left {
                    core: core.clone(),
                    reason,
                    rejoin,
                });
                if rejoin {
                    self.start_rejoin(conn, &core).await?;
                } else {
                    self.forget_core(&core);
                }
            }
            ServerFrame::Disconnect {
                code,
                reason,
                reconnect,
            } => {
                conn.disconnect = Some((code, reason.clone(), reconnect));
                self.shared.emit(Event::Disconnect {
                    code,
                    reason,
                    reconnect,
                });
            }
            ServerFrame::Welcome(_) => debug!("ignoring unexpected welcome"),
            ServerFrame::Unknown(ty) => debug!(%ty, "ignoring unknown frame type"),
        }
        Ok(())
    }

    pub(super) async fn on_answer(
        &mut self,
        conn: &mut Conn,
        id: u64,
        answer: Result<Reply, Error>,
    ) -> Result<(), Exit> {
        let Some(pending) = conn.pending.remove(&id) else {
            debug!(id, "answer to no pending command");
            return Ok(());
        };
        match pending {
            Pending::Request(tx) => {
                let _ = tx.send(answer);
            }
            Pending::Join { core, data, reply } => {
                // Remembered even if the caller gave up waiting: the
                // membership exists all the same.
                if answer.is_ok() {
                    self.remember_core(core, data);
                }
                let _ = reply.send(answer);
            }
            Pending::Rejoin { core, seq } => self.on_rejoin_answer(core, seq, answer),
            Pending::Subscribe { channel } => {
                self.on_subscribe_answer(conn, channel, id, answer).await?
            }
            Pending::Unsubscribe { channel, done } => {
                self.unsubscribing.remove(&channel);
                if let Some(done) = done {
                    let _ = done.send(answer.map(|_| ()));
                }
            }
        }
        Ok(())
    }

    pub(super) async fn on_server_ask(
        &mut self,
        conn: &mut Conn,
        id: u64,
        event: String,
        core: Option<String>,
        data: Box<RawValue>,
    ) -> Result<(), Exit> {
        let handler = lock(&self.shared.handlers).get(&event).cloned();
        let Some(handler) = handler else {
            let message = format!("no handler for ask event {event:?}");
            return conn
                .send(&ClientFrame::Error {
                    id,
                    code: ErrorCode::NotFound.as_str().into(),
                    message: message.into(),
                })
                .await;
        };
        let ctl = self.ctl_tx.clone();
        let generation = self.generation;
        let request = AskRequest { event, core, data };
        tokio::spawn(async move {
            // The inner task isolates a panicking handler.
            let outcome = tokio::spawn(async move { handler(request).await }).await;
            let text = match outcome {
                Ok(Ok(data)) => ClientFrame::Reply { id, data: &data }.encode(),
                Ok(Err(e)) => ClientFrame::Error {
                    id,
                    code: e.code.as_str().into(),
                    message: e.message.into(),
                }
                .encode(),
                Err(_) => ClientFrame::Error {
                    id,
                    code: ErrorCode::Internal.as_str().into(),
                    message: "ask handler failed".into(),
                }
                .encode(),
            };
            let _ = ctl.send(Control::AskReply { generation, text });
        });
        Ok(())
    }

    pub(super) async fn on_control(&mut self, conn: &mut Conn, ctl: Control) -> Result<(), Exit> {
        match ctl {
            Control::Close(done) => {
                conn.graceful_close().await;
                Err(Exit::User(done))
            }
            Control::AskReply { generation, text } => {
                if generation == self.generation {
                    conn.send_text(text).await?;
                }
                Ok(())
            }
            Control::Rejoin {
                core,
                seq,
                generation,
            } => self.on_rejoin_timer(conn, core, seq, generation).await,
            Control::Unsubscribe {
                channel,
                sub_id,
                done,
            } => {
                if !self.remove_subscriber(&channel, sub_id) {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                    return Ok(());
                }
                // Last local subscriber gone. A pending subscribe is dealt
                // with when its answer arrives.
                let active = self
                    .channels
                    .get(&channel)
                    .is_some_and(|ch| matches!(ch.state, ChanState::Active { .. }));
                if active {
                    self.channels.remove(&channel);
                    self.send_unsubscribe(conn, channel, done).await
                } else {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                    Ok(())
                }
            }
        }
    }

    pub(super) async fn on_command(&mut self, conn: &mut Conn, cmd: Command) -> Result<(), Exit> {
        match cmd {
            Command::Subscribe {
                channel,
                from,
                sub_id,
                tx,
                reply,
            } => {
                let subscriber = Subscriber { id: sub_id, tx };
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.subscribers.push(subscriber);
                    match &mut ch.state {
                        ChanState::Active { last } => {
                            let _ = reply.send(Ok(SubInfo {
                                offset: last.offset,
                                epoch: last.epoch.clone(),
                                recovered: None,
                            }));
                        }
                        ChanState::Pending { waiters, .. } => waiters.push(reply),
                    }
                    return Ok(());
                }
                let id = conn.next_id();
                let frame = ClientFrame::Subscribe {
                    id,
                    request: SubscriptionRequest {
                        channel: channel.clone(),
                        offset: from.as_ref().map(|p| p.offset),
                        epoch: from.as_ref().map(|p| p.epoch.clone()),
                    },
                }
                .encode();
                conn.pending.insert(
                    id,
                    Pending::Subscribe {
                        channel: channel.clone(),
                    },
                );
                self.channels.insert(
                    channel,
                    Channel {
                        subscribers: vec![subscriber],
                        state: ChanState::Pending {
                            id,
                            waiters: vec![reply],
                            buffer: Vec::new(),
                            requested: from,
                        },
                    },
                );
                conn.send_text(frame).await
            }
            Command::Request { req, reply } => {
                if reply.is_closed() {
                    return Ok(()); // the caller gave up while it was queued
                }
                let id = conn.next_id();
                let text = match &req {
                    Request::Publish { channel, data } => ClientFrame::Publish {
                        id,
                        channel: channel.into(),
                        data,
                    },
                    Request::Ask { event, core, data } => ClientFrame::Ask {
                        id,
                        event: event.into(),
                        core: core.as_deref().map(Cow::Borrowed),
                        data,
                    },
                    Request::Join { core, data } => ClientFrame::Join {
                        id,
                        core: core.into(),
                        data,
                        redirect: false,
                    },
                    Request::Leave { core } => ClientFrame::Leave {
                        id,
                        core: core.into(),
                    },
                    Request::Presence { channel } => ClientFrame::Presence {
                        id,
                        channel: channel.into(),
                    },
                }
                .encode();
                let pending = match req {
                    Request::Join { core, data } => Pending::Join { core, data, reply },
                    Request::Leave { core } => {
                        self.forget_core(&core);
                        Pending::Request(reply)
                    }
                    _ => Pending::Request(reply),
                };
                conn.pending.insert(id, pending);
                conn.send_text(text).await
            }
            Command::Tell { event, core, data } => {
                conn.send(&ClientFrame::Tell {
                    event: Cow::Borrowed(&event),
                    core: core.as_deref().map(Cow::Borrowed),
                    data: &data,
                })
                .await
            }
        }
    }
}
