//! The versioned key-value family and the session helpers over it.

use crate::{TestBackend, unique};
use bytes::Bytes;
use scaled_sockets_scaler::{LeaseOutcome, PutMode, PutOptions, ScalerError, ScalerExt, Versioned};
use std::{sync::Arc, time::Duration};
use tokio::time::sleep;

fn conflict<T: std::fmt::Debug>(result: Result<T, ScalerError>, what: &str) {
    match result {
        Err(ScalerError::Conflict(_)) => {}
        other => panic!("{what}: expected Conflict, got {other:?}"),
    }
}

/// Puts, gets, revisions that only grow (across delete too), IfRevision and
/// Create conflicts, deletes with a precondition.
pub async fn kv_revisions_and_conditions(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let key = unique("kv");
    assert_eq!(s.kv_get(&key).await.expect("get"), None);
    let any = PutOptions::default();
    let r1 = s
        .kv_put(&key, Bytes::from_static(b"one"), &any)
        .await
        .expect("put");
    assert_eq!(
        s.kv_get(&key).await.expect("get"),
        Some(Versioned {
            value: Bytes::from_static(b"one"),
            revision: r1
        })
    );
    conflict(
        s.kv_put(
            &key,
            Bytes::from_static(b"x"),
            &PutOptions::mode(PutMode::Create),
        )
        .await,
        "create over an existing key",
    );
    conflict(
        s.kv_put(
            &key,
            Bytes::from_static(b"x"),
            &PutOptions::mode(PutMode::IfRevision(r1 + 1000)),
        )
        .await,
        "wrong revision",
    );
    let r2 = s
        .kv_put(
            &key,
            Bytes::from_static(b"two"),
            &PutOptions::mode(PutMode::IfRevision(r1)),
        )
        .await
        .expect("put at the right revision");
    assert!(r2 > r1);
    conflict(
        s.kv_put(
            &key,
            Bytes::from_static(b"x"),
            &PutOptions::mode(PutMode::IfRevision(r1)),
        )
        .await,
        "a revision that moved on",
    );
    assert_eq!(
        s.kv_get(&key).await.expect("get").map(|v| v.value),
        Some(Bytes::from_static(b"two"))
    );
    conflict(
        s.kv_delete(&key, PutMode::IfRevision(r1)).await,
        "delete at an old revision",
    );
    assert!(matches!(
        s.kv_delete(&key, PutMode::Create).await,
        Err(ScalerError::InvalidArgument(_))
    ));
    assert!(
        s.kv_delete(&key, PutMode::IfRevision(r2))
            .await
            .expect("delete")
    );
    assert_eq!(s.kv_get(&key).await.expect("get"), None);
    assert!(
        !s.kv_delete(&key, PutMode::Any)
            .await
            .expect("delete absent")
    );
    conflict(
        s.kv_put(
            &key,
            Bytes::from_static(b"x"),
            &PutOptions::mode(PutMode::IfRevision(r2)),
        )
        .await,
        "IfRevision on a deleted key",
    );
    let r3 = s
        .kv_put(
            &key,
            Bytes::from_static(b"three"),
            &PutOptions::mode(PutMode::Create),
        )
        .await
        .expect("create after delete");
    assert!(r3 > r2, "revisions grow across a delete ({r3} > {r2})");
    assert!(s.kv_delete(&key, PutMode::Any).await.expect("delete"));
}

