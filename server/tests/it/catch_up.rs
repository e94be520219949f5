//! Catch-up reads (PROTOCOL.md 7.4): when the broker resyncs, every session of the node
//! reads what it missed from the store, and the node reads for many sessions in one
//! query, so a node holding many connections does not queue one read per session on
//! its pool.

use std::time::Duration;

use serde_json::json;

use crate::cluster::{Cluster, until_ready};
use crate::hostile_broker::{publish, redis, store_ops, store_unpublished};

/// 300 sessions, 60 of which missed notifications (stored behind the broker's back,
/// two for some): after one resync announcement each of those gets exactly what it
/// missed, in order, the others get nothing, and the node read the store for all
/// 300 in a few queries rather than 300.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_reads_for_many_sessions_in_a_few_queries() {
    const SESSIONS: usize = 300;
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let node = &c.nodes[0];
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        clients.push(node.connect(&format!("cu{i}")).await.0);
    }
    let mut missed: Vec<Vec<i64>> = vec![Vec::new(); SESSIONS];
    for i in (0..SESSIONS).step_by(5) {
        missed[i].push(store_unpublished(&c, &format!("cu{i}")).await);
        if i % 2 == 0 {
            missed[i].push(store_unpublished(&c, &format!("cu{i}")).await);
        }
    }
    let many_before = store_ops(node, "after_many").await;

    let mut con = redis().await;
    publish(&mut con, &format!("{}:resync", c.prefix), "node-x").await;

    for (client, want) in clients.iter_mut().zip(&missed) {
        let mut got = Vec::new();
        while got.len() < want.len() {
            match tokio::time::timeout(Duration::from_secs(10), client.frame()).await {
                Ok(herald_shared::ServerFrame::Notification { notification }) => {
                    let message: serde_json::Value =
                        serde_json::from_str(notification.message.get()).unwrap();
                    assert_eq!(message, json!({"lost": true}));
                    got.push(notification.id);
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => panic!("stalled: got {got:?} of {want:?}"),
            }
        }
        assert_eq!(&got, want, "what the session missed, once and in order");
    }
    for client in &mut clients {
        client.silent_for(Duration::from_millis(20)).await;
    }
    let many = store_ops(node, "after_many").await - many_before;
    assert!(
        (1.0..=20.0).contains(&many),
        "{many} store queries for the catch-up of {SESSIONS} sessions"
    );
}
