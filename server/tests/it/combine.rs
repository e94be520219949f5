//! Write combining (PROTOCOL.md 4, "Concurrent publishes"): concurrent single POSTs
//! share transactions, and still each get their own answer, are delivered exactly
//! once in per-user id order, and fail whole, never half.
//!
//! To make a group certain rather than likely, some tests hold the store's write
//! lock from a connection of their own (SQLite `BEGIN IMMEDIATE`, PostgreSQL
//! `LOCK TABLE`): the node's flusher waits on it, the requests sent meanwhile queue,
//! and when the lock goes they are stored as one group.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::both_stores;
use crate::cluster::{Cluster, until_ready};
use crate::common::{API_KEY, Client, Db, TestServer, post_notification, start};

both_stores!(
    concurrent_single_posts_are_delivered_once_in_order,
    a_request_the_store_refuses_fails_alone,
);

/// One POST to the node at `base` (`http://host:port`): the status, and the body.
async fn post(base: &str, user: &str, message: Value) -> (u16, Value) {
    post_notification(
        format!("{base}/api/v1/notifications"),
        API_KEY,
        user,
        message,
    )
    .await
}

/// The base URL of a node's public listener.
fn base(node: &TestServer) -> String {
    node.http("")
}

/// Sends `messages` (user, message) as concurrent single POSTs spread over the
/// nodes at `bases`, in turn.
async fn post_all(bases: &[String], messages: Vec<(String, Value)>) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = messages
        .into_iter()
        .enumerate()
        .map(|(i, (user, message))| {
            let base = bases[i % bases.len()].clone();
            tokio::spawn(async move { post(&base, &user, message).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Every answered notification carries the user and message its request sent, and
/// each user's client receives exactly the answered ids, in increasing order.
async fn check_answers_and_delivery(
    sent: &[(String, Value)],
    answers: &[(u16, Value)],
    clients: &mut BTreeMap<String, Vec<Client>>,
) {
    let mut answered: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for ((user, message), (status, n)) in sent.iter().zip(answers) {
        assert_eq!(*status, 201, "{n}");
        assert_eq!(n["user"], json!(user), "an answer for another request: {n}");
        assert_eq!(&n["message"], message, "an answer for another request: {n}");
        answered
            .entry(user.clone())
            .or_default()
            .push(n["id"].as_i64().unwrap());
    }
    for (user, ids) in &mut answered {
        ids.sort_unstable();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids repeat: {ids:?}");
        for client in clients.get_mut(user).unwrap() {
            let got: Vec<i64> = client
                .notifications(ids.len())
                .await
                .iter()
                .map(|n| n.id)
                .collect();
            assert_eq!(&got, ids, "user {user}: not the answered ids in order");
            client.silent_for(Duration::from_millis(200)).await;
        }
    }
}

/// How many groups of more than `bound` requests the node has stored, from the
/// `herald_publish_group_requests` histogram (`bound` must be one of its buckets).
async fn groups_larger_than(node: &TestServer, bound: f64) -> f64 {
    let text = node.metrics_text().await;
    let count = crate::common::metric_in(&text, "herald_publish_group_requests_count", &[]);
    let within = crate::common::metric_in(
        &text,
        "herald_publish_group_requests_bucket",
        &[("le", &format!("{bound:.1}"))],
    );
    count - within
}

/// 400 concurrent single POSTs for 8 users (the same users posted to at once, and
/// different ones) are combined into shared transactions and delivered exactly once,
/// in each user's id order, with the ids the API answered.
async fn concurrent_single_posts_are_delivered_once_in_order(db: Db) {
    let node = start(db).await;
    let users: Vec<String> = (0..8).map(|u| format!("comb{u}")).collect();
    let mut clients: BTreeMap<String, Vec<Client>> = BTreeMap::new();
    for u in &users {
        clients
            .entry(u.clone())
            .or_default()
            .push(node.connect(u).await.0);
    }
    let sent: Vec<(String, Value)> = (0..400)
        .map(|i| (users[i % users.len()].clone(), json!({"i": i})))
        .collect();
    let answers = post_all(&[base(&node)], sent.clone()).await;
    check_answers_and_delivery(&sent, &answers, &mut clients).await;
    assert!(
        groups_larger_than(&node, 1.0).await >= 1.0,
        "no two of 400 concurrent POSTs shared a transaction"
    );
}

/// Three nodes on one PostgreSQL, each combining the POSTs it gets: clients of the
/// same users on every node receive every notification once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_posts_keep_per_user_order_across_three_nodes() {
    let c = Cluster::start(3).await;
    until_ready(&c.nodes).await;
    let users: Vec<String> = (0..4).map(|u| format!("ccomb{u}")).collect();
    let mut clients: BTreeMap<String, Vec<Client>> = BTreeMap::new();
    for u in &users {
        for node in &c.nodes {
            clients
                .entry(u.clone())
                .or_default()
                .push(node.connect(u).await.0);
        }
    }
    let targets: Vec<String> = c.nodes.iter().map(base).collect();
    let sent: Vec<(String, Value)> = (0..300)
        .map(|i| (users[i % users.len()].clone(), json!({"i": i})))
        .collect();
    let answers = post_all(&targets, sent.clone()).await;
    check_answers_and_delivery(&sent, &answers, &mut clients).await;
    let mut combined = 0.0;
    for n in &c.nodes {
        combined += groups_larger_than(n, 1.0).await;
    }
    assert!(combined >= 1.0, "no node combined any POSTs");
}

/// Holds the store's write lock until dropped (see the module doc).
enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WriteLock {
    async fn take(node: &TestServer) -> Self {
        let url = &node.storage.url;
        if url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .unwrap();
            Self::Sqlite(c)
        } else {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            sqlx::query("LOCK TABLE notifications IN EXCLUSIVE MODE")
                .execute(&mut c)
                .await
                .unwrap();
            Self::Postgres(c)
        }
    }

    async fn release(self) {
        match self {
            Self::Sqlite(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(drop),
            Self::Postgres(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(drop),
        }
        .unwrap();
    }
}

/// Makes the store refuse any notification whose message contains `word`, with
/// PostgreSQL's SQLSTATE `code` (SQLite: a trigger's ABORT).
async fn refuse_messages_with(node: &TestServer, word: &str, code: &str) {
    let url = &node.storage.url;
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        let sql = format!(
            "CREATE TRIGGER refuse_{word} BEFORE INSERT ON notifications \
             WHEN NEW.message LIKE '%{word}%' BEGIN SELECT RAISE(ABORT, 'refused: {word}'); END"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let function = format!(
            "CREATE FUNCTION refuse_{word}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.message::text LIKE '%{word}%' THEN \
             RAISE EXCEPTION 'refused: {word}' USING ERRCODE = '{code}'; END IF; \
             RETURN NEW; END $$"
        );
        let trigger = format!(
            "CREATE TRIGGER refuse_{word} BEFORE INSERT ON notifications \
             FOR EACH ROW EXECUTE FUNCTION refuse_{word}()"
        );
        for sql in [function, trigger] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

/// Sends one POST, waits until it holds the flusher (test nodes have one: their
/// pool of 4 gives PostgreSQL one flusher, as SQLite always has), then `group`
/// concurrently, and only then lets the store write: the group is stored as one
/// transaction (checked through the group-size metric). Returns the first POST's
/// outcome and the group's.
async fn post_as_one_group(
    node: &TestServer,
    user: &str,
    group: Vec<Value>,
) -> (Vec<(u16, Value)>, Vec<(u16, Value)>) {
    let lock = WriteLock::take(node).await;
    let blockers = vec![(user.to_owned(), json!({"blocker": 0}))];
    let nodes = [base(node)];
    let first = {
        let nodes = nodes.clone();
        tokio::spawn(async move { post_all(&nodes, blockers).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent: Vec<(String, Value)> = group.into_iter().map(|m| (user.to_owned(), m)).collect();
    let rest = tokio::spawn(async move { post_all(&nodes, sent).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.release().await;
    let (first, rest) = (first.await.unwrap(), rest.await.unwrap());
    assert!(
        groups_larger_than(node, 20.0).await >= 1.0,
        "the 30 requests were not stored as one group"
    );
    (first, rest)
}

/// The user's stored notifications, through the API listing (newest first).
async fn stored_messages(node: &TestServer, user: &str) -> Vec<Value> {
    let page = node
        .api_get(&format!("/api/v1/users/{user}/notifications?limit=100"))
        .await;
    page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["message"].clone())
        .collect()
}

/// One request of a combined group that the store refuses (here a trigger) fails
/// alone with 500: the group is stored again request by request, so the other 29
/// are stored, answered 201 and delivered once, and the refused one is nowhere.
async fn a_request_the_store_refuses_fails_alone(db: Db) {
    let node = start(db).await;
    refuse_messages_with(&node, "poison", "P0001").await;
    let (mut client, _) = node.connect("grp").await;
    let group: Vec<Value> = (0..30)
        .map(|i| {
            if i == 17 {
                json!({"i": i, "poison": true})
            } else {
                json!({"i": i})
            }
        })
        .collect();
    let (first, rest) = post_as_one_group(&node, "grp", group.clone()).await;
    assert!(first.iter().all(|(s, _)| *s == 201), "{first:?}");
    for (i, (status, body)) in rest.iter().enumerate() {
        if i == 17 {
            assert_eq!(*status, 500, "the refused request: {body}");
        } else {
            assert_eq!(*status, 201, "request {i}, beside the refused one: {body}");
        }
    }
    let mut answered: Vec<i64> = first
        .iter()
        .chain(&rest)
        .filter(|(s, _)| *s == 201)
        .map(|(_, n)| n["id"].as_i64().unwrap())
        .collect();
    answered.sort_unstable();
    let got: Vec<i64> = client
        .notifications(answered.len())
        .await
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(
        got, answered,
        "not every stored notification, once, in order"
    );
    client.silent_for(Duration::from_millis(300)).await;
    let stored = stored_messages(&node, "grp").await;
    assert_eq!(stored.len(), 30, "{stored:?}");
    assert!(!stored.contains(&group[17]), "the refused one was stored");
}

/// A combined group that fails as an outage (the store's SQLSTATE 57P01, "admin
/// shutdown", raised mid-insert by a trigger on one row) fails every request of the
/// group with 503, and none of the group is stored or delivered: all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_group_fails_every_request_and_writes_nothing() {
    let node = start(Db::Postgres).await;
    refuse_messages_with(&node, "outage", "57P01").await;
    let (mut client, _) = node.connect("out").await;
    let group: Vec<Value> = (0..30)
        .map(|i| {
            if i == 25 {
                json!({"i": i, "outage": true})
            } else {
                json!({"i": i})
            }
        })
        .collect();
    let (first, rest) = post_as_one_group(&node, "out", group).await;
    assert!(first.iter().all(|(s, _)| *s == 201), "{first:?}");
    for (i, (status, body)) in rest.iter().enumerate() {
        assert_eq!(*status, 503, "request {i} of the failed group: {body}");
        assert_eq!(
            body["error"],
            json!("store unavailable; nothing was written")
        );
    }
    let got = client.notifications(first.len()).await;
    assert!(got.iter().all(|n| n.message.get().contains("blocker")));
    client.silent_for(Duration::from_millis(300)).await;
    let stored = stored_messages(&node, "out").await;
    assert_eq!(
        stored.len(),
        first.len(),
        "part of the failed group was stored: {stored:?}"
    );
    // The node still stores what the store accepts.
    let (status, _) = post(&base(&node), "out", json!({"fine": 1})).await;
    assert_eq!(status, 201);
}
