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

/// The cross-node order lock is taken before the publish draws its id: while another
/// session of the database holds user 42's lock, a publish to 42 waits without
/// drawing an id, others go through, and once the lock is let go the waiting one gets
/// an id after theirs. (With one flusher, the test nodes' default, 43 would wait
/// behind 42: a node's publish groups wait for each other.) The key is the one every node computes, FNV-1a of the user id
/// (pinned here: nodes of two versions must agree on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_draws_its_id_only_under_the_users_order_lock() {
    let mut c = Cluster::start(0).await;
    // A pool of 16: four publish groups at a time, so 43's need not wait behind 42's.
    c.add_with(&["--db-pool", "16"]).await;
    let c = Arc::new(c);
    until_ready(&c.nodes).await;
    let fnv1a = |s: &str| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) as i64
    };
    let pool = sqlx::PgPool::connect(&c.storage.url).await.unwrap();
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(fnv1a("42"))
        .execute(&mut *holder)
        .await
        .unwrap();
    let issued = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence('notifications', 'id'))",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = issued().await;

    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.nodes[0].notify("42", json!("behind the lock")).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "the publish to 42 ignored its lock");
    assert_eq!(
        issued().await,
        before,
        "an id was drawn before the lock was held"
    );
    let other = c.nodes[0].notify("43", json!("free")).await;

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(fnv1a("42"))
        .execute(&mut *holder)
        .await
        .unwrap();
    let behind = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the publish went on once the lock was free")
        .unwrap();
    assert!(
        behind.id > other.id,
        "42's id ({}) was drawn before 43's ({}), while it waited for the lock",
        behind.id,
        other.id
    );
}
