//! Contract §3, client frames: ping, mark_read, mark_all_read, subscribe, unsubscribe.

use std::time::Duration;

use herald_shared::{ErrorCode, ServerFrame};
use serde_json::json;

use crate::both_stores;
use crate::common::{self, Db, start};

both_stores!(
    ping_gets_pong,
    mark_read_touches_only_own_ids,
    mark_all_read_zeroes_the_count,
    a_mark_read_flood_cannot_starve_backend_posts,
);

/// `ping` is answered with `pong`.
async fn ping_gets_pong(db: Db) {
    let s = start(db).await;
    let (mut c, _) = s.connect("42").await;
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.raw().await, json!({"type": "pong"}));
}

/// `mark_read` marks the user's own ids, answers with them and the new unread count,
/// and silently leaves another user's ids alone.
async fn mark_read_touches_only_own_ids(db: Db) {
    let s = start(db).await;
    let mine: Vec<i64> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(s.notify("42", json!(i)).await.id);
        }
        v
    };
    let theirs = s.notify("43", json!("not yours")).await.id;
    let (mut c, _) = s.connect("42").await;
    c.send_json(json!({"type": "mark_read", "ids": [mine[0], theirs, mine[2], 999_999]}))
        .await;
    assert_eq!(
        c.raw().await,
        json!({"type": "marked_read", "ids": [mine[0], mine[2]], "unread_count": 1})
    );
    // The other user's notification is still unread.
    let list: serde_json::Value = s
        .api_get("/api/v1/users/43/notifications?unread=true")
        .await;
    assert_eq!(list["notifications"][0]["id"], theirs);
    assert_eq!(list["notifications"][0]["read"], false);
    // Marking again is harmless and reports the same ids.
    c.send_json(json!({"type": "mark_read", "ids": [mine[0]]}))
        .await;
    assert_eq!(
        c.raw().await,
        json!({"type": "marked_read", "ids": [mine[0]], "unread_count": 1})
    );
}

/// `mark_all_read` answers `{"all": true, "unread_count": 0}` and a reconnect sees none.
async fn mark_all_read_zeroes_the_count(db: Db) {
    let s = start(db).await;
    for i in 0..5 {
        s.notify("42", json!(i)).await;
    }
    let (mut c, initial) = s.connect("42").await;
    assert_eq!(initial.len(), 5);
    c.send_json(json!({"type": "mark_all_read"})).await;
    assert_eq!(
        c.raw().await,
        json!({"type": "marked_read", "all": true, "unread_count": 0})
    );
    let token = s.token("42", &[], 60);
    let mut c = common::Client::connect(&s.ws_url(&format!("?token={token}")))
        .await
        .unwrap();
    c.frame().await;
    assert_eq!(
        c.raw().await,
        json!({"type": "initial_state", "unread_count": 0, "notifications": []})
    );
}

/// Subscribing to a group the token allows gets `subscribed` and its events;
/// unsubscribing stops them; a group the token does not name is `forbidden`.
#[tokio::test]
async fn subscribe_follows_the_token() {
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect_with("42", &["org_5"], None).await;
    c.send_json(json!({"type": "subscribe", "group": "org_5"}))
        .await;
    assert_eq!(
        c.raw().await,
        json!({"type": "subscribed", "group": "org_5"})
    );
    s.event("org_5", json!({"deploy": "done"})).await;
    assert_eq!(
        c.raw().await,
        json!({"type": "event", "group": "org_5", "payload": {"deploy": "done"}})
    );

    for forbidden in ["org_6", "user_43", "broadcast"] {
        c.send_json(json!({"type": "subscribe", "group": forbidden}))
            .await;
        match c.frame().await {
            ServerFrame::Error { code, message } => {
                assert_eq!(code, ErrorCode::Forbidden);
                assert!(message.contains(forbidden));
            }
            other => panic!("expected forbidden, got {other:?}"),
        }
    }
    s.event("org_6", json!(1)).await;
    c.silent_for(Duration::from_millis(200)).await;

    c.send_json(json!({"type": "unsubscribe", "group": "org_5"}))
        .await;
    assert_eq!(
        c.raw().await,
        json!({"type": "unsubscribed", "group": "org_5"})
    );
    s.event("org_5", json!(2)).await;
    c.silent_for(Duration::from_millis(300)).await;
    // The personal group is always joined; events to it arrive as well.
    s.event("user_42", json!({"ping": 1})).await;
    assert_eq!(
        c.raw().await,
        json!({"type": "event", "group": "user_42", "payload": {"ping": 1}})
    );
}

