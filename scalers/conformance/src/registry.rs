//! The instance registry and presence.

use crate::{TestBackend, register, unique};
use scaled_sockets_scaler::{InstanceInfo, PresenceEntry, ScalerExt, types::now_ms};
use std::time::Duration;
use tokio::time::sleep;

/// Registered instances are listed until unregistered or their TTL lapses.
pub async fn instance_registry_expires(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let a = unique("inst-a");
    let b = unique("inst-b");
    register(s.as_ref(), &a).await;
    s.register_instance(
        &InstanceInfo {
            id: b.clone(),
            address: "127.0.0.1:2".into(),
            connections: 0,
            cores: 0,
            updated_at_ms: now_ms(),
        },
        Duration::from_secs(1),
    )
    .await
    .expect("register b");
    let listed = s.instances().await.expect("instances");
    let info = listed.iter().find(|i| i.id == a).expect("a listed");
    assert_eq!((info.connections, info.cores), (3, 1));
    assert!(listed.iter().any(|i| i.id == b));
    sleep(Duration::from_millis(2500)).await;
    let listed = s.instances().await.expect("instances");
    assert!(listed.iter().any(|i| i.id == a));
    assert!(!listed.iter().any(|i| i.id == b), "b expired");
    s.unregister_instance(&a).await.expect("unregister");
    assert!(!s.instance_is_live(&a).await.expect("live?"));
}

/// Presence lists live connections; entries of an instance that left vanish.
pub async fn presence_follows_instances(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let channel = unique("presence");
    let a = unique("inst-a");
    let b = unique("inst-b");
    register(s.as_ref(), &a).await;
    register(s.as_ref(), &b).await;
    let entry = |client: &str, user: Option<&str>, instance: &str| PresenceEntry {
        client: client.into(),
        user: user.map(Into::into),
        instance: instance.into(),
    };
    s.presence_add(&channel, &entry("c1", Some("alice"), &a))
        .await
        .expect("add");
    s.presence_add(&channel, &entry("c2", None, &b))
        .await
        .expect("add");
    s.presence_add(&channel, &entry("c3", Some("bob"), &b))
        .await
        .expect("add");
    let mut got = s.presence(&channel).await.expect("presence");
    got.sort();
    assert_eq!(
        got,
        vec![
            entry("c1", Some("alice"), &a),
            entry("c2", None, &b),
            entry("c3", Some("bob"), &b)
        ]
    );
    s.presence_remove(&channel, "c2").await.expect("remove");
    s.unregister_instance(&b).await.expect("unregister b");
    let got = s.presence(&channel).await.expect("presence");
    assert_eq!(
        got,
        vec![entry("c1", Some("alice"), &a)],
        "b's entries are gone"
    );
    assert!(
        s.presence(&unique("empty"))
            .await
            .expect("presence")
            .is_empty()
    );
}

/// Presence entries do not outlive their instance: when it unregisters, or its
/// registration expires and the registry is next read, its entries are deleted
/// (not merely hidden), so registering the same id again brings none back.
pub async fn presence_swept_when_instance_leaves(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let channel = unique("swept");
    let left = unique("inst-left");
    let crashed = unique("inst-crashed");
    let stays = unique("inst-stays");
    register(s.as_ref(), &left).await;
    register(s.as_ref(), &stays).await;
    s.register_instance(
        &InstanceInfo {
            id: crashed.clone(),
            ..InstanceInfo::default()
        },
        Duration::from_secs(1),
    )
    .await
    .expect("register crashed");
    let entry = |client: &str, instance: &str| PresenceEntry {
        client: client.into(),
        user: None,
        instance: instance.into(),
    };
    for (client, instance) in [("c1", &left), ("c2", &crashed), ("c3", &stays)] {
        s.presence_add(&channel, &entry(client, instance))
            .await
            .expect("add");
    }
    s.unregister_instance(&left).await.expect("unregister");
    sleep(Duration::from_millis(2500)).await;
    // Reading the registry notices the expired registration.
    let live = s.instances().await.expect("instances");
    assert!(!live.iter().any(|i| i.id == crashed), "crashed expired");
    // Backends may sweep in the background: allow them a moment.
    sleep(Duration::from_millis(1000)).await;
    register(s.as_ref(), &left).await;
    register(s.as_ref(), &crashed).await;
    assert_eq!(
        s.presence(&channel).await.expect("presence"),
        vec![entry("c3", &stays)],
        "entries of instances that left are deleted, not only hidden"
    );
}
