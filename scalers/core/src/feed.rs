//! An instance's one backend subscription.
//!
//! Why one feed per instance: a backend connection per channel (or per socket)
//! does not scale; one subscriber connection multiplexing every topic the
//! instance needs does. The server counts local interest per topic and calls
//! [`FeedControl::subscribe`] only for the first local subscriber and
//! [`FeedControl::unsubscribe`] after the last, so each instance receives only
//! the traffic of topics it has sockets for.

use crate::{Publication, Result, Topic};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// How many events a feed buffers between the backend reader and the server's
/// dispatcher. A backend reader must never block on a slow dispatcher: when the
/// queue is full it drops the event, counts it, and sends
/// [`FeedEvent::Overflowed`] as soon as there is room, so the server repairs the
/// gap from history.
pub const FEED_QUEUE_CAPACITY: usize = 8192;

/// What a feed yields, in the order the backend delivered it (per topic order is
/// kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// A publication on a subscribed channel.
    Publication(Publication),
    /// An opaque message to a subscribed user, session or instance topic.
    Message {
        /// Where it was sent.
        topic: Topic,
        /// What was sent.
        payload: Bytes,
    },
    /// The backend connection was lost: messages published from now until
    /// [`FeedEvent::Resumed`] may never arrive. Readiness is false meanwhile.
    Interrupted,
    /// The connection is back and every topic is subscribed again. Channel streams
    /// may have a gap: the server checks each against history.
    Resumed,
    /// The hand-off queue overflowed and `dropped` events were lost; the server
    /// checks every channel against history, as after [`FeedEvent::Resumed`].
    Overflowed {
        /// How many events were dropped.
        dropped: u64,
    },
}

/// Controls which topics a feed receives. Cheap to share (`Arc<dyn FeedControl>`).
#[async_trait]
pub trait FeedControl: Send + Sync + std::fmt::Debug {
    /// Starts delivering these topics. Resolves once the backend confirmed, so a
    /// publication made after it returns is delivered. Subscribing twice is a no-op.
    async fn subscribe(&self, topics: &[Topic]) -> Result<()>;
    /// Stops delivering these topics. Unknown topics are ignored.
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<()>;
    /// True while the backend connection is up and every topic is subscribed on it.
    fn is_live(&self) -> bool;
}

/// An instance's subscription to the backend: a control handle plus the event
/// queue. Dropping the `Feed` (both halves) closes the backend subscription.
#[derive(Debug)]
pub struct Feed {
    /// Subscribe and unsubscribe topics.
    pub control: std::sync::Arc<dyn FeedControl>,
    /// Events, in delivery order.
    pub events: mpsc::Receiver<FeedEvent>,
}
