//! Counters exported at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! metrics {
    ($( $(#[$doc:meta])* $name:ident : $kind:literal ),+ $(,)?) => {
        /// One instance's counters and gauges. All relaxed atomics: they are
        /// statistics, not synchronisation.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[$doc])* pub $name: AtomicU64, )+
        }

        impl Metrics {
            /// Renders the Prometheus text format.
            pub fn render(&self, instance: &str, scaler: &str, ready: bool) -> String {
                let mut out = String::with_capacity(2048);
                $(
                    let _ = writeln!(out, "# TYPE scaled_sockets_{} {}", stringify!($name), $kind);
                    let _ = writeln!(out, "scaled_sockets_{}{{instance=\"{}\"}} {}", stringify!($name), instance, self.$name.load(Relaxed));
                )+
                let _ = writeln!(out, "# TYPE scaled_sockets_ready gauge");
                let _ = writeln!(out, "scaled_sockets_ready{{instance=\"{instance}\",scaler=\"{scaler}\"}} {}", u8::from(ready));
                out
            }
        }
    };
}

metrics! {
    /// Open, welcomed connections (WebSocket and HTTP fallback).
    connections: "gauge",
    /// Open HTTP-fallback event streams (also counted in `connections`).
    sse_streams: "gauge",
    /// POSTs of HTTP-fallback frames received by this instance.
    sse_posts_total: "counter",
    /// Of those, POSTs forwarded to the instance holding the stream.
    sse_posts_forwarded_total: "counter",
    /// Connections welcomed since start.
    connections_total: "counter",
    /// Connections closed because their outbound queue was full.
    slow_consumer_closes_total: "counter",
    /// Frames answered `bad_request`.
    bad_frames_total: "counter",
    /// Publications accepted (WebSocket and HTTP).
    publications_total: "counter",
    /// Publications received from the scaler feed (each encoded once).
    feed_publications_total: "counter",
    /// Frames queued to sockets.
    frames_queued_total: "counter",
    /// Times the scaler feed lost its backend connection.
    feed_interruptions_total: "counter",
    /// Feed events dropped by the scaler's hand-off queue (repaired from history).
    feed_dropped_total: "counter",
    /// Subscriptions whose missed messages were replayed from history.
    recoveries_total: "counter",
    /// Subscriptions told `recovered:false`.
    recovery_failures_total: "counter",
    /// Publishes answered `unavailable`.
    unavailable_total: "counter",
    /// Channels this instance holds a backend subscription for.
    backend_topics: "gauge",
    /// Cores hosted by this instance.
    cores: "gauge",
    /// Core messages relayed to or from another instance (joins, asks,
    /// tells, deliveries to members).
    core_relays_total: "counter",
    /// Cores this instance took over after their owner disappeared (or
    /// handed them over).
    core_respawns_total: "counter",
    /// Cores restarted from their last snapshot after a handler panicked.
    core_restarts_total: "counter",
    /// Core messages dropped because they came from a stale owner (an older
    /// fencing token than the one this instance knows).
    core_stale_dropped_total: "counter",
}

impl Metrics {
    /// Adds one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}
