//! Contract §2-3: authentication, origin, capacity, and the opening frames.

use std::time::Duration;

use herald_shared::ServerFrame;
use serde_json::json;

use crate::both_stores;
use crate::common::{self, Client, Db, JWT_SECRET, refused, start, start_with};

both_stores!(
    welcome_then_initial_state_newest_unread_first,
    resume_sends_missed_oldest_first_read_or_not,
    missed_is_truncated_past_1000,
    missed_is_truncated_past_its_byte_budget,
    after_beyond_the_newest_issued_id_is_refused_with_400,
    live_notifications_reach_every_connection_of_the_user_only,
);

/// The first frame is `welcome` with the user, node, connection and heartbeat; the
/// second is `initial_state` with the unread count and the 50 newest unread.
async fn welcome_then_initial_state_newest_unread_first(db: Db) {
    let s = start(db).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(s.notify("42", json!({"n": i})).await.id);
    }
    s.notify("7", json!("someone else")).await;
    // Five of the newest are read already: they must not be in initial_state.
    let (mut c, _) = s.connect("42").await;
    c.send_json(json!({"type": "mark_read", "ids": &ids[55..60]}))
        .await;
    assert!(matches!(
        c.frame().await,
        ServerFrame::MarkedRead {
            unread_count: 55,
            ..
        }
    ));

    let token = s.token("42", &[], 60);
    let mut c = Client::connect(&s.ws_url(&format!("?token={token}")))
        .await
        .unwrap();
    match c.frame().await {
        ServerFrame::Welcome {
            user,
            node,
            connection,
            heartbeat_s,
        } => {
            assert_eq!(user, "42");
            assert_eq!(node, s.node_id());
            assert!(!connection.is_empty());
            assert_eq!(heartbeat_s, 25);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    match c.frame().await {
        ServerFrame::InitialState {
            unread_count,
            notifications,
        } => {
            assert_eq!(unread_count, 55);
            let got: Vec<i64> = notifications.iter().map(|n| n.id).collect();
            let want: Vec<i64> = ids[5..55].iter().rev().copied().collect();
            assert_eq!(got, want, "50 newest unread, newest first");
            assert!(notifications.iter().all(|n| n.user == "42" && !n.read));
        }
        other => panic!("expected initial_state, got {other:?}"),
    }
    c.silent_for(Duration::from_millis(300)).await;
}

/// With `after`, a third frame `missed` carries every notification newer than it,
/// read or not, oldest first.
async fn resume_sends_missed_oldest_first_read_or_not(db: Db) {
    let s = start(db).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(s.notify("42", json!({"n": i})).await.id);
    }
    let (mut c, _) = s.connect("42").await;
    c.send_json(json!({"type": "mark_read", "ids": [ids[8]]}))
        .await;
    c.frame().await;

    let (mut c, initial) = s.connect_with("42", &[], Some(ids[5])).await;
    assert_eq!(initial.len(), 9);
    match c.frame().await {
        ServerFrame::Missed {
            notifications,
            truncated,
        } => {
            assert!(!truncated);
            let got: Vec<i64> = notifications.iter().map(|n| n.id).collect();
            assert_eq!(got, ids[6..].to_vec());
            assert!(notifications[2].read, "read ones are replayed too");
        }
        other => panic!("expected missed, got {other:?}"),
    }
    // `after` of 0 replays everything; without `after` there is no missed frame.
    let (mut c, _) = s.connect_with("42", &[], Some(0)).await;
    assert!(
        matches!(c.frame().await, ServerFrame::Missed { notifications, .. } if notifications.len() == 10)
    );
    let (mut c, _) = s.connect("42").await;
    c.silent_for(Duration::from_millis(300)).await;
}

/// More than 1000 missed notifications: the oldest 1000 and `truncated: true`.
async fn missed_is_truncated_past_1000(db: Db) {
    let s = start(db).await;
    for chunk in [0..1000, 1000..1001] {
        let items: Vec<_> = chunk.map(|i| json!({"user": "42", "message": i})).collect();
        s.notify_batch(items).await;
    }
    let (mut c, _) = s.connect_with("42", &[], Some(0)).await;
    let v = c.raw().await;
    assert_eq!(v["type"], "missed");
    assert_eq!(v["truncated"], true);
    let ns = v["notifications"].as_array().unwrap();
    assert_eq!(ns.len(), 1000);
    assert_eq!(ns[0]["message"], 0);
    assert_eq!(ns[999]["message"], 999);
}

