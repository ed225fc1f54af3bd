//! Core memberships: the cores this client joined, remembered so the task
//! can join them again by itself — after a `left` push with `rejoin: true`
//! (the core restarted or moved) and after every reconnect (a membership
//! belongs to a connection, not to a session).

use std::borrow::Cow;
use std::time::Duration;

use scaled_sockets_protocol::{ClientFrame, ErrorCode, Reply};
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::conn::{Conn, Exit, Pending};
use super::{Control, Task};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::types::Event;

/// First and largest delay between attempts to join a core that is not
/// reachable yet (its owner died and it is being respawned elsewhere, which
/// the server bounds at 15 s).
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A core still unreachable this long after the rejoin began is given up
/// (four times the server's respawn bound).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// A core this client is a member of.
pub(super) struct Joined {
    /// The data of the caller's `join`, sent again on every rejoin.
    data: Box<RawValue>,
    /// Identifies the current rejoin; bumped by every new one (and by a
    /// caller's `join`), so answers and timers of older ones are ignored.
    seq: u64,
    /// When the current rejoin began, for [`GIVE_UP_AFTER`].
    since: Instant,
    backoff: Backoff,
}

/// Whether a failed join is worth repeating: the core may be between
/// owners (`not_found` until respawned, `unavailable`/`timeout` while its
/// owner is going away).
fn transient(err: &Error) -> bool {
    matches!(
        err.code(),
        Some(ErrorCode::NotFound | ErrorCode::Unavailable | ErrorCode::Timeout)
    )
}

impl Task {
    fn next_seq(&mut self) -> u64 {
        self.core_seq += 1;
        self.core_seq
    }

    /// Records a `join` the caller made that succeeded.
    pub(super) fn remember_core(&mut self, core: String, data: Box<RawValue>) {
        let seq = self.next_seq();
        self.cores.insert(
            core,
            Joined {
                data,
                seq,
                since: Instant::now(),
                backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            },
        );
    }

    /// Stops rejoining `core` (the caller left it, or the server said the
    /// membership is over for good).
    pub(super) fn forget_core(&mut self, core: &str) {
        if self.cores.remove(core).is_some() {
            debug!(%core, "core forgotten");
        }
    }

    /// Joins `core` again if it is remembered, starting a new rejoin.
    pub(super) async fn start_rejoin(&mut self, conn: &mut Conn, core: &str) -> Result<(), Exit> {
        let seq = self.next_seq();
        let Some(joined) = self.cores.get_mut(core) else {
            return Ok(());
        };
        joined.seq = seq;
        joined.since = Instant::now();
        joined.backoff.reset();
        self.send_rejoin(conn, core, seq).await
    }

    /// Joins every remembered core again (on a new connection).
    pub(super) async fn rejoin_all(&mut self, conn: &mut Conn) -> Result<(), Exit> {
        let cores: Vec<String> = self.cores.keys().cloned().collect();
        for core in cores {
            self.start_rejoin(conn, &core).await?;
        }
        Ok(())
    }

    async fn send_rejoin(&mut self, conn: &mut Conn, core: &str, seq: u64) -> Result<(), Exit> {
        let Some(joined) = self.cores.get(core) else {
            return Ok(());
        };
        let id = conn.next_id();
        let text = ClientFrame::Join {
            id,
            core: Cow::Borrowed(core),
            data: &joined.data,
            redirect: false,
        }
        .encode();
        debug!(%core, id, "rejoining core");
        conn.pending.insert(
            id,
            Pending::Rejoin {
                core: core.to_owned(),
                seq,
            },
        );
        conn.send_text(text).await
    }

    /// A backoff delay is over: tries again, unless the rejoin it belongs
    /// to is stale (a newer one began, the core was forgotten, or the
    /// connection changed — a new connection rejoins everything itself).
    pub(super) async fn on_rejoin_timer(
        &mut self,
        conn: &mut Conn,
        core: String,
        seq: u64,
        generation: u64,
    ) -> Result<(), Exit> {
        let current = self.cores.get(&core).is_some_and(|j| j.seq == seq);
        if generation != self.generation || !current {
            return Ok(());
        }
        self.send_rejoin(conn, &core, seq).await
    }

    /// The answer to a rejoin: emits `Rejoined`, schedules another attempt
    /// while the core is unreachable, or gives up (`RejoinFailed`).
    pub(super) fn on_rejoin_answer(
        &mut self,
        core: String,
        seq: u64,
        answer: Result<Reply, Error>,
    ) {
        let Some(joined) = self.cores.get_mut(&core) else {
            return; // left meanwhile
        };
        if joined.seq != seq {
            return; // superseded by a newer rejoin or a caller's join
        }
        let err = match answer {
            Ok(reply) => {
                let data = reply
                    .data
                    .unwrap_or_else(|| RawValue::from_string("null".into()).expect("valid JSON"));
                debug!(%core, "rejoined core");
                self.shared.emit(Event::Rejoined { core, data });
                return;
            }
            Err(err) => err,
        };
        if transient(&err) && joined.since.elapsed() < GIVE_UP_AFTER {
            let delay = joined.backoff.next_delay();
            debug!(%core, error = %err, ?delay, "core not reachable yet; retrying");
            let ctl = self.ctl_tx.clone();
            let generation = self.generation;
            // A timer task rather than a sleep in the event loop: the
            // connection keeps being served meanwhile, and the task only
            // hears back through the control channel.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = ctl.send(Control::Rejoin {
                    core,
                    seq,
                    generation,
                });
            });
            return;
        }
        warn!(%core, error = %err, "giving up rejoining core");
        self.cores.remove(&core);
        self.shared.emit(Event::RejoinFailed { core, error: err });
    }
}
