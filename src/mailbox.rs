//! A connection's mailbox: the shared half of a connection that the hub, app
//! code and peers hold, and the bounded queue through which everything reaches
//! the connection's task.
//!
//! Everything that wants to reach a socket goes through its queue with a
//! non-blocking push: publications (a shared, pre-encoded frame), tells,
//! results of commands that ran in their own task, gap checks. A full queue
//! means the client does not keep up; it is closed with 4008 rather than
//! allowed to stall the dispatcher or grow memory without bound.
//!
//! This is a leaf module: it knows frames, data and errors, not the hub or the
//! connection task, so both can depend on it without a cycle.

use crate::{
    data::Data,
    error::{CommandError, ErrorCode},
    protocol::close,
};
use futures_util::task::AtomicWaker;
use scaled_sockets_scaler::{HistoryPage, StreamPosition};
use std::{
    borrow::Cow,
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A history read's result, shared by every subscriber of the instance that
/// waited for it.
pub(crate) type SharedPage = Result<Arc<HistoryPage>, CommandError>;

/// A publication as received from the feed, encoded once for every local
/// subscriber.
#[derive(Debug)]
pub(crate) struct SharedPublication {
    pub channel: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
    pub frame: Utf8Bytes,
}

/// What can be queued to a connection. Every variant is one pointer wide, so the
/// queue's blocks stay small.
#[derive(Debug)]
pub(crate) enum Outbound {
    Publication(Arc<SharedPublication>),
    Frame(Box<Utf8Bytes>),
    Shared(Arc<Utf8Bytes>),
    Ping,
    Event(Box<ConnEvent>),
}

/// Results and requests addressed to the connection task itself.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A command that ran in its own task finished; `frame` answers it.
    Done { id: u64, frame: Utf8Bytes },
    /// A subscription is in place (or failed).
    Subscribed {
        id: Option<u64>,
        channel: Arc<str>,
        generation: u64,
        /// The position the client recovers from, if it gave one.
        since: Option<StreamPosition>,
        result: SharedPage,
    },
    /// Missing publications were read from history (or could not be).
    Repaired {
        channel: Arc<str>,
        generation: u64,
        result: SharedPage,
    },
    /// The feed may have missed publications: compare with the stream's top.
    /// Time to save the session record if positions moved.
    SaveSession,
    /// The feed resumed after an outage: the backend may have lost state.
    /// Live publications wait until the next gap check has compared every
    /// subscription with its stream's top.
    Hold,
    GapCheck {
        channel: Arc<str>,
        top: StreamPosition,
    },
    /// App code asks this client something.
    ServerAsk {
        event: String,
        data: Data,
        reply: oneshot::Sender<Result<Data, CommandError>>,
    },
    /// App code subscribes this client.
    ServerSubscribe { channel: String },
    /// App code unsubscribes this client.
    ServerUnsubscribe { channel: String },
}

/// Moves `from`'s items to the end of `into`: a swap of the two deques when
/// `into` is empty (the usual case), so the queue keeps the taker's spare
/// capacity and nothing is copied.
fn take_into(from: &mut VecDeque<Outbound>, into: &mut VecDeque<Outbound>) {
    if into.is_empty() {
        std::mem::swap(from, into);
    } else {
        into.extend(from.drain(..));
    }
}

/// The outbound queue's contents.
#[derive(Debug, Default)]
struct OutQueue {
    items: VecDeque<Outbound>,
    closed: bool,
}

/// The shared half of a connection: what the hub, app code and peers hold.
#[derive(Debug)]
pub(crate) struct Mailbox {
    pub key: u64,
    pub client: Arc<str>,
    pub user: Option<Arc<str>>,
    pub session: Arc<str>,
    /// Wall-clock ms when the credentials expire (0 = never).
    pub expires_at_ms: u64,
    /// Node clock ms of the last frame from the client.
    pub last_seen_ms: AtomicU64,
    /// The bounded outbound queue. A plain locked deque rather than a channel:
    /// an idle connection's empty deque allocates nothing, where a channel
    /// allocates its first block up front (about 1 KiB per connection). The
    /// lock is held only to push or pop one item.
    queue: Mutex<OutQueue>,
    queue_limit: usize,
    /// Set once the connection must close. `waker` wakes the connection task
    /// for a kill or a queued item. (A flag and a waker cost less per
    /// connection than a `Notify` and its future.)
    killed: AtomicBool,
    waker: AtomicWaker,
    /// Set by the first [`Mailbox::push_deferred`] since the last
    /// [`Mailbox::wake`]: the pusher has this mailbox on its list to wake.
    wake_due: AtomicBool,
    kill_reason: Mutex<Option<(u16, Cow<'static, str>, bool)>>,
}

impl Mailbox {
    /// A mailbox for a new connection, with an empty queue of at most
    /// `queue_limit` items.
    pub(crate) fn new(
        key: u64,
        client: Arc<str>,
        user: Option<Arc<str>>,
        session: Arc<str>,
        expires_at_ms: u64,
        now_ms: u64,
        queue_limit: usize,
    ) -> Self {
        Self {
            key,
            client,
            user,
            session,
            expires_at_ms,
            last_seen_ms: AtomicU64::new(now_ms),
            queue: Mutex::new(OutQueue::default()),
            queue_limit,
            killed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            wake_due: AtomicBool::new(false),
            kill_reason: Mutex::new(None),
        }
    }

    /// Queues without waiting. A full queue marks a slow consumer, which is
    /// closed with 4008. Returns false when the item was not queued.
    pub(crate) fn push(&self, item: Outbound) -> bool {
        if !self.enqueue(item) {
            return false;
        }
        self.waker.wake();
        true
    }

