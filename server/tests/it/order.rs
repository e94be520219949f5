//! Contract §3 across a cluster: a user's notifications arrive in id order even when
//! several nodes publish to that user at the same time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::cluster::{Cluster, until_ready};

/// Three nodes publish to one user concurrently; clients on every node receive all
/// of them once, each in strictly increasing id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_several_nodes_keep_id_order() {
    let c = Arc::new(Cluster::start(3).await);
    until_ready(&c.nodes).await;
    let mut clients = Vec::new();
    for s in &c.nodes {
        clients.push(s.connect("42").await.0);
    }
    const PER_NODE: usize = 40;
    let publishers: Vec<_> = (0..3)
        .map(|n| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..PER_NODE {
                    c.nodes[n].notify("42", json!({"n": n, "i": i})).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for cl in &mut clients {
        let ids: Vec<i64> = cl
            .notifications(3 * PER_NODE)
            .await
            .iter()
            .map(|n| n.id)
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
        cl.silent_for(Duration::from_millis(200)).await;
    }
}

/// A burst of concurrent publishes to different users in cluster mode (each one
/// under the cross-node order lock) succeeds with a small database pool: one pooled
/// connection per publish, no starvation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_burst_does_not_starve_the_pool() {
    let c = Arc::new(Cluster::start(1).await);
    until_ready(&c.nodes).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                crate::common::api()
                    .post(c.nodes[0].http("/api/v1/notifications"))
                    .bearer_auth(crate::common::API_KEY)
                    .json(&json!({"user": format!("burst{i}"), "message": i}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 201),
        "not all 201: {statuses:?}"
    );
}
