//! One conformance suite that every [`Scaler`] must pass.
//!
//! Each check is a public async function taking a [`TestBackend`]: something that
//! can hand out scaler handles connected to one backend (two handles = two
//! instances) and, where it can, stop and start the backend process. A backend's
//! author runs the whole suite with one line in a test file:
//!
//! ```ignore
//! scaled_sockets_conformance::conformance_tests!(my_crate_tests::backend());
//! ```
//!
//! where the expression evaluates to a future of something implementing
//! [`TestBackend`]. Every check uses fresh random channel, key and instance names,
//! so checks may share one backend process.
//!
//! Checks a backend cannot take part in are skipped only when its
//! [`Capabilities`](scaled_sockets_scaler::Capabilities) say so, and the skip is
//! printed; nothing is skipped silently.
//!
//! # Module map
//! - `feed`: delivery, order, topic selection, two instances on one backend.
//! - `history`: offsets, epochs, recovery, trimming, expiry.
//! - `registry`: the instance registry and presence.
//! - `leases`: exclusivity and fencing tokens.
//! - `kv`: the versioned key-value family and the session helpers.
//! - `restart`: backend outages.

mod feed;
pub mod follower;
mod history;
mod kv;
mod leases;
mod registry;
mod restart;

pub use feed::*;
pub use history::*;
pub use kv::*;
pub use leases::*;
pub use registry::*;
pub use restart::*;

use futures_util::future::BoxFuture;
use scaled_sockets_scaler::{
    Feed, FeedEvent, InstanceInfo, Publication, PublishOptions, Scaler, types::now_ms,
};
use std::{sync::Arc, time::Duration};
use tokio::time::{Instant, timeout};

/// What the suite needs from a backend under test.
pub trait TestBackend: Send + Sync {
    /// A new scaler handle on the backend (each acts as a separate instance).
    fn connect(&self) -> BoxFuture<'_, Arc<dyn Scaler>>;
    /// Makes the backend unreachable (kills the process), if the harness can.
    /// Returns false when it cannot: restart checks are then skipped, loudly.
    fn stop(&self) -> BoxFuture<'_, bool>;
    /// Brings the backend back after [`TestBackend::stop`] (same address).
    fn start(&self) -> BoxFuture<'_, ()>;
}

/// How long any single expected event may take.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn opts() -> PublishOptions {
    PublishOptions::default()
}

/// Waits for the next publication on the feed, skipping other events.
pub async fn next_publication(feed: &mut Feed) -> Publication {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, feed.events.recv()).await {
            Ok(Some(FeedEvent::Publication(p))) => return p,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("feed closed while waiting for a publication"),
            Err(_) => panic!("no publication within {EVENT_WAIT:?}"),
        }
    }
}

/// Asserts that no publication or message arrives within `wait`.
pub async fn assert_quiet(feed: &mut Feed, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, feed.events.recv()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(FeedEvent::Publication(p))) => panic!("unexpected publication {p:?}"),
            Ok(Some(FeedEvent::Message { topic, .. })) => panic!("unexpected message on {topic:?}"),
            Ok(Some(_)) => continue,
        }
    }
}

pub(crate) async fn next_event_matching(
    feed: &mut Feed,
    want: impl Fn(&FeedEvent) -> bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, feed.events.recv()).await {
            Ok(Some(ev)) if want(&ev) => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("feed closed while waiting for {what}"),
            Err(_) => panic!("no {what} within 30s"),
        }
    }
}

pub(crate) async fn register(scaler: &dyn Scaler, id: &str) {
    scaler
        .register_instance(
            &InstanceInfo {
                id: id.into(),
                address: "127.0.0.1:1".into(),
                connections: 3,
                cores: 1,
                updated_at_ms: now_ms(),
            },
            Duration::from_secs(30),
        )
        .await
        .expect("register instance");
}

/// Runs every check in sequence (for backends that prefer one test).
pub async fn run_all(backend: &dyn TestBackend) {
    ping_answers(backend).await;
    delivery_in_order(backend).await;
    feed_gets_only_its_topics(backend).await;
    unsubscribe_stops_delivery(backend).await;
    two_instances_share_one_backend(backend).await;
    concurrent_publishers_get_gap_free_offsets(backend).await;
    history_recovers_missed(backend).await;
    trimmed_history_is_not_recovered(backend).await;
    epoch_changes_when_history_expires(backend).await;
    history_epoch_uses_request_ttl(backend).await;
    ordered_publishes_keep_their_order(backend).await;
    instance_registry_expires(backend).await;
    lease_exclusive_under_contention(backend).await;
    fencing_tokens_only_grow(backend).await;
    presence_follows_instances(backend).await;
    presence_swept_when_instance_leaves(backend).await;
    kv_revisions_and_conditions(backend).await;
    kv_create_has_one_winner(backend).await;
    kv_fenced_refuses_stale_tokens(backend).await;
    kv_entries_expire(backend).await;
    kv_list_by_prefix(backend).await;
    sessions_expire(backend).await;
    survives_backend_restart(backend).await;
    failed_subscribe_leaves_nothing(backend).await;
}

/// Generates one `#[tokio::test]` per conformance check. `$backend` is an
/// expression evaluating to a future of a [`TestBackend`]; it is evaluated once
/// per test, so each test may get its own backend process.
///
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
/// dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!(@each $backend;
            ping_answers,
            delivery_in_order,
            feed_gets_only_its_topics,
            unsubscribe_stops_delivery,
            two_instances_share_one_backend,
            concurrent_publishers_get_gap_free_offsets,
            history_recovers_missed,
            trimmed_history_is_not_recovered,
            epoch_changes_when_history_expires,
            history_epoch_uses_request_ttl,
            ordered_publishes_keep_their_order,
            instance_registry_expires,
            lease_exclusive_under_contention,
            fencing_tokens_only_grow,
            presence_follows_instances,
            presence_swept_when_instance_leaves,
            kv_revisions_and_conditions,
            kv_create_has_one_winner,
            kv_fenced_refuses_stale_tokens,
            kv_entries_expire,
            kv_list_by_prefix,
            sessions_expire,
            survives_backend_restart,
            failed_subscribe_leaves_nothing
        );
    };
    (@each $backend:expr; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let backend = $backend.await;
                $crate::$check(&backend).await;
            }
        )+
    };
}
