//! Fenced leases: exclusivity, owner checks, tokens that only grow.

use crate::{TestBackend, unique};
use scaled_sockets_scaler::{Lease, LeaseOutcome};
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::time::sleep;

fn token(outcome: &LeaseOutcome) -> u64 {
    match outcome {
        LeaseOutcome::Acquired { token } => *token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Of many contending owners exactly one gets a lease; only the owner with its
/// token renews or releases it; the owner re-acquiring keeps its token; an
/// expired lease can be taken by another, with a larger token.
pub async fn lease_exclusive_under_contention(backend: &dyn TestBackend) {
    let key = Arc::new(unique("core"));
    let mut tasks = Vec::new();
    for n in 0..16 {
        let s = backend.connect().await;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("owner-{n}");
            let outcome = s
                .acquire_lease(&key, &owner, Duration::from_secs(2))
                .await
                .expect("acquire");
            (owner, outcome)
        }));
    }
    let mut winners = Vec::new();
    let mut held_by = HashSet::new();
    for t in tasks {
        match t.await.expect("task") {
            (owner, LeaseOutcome::Acquired { token }) => winners.push((owner, token)),
            (_, LeaseOutcome::HeldBy { owner, token }) => {
                held_by.insert((owner, token));
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner, got {winners:?}");
    let (winner, won) = winners[0].clone();
    assert!(
        held_by.iter().all(|h| *h == (winner.clone(), won)),
        "losers see the winner and its token: {held_by:?}"
    );
    let s = backend.connect().await;
    let lease = Lease {
        owner: winner.clone(),
        token: won,
    };
    assert_eq!(s.lease(&key).await.expect("lease"), Some(lease.clone()));
    let ttl = Duration::from_secs(2);
    assert!(
        !s.renew_lease(&key, "intruder", won, ttl)
            .await
            .expect("renew")
    );
    assert!(
        !s.release_lease(&key, "intruder", won)
            .await
            .expect("release")
    );
    assert!(
        !s.renew_lease(&key, &winner, won + 1, ttl)
            .await
            .expect("renew"),
        "a wrong token is refused"
    );
    assert!(
        s.renew_lease(&key, &winner, won, Duration::from_secs(1))
            .await
            .expect("renew")
    );
    assert_eq!(
        s.acquire_lease(&key, &winner, Duration::from_secs(1))
            .await
            .expect("reacquire"),
        LeaseOutcome::Acquired { token: won },
        "the owner re-acquiring renews and keeps its token"
    );
    let listed = s.leases(&key).await.expect("leases");
    assert_eq!(listed, vec![(key.to_string(), lease)]);
    sleep(Duration::from_millis(2000)).await;
    assert_eq!(s.lease(&key).await.expect("lease"), None, "expired");
    assert!(s.leases(&key).await.expect("leases").is_empty());
    let late = token(
        &s.acquire_lease(&key, "late", Duration::from_secs(5))
            .await
            .expect("acquire"),
    );
    assert!(
        late > won,
        "a new tenure has a larger token ({late} > {won})"
    );
    assert!(s.release_lease(&key, "late", late).await.expect("release"));
    assert_eq!(s.lease(&key).await.expect("lease"), None);
}

/// Tokens grow across acquire -> expire -> acquire by another owner and across
/// release -> acquire; a stale holder (older token, even under the same owner
/// name) can neither renew nor release.
pub async fn fencing_tokens_only_grow(backend: &dyn TestBackend) {
    let s = backend.connect().await;
    let key = unique("fence");
    let short = Duration::from_millis(600);
    let t1 = token(&s.acquire_lease(&key, "a", short).await.expect("acquire a"));
    sleep(Duration::from_millis(1500)).await;
    let t2 = token(
        &s.acquire_lease(&key, "b", Duration::from_secs(30))
            .await
            .expect("acquire b"),
    );
    assert!(t2 > t1, "expire then acquire by another: {t2} > {t1}");
    assert!(
        !s.renew_lease(&key, "a", t1, short)
            .await
            .expect("stale renew"),
        "the expired holder cannot renew"
    );
    assert!(!s.release_lease(&key, "a", t1).await.expect("stale release"));
    assert!(s.release_lease(&key, "b", t2).await.expect("release b"));
    let t3 = token(
        &s.acquire_lease(&key, "a", Duration::from_secs(30))
            .await
            .expect("acquire a"),
    );
    assert!(t3 > t2, "release then acquire: {t3} > {t2}");
    assert!(
        !s.renew_lease(&key, "a", t1, short).await.expect("renew"),
        "same owner name with its old token is stale"
    );
    assert!(!s.release_lease(&key, "a", t1).await.expect("release"));
    assert_eq!(
        s.lease(&key).await.expect("lease"),
        Some(Lease {
            owner: "a".into(),
            token: t3
        }),
        "refused calls changed nothing"
    );
    assert!(s.release_lease(&key, "a", t3).await.expect("release"));
    assert!(
        !s.release_lease(&key, "a", t3).await.expect("release twice"),
        "releasing twice answers false"
    );
    let t4 = token(
        &s.acquire_lease(&key, "c", Duration::from_secs(30))
            .await
            .expect("acquire c"),
    );
    assert!(t4 > t3);
    assert!(s.release_lease(&key, "c", t4).await.expect("release c"));
}