    /// Queues like [`Mailbox::push`] but leaves the wake-up to the caller, so
    /// a dispatcher can queue a whole batch of publications and wake each
    /// connection once (one wake-up, one drain and one socket write for the
    /// batch, rather than one per publication). Returns `(queued, listed)`:
    /// `listed` is true for the first deferred push since the last
    /// [`Mailbox::wake`], and then the caller must call `wake` after its batch.
    pub(crate) fn push_deferred(&self, item: Outbound) -> (bool, bool) {
        if !self.enqueue(item) {
            return (false, false);
        }
        (true, !self.wake_due.swap(true, Ordering::AcqRel))
    }

    /// Wakes the connection task after deferred pushes.
    pub(crate) fn wake(&self) {
        self.wake_due.store(false, Ordering::Release);
        self.waker.wake();
    }

    fn enqueue(&self, item: Outbound) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.closed {
            return false;
        }
        if queue.items.len() >= self.queue_limit {
            drop(queue);
            self.kill(close::POLICY, "slow consumer: outbound queue full", true);
            return false;
        }
        queue.items.push_back(item);
        true
    }

    /// Takes everything queued at once into `into` (one lock, one swap when
    /// `into` is empty), or returns `Pending` with the task registered for a
    /// wake.
    pub(crate) fn poll_take(
        &self,
        cx: &mut std::task::Context<'_>,
        into: &mut VecDeque<Outbound>,
    ) -> Poll<()> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.items.is_empty() {
            // Registered while holding the lock: a push after this point
            // wakes the registered waker, so no wake-up is lost.
            self.waker.register(cx.waker());
            if queue.items.capacity() > 64 {
                // A burst is over: give its memory back.
                queue.items = VecDeque::new();
            }
            return Poll::Pending;
        }
        take_into(&mut queue.items, into);
        Poll::Ready(())
    }

    /// Takes everything queued into `into`, if anything is; registers nothing.
    pub(crate) fn try_take(&self, into: &mut VecDeque<Outbound>) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.items.is_empty() {
            return false;
        }
        take_into(&mut queue.items, into);
        true
    }

    /// Refuses further items and drops the queued ones.
    pub(crate) fn close_queue(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.closed = true;
        queue.items = VecDeque::new();
    }

    /// Asks the connection task to close with `code` (the first reason wins).
    pub(crate) fn kill(&self, code: u16, reason: &'static str, reconnect: bool) {
        self.kill_with(code, Cow::Borrowed(reason), reconnect);
    }

    pub(crate) fn kill_owned(&self, code: u16, reason: String, reconnect: bool) {
        self.kill_with(code, Cow::Owned(reason), reconnect);
    }

    fn kill_with(&self, code: u16, reason: Cow<'static, str>, reconnect: bool) {
        let mut slot = self.kill_reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((code, reason, reconnect));
        }
        drop(slot);
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// True once the connection was told to close.
    pub(crate) fn is_closing(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Ready once killed; registers the task to be woken otherwise.
    pub(crate) fn poll_killed(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.killed.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.killed.load(Ordering::Acquire)
    }

    pub(crate) fn take_kill_reason(&self) -> (u16, Cow<'static, str>, bool) {
        self.kill_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or((close::NORMAL, Cow::Borrowed(""), false))
    }

    /// Sends a server `ask` to this client and waits for its answer.
    pub(crate) async fn ask(
        &self,
        event: &str,
        data: Data,
        timeout: Duration,
    ) -> Result<Data, CommandError> {
        let (reply, rx) = oneshot::channel();
        let queued = self.push(Outbound::Event(Box::new(ConnEvent::ServerAsk {
            event: event.to_owned(),
            data,
            reply,
        })));
        if !queued {
            return Err(CommandError::not_found("the client is gone"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommandError::not_found(
                "the client disconnected before answering",
            )),
            Err(_) => Err(CommandError::new(
                ErrorCode::Timeout,
                "the client did not answer in time",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item of the outbound queue is one pointer plus a tag.
    #[test]
    fn outbound_items_are_small() {
        assert!(std::mem::size_of::<Outbound>() <= 16);
    }

    #[test]
    fn a_full_queue_kills_the_connection_as_a_slow_consumer() {
        let mailbox = Mailbox::new(1, "i.c".into(), None, "s".into(), 0, 0, 2);
        assert!(mailbox.push(Outbound::Ping));
        assert!(mailbox.push(Outbound::Ping));
        assert!(
            !mailbox.push(Outbound::Ping),
            "third item exceeds the limit"
        );
        let (code, _, reconnect) = mailbox.take_kill_reason();
        assert_eq!(code, close::POLICY);
        assert!(reconnect);
        mailbox.close_queue();
        assert!(
            !mailbox.push(Outbound::Ping),
            "a closed queue takes nothing"
        );
    }

    #[test]
    fn deferred_pushes_list_the_mailbox_once_per_wake_and_are_taken_at_once() {
        let mailbox = Mailbox::new(1, "i.c".into(), None, "s".into(), 0, 0, 8);
        assert_eq!(mailbox.push_deferred(Outbound::Ping), (true, true));
        assert_eq!(
            mailbox.push_deferred(Outbound::Ping),
            (true, false),
            "already listed for a wake"
        );
        mailbox.wake();
        assert_eq!(mailbox.push_deferred(Outbound::Ping), (true, true));
        let mut taken = VecDeque::new();
        assert!(mailbox.try_take(&mut taken));
        assert_eq!(taken.len(), 3);
        assert!(!mailbox.try_take(&mut taken), "nothing left");
        assert!(mailbox.push(Outbound::Ping));
        assert!(mailbox.try_take(&mut taken));
        assert_eq!(taken.len(), 4, "appended after what was already taken");
    }
}