/// Of 8 concurrent create-only puts on 2 handles exactly one wins; the others
/// get `Conflict`.
pub async fn kv_create_has_one_winner(backend: &dyn TestBackend) {
    let handles = [backend.connect().await, backend.connect().await];
    let key = Arc::new(unique("create"));
    let mut tasks = Vec::new();
    for n in 0..8u8 {
        let s = handles[usize::from(n % 2)].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            s.kv_put(
                &key,
                Bytes::from(vec![n]),
                &PutOptions::mode(PutMode::Create),
            )
            .await
            .map(|rev| (n, rev))
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(win) => winners.push(win),
            Err(ScalerError::Conflict(_)) => {}
            Err(e) => panic!("create-only put failed: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    let (n, rev) = winners[0];
    assert_eq!(
        handles[0].kv_get(&key).await.expect("get"),
        Some(Versioned {
            value: Bytes::from(vec![n]),
            revision: rev
        }),
        "the winner's value is stored"
    );
}

/// Fenced writes: a lease's token is accepted, then a newer holder's token
/// raises the fence and the stale holder's writes and deletes are refused.
pub async fn kv_fenced_refuses_stale_tokens(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let lease_key = unique("core");
    let key = unique("snapshot");
    let old = match s
        .acquire_lease(&lease_key, "a", Duration::from_millis(500))
        .await
        .expect("acquire")
    {
        LeaseOutcome::Acquired { token } => token,
        other => panic!("acquire: {other:?}"),
    };
    let r1 = s
        .kv_put(
            &key,
            Bytes::from_static(b"a1"),
            &PutOptions::mode(PutMode::Fenced(old)),
        )
        .await
        .expect("first fenced write");
    sleep(Duration::from_millis(1200)).await;
    let new = match s
        .acquire_lease(&lease_key, "b", Duration::from_secs(30))
        .await
        .expect("acquire")
    {
        LeaseOutcome::Acquired { token } => token,
        other => panic!("acquire: {other:?}"),
    };
    assert!(new > old);
    let r2 = s
        .kv_put(
            &key,
            Bytes::from_static(b"b1"),
            &PutOptions::mode(PutMode::Fenced(new)),
        )
        .await
        .expect("the new holder writes");
    assert!(r2 > r1);
    conflict(
        s.kv_put(
            &key,
            Bytes::from_static(b"a2"),
            &PutOptions::mode(PutMode::Fenced(old)),
        )
        .await,
        "the stale holder's write",
    );
    conflict(
        s.kv_delete(&key, PutMode::Fenced(old)).await,
        "the stale holder's delete",
    );
    // An unconditional put keeps the fence.
    s.kv_put(&key, Bytes::from_static(b"admin"), &PutOptions::default())
        .await
        .expect("any");
    conflict(
        s.kv_put(
            &key,
            Bytes::from_static(b"a3"),
            &PutOptions::mode(PutMode::Fenced(old)),
        )
        .await,
        "the fence survives an unconditional put",
    );
    let r3 = s
        .kv_put(
            &key,
            Bytes::from_static(b"b2"),
            &PutOptions::mode(PutMode::Fenced(new)),
        )
        .await
        .expect("same token again");
    assert_eq!(
        s.kv_get(&key)
            .await
            .expect("get")
            .map(|v| (v.value, v.revision)),
        Some((Bytes::from_static(b"b2"), r3))
    );
    assert!(
        s.kv_delete(&key, PutMode::Fenced(new))
            .await
            .expect("fenced delete")
    );
    assert!(
        !s.kv_delete(&key, PutMode::Fenced(new))
            .await
            .expect("fenced delete of nothing")
    );
}

/// Entries with a TTL vanish from get and list after it; a put replaces the TTL.
pub async fn kv_entries_expire(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let prefix = unique("ttl");
    let short = PutOptions::default().with_ttl(Duration::from_secs(1));
    s.kv_put(&format!("{prefix}/a"), Bytes::from_static(b"a"), &short)
        .await
        .expect("put a");
    s.kv_put(
        &format!("{prefix}/b"),
        Bytes::from_static(b"b"),
        &PutOptions::default(),
    )
    .await
    .expect("put b");
    let kept = s
        .kv_put(&format!("{prefix}/c"), Bytes::from_static(b"c"), &short)
        .await
        .expect("put c");
    let kept = s
        .kv_put(
            &format!("{prefix}/c"),
            Bytes::from_static(b"c2"),
            &PutOptions::mode(PutMode::IfRevision(kept)).with_ttl(Duration::from_secs(30)),
        )
        .await
        .expect("renew c");
    assert_eq!(s.kv_list(&prefix).await.expect("list").len(), 3);
    sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        s.kv_get(&format!("{prefix}/a")).await.expect("get"),
        None,
        "expired"
    );
    let listed: Vec<String> = s
        .kv_list(&prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, vec![format!("{prefix}/b"), format!("{prefix}/c")]);
    assert_eq!(
        s.kv_get(&format!("{prefix}/c"))
            .await
            .expect("get")
            .map(|v| v.revision),
        Some(kept)
    );
    let again = s
        .kv_put(
            &format!("{prefix}/a"),
            Bytes::from_static(b"a2"),
            &PutOptions::mode(PutMode::Create),
        )
        .await
        .expect("create over an expired key");
    assert!(again > 0);
}

/// Listing returns exactly the live keys under a prefix, sorted, with values
/// and revisions.
pub async fn kv_list_by_prefix(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let base = unique("list");
    let mut want = Vec::new();
    for name in ["b", "a", "c/d", "a.b", "a b", "é"] {
        let key = format!("{base}/{name}");
        let rev = s
            .kv_put(&key, Bytes::from(name.to_owned()), &PutOptions::default())
            .await
            .expect("put");
        want.push((
            key,
            Versioned {
                value: Bytes::from(name.to_owned()),
                revision: rev,
            },
        ));
    }
    s.kv_put(
        &format!("{base}-other"),
        Bytes::from_static(b"no"),
        &PutOptions::default(),
    )
    .await
    .expect("put");
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(s.kv_list(&format!("{base}/")).await.expect("list"), want);
    let under_a: Vec<String> = s
        .kv_list(&format!("{base}/a"))
        .await
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        under_a,
        vec![
            format!("{base}/a"),
            format!("{base}/a b"),
            format!("{base}/a.b")
        ]
    );
    assert!(
        s.kv_delete(&format!("{base}/b"), PutMode::Any)
            .await
            .expect("delete")
    );
    assert_eq!(
        s.kv_list(&format!("{base}/")).await.expect("list").len(),
        want.len() - 1
    );
    assert!(
        s.kv_list(&unique("nothing"))
            .await
            .expect("list")
            .is_empty()
    );
}

/// The session helpers round-trip over the key-value family (`session/<id>`):
/// stored, replaced, expired, deleted.
pub async fn sessions_expire(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let id = unique("sess");
    assert_eq!(s.session_get(&id).await.expect("get"), None);
    s.session_put(&id, Bytes::from_static(b"one"), Duration::from_secs(30))
        .await
        .expect("put");
    assert_eq!(
        s.kv_get(&format!("session/{id}"))
            .await
            .expect("kv get")
            .map(|v| v.value),
        Some(Bytes::from_static(b"one")),
        "sessions live under session/"
    );
    s.session_put(&id, Bytes::from_static(b"two"), Duration::from_secs(1))
        .await
        .expect("put");
    assert_eq!(
        s.session_get(&id).await.expect("get"),
        Some(Bytes::from_static(b"two"))
    );
    sleep(Duration::from_millis(2200)).await;
    assert_eq!(s.session_get(&id).await.expect("get"), None, "expired");
    s.session_put(&id, Bytes::from_static(b"three"), Duration::from_secs(30))
        .await
        .expect("put");
    s.session_delete(&id).await.expect("delete");
    assert_eq!(s.session_get(&id).await.expect("get"), None);
    s.session_delete(&id)
        .await
        .expect("deleting nothing is fine");
}
