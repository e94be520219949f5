//! Redis is input, not a trusted source of frames (PROTOCOL.md 7.3): a publisher that
//! is not a Herald node, on the very channels a node subscribes to, while the node
//! keeps serving.

use std::time::Duration;

use herald_shared::ServerFrame;
use herald_shared::dropped::DropReason;
use serde_json::json;

use crate::cluster::{Cluster, REDIS, receive_all, until_ready};
use crate::common::{Client, TestServer};

/// The shared key of the signed tests' nodes.
const KEY: &str = "test-broker-key-at-least-32-bytes-long";

/// A command connection to the shared Redis, for the hostile publisher.
pub(crate) async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must be running on 127.0.0.1:6379 (see .ci/run)")
}

pub(crate) async fn publish(
    con: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    payload: impl AsRef<[u8]>,
) {
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
pub(crate) async fn store_unpublished(c: &Cluster, user: &str) -> i64 {
    let url = &c
        .storage
        .pg
        .as_ref()
        .expect("a cluster runs on PostgreSQL")
        .url;
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

async fn dropped(s: &TestServer, reason: DropReason) -> f64 {
    s.metric(
        "herald_broker_dropped_total",
        &[("reason", reason.as_str())],
    )
    .await
}

pub(crate) async fn store_ops(s: &TestServer, op: &str) -> f64 {
    s.metric("herald_store_latency_seconds_count", &[("op", op)])
        .await
}

/// A Django (msgpack) message `{"type": "x", "v": <v>}`, `v` already encoded.
fn msgpack_with(v: &[u8]) -> Vec<u8> {
    let mut m = b"\x82\xa4type\xa1x\xa1v".to_vec();
    m.extend_from_slice(v);
    m
}

/// Every kind of bad message on the channels the node subscribes to (its group
/// channels, Django's, its probe, the resync channel), between real notifications
/// and while a client is connected: the client gets every real notification once,
/// in order, and nothing else; each bad message is counted under its reason; a
/// flood of resync announcements costs a couple of catch-ups, not one per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_publisher_is_dropped_while_the_node_keeps_serving() {
    use DropReason::*;
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let node = &c.nodes[0];
    let (mut client, _) = node.connect("42").await;
    let mut con = redis().await;
    let group = format!("{}:g:user_42", c.prefix);
    let django = format!("{}__group__user_42", c.asgi);
    let probe = format!("{}:probe:node0", c.prefix);
    let header = json!({"t": 1}).to_string();
    let deep = format!(
        "{header}\n{{\"a\":{}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let big = format!("{header}\n{{\"a\":\"{}\"}}", "x".repeat(100_000));
    let mut big_django = vec![0xdb];
    big_django.extend_from_slice(&20_000u32.to_be_bytes());
    big_django.extend(std::iter::repeat_n(b'a', 20_000));
    let mut deep_django = vec![0x91; 5000];
    deep_django.push(1);
    let hostile: Vec<(&str, Vec<u8>, DropReason)> = vec![
        (&group, b"plain text".to_vec(), Malformed),
        (
            &group,
            format!("{header}\nnot json").into_bytes(),
            Malformed,
        ),
        (
            &group,
            format!("{header}\n")
                .into_bytes()
                .into_iter()
                .chain(*b"\xff\xfe")
                .collect(),
            Malformed,
        ),
        (&group, b"[1]\n{}".to_vec(), Malformed),
        (&group, big.into_bytes(), Oversized),
        (&group, deep.into_bytes(), TooDeep),
        (
            &group,
            forged_notification(i64::MAX, "42").into_bytes(),
            ImplausibleId,
        ),
        (
            &group,
            forged_notification(1_000_000_000_000, "42").into_bytes(),
            ImplausibleId,
        ),
        (
            &group,
            forged_notification(0, "42").into_bytes(),
            ImplausibleId,
        ),
        (
            &group,
            forged_notification(-7, "42").into_bytes(),
            ImplausibleId,
        ),
        (&django, b"\xc1".to_vec(), Malformed),
        (
            &django,
            br#"{"type":"json, not msgpack"}"#.to_vec(),
            Malformed,
        ),
        (&django, msgpack_with(&big_django), Oversized),
        (&django, msgpack_with(&deep_django), TooDeep),
        (&probe, b"\x07not a time".to_vec(), Malformed),
    ];
    let (after_before, newest_before) = (
        store_ops(node, "after_many").await,
        store_ops(node, "newest_issued_id").await,
    );
    let resyncs_before = node.metric("herald_broker_resyncs_total", &[]).await;
    let mut sent = Vec::new();
    for (channel, payload, _) in &hostile {
        publish(&mut con, channel, payload).await;
        sent.push(node.notify("42", json!({"n": sent.len()})).await.id);
    }
    // A resync flood: a thousand announcements in one pipeline.
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("PUBLISH")
            .arg(format!("{}:resync", c.prefix))
            .arg(format!("node-{i}"))
            .ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    for _ in 0..3 {
        sent.push(node.notify("42", json!({"n": sent.len()})).await.id);
    }
    receive_all(&mut client, Vec::new(), &sent).await;
    // The flood's last resync runs up to a second after its first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.silent_for(Duration::from_millis(100)).await;

    for reason in DropReason::ALL {
        let want = hostile.iter().filter(|(_, _, r)| r == reason).count() as f64;
        let got = dropped(node, *reason).await;
        if *reason == ResyncCoalesced {
            assert!(got >= 990.0, "{got} of 1000 resync announcements folded");
        } else {
            assert_eq!(got, want, "dropped as {reason}");
        }
    }
    let resyncs = node.metric("herald_broker_resyncs_total", &[]).await - resyncs_before;
    assert!(
        (1.0..=4.0).contains(&resyncs),
        "{resyncs} resyncs for a flood of 1000"
    );
    let catch_ups = store_ops(node, "after_many").await - after_before;
    assert!(
        catch_ups <= 2.0 * resyncs,
        "{catch_ups} store reads for {resyncs} resyncs"
    );
    let checks = store_ops(node, "newest_issued_id").await - newest_before;
    assert!(
        checks <= 2.0,
        "{checks} queries of the store's newest id for 4 forged ids"
    );
    // Still serving, and healthy.
    assert_eq!(node.admin_get("/admin/status").await["redis"], "up");
}

/// With HERALD_BROKER_KEY, only what a node with the same key signed is delivered:
/// a forged notification with a plausible id, a bad signature and an unsigned resync
/// announcement are dropped (and counted), while signed notifications cross nodes.
/// A node without the key keeps working unsigned: it still delivers signed
/// messages, and its own unsigned ones are dropped (and counted) by keyed nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_only_signed_messages_are_delivered() {
    let mut c = Cluster::start(0).await;
    c.add_with(&["--broker-key", KEY]).await;
    c.add_with(&["--broker-key", KEY]).await;
    c.add().await;
    until_ready(&c.nodes).await;
    let (keyed, unkeyed) = (&c.nodes[1], &c.nodes[2]);
    let (mut a, _) = keyed.connect("42").await;
    let (mut b, _) = unkeyed.connect("42").await;
    let mut con = redis().await;

    let signed = c.nodes[0].notify("42", json!({"signed": true})).await.id;
    assert_eq!(a.notifications(1).await[0].id, signed);
    assert_eq!(
        b.notifications(1).await[0].id,
        signed,
        "an unkeyed node delivers signed messages"
    );
    drop(b);

    let resyncs_before = keyed.metric("herald_broker_resyncs_total", &[]).await;
    // From the unkeyed node: unsigned, so dropped by the keyed one.
    unkeyed.notify("42", json!({"unsigned": true})).await;
    let group = format!("{}:g:user_42", c.prefix);
    publish(&mut con, &group, forged_notification(signed, "42")).await;
    let bad = forged_notification(signed, "42").replacen(
        "\"u\":\"42\"",
        &format!("\"u\":\"42\",\"s\":\"{}\"", "0".repeat(64)),
        1,
    );
    publish(&mut con, &group, bad).await;
    publish(&mut con, &format!("{}:resync", c.prefix), "node-x").await;
    let last = c.nodes[0].notify("42", json!({"signed": 2})).await.id;
    receive_all(&mut a, vec![signed], &[signed, last]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(dropped(keyed, DropReason::Unsigned).await, 3.0);
    assert_eq!(dropped(keyed, DropReason::BadSignature).await, 1.0);
    let resyncs = keyed.metric("herald_broker_resyncs_total", &[]).await - resyncs_before;
    assert_eq!(resyncs, 0.0, "an unsigned resync announcement was obeyed");
    assert_eq!(dropped(unkeyed, DropReason::Unsigned).await, 0.0);
}
