//! Contract §3, the connect seam: a notification created while a client connects,
//! or while its opening frames are sent, reaches it exactly once and in id order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use herald_shared::ServerFrame;
use serde_json::json;

use crate::both_stores;
use crate::common::{Client, Db, TestServer, start};

both_stores!(
    resume_from_zero_under_concurrent_publishing_is_gapless,
    fresh_connects_under_concurrent_publishing_miss_nothing_new
);

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 100;
const CLIENTS: usize = 8;

/// Publishes PUBLISHERS x PER_PUBLISHER notifications to user 42 concurrently.
fn publish_concurrently(s: &Arc<TestServer>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..PUBLISHERS)
        .map(|p| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    s.notify("42", json!({"p": p, "i": i})).await;
                }
            })
        })
        .collect()
}

/// Reads live notifications until id `last` arrives (none if the opening frames
/// already went up to `seen`); returns their ids in order.
async fn live_until(c: &mut Client, last: i64, seen: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    while ids.last().copied().unwrap_or(seen) < last {
        let next = tokio::time::timeout(Duration::from_secs(5), c.frame())
            .await
            .unwrap_or_else(|_| panic!("live frames stopped before id {last}: got {ids:?}"));
        match next {
            ServerFrame::Notification { notification } => ids.push(notification.id),
            other => panic!("unexpected {other:?}"),
        }
    }
    ids
}

/// Clients resuming from 0 while four publishers run: missed + live is every id of
/// the user, each once, live strictly increasing.
async fn resume_from_zero_under_concurrent_publishing_is_gapless(db: Db) {
    let s = Arc::new(start(db).await);
    let publishers = publish_concurrently(&s);
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        tokio::time::sleep(Duration::from_millis(5 * k as u64)).await;
        let token = s.token("42", &[], 600);
        let mut c = Client::connect(&s.ws_url(&format!("?token={token}&after=0")))
            .await
            .unwrap();
        assert!(matches!(c.frame().await, ServerFrame::Welcome { .. }));
        assert!(matches!(c.frame().await, ServerFrame::InitialState { .. }));
        let missed = match c.frame().await {
            ServerFrame::Missed { notifications, .. } => {
                notifications.iter().map(|n| n.id).collect::<Vec<_>>()
            }
            other => panic!("expected missed, got {other:?}"),
        };
        clients.push((c, missed));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = (PUBLISHERS * PER_PUBLISHER) as i64;
    let mut exercised = 0;
    // Only user 42 is published to on this fresh store, so ids are 1..=total.
    for (mut c, missed) in clients {
        let seen = missed.last().copied().unwrap_or(0);
        let live = live_until(&mut c, total, seen).await;
        assert!(
            live.windows(2).all(|w| w[0] < w[1]),
            "live in id order: {live:?}"
        );
        let mut all = missed.clone();
        all.extend(&live);
        let unique: HashSet<i64> = all.iter().copied().collect();
        assert_eq!(
            unique.len(),
            all.len(),
            "no duplicate across missed and live"
        );
        assert_eq!(all, (1..=total).collect::<Vec<_>>(), "no gap");
        if !missed.is_empty() && !live.is_empty() {
            exercised += 1;
        }
        c.silent_for(Duration::from_millis(200)).await;
    }
    assert!(
        exercised > 0,
        "no client connected mid-stream: the seam was not exercised"
    );
}

/// Clients connecting without `after` while publishers run: live frames never repeat
/// `initial_state`, come in id order, and include every id newer than the snapshot.
async fn fresh_connects_under_concurrent_publishing_miss_nothing_new(db: Db) {
    let s = Arc::new(start(db).await);
    let publishers = publish_concurrently(&s);
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        tokio::time::sleep(Duration::from_millis(5 * k as u64)).await;
        let (c, initial) = s.connect("42").await;
        clients.push((c, initial.iter().map(|n| n.id).collect::<Vec<_>>()));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = (PUBLISHERS * PER_PUBLISHER) as i64;
    let mut exercised = 0;
    for (mut c, initial) in clients {
        let newest = initial.first().copied().unwrap_or(0);
        let live = live_until(&mut c, total, newest).await;
        assert!(live.windows(2).all(|w| w[0] < w[1]), "live in id order");
        let initial: HashSet<i64> = initial.into_iter().collect();
        assert!(
            live.iter().all(|id| !initial.contains(id)),
            "live repeats initial_state"
        );
        let live_set: HashSet<i64> = live.iter().copied().collect();
        assert!(
            (newest + 1..=total).all(|id| live_set.contains(&id)),
            "a newer id is missing"
        );
        if newest > 0 && !live.is_empty() {
            exercised += 1;
        }
    }
    assert!(
        exercised > 0,
        "no client connected mid-stream: the seam was not exercised"
    );
}
