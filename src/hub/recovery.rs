//! History reads for recovery, shared by the connections of one instance.
//!
//! After a feed overflow or interruption, every local subscriber of a channel
//! is usually at the same position and needs the same publications. Reading
//! history once per channel and position, and handing the same page to each,
//! keeps the backend's work per instance instead of per subscriber.

use super::{Hub, lock};
use crate::{error::CommandError, mailbox::SharedPage};
use futures_util::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use scaled_sockets_scaler::{HistoryRequest, StreamPosition};
use std::{collections::HashMap, sync::Arc};

type Key = (Arc<str>, Option<StreamPosition>);

/// History reads in flight, by channel and starting position.
#[derive(Default)]
pub(crate) struct HistoryReads(
    std::sync::Mutex<HashMap<Key, Shared<BoxFuture<'static, SharedPage>>>>,
);

impl std::fmt::Debug for HistoryReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryReads").finish_non_exhaustive()
    }
}

impl Hub {
    /// Reads a channel's history after `since` (or only its top), joining a
    /// read of the same channel and position already in flight.
    pub(crate) async fn read_history(
        self: &Arc<Self>,
        channel: Arc<str>,
        since: Option<StreamPosition>,
    ) -> SharedPage {
        let key: Key = (channel.clone(), since.clone());
        let read = {
            let mut reads = lock(&self.history_reads.0);
            reads
                .entry(key.clone())
                .or_insert_with(|| {
                    let hub = self.clone();
                    async move {
                        let request = HistoryRequest {
                            since,
                            limit: hub.config.recovery_limit,
                            // A stream created by this read lives as long as
                            // one created by a publication.
                            ttl: hub.config.history.history_ttl,
                        };
                        let read = hub.scaler.history(&channel, &request);
                        let page = read.await;
                        // Done: later readers must read afresh.
                        lock(&hub.history_reads.0).remove(&(channel, request.since));
                        page.map(Arc::new).map_err(CommandError::from)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        read.await
    }
}
