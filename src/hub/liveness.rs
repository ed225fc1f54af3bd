//! Per-connection chores from hub-wide timers: pings, idle and expiry closes,
//! session saves. One timer for all connections, not one per connection: a
//! timer per socket would cost memory on every idle connection.

use super::{Hub, lock};
use crate::{
    mailbox::{ConnEvent, Mailbox, Outbound},
    protocol,
};
use scaled_sockets_scaler::types::now_ms;
use std::sync::{Arc, atomic::Ordering};

/// One timer for all connections: pings them and closes those silent for two
/// intervals (4010) or whose token expired (4001). A timer per socket would
/// cost memory on every idle connection.
pub(super) fn ping_all(hub: &Arc<Hub>) {
    let interval = hub.config.ping_interval;
    let now = hub.clock_ms();
    let silent_limit = 2 * interval.as_millis() as u64;
    let wall = now_ms();
    let conns: Vec<Arc<Mailbox>> = lock(&hub.conns).values().cloned().collect();
    for conn in conns {
        if conn.expires_at_ms != 0 && wall > conn.expires_at_ms {
            conn.kill(protocol::close::UNAUTHORIZED, "token expired", true);
        } else if now.saturating_sub(conn.last_seen_ms.load(Ordering::Relaxed)) > silent_limit {
            conn.kill(
                protocol::close::NO_PONG,
                "no sign of life for 2 ping intervals",
                true,
            );
        } else {
            conn.push(Outbound::Ping);
        }
    }
}

/// Every `session_save_interval`, asks each connection to save its session
/// record if its positions moved (it compares and decides itself), so a
/// client resuming after this instance died recovers from recent positions.
pub(super) fn ask_all_to_save_sessions(hub: &Arc<Hub>) {
    let conns: Vec<Arc<Mailbox>> = lock(&hub.conns).values().cloned().collect();
    for conn in conns {
        conn.push(Outbound::Event(Box::new(ConnEvent::SaveSession)));
    }
}
