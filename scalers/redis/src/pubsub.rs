//! Sending `SUBSCRIBE`/`UNSUBSCRIBE` on a feed's subscriber connection in
//! batches, in order, and waiting for Redis to confirm them.

use crate::pool::map_error;
use redis::{RedisResult, aio::PubSubSink};
use scaled_sockets_scaler::{Result, ScalerError};
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::time::timeout;

/// A (un)subscribe command already handed to the connection, awaiting its
/// confirmation.
pub(crate) type Pending = Pin<Box<dyn Future<Output = RedisResult<()>> + Send>>;

/// Polls a future once, right now, so that whatever it does synchronously on its
/// first poll happens before this returns. The pub/sub sink enqueues its command
/// on the first poll; doing that under the state lock orders commands exactly as
/// the desired set changed.
pub(crate) fn start(fut: impl Future<Output = RedisResult<()>> + Send + 'static) -> Pending {
    let mut fut: Pending = Box::pin(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(result) => Box::pin(std::future::ready(result)),
        Poll::Pending => fut,
    }
}

/// Enqueues `SUBSCRIBE` (or `UNSUBSCRIBE`) commands of at most `batch` names each.
pub(crate) fn start_batches(
    sink: &PubSubSink,
    names: &[String],
    batch: usize,
    subscribe: bool,
) -> Vec<Pending> {
    names
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut sink = sink.clone();
            let chunk = chunk.to_vec();
            start(async move {
                if subscribe {
                    sink.subscribe(chunk).await
                } else {
                    sink.unsubscribe(chunk).await
                }
            })
        })
        .collect()
}

/// Waits for every batch's confirmation, each within `limit`.
pub(crate) async fn confirm(pending: Vec<Pending>, limit: Duration) -> Result<()> {
    for batch in pending {
        match timeout(limit, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(map_error(e, limit).into_unavailable());
            }
            Err(_) => return Err(ScalerError::Timeout(limit)),
        }
    }
    Ok(())
}