/// Invalid group names are `bad_request`, and so is leaving one's own user group.
#[tokio::test]
async fn subscribe_validates_names() {
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect("42").await;
    for frame in [
        json!({"type": "subscribe", "group": "no spaces"}),
        json!({"type": "subscribe", "group": ""}),
        json!({"type": "subscribe", "group": "x".repeat(101)}),
        json!({"type": "unsubscribe", "group": "user_42"}),
    ] {
        c.send_json(frame.clone()).await;
        match c.frame().await {
            ServerFrame::Error {
                code: ErrorCode::BadRequest,
                ..
            } => {}
            other => panic!("{frame}: expected bad_request, got {other:?}"),
        }
    }
    // Still in its own group, once: an event to it arrives, and only once.
    s.event("user_42", json!("still joined")).await;
    assert_eq!(c.raw().await["payload"], "still joined");
    c.silent_for(Duration::from_millis(200)).await;
}

/// 200 sockets (20 users, 10 each) mark 1000 of their user's ids each, as fast as
/// the frame rate lets them, while the backend POSTs notifications: every POST
/// gets 201 (client writes hold a share of the store, never all of it); writes
/// beyond each user's budget (10 a second across its connections) are answered
/// `rate_limited` and the connections stay open; those within it are done.
async fn a_mark_read_flood_cannot_starve_backend_posts(db: Db) {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio_tungstenite::tungstenite::Message;

    const USERS: usize = 20;
    const PER_USER: usize = 10;
    let s = start(db).await;
    let mut ids = Vec::new();
    for u in 0..USERS {
        let items: Vec<_> = (0..1000)
            .map(|i| json!({"user": format!("u{u}"), "message": i}))
            .collect();
        ids.push(s.notify_batch(items).await);
    }
    let t0 = tokio::time::Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (marked, limited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut floods = Vec::new();
    for (u, user_ids) in ids.iter().enumerate() {
        for _ in 0..PER_USER {
            let (c, _) = s.connect(&format!("u{u}")).await;
            let frame = json!({"type": "mark_read", "ids": user_ids}).to_string();
            let (stop, marked, limited) = (stop.clone(), marked.clone(), limited.clone());
            floods.push(tokio::spawn(async move {
                let (mut tx, mut rx) = c.ws.split();
                // Under the frame rate (20/s): every frame is handled and answered.
                let mut tick = tokio::time::interval(Duration::from_millis(1000 / 18));
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    tx.send(Message::text(frame.clone())).await.unwrap();
                    let reply = loop {
                        match rx.next().await {
                            Some(Ok(Message::Text(t))) => break t,
                            Some(Ok(_)) => continue,
                            other => panic!("socket ended during the flood: {other:?}"),
                        }
                    };
                    let v: serde_json::Value = serde_json::from_str(reply.as_str()).unwrap();
                    match (v["type"].as_str(), v["code"].as_str()) {
                        (Some("marked_read"), _) => marked.fetch_add(1, Ordering::SeqCst),
                        (Some("error"), Some("rate_limited")) => {
                            limited.fetch_add(1, Ordering::SeqCst)
                        }
                        _ => panic!("unexpected reply {v}"),
                    };
                }
            }));
        }
    }
    let started = tokio::time::Instant::now();
    for i in 0..100 {
        let r = common::api()
            .post(s.http("/api/v1/notifications"))
            .bearer_auth(common::API_KEY)
            .json(&json!({"user": format!("b{}", i % 7), "message": {"n": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "POST {i} during the flood: {:?}",
            r.text().await
        );
    }
    // Let the flood run at least 3 s, whatever the POSTs took.
    tokio::time::sleep_until(started + Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for f in floods {
        f.await.expect("every socket answered every frame");
    }
    let secs = t0.elapsed().as_secs_f64();
    let (marked, limited) = (
        marked.load(Ordering::SeqCst),
        limited.load(Ordering::SeqCst),
    );
    assert!(marked > 0, "some writes were done");
    assert!(limited > 0, "the flood went past the budget");
    // Each user: a bucket of 10, refilled at 10 a second, since its first socket.
    let most = USERS as f64 * 10.0 * (secs + 1.0);
    assert!(
        (marked as f64) <= most,
        "{marked} writes done in {secs:.1} s, budget {most}"
    );
    assert_eq!(
        s.metric("herald_client_writes_refused_total", &[]).await as usize,
        limited
    );
}
