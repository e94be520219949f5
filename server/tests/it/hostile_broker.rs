//! Redis is input, not a trusted source of frames (PROTOCOL.md 7.3): a publisher that
//! is not a Herald node, on the very channels a node subscribes to, while the node
//! keeps serving.

use std::time::Duration;

use herald_shared::ServerFrame;
use serde_json::json;

use crate::cluster::{Cluster, REDIS, until_ready};
use crate::common::Client;

/// A command connection to the shared Redis, for the hostile publisher.
async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be running on 127.0.0.1:6379 (see .ci/run)")
}

async fn publish(con: &mut redis::aio::MultiplexedConnection, channel: &str, payload: impl AsRef<[u8]>) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload.as_ref())
        .query_async(con)
        .await
        .unwrap();
}

/// A notification frame as a node would put it on Redis, with the header's `id`.
fn forged_notification(id: i64, user: &str) -> String {
    let frame = json!({"type": "notification", "notification": {
        "id": id, "user": user, "message": {"forged": true},
        "created_at": "2026-01-01T00:00:00.000Z", "read": false}});
    format!("{}\n{frame}", json!({"t": 1, "id": id, "u": user}))
}

/// Stores a notification for `user` behind the broker's back (as if its publish
/// had been lost), returning its id.
async fn store_unpublished(c: &Cluster, user: &str) -> i64 {
    let url = &c.storage.pg.as_ref().expect("a cluster runs on PostgreSQL").url;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO notifications (user_id, message) VALUES ($1, '{\"lost\":true}') RETURNING id",
    )
    .bind(user)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    id
}

/// Reads frames until a notification with `id` arrives (within `wait`); returns
/// the ids of every notification read, `id` last. Panics if it never comes.
async fn until_notification(client: &mut Client, id: i64, wait: Duration) -> Vec<i64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, client.frame()).await {
            Ok(ServerFrame::Notification { notification }) => {
                got.push(notification.id);
                if notification.id == id {
                    return got;
                }
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("notification {id} never arrived; got {got:?}"),
        }
    }
}

/// The harm of a forged id, black-box: a header claiming id 2^63-1 for user 42
/// reached the session, whose catch-up baseline then started past every id the
/// store will ever issue, so a notification stored while its publish was lost was
/// never caught up after the next resync. (The forged frame itself also reached the
/// client.) The node must drop the forgery; the catch-up then delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_id_does_not_blind_the_catch_up() {
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let (mut client, _) = c.nodes[0].connect("42").await;
    let mut con = redis().await;
    let group = format!("{}:g:user_42", c.prefix);
    publish(&mut con, &group, forged_notification(i64::MAX, "42")).await;
    let live = c.nodes[0].notify("42", json!({"live": 1})).await.id;
    let lost = store_unpublished(&c, "42").await;
    // Any node may announce a resync (its publishes failed): every session catches up.
    publish(&mut con, &format!("{}:resync", c.prefix), "node-x").await;
    let got = until_notification(&mut client, lost, Duration::from_secs(8)).await;
    assert_eq!(got, [live, lost], "the forged frame was delivered");
    client.silent_for(Duration::from_millis(300)).await;
}