/// Large notifications: a `missed` frame stops before its notifications pass 1 MiB,
/// with `truncated: true`, and resuming from its last id, frame after frame, gets
/// every notification once and in order.
async fn missed_is_truncated_past_its_byte_budget(db: Db) {
    let s = start(db).await;
    let big = "x".repeat(15_000);
    let mut stored = Vec::new();
    for _ in 0..10 {
        let items: Vec<_> = (0..20)
            .map(|_| json!({"user": "42", "message": big}))
            .collect();
        stored.extend(s.notify_batch(items).await);
    }
    let (mut after, mut got, mut frames) = (0, Vec::new(), 0);
    loop {
        let (mut c, _) = s.connect_with("42", &[], Some(after)).await;
        let v = c.raw().await;
        assert_eq!(v["type"], "missed");
        frames += 1;
        let ns = v["notifications"].as_array().unwrap();
        let bytes: usize = ns.iter().map(|n| n.to_string().len() + 1).sum();
        assert!(bytes <= 1024 * 1024, "{bytes} bytes of notifications");
        got.extend(ns.iter().map(|n| n["id"].as_i64().unwrap()));
        after = *got.last().unwrap();
        if v.get("truncated").is_none() {
            break;
        }
        assert_eq!(v["truncated"], true);
        // Cut by bytes, not by the 1000 count.
        assert!(ns.len() < 100, "{} notifications", ns.len());
    }
    assert_eq!(got, stored, "everything once, in order");
    assert!(frames >= 3, "3 MB of notifications in {frames} frames");
}

/// A new notification reaches each open connection of its user once, and no one else.
async fn live_notifications_reach_every_connection_of_the_user_only(db: Db) {
    let s = start(db).await;
    let (mut a, _) = s.connect("42").await;
    let (mut b, _) = s.connect("42").await;
    let (mut other, _) = s.connect("43").await;
    let n = s.notify("42", json!({"text": "hi", "z": 1, "a": 2})).await;
    for c in [&mut a, &mut b] {
        let got = c.notifications(1).await;
        assert_eq!(got[0], n);
        assert_eq!(got[0].message.get(), r#"{"text":"hi","z":1,"a":2}"#);
    }
    for c in [&mut a, &mut b, &mut other] {
        c.silent_for(Duration::from_millis(300)).await;
    }
}

/// Missing, malformed, wrongly signed and expired tokens get 401 with a JSON error;
/// the header form of the token works like the query form.
#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let s = start(Db::Sqlite).await;
    let (code, body, _) = refused(&s.ws_url(""), &[]).await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (
            401,
            "missing token: pass ?token=<jwt>, Authorization: Bearer <jwt>, or on a \
             WebSocket the subprotocols herald and bearer.<jwt>"
        ),
        "the refusal names every way to send the token"
    );

    let (code, body, _) = refused(&s.ws_url("?token=abc.def"), &[]).await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (401, "malformed token")
    );

    let claims = json!({"sub": "42", "exp": now_unix() + 60});
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let (code, body, _) = refused(&s.ws_url(&format!("?token={forged}")), &[]).await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (401, "invalid token signature")
    );

    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "42", "exp": now_unix() - 5}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let (code, body, _) = refused(&s.ws_url(&format!("?token={expired}")), &[]).await;
    assert_eq!(
        (code, body["error"].as_str().unwrap()),
        (401, "token expired")
    );

    let no_sub = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": now_unix() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let (code, _, _) = refused(&s.ws_url(&format!("?token={no_sub}")), &[]).await;
    assert_eq!(code, 401);

    // Header form.
    let token = s.token("42", &[], 60);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        s.ws_url(""),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut c = Client::connect_request(req)
        .await
        .expect("bearer header accepted");
    assert!(matches!(c.frame().await, ServerFrame::Welcome { .. }));
    assert_eq!(
        s.metric("herald_upgrades_refused_total", &[("code", "401")])
            .await,
        5.0
    );
}

/// `after` that is not a notification id is a 400, before any upgrade.
#[tokio::test]
async fn bad_after_is_refused_with_400() {
    let s = start(Db::Sqlite).await;
    let token = s.token("42", &[], 60);
    for bad in ["abc", "-1", "1.5"] {
        let (code, body, _) = refused(&s.ws_url(&format!("?token={token}&after={bad}")), &[]).await;
        assert_eq!(code, 400, "after={bad}");
        assert!(body["error"].as_str().unwrap().contains("after"));
    }
}

