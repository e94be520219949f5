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
