//! History reads for recovery, shared by the connections of one instance.
//!
//! After a feed overflow or interruption, every local subscriber of a channel
//! is usually at the same position and needs the same publications. Reading
//! history once per channel and position, and handing the same page to each,
//! keeps the backend's work per instance instead of per subscriber.
//!
//! A new subscriber joins only a read sent after it became a member of the
//! channel's topic ([`ReadTicket`]): an older read's top may include a
//! publication fanned out before it was a member, which it would then never
//! get (and, if it was the channel's last, nothing would tell it).

use super::{Hub, lock};
use crate::{error::CommandError, mailbox::SharedPage};
use futures_util::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use scaled_sockets_scaler::{HistoryRequest, StreamPosition};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

type Key = (Arc<str>, Option<StreamPosition>);

/// One read in flight: when it started (in [`HistoryReads::started`]'s
/// order) and its result, shared by everyone who joins it.
struct InFlight {
    seq: u64,
    read: Shared<BoxFuture<'static, SharedPage>>,
}

/// History reads in flight, by channel and starting position.
#[derive(Default)]
pub(crate) struct HistoryReads {
    reads: std::sync::Mutex<HashMap<Key, InFlight>>,
    /// Reads started so far: a read's `seq` is this count when it started.
    started: AtomicU64,
}

impl std::fmt::Debug for HistoryReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryReads").finish_non_exhaustive()
    }
}

/// Which reads in flight a caller may join: those started after the ticket
/// was taken. A new subscriber takes one right after it joined the channel's
/// topic: a read sent before that could miss a publication fanned out before
/// the subscriber was a member, whose top would then say it was delivered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadTicket(u64);

impl ReadTicket {
    /// Any read in flight will do (its caller is a member already, and an
    /// offset jump or the gap check repairs what a stale page misses).
    pub(crate) const ANY: Self = Self(0);
}

impl Hub {
    /// A ticket for [`Hub::read_history`]: reads started from now on.
    pub(crate) fn history_ticket(&self) -> ReadTicket {
        ReadTicket(self.history_reads.started.load(Ordering::SeqCst))
    }

    /// Reads a channel's history after `since` (or only its top), joining a
    /// read of the same channel and position already in flight if it started
    /// after `after` was taken.
    pub(crate) async fn read_history(
        self: &Arc<Self>,
        channel: Arc<str>,
        since: Option<StreamPosition>,
        after: ReadTicket,
    ) -> SharedPage {
        let key: Key = (channel.clone(), since.clone());
        let read = {
            let mut reads = lock(&self.history_reads.reads);
            match reads.get(&key) {
                Some(in_flight) if in_flight.seq >= after.0 => in_flight.read.clone(),
                _ => {
                    // Started under the lock, so no caller can see this
                    // read's seq before it is in the table.
                    let seq = self.history_reads.started.fetch_add(1, Ordering::SeqCst);
                    let hub = self.clone();
                    let read = async move {
                        let request = HistoryRequest {
                            since,
                            limit: hub.config.recovery_limit,
                            // A stream created by this read lives as long as
                            // one created by a publication.
                            ttl: hub.config.history.history_ttl,
                        };
                        let page = hub.scaler.history(&channel, &request).await;
                        // Done: later readers must read afresh (unless a
                        // newer read of the same key replaced this one).
                        let mut reads = lock(&hub.history_reads.reads);
                        let key = (channel, request.since);
                        if reads.get(&key).is_some_and(|r| r.seq == seq) {
                            reads.remove(&key);
                        }
                        drop(reads);
                        page.map(Arc::new).map_err(CommandError::from)
                    }
                    .boxed()
                    .shared();
                    reads.insert(
                        key,
                        InFlight {
                            seq,
                            read: read.clone(),
                        },
                    );
                    read
                }
            }
        };
        read.await
    }
}