/// `after` beyond the newest id the store has issued would silently skip every
/// notification up to it: 400, on a socket and on a stream (`after` or
/// `Last-Event-ID`). Up to that id it is accepted, whoever's it is and whichever
/// node issued it: the id sequence is the store's.
async fn after_beyond_the_newest_issued_id_is_refused_with_400(db: Db) {
    let s = start(db).await;
    let mine = s.notify("42", json!(1)).await.id;
    let token = s.token("42", &[], 60);
    // Issued through a second node on the same store: the first has not seen it.
    let other = common::start_on(s.storage.clone(), &[]).await;
    let theirs = other.notify("43", json!(2)).await.id;
    assert!(theirs > mine);
    // Resuming from an id this node stored costs no query of the store's sequence.
    let asked = || {
        s.metric(
            "herald_store_latency_seconds_count",
            &[("op", "newest_issued_id")],
        )
    };
    let (mut c, _) = s.connect_with("42", &[], Some(mine)).await;
    assert!(matches!(c.frame().await, ServerFrame::Missed { .. }));
    assert_eq!(asked().await, 0.0, "the node stored {mine} itself");
    for ok in [0, mine, theirs] {
        let (mut c, _) = s.connect_with("42", &[], Some(ok)).await;
        assert!(
            matches!(c.frame().await, ServerFrame::Missed { .. }),
            "after={ok}"
        );
    }
    for bad in [theirs + 1, i64::MAX] {
        let (code, body, _) = refused(&s.ws_url(&format!("?token={token}&after={bad}")), &[]).await;
        assert_eq!(code, 400, "after={bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("beyond"), "{body}");
        for (query, headers) in [
            (format!("?token={token}&after={bad}"), vec![]),
            (
                format!("?token={token}"),
                vec![("last-event-id", bad.to_string())],
            ),
        ] {
            let mut req = common::api().get(s.http(&format!("/sse/notifications/{query}")));
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 400, "stream {query} {headers:?}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("beyond"), "{body}");
        }
    }
}

/// With allowed origins configured, a foreign `Origin` gets 403; a listed one, or
/// none (not a browser), is accepted.
#[tokio::test]
async fn foreign_origins_are_refused_with_403() {
    let s = start_with(
        Db::Sqlite,
        &[
            "--allowed-origins",
            "https://app.example,https://admin.example",
        ],
    )
    .await;
    let url = s.ws_url(&format!("?token={}", s.token("42", &[], 60)));
    let (code, body, _) = refused(&url, &[("origin", "https://evil.example")]).await;
    assert_eq!(code, 403);
    assert!(body["error"].as_str().unwrap().contains("evil"));
    for origin in ["https://app.example", "https://admin.example"] {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        Client::connect_request(req)
            .await
            .expect("listed origin accepted");
    }
    Client::connect(&url).await.expect("no origin accepted");
}

/// A token that expires while connected closes the connection with 1008.
#[tokio::test]
async fn token_expiry_while_connected_closes_with_1008() {
    let s = start(Db::Sqlite).await;
    let token = s.token("42", &[], 2);
    let mut c = Client::connect(&s.ws_url(&format!("?token={token}")))
        .await
        .unwrap();
    let (closed, frames) = c.closed().await;
    assert_eq!(frames.len(), 2, "welcome and initial_state first");
    match closed {
        common::Closed::Code(1008, reason) => assert!(reason.contains("expired")),
        other => panic!("expected 1008, got {other:?}"),
    }
}

/// At capacity, a new upgrade gets 503 with Retry-After instead of an accept error.
#[tokio::test]
async fn full_node_refuses_upgrades_with_503() {
    let s = start_with(Db::Sqlite, &["--max-connections", "2"]).await;
    let (_a, _) = s.connect("1").await;
    let (_b, _) = s.connect("2").await;
    let url = s.ws_url(&format!("?token={}", s.token("3", &[], 60)));
    let (code, body, headers) = refused(&url, &[]).await;
    assert_eq!(code, 503);
    assert!(body["error"].as_str().unwrap().contains("capacity"));
    assert!(headers.contains_key("retry-after"));
    drop(_a);
    // The freed slot is usable again once the closed session is cleaned up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if Client::connect(&url).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Close codes a client chooses (3000 to 4999) are counted by range in
/// `herald_disconnects_total`, never one series each; the codes RFC 6455 defines
/// are themselves.
#[tokio::test]
async fn client_close_codes_are_bucketed_in_metrics() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let s = start(Db::Sqlite).await;
    for code in [4321u16, 4000, 3999, 1000] {
        let (mut c, _) = s.connect("42").await;
        c.ws.close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }))
        .await
        .unwrap();
        // The node echoes the close once it has counted it.
        c.closed().await;
    }
    let want = [("4xxx", 2.0), ("3xxx", 1.0), ("1000", 1.0)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = s.metrics_text().await;
        let counted = want.iter().all(|(code, n)| {
            common::metric_in(&text, "herald_disconnects_total", &[("code", code)]) == *n
        });
        if counted {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for code in ["4321", "4000", "3999"] {
        assert!(
            !text.contains(&format!("herald_disconnects_total{{code=\"{code}\"}}")),
            "a series for {code}:\n{text}"
        );
    }
}
