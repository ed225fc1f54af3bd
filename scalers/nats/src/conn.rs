//! Connection state: turns async-nats connection events into the state feeds
//! report ([`crate::NatsScaler`] has one [`ConnState`] watch shared by all its
//! feeds).
//!
//! async-nats reconnects by itself, forever, and on reconnect re-sends every core
//! subscription before anything else. So:
//! - `Disconnected`: the state becomes *not connected* and its `generation` moves
//!   on; each feed emits [`scaled_sockets_scaler::FeedEvent::Interrupted`].
//! - `Connected`: the driver sends a PING and waits for the PONG (a `flush`). The
//!   server handles a connection's protocol lines in order, so the PONG proves that
//!   every re-sent SUB is in place; only then does the state become *connected*
//!   and feeds emit `Resumed`.
//! - `SlowConsumer`: async-nats dropped a message because a subscription's buffer
//!   was full; `slow` counts those and feeds report them as `Overflowed`.

use async_nats::{Client, Event, connection::State};
use std::{sync::Weak, time::Duration};
use tokio::sync::{mpsc, watch};

/// What the feeds watch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// The connection is up and every core subscription is confirmed on it.
    pub connected: bool,
    /// Bumped on every disconnect: a feed that saw an older generation missed an
    /// interruption even if it is connected again by now.
    pub generation: u64,
    /// Messages async-nats dropped for slow subscriptions, ever.
    pub slow: u64,
}

/// Something that owns the client; the driver holds it weakly so that dropping
/// the scaler closes the connection.
pub trait HasClient: Send + Sync + 'static {
    /// The connection.
    fn client(&self) -> &Client;
}

/// Consumes connection events until the connection is gone.
pub fn spawn_driver<T: HasClient>(
    owner: Weak<T>,
    mut events: mpsc::UnboundedReceiver<Event>,
    state: watch::Sender<ConnState>,
    flush_timeout: Duration,
) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Disconnected | Event::Closed => {
                    tracing::warn!(%event, "NATS connection lost");
                    state.send_modify(|s| {
                        s.connected = false;
                        s.generation += 1;
                    });
                }
                Event::Connected => {
                    // Every scaler handle and feed is gone: nobody to tell.
                    let Some(owner) = owner.upgrade() else { break };
                    let client = owner.client().clone();
                    drop(owner);
                    confirm_connected(&client, &state, flush_timeout).await;
                }
                Event::SlowConsumer(sid) => {
                    tracing::warn!(sid, "NATS slow consumer: a message was dropped");
                    state.send_modify(|s| s.slow += 1);
                }
                other => tracing::info!(event = %other, "NATS connection event"),
            }
        }
    });
}

async fn confirm_connected(client: &Client, state: &watch::Sender<ConnState>, wait: Duration) {
    let mut attempts = 0u32;
    while client.connection_state() == State::Connected {
        match tokio::time::timeout(wait, client.flush()).await {
            Ok(Ok(())) if client.connection_state() == State::Connected => {
                state.send_if_modified(|s| {
                    let changed = !s.connected;
                    s.connected = true;
                    changed
                });
                if attempts > 0 || state.borrow().generation > 0 {
                    tracing::info!("NATS connection back; subscriptions confirmed");
                }
                return;
            }
            _ => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts.min(10)))).await;
            }
        }
    }
}
