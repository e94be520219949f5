//! Contract §4 (backend API) and §5 (health), over real HTTP on loopback, against
//! both stores.

use std::time::{Duration, Instant};

use herald_shared::ServerFrame;
use serde_json::{Value, json};

use crate::common::{self, API_KEY, Db, PgDb, TestServer};

crate::both_stores!(
    create_returns_the_stored_notification,
    create_accepts_any_json_message,
    ids_increase_in_creation_order,
    create_reaches_the_users_open_connections,
    batch_returns_every_notification_in_order,
    batch_with_a_bad_user_id_stores_nothing,
    batch_with_an_oversized_message_stores_nothing,
    batch_size_limits,
    event_reaches_subscribed_connections_only,
    event_reaches_the_personal_group,
    event_bad_requests,
    event_batch_reaches_each_group_in_order,
    event_batch_bad_requests_publish_nothing,
    listing_is_newest_first_and_filters,
    listing_refuses_bad_parameters,
    presence_counts_open_connections,
    missing_or_wrong_api_key_is_401,
    api_key_is_checked_before_the_body_is_read,
    bad_bodies_are_400,
    oversized_message_is_413,
    configured_max_message_bytes_is_honoured,
    unknown_route_is_404,
    wrong_method_is_405,
    health_endpoints_answer_200,
);

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// Sends a request and returns its status and JSON body (panics if the body is not JSON).
async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body read");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, v)
}

/// POSTs `body` as JSON with the API key.
async fn post(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    post_raw(s, path, body.to_string()).await
}

/// POSTs raw bytes (declared as JSON) with the API key.
async fn post_raw(s: &TestServer, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    send(
        common::api()
            .post(s.http(path))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// GETs `path` with the API key.
async fn get(s: &TestServer, path: &str) -> (u16, Value) {
    send(common::api().get(s.http(path)).bearer_auth(API_KEY)).await
}

/// The user's listing with `query` (e.g. `"?limit=2"`); asserts 200.
async fn listing(s: &TestServer, user: &str, query: &str) -> Vec<Value> {
    let (status, body) = get(s, &format!("/api/v1/users/{user}/notifications{query}")).await;
    assert_eq!(status, 200, "listing {user}{query}: {body}");
    let obj = body.as_object().expect("listing is an object");
    obj["notifications"]
        .as_array()
        .expect("listing has a notifications array")
        .clone()
}

fn ids(ns: &[Value]) -> Vec<i64> {
    ns.iter()
        .map(|n| n["id"].as_i64().expect("integer id"))
        .collect()
}

/// The body is exactly `{"error": "<non-empty text>"}`.
fn assert_error(status: u16, body: &Value, want: u16, what: &str) {
    assert_eq!(status, want, "{what}: body {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: error body is not an object: {body}"));
    assert_eq!(obj.len(), 1, "{what}: error body has other keys: {body}");
    let e = obj
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no \"error\" string: {body}"));
    assert!(!e.is_empty(), "{what}: empty error text");
}

/// `2026-11-25T19:21:08.123Z`: UTC, milliseconds, `Z`, and close to now.
fn assert_created_at(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("created_at is not a string: {v}"));
    let b = s.as_bytes();
    let shape_ok = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(
        shape_ok,
        "created_at {s:?} is not like 2026-11-25T19:21:08.123Z"
    );
    let t = chrono::DateTime::parse_from_rfc3339(s).expect("created_at is RFC 3339");
    let skew = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .abs();
    assert!(skew < 300, "created_at {s} is {skew} s away from now");
}

/// `n` is a stored notification of `user` carrying exactly `message` (compact JSON
/// text, key order included), unread.
fn assert_n(n: &Value, user: &str, message: &str) {
    let obj = n
        .as_object()
        .unwrap_or_else(|| panic!("N is not an object: {n}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "id", "message", "read", "user"], "{n}");
    let id = n["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("id is not an integer: {n}"));
    assert!(id > 0, "id must be positive: {n}");
    assert_eq!(n["user"], json!(user), "{n}");
    assert_eq!(
        serde_json::to_string(&n["message"]).unwrap(),
        message,
        "message echoed as sent"
    );
    assert_created_at(&n["created_at"]);
    assert_eq!(n["read"], json!(false), "{n}");
}

/// Polls `f` until it returns true or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(url: String) -> Option<u16> {
    common::api()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

// ---------------------------------------------------------------------------------
// POST /api/v1/notifications
// ---------------------------------------------------------------------------------

/// A single POST answers 201 with the stored N: positive id, the user, the message
/// echoed with its keys in the order sent, a millisecond UTC created_at, read false.
async fn create_returns_the_stored_notification(db: Db) {
    let s = common::start(db).await;
    let message = r#"{"zeta":1,"alpha":[1,2,{"y":true,"b":null}],"mid":{"z":"x","a":"y"}}"#;
    let (status, n) = post_raw(
        &s,
        "/api/v1/notifications",
        format!(r#"{{"user":"42","message":{message}}}"#),
    )
    .await;
    assert_eq!(status, 201, "{n}");
    assert_n(&n, "42", message);

    // What was answered is what is stored, key order included.
    let listed = listing(&s, "42", "").await;
    assert_eq!(listed, vec![n.clone()]);
    assert_eq!(
        serde_json::to_string(&listed[0]["message"]).unwrap(),
        message
    );
}

/// `message` may be any JSON value: string, number, array, boolean, null, nested.
async fn create_accepts_any_json_message(db: Db) {
    let s = common::start(db).await;
    for message in [
        r#""plain text""#,
        "3.5",
        "-7",
        r#"[1,"a",{"k":[]}]"#,
        "true",
        "null",
        "{}",
        r#"{"emoji":"héllo ✓","esc":"a\"b\\c\n"}"#,
    ] {
        let (status, n) = post_raw(
            &s,
            "/api/v1/notifications",
            format!(r#"{{"user":"any.user_1-x","message":{message}}}"#),
        )
        .await;
        assert_eq!(status, 201, "message {message}: {n}");
        assert_n(&n, "any.user_1-x", message);
    }
    let listed = listing(&s, "any.user_1-x", "").await;
    assert_eq!(listed.len(), 8);
    assert_eq!(
        serde_json::to_string(&listed[0]["message"]).unwrap(),
        r#"{"emoji":"héllo ✓","esc":"a\"b\\c\n"}"#
    );
    assert_eq!(listed[2]["message"], Value::Null);
}

/// Ids increase in creation order, across users too.
async fn ids_increase_in_creation_order(db: Db) {
    let s = common::start(db).await;
    let mut last = 0;
    for i in 0..12 {
        let user = if i % 3 == 0 { "a" } else { "b" };
        let n = s.notify(user, json!({"i": i})).await;
        assert!(n.id > last, "id {} after {last}", n.id);
        last = n.id;
    }
}

/// The 201 notification also reaches every open connection of its user, as sent.
async fn create_reaches_the_users_open_connections(db: Db) {
    let s = common::start(db).await;
    let (mut c1, _) = s.connect("42").await;
    let (mut c2, _) = s.connect("42").await;
    let (mut other, _) = s.connect("43").await;
    let (status, n) = post(
        &s,
        "/api/v1/notifications",
        &json!({"user":"42","message":{"t":"hi"}}),
    )
    .await;
    assert_eq!(status, 201, "{n}");
    let n: herald_shared::Notification = serde_json::from_value(n).unwrap();
    for c in [&mut c1, &mut c2] {
        match c.frame().await {
            ServerFrame::Notification { notification } => assert_eq!(notification, n),
            f => panic!("expected the notification, got {f:?}"),
        }
    }
    // User 43 gets only its own: the next frame it sees is its own notification.
    let own = s.notify("43", json!("mine")).await;
    match other.frame().await {
        ServerFrame::Notification { notification } => assert_eq!(notification, own),
        f => panic!("expected user 43's own notification, got {f:?}"),
    }
}

// ---------------------------------------------------------------------------------
// POST /api/v1/notifications/batch
// ---------------------------------------------------------------------------------

/// A batch answers 201 with every stored N in request order, ids increasing, and
/// connected users receive theirs.
async fn batch_returns_every_notification_in_order(db: Db) {
    let s = common::start(db).await;
    let (mut c, _) = s.connect("u1").await;
    let items: Vec<(&str, String)> = vec![
        ("u1", r#"{"n":1,"a":0}"#.into()),
        ("u2", r#"{"n":2}"#.into()),
        ("u1", r#"["third"]"#.into()),
        ("u3", r#""fourth""#.into()),
        ("u1", r#"{"z":5,"b":{"d":1,"c":2}}"#.into()),
    ];
    let body = format!(
        r#"{{"notifications":[{}]}}"#,
        items
            .iter()
            .map(|(u, m)| format!(r#"{{"user":"{u}","message":{m}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (status, resp) = post_raw(&s, "/api/v1/notifications/batch", body).await;
    assert_eq!(status, 201, "{resp}");
    let obj = resp.as_object().expect("object");
    assert_eq!(obj.len(), 1, "{resp}");
    let ns = resp["notifications"]
        .as_array()
        .expect("notifications array");
    assert_eq!(ns.len(), items.len());
    for (n, (u, m)) in ns.iter().zip(&items) {
        assert_n(n, u, m);
    }
    let got = ids(ns);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {got:?}"
    );

    // Stored: each user's listing has exactly theirs, newest first.
    let u1 = listing(&s, "u1", "").await;
    assert_eq!(u1, vec![ns[4].clone(), ns[2].clone(), ns[0].clone()]);
    assert_eq!(listing(&s, "u2", "").await, vec![ns[1].clone()]);
    assert_eq!(listing(&s, "u3", "").await, vec![ns[3].clone()]);

    // Delivered: u1's connection gets its three, in id order.
    let live = c.notifications(3).await;
    let live: Vec<i64> = live.iter().map(|n| n.id).collect();
    assert_eq!(live, vec![got[0], got[2], got[4]]);
}

/// One item with an invalid user id refuses the whole batch with 400; nothing of it
/// is stored.
async fn batch_with_a_bad_user_id_stores_nothing(db: Db) {
    let s = common::start(db).await;
    for bad in ["bad user", "", "x/y", &"u".repeat(65)] {
        let body = json!({"notifications": [
            {"user": "ok1", "message": {"i": 1}},
            {"user": "ok2", "message": {"i": 2}},
            {"user": bad, "message": {"i": 3}},
        ]});
        let (status, resp) = post(&s, "/api/v1/notifications/batch", &body).await;
        assert_error(status, &resp, 400, &format!("batch with user {bad:?}"));
    }
    assert!(
        listing(&s, "ok1", "").await.is_empty(),
        "nothing stored for ok1"
    );
    assert!(
        listing(&s, "ok2", "").await.is_empty(),
        "nothing stored for ok2"
    );
}

/// One oversized message refuses the whole batch with 413; nothing of it is stored.
async fn batch_with_an_oversized_message_stores_nothing(db: Db) {
    let s = common::start(db).await;
    let big = "x".repeat(17 * 1024);
    let body = json!({"notifications": [
        {"user": "ok1", "message": {"i": 1}},
        {"user": "ok1", "message": {"i": 2}},
        {"user": "ok2", "message": {"text": big}},
    ]});
    let (status, resp) = post(&s, "/api/v1/notifications/batch", &body).await;
    assert_error(status, &resp, 413, "batch with a 17 KiB message");
    assert!(
        listing(&s, "ok1", "").await.is_empty(),
        "nothing stored for ok1"
    );
    assert!(
        listing(&s, "ok2", "").await.is_empty(),
        "nothing stored for ok2"
    );
    // The same batch without the big item goes through.
    let body = json!({"notifications": [{"user": "ok1", "message": {"i": 1}}]});
    let (status, resp) = post(&s, "/api/v1/notifications/batch", &body).await;
    assert_eq!(status, 201, "{resp}");
    assert_eq!(listing(&s, "ok1", "").await.len(), 1);
}

/// A batch holds 1 to 1000 items: 0 and 1001 are 400 (nothing stored), 1000 is 201.
async fn batch_size_limits(db: Db) {
    let s = common::start(db).await;
    let (status, resp) = post(
        &s,
        "/api/v1/notifications/batch",
        &json!({"notifications": []}),
    )
    .await;
    assert_error(status, &resp, 400, "empty batch");

    let batch = |n: usize| {
        json!({"notifications": (0..n)
            .map(|i| json!({"user": "bulk", "message": {"i": i}}))
            .collect::<Vec<_>>()})
    };
    let (status, resp) = post(&s, "/api/v1/notifications/batch", &batch(1001)).await;
    assert_error(status, &resp, 400, "batch of 1001");
    assert!(
        listing(&s, "bulk", "").await.is_empty(),
        "a refused batch stores nothing"
    );

    let (status, resp) = post(&s, "/api/v1/notifications/batch", &batch(1000)).await;
    assert_eq!(status, 201, "batch of 1000: {resp}");
    let ns = resp["notifications"].as_array().expect("notifications");
    assert_eq!(ns.len(), 1000);
    for (i, n) in ns.iter().enumerate() {
        assert_eq!(n["message"], json!({"i": i}), "item {i} out of order");
        assert_eq!(n["user"], "bulk");
    }
    let got = ids(ns);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "ids not increasing");
    let listed = listing(&s, "bulk", "?limit=1000").await;
    assert_eq!(listed.len(), 1000);
    let mut rev = got.clone();
    rev.reverse();
    assert_eq!(ids(&listed), rev);
}

// ---------------------------------------------------------------------------------
// POST /api/v1/groups/<group>/events
// ---------------------------------------------------------------------------------

/// An event answers 202 {"accepted":true}; a connection subscribed to the group gets
/// `{"type":"event","group":..,"payload":..}` with the payload as sent; a connection
/// allowed the group but not subscribed gets nothing; events are not stored.
async fn event_reaches_subscribed_connections_only(db: Db) {
    let s = common::start(db).await;
    let (mut sub, _) = s.connect_with("7", &["org_5", "org_6"], None).await;
    sub.send_json(json!({"type":"subscribe","group":"org_5"}))
        .await;
    match sub.frame().await {
        ServerFrame::Subscribed { group } => assert_eq!(group, "org_5"),
        f => panic!("expected subscribed, got {f:?}"),
    }
    let (mut idle, _) = s.connect_with("8", &["org_5"], None).await;

    let payload = r#"{"kind":"deploy","z":[3,2,1],"a":{"y":1,"b":2}}"#;
    let (status, resp) = post_raw(
        &s,
        "/api/v1/groups/org_5/events",
        format!(r#"{{"payload":{payload}}}"#),
    )
    .await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp, json!({"accepted": true}));

    let raw = sub.raw().await;
    assert_eq!(raw["type"], "event", "{raw}");
    assert_eq!(raw["group"], "org_5", "{raw}");
    assert_eq!(serde_json::to_string(&raw["payload"]).unwrap(), payload);

    // An event to another group (allowed, not subscribed) does not reach it: its next
    // frame is the notification published after that event.
    let (status, _) = post(&s, "/api/v1/groups/org_6/events", &json!({"payload": 1})).await;
    assert_eq!(status, 202);
    let n = s.notify("7", json!("after")).await;
    match sub.frame().await {
        ServerFrame::Notification { notification } => assert_eq!(notification.id, n.id),
        f => panic!("expected the notification (no org_6 event), got {f:?}"),
    }
    // The unsubscribed connection saw neither event.
    let n8 = s.notify("8", json!("after")).await;
    match idle.frame().await {
        ServerFrame::Notification { notification } => assert_eq!(notification.id, n8.id),
        f => panic!("expected the notification (no event), got {f:?}"),
    }
    // Events are ephemeral: not in anyone's listing.
    assert_eq!(ids(&listing(&s, "7", "").await), vec![n.id]);
}

/// Every user is in `user_<id>`: an event to that group reaches its connections with
/// no subscribe.
async fn event_reaches_the_personal_group(db: Db) {
    let s = common::start(db).await;
    let (mut c, _) = s.connect("42").await;
    let (status, resp) = post(
        &s,
        "/api/v1/groups/user_42/events",
        &json!({"payload": ["x", 1]}),
    )
    .await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp, json!({"accepted": true}));
    match c.frame().await {
        ServerFrame::Event { group, payload } => {
            assert_eq!(group, "user_42");
            assert_eq!(payload.get(), r#"["x",1]"#);
        }
        f => panic!("expected the event, got {f:?}"),
    }
}

/// Events refuse invalid group names and bad bodies with 400, oversized payloads with
/// 413, all as JSON errors.
async fn event_bad_requests(db: Db) {
    let s = common::start(db).await;
    let long = "g".repeat(101);
    for group in ["bad%20group", "a$b", "caf%C3%A9", long.as_str()] {
        let (status, resp) = post(
            &s,
            &format!("/api/v1/groups/{group}/events"),
            &json!({"payload": 1}),
        )
        .await;
        assert_error(status, &resp, 400, &format!("group {group}"));
    }
    // 100 characters is fine.
    let ok = "g".repeat(100);
    let (status, resp) = post(
        &s,
        &format!("/api/v1/groups/{ok}/events"),
        &json!({"payload": 1}),
    )
    .await;
    assert_eq!(status, 202, "{resp}");

    for (body, what) in [
        ("{}", "missing payload"),
        ("not json", "invalid JSON"),
        (r#"{"payload":1,"extra":2}"#, "unknown field"),
        ("", "empty body"),
    ] {
        let (status, resp) = post_raw(&s, "/api/v1/groups/org_5/events", body).await;
        assert_error(status, &resp, 400, what);
    }
    let big = json!({"payload": {"text": "x".repeat(17 * 1024)}});
    let (status, resp) = post(&s, "/api/v1/groups/org_5/events", &big).await;
    assert_error(status, &resp, 413, "17 KiB payload");
}

// ---------------------------------------------------------------------------------
// POST /api/v1/events/batch [ext]
// ---------------------------------------------------------------------------------

/// A batch answers 202 {"accepted":n}; each event reaches its own group's
/// connections, and a connection in several of the batch's groups gets its events
/// in batch order, payloads as sent.
async fn event_batch_reaches_each_group_in_order(db: Db) {
    let s = common::start(db).await;
    let (mut one, _) = s.connect_with("1", &["org_5"], None).await;
    one.send_json(json!({"type":"subscribe","group":"org_5"}))
        .await;
    match one.frame().await {
        ServerFrame::Subscribed { group } => assert_eq!(group, "org_5"),
        f => panic!("expected subscribed, got {f:?}"),
    }
    let (mut two, _) = s.connect("2").await;
    let (status, resp) = post_raw(
        &s,
        "/api/v1/events/batch",
        r#"{"events":[
            {"group":"user_1","payload":{"n":1, "z":[3,2]}},
            {"group":"user_2","payload":"two"},
            {"group":"org_5","payload":3},
            {"group":"user_1","payload":null}
        ]}"#,
    )
    .await;
    assert_eq!(status, 202, "{resp}");
    assert_eq!(resp, json!({"accepted": 4}));
    // Read as the wire has it (`ServerFrame` compacts payloads).
    #[derive(serde::Deserialize)]
    struct WireEvent {
        r#type: String,
        group: String,
        payload: Box<serde_json::value::RawValue>,
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let e: WireEvent = one.frame_as().await;
        assert_eq!(e.r#type, "event");
        got.push((e.group, e.payload.get().to_owned()));
    }
    assert_eq!(
        got,
        vec![
            ("user_1".into(), r#"{"n":1, "z":[3,2]}"#.into()),
            ("org_5".into(), "3".into()),
            ("user_1".into(), "null".into()),
        ]
    );
    match two.frame().await {
        ServerFrame::Event { group, payload } => {
            assert_eq!(group, "user_2");
            assert_eq!(payload.get(), r#""two""#);
        }
        f => panic!("expected the event, got {f:?}"),
    }
    // Not stored.
    assert!(listing(&s, "1", "").await.is_empty());
}

/// A batch with no events or more than 1000, a bad group name or body anywhere,
/// is 400; an oversized payload is 413 naming its index; none of them publishes
/// the good events beside the bad one.
async fn event_batch_bad_requests_publish_nothing(db: Db) {
    let s = common::start(db).await;
    let (mut c, _) = s.connect("7").await;
    let good = json!({"group":"user_7","payload":"must not arrive"});
    let too_many: Vec<Value> = (0..1001).map(|_| good.clone()).collect();
    let big = json!({"group":"user_7","payload":{"text":"x".repeat(17 * 1024)}});
    for (body, want, what) in [
        (json!({"events": []}), 400, "no events"),
        (json!({"events": too_many}), 400, "1001 events"),
        (
            json!({"events": [good, {"group":"bad group","payload":1}]}),
            400,
            "bad group name",
        ),
        (
            json!({"events": [good, {"group":"user_7"}]}),
            400,
            "missing payload",
        ),
        (
            json!({"events": [good, {"group":"user_7","payload":1,"x":2}]}),
            400,
            "unknown field in an event",
        ),
        (
            json!({"events": [good], "x": 1}),
            400,
            "unknown top-level field",
        ),
        (json!({"events": [good, big]}), 413, "oversized payload"),
    ] {
        let (status, resp) = post(&s, "/api/v1/events/batch", &body).await;
        assert_error(status, &resp, want, what);
        if want == 413 {
            let e = resp["error"].as_str().unwrap();
            assert!(e.contains("events[1].payload"), "{what}: {e}");
        }
    }
    let (status, resp) = post_raw(&s, "/api/v1/events/batch", "not json").await;
    assert_error(status, &resp, 400, "invalid JSON");
    // Nothing of the refused batches arrived: the next frame is this notification.
    let n = s.notify("7", json!("after")).await;
    match c.frame().await {
        ServerFrame::Notification { notification } => assert_eq!(notification.id, n.id),
        f => panic!("expected the notification (no event), got {f:?}"),
    }
}

// ---------------------------------------------------------------------------------
// GET /api/v1/users/<id>/notifications
// ---------------------------------------------------------------------------------

/// The listing is newest first; `unread=true` leaves out what a client marked read;
/// `limit` and `before` page it; other users' notifications never appear.
async fn listing_is_newest_first_and_filters(db: Db) {
    let s = common::start(db).await;
    let mut created = Vec::new();
    for i in 0..6 {
        created.push(s.notify("lister", json!({"i": i})).await.id);
        s.notify("someone_else", json!({"i": i})).await;
    }
    let newest_first: Vec<i64> = created.iter().rev().copied().collect();

    let all = listing(&s, "lister", "").await;
    assert_eq!(ids(&all), newest_first);
    for (k, n) in all.iter().enumerate() {
        assert_n(n, "lister", &format!(r#"{{"i":{}}}"#, 5 - k));
    }

    // Mark two read through a client; another user's id in the list is ignored.
    let foreign = s.notify("someone_else", json!("x")).await.id;
    let (mut c, _) = s.connect("lister").await;
    c.send_json(json!({"type":"mark_read","ids":[created[1], created[4], foreign]}))
        .await;
    match c.frame().await {
        ServerFrame::MarkedRead {
            ids, unread_count, ..
        } => {
            assert_eq!(ids, Some(vec![created[1], created[4]]));
            assert_eq!(unread_count, 4);
        }
        f => panic!("expected marked_read, got {f:?}"),
    }

    let all = listing(&s, "lister", "").await;
    assert_eq!(ids(&all), newest_first);
    for n in &all {
        let id = n["id"].as_i64().unwrap();
        let read = id == created[1] || id == created[4];
        assert_eq!(n["read"], json!(read), "{n}");
    }
    let unread = listing(&s, "lister", "?unread=true").await;
    assert_eq!(
        ids(&unread),
        vec![created[5], created[3], created[2], created[0]]
    );
    assert!(unread.iter().all(|n| n["read"] == json!(false)));
    assert_eq!(
        ids(&listing(&s, "lister", "?unread=false").await),
        newest_first
    );
    // The other user's notification was left alone.
    assert!(
        listing(&s, "someone_else", "?unread=true")
            .await
            .iter()
            .any(|n| n["id"] == json!(foreign))
    );

    assert_eq!(
        ids(&listing(&s, "lister", "?limit=2").await),
        vec![created[5], created[4]]
    );
    assert_eq!(
        ids(&listing(&s, "lister", "?limit=1").await),
        vec![created[5]]
    );
    assert_eq!(
        ids(&listing(&s, "lister", &format!("?before={}", created[4])).await),
        vec![created[3], created[2], created[1], created[0]]
    );
    assert_eq!(
        ids(&listing(&s, "lister", &format!("?before={}&limit=2", created[4])).await),
        vec![created[3], created[2]]
    );
    assert_eq!(
        ids(&listing(
            &s,
            "lister",
            &format!("?unread=true&limit=50&before={}", created[3])
        )
        .await),
        vec![created[2], created[0]]
    );
    assert!(
        listing(&s, "lister", &format!("?before={}", created[0]))
            .await
            .is_empty()
    );
    // A user with nothing has an empty list, not an error.
    assert!(listing(&s, "nobody", "").await.is_empty());
}

/// Unusable `limit`, `before` or `unread` values and invalid user ids are 400 JSON.
async fn listing_refuses_bad_parameters(db: Db) {
    let s = common::start(db).await;
    s.notify("42", json!(1)).await;
    for q in [
        "?limit=abc",
        "?limit=-1",
        "?limit=1.5",
        "?before=abc",
        "?before=-5",
        "?unread=maybe",
        "?unread=2",
    ] {
        let (status, resp) = get(&s, &format!("/api/v1/users/42/notifications{q}")).await;
        assert_error(status, &resp, 400, q);
    }
    let long = "u".repeat(65);
    for user in ["bad%20id", "a$b", "%C3%A9", long.as_str()] {
        let (status, resp) = get(&s, &format!("/api/v1/users/{user}/notifications")).await;
        assert_error(status, &resp, 400, &format!("listing user {user}"));
        let (status, resp) = get(&s, &format!("/api/v1/users/{user}/presence")).await;
        assert_error(status, &resp, 400, &format!("presence user {user}"));
    }
    // 64 characters is a valid id.
    let ok = "u".repeat(64);
    assert!(listing(&s, &ok, "").await.is_empty());
}

// ---------------------------------------------------------------------------------
// GET /api/v1/users/<id>/presence
// ---------------------------------------------------------------------------------

/// Presence is `{"user","online","connections"}`: 0 and offline with no connection,
/// 2 and online with two, back to 0 after they close.
async fn presence_counts_open_connections(db: Db) {
    let s = common::start(db).await;
    let presence = |user: &'static str| {
        let url = s.http(&format!("/api/v1/users/{user}/presence"));
        async move { send(common::api().get(url).bearer_auth(API_KEY)).await }
    };
    let (status, p) = presence("p1").await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p, json!({"user": "p1", "online": false, "connections": 0}));

    let (mut a, _) = s.connect("p1").await;
    let (b, _) = s.connect("p1").await;
    let (_other, _) = s.connect("p2").await;
    let two = json!({"user": "p1", "online": true, "connections": 2});
    let ok = eventually(Duration::from_secs(5), || async {
        presence("p1").await == (200, two.clone())
    })
    .await;
    assert!(
        ok,
        "presence with two connections: {:?}",
        presence("p1").await
    );
    assert_eq!(
        presence("p2").await,
        (200, json!({"user": "p2", "online": true, "connections": 1}))
    );

    a.ws.close(None).await.unwrap();
    drop(a);
    drop(b);
    let zero = json!({"user": "p1", "online": false, "connections": 0});
    let ok = eventually(Duration::from_secs(5), || async {
        presence("p1").await == (200, zero.clone())
    })
    .await;
    assert!(ok, "presence after both closed: {:?}", presence("p1").await);
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// Every backend route answers 401 with a JSON error for a missing or wrong API key.
async fn missing_or_wrong_api_key_is_401(db: Db) {
    let s = common::start(db).await;
    let routes: [(&str, &str, Value); 6] = [
        (
            "POST",
            "/api/v1/notifications",
            json!({"user":"42","message":1}),
        ),
        (
            "POST",
            "/api/v1/notifications/batch",
            json!({"notifications":[{"user":"42","message":1}]}),
        ),
        ("POST", "/api/v1/groups/org_5/events", json!({"payload":1})),
        (
            "POST",
            "/api/v1/events/batch",
            json!({"events":[{"group":"org_5","payload":1}]}),
        ),
        ("GET", "/api/v1/users/42/notifications", Value::Null),
        ("GET", "/api/v1/users/42/presence", Value::Null),
    ];
    let wrong = format!("{API_KEY}x");
    let auths: [(&str, Option<String>); 5] = [
        ("no header", None),
        ("wrong key", Some(format!("Bearer {wrong}"))),
        (
            "prefix of the key",
            Some(format!("Bearer {}", &API_KEY[..API_KEY.len() - 1])),
        ),
        ("empty bearer", Some("Bearer ".into())),
        ("basic scheme", Some(format!("Basic {API_KEY}"))),
    ];
    for (method, path, body) in &routes {
        for (what, auth) in &auths {
            let mut req = common::api().request(method.parse().unwrap(), s.http(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            if !body.is_null() {
                req = req.json(body);
            }
            let (status, resp) = send(req).await;
            assert_error(status, &resp, 401, &format!("{method} {path} with {what}"));
        }
    }
    // Nothing was stored by any of those.
    assert!(listing(&s, "42", "").await.is_empty());
}

/// The key is checked before the body: garbage (even an over-limit body) without a
/// valid key is 401, not 400 or 413.
async fn api_key_is_checked_before_the_body_is_read(db: Db) {
    let s = common::start(db).await;
    let garbage = vec![b'{'; 64 * 1024];
    for path in [
        "/api/v1/notifications",
        "/api/v1/notifications/batch",
        "/api/v1/groups/org_5/events",
    ] {
        let (status, resp) = send(
            common::api()
                .post(s.http(path))
                .header("content-type", "application/json")
                .body(garbage.clone()),
        )
        .await;
        assert_error(
            status,
            &resp,
            401,
            &format!("garbage to {path} without a key"),
        );
        let (status, resp) = send(
            common::api()
                .post(s.http(path))
                .bearer_auth("wrong")
                .header("content-type", "application/json")
                .body("not json at all"),
        )
        .await;
        assert_error(
            status,
            &resp,
            401,
            &format!("garbage to {path} with a wrong key"),
        );
    }
    // A message far over the limit, with a wrong key: still 401.
    let big = json!({"user": "42", "message": "x".repeat(100 * 1024)});
    let (status, resp) = send(
        common::api()
            .post(s.http("/api/v1/notifications"))
            .bearer_auth("wrong")
            .json(&big),
    )
    .await;
    assert_error(status, &resp, 401, "oversized message with a wrong key");
}

/// Invalid JSON, missing `user` or `message`, bad user ids, wrong types and unknown
/// fields are 400 JSON errors, and store nothing.
async fn bad_bodies_are_400(db: Db) {
    let s = common::start(db).await;
    let long = "u".repeat(65);
    let bad_user = format!(r#"{{"user":"{long}","message":1}}"#);
    let cases: Vec<(&str, String)> = vec![
        ("invalid JSON", r#"{"user":"42","message":"#.into()),
        ("not JSON", "hello".into()),
        ("empty body", String::new()),
        ("array body", r#"[{"user":"42","message":1}]"#.into()),
        ("missing user", r#"{"message":{"a":1}}"#.into()),
        ("missing message", r#"{"user":"42"}"#.into()),
        ("user with a space", r#"{"user":"4 2","message":1}"#.into()),
        ("empty user", r#"{"user":"","message":1}"#.into()),
        ("user with a slash", r#"{"user":"a/b","message":1}"#.into()),
        ("65-character user", bad_user),
        ("numeric user", r#"{"user":42,"message":1}"#.into()),
        ("null user", r#"{"user":null,"message":1}"#.into()),
        (
            "unknown field",
            r#"{"user":"42","message":1,"priority":"high"}"#.into(),
        ),
        ("trailing garbage", r#"{"user":"42","message":1} x"#.into()),
    ];
    for (what, body) in &cases {
        let (status, resp) = post_raw(&s, "/api/v1/notifications", body.clone()).await;
        assert_error(status, &resp, 400, what);
    }
    let batch_cases: Vec<(&str, &str)> = vec![
        ("batch invalid JSON", r#"{"notifications":["#),
        ("batch missing notifications", r#"{}"#),
        (
            "batch not a list",
            r#"{"notifications":{"user":"42","message":1}}"#,
        ),
        (
            "batch unknown top-level field",
            r#"{"notifications":[{"user":"42","message":1}],"x":1}"#,
        ),
        (
            "batch item unknown field",
            r#"{"notifications":[{"user":"42","message":1,"x":1}]}"#,
        ),
        (
            "batch item missing message",
            r#"{"notifications":[{"user":"42","message":1},{"user":"42"}]}"#,
        ),
        (
            "batch item missing user",
            r#"{"notifications":[{"message":1}]}"#,
        ),
    ];
    for (what, body) in batch_cases {
        let (status, resp) = post_raw(&s, "/api/v1/notifications/batch", body).await;
        assert_error(status, &resp, 400, what);
    }
    assert!(
        listing(&s, "42", "").await.is_empty(),
        "a 400 stores nothing"
    );
}

/// A message over 16 KiB (the default) is 413 JSON and stored nothing; one under it
/// is accepted.
async fn oversized_message_is_413(db: Db) {
    let s = common::start(db).await;
    let (status, resp) = post(
        &s,
        "/api/v1/notifications",
        &json!({"user": "big", "message": {"text": "x".repeat(17 * 1024)}}),
    )
    .await;
    assert_error(status, &resp, 413, "17 KiB message");
    let (status, resp) = post(
        &s,
        "/api/v1/notifications",
        &json!({"user": "big", "message": "x".repeat(32 * 1024)}),
    )
    .await;
    assert_error(status, &resp, 413, "32 KiB string message");
    assert!(
        listing(&s, "big", "").await.is_empty(),
        "a 413 stores nothing"
    );

    let (status, resp) = post(
        &s,
        "/api/v1/notifications",
        &json!({"user": "big", "message": {"text": "x".repeat(15 * 1024)}}),
    )
    .await;
    assert_eq!(status, 201, "a 15 KiB message is accepted: {resp}");
    assert_eq!(listing(&s, "big", "").await.len(), 1);
}

/// `--max-message-bytes` lowers the limit: over it is 413 (single, batch, event),
/// under it is accepted.
async fn configured_max_message_bytes_is_honoured(db: Db) {
    let s = common::start_with(db, &["--max-message-bytes", "100"]).await;
    let over = json!({"text": "y".repeat(200)});
    let under = json!({"text": "y".repeat(50)});
    let (status, resp) = post(
        &s,
        "/api/v1/notifications",
        &json!({"user": "m", "message": over}),
    )
    .await;
    assert_error(status, &resp, 413, "200-byte message with a 100-byte limit");
    let (status, resp) = post(
        &s,
        "/api/v1/notifications/batch",
        &json!({"notifications": [{"user": "m", "message": under}, {"user": "m", "message": over}]}),
    )
    .await;
    assert_error(status, &resp, 413, "batch with a 200-byte message");
    let (status, resp) = post(&s, "/api/v1/groups/org_5/events", &json!({"payload": over})).await;
    assert_error(status, &resp, 413, "200-byte event payload");
    assert!(listing(&s, "m", "").await.is_empty());

    let (status, resp) = post(
        &s,
        "/api/v1/notifications",
        &json!({"user": "m", "message": under}),
    )
    .await;
    assert_eq!(status, 201, "{resp}");
    let (status, resp) = post(
        &s,
        "/api/v1/groups/org_5/events",
        &json!({"payload": under}),
    )
    .await;
    assert_eq!(status, 202, "{resp}");
}

/// Unknown routes are 404 with a JSON error.
async fn unknown_route_is_404(db: Db) {
    let s = common::start(db).await;
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v2/notifications",
        "/api/v1/users/42",
        "/api/v1/users/42/notifications/extra",
        "/api/v1/groups/org_5",
    ] {
        let (status, resp) = get(&s, path).await;
        assert_error(status, &resp, 404, &format!("GET {path}"));
    }
    let (status, resp) = post(&s, "/api/v1/groups/org_5/nope", &json!({"payload": 1})).await;
    assert_error(status, &resp, 404, "POST /api/v1/groups/org_5/nope");
}

/// A known route with the wrong method is 405 with a JSON error.
async fn wrong_method_is_405(db: Db) {
    let s = common::start(db).await;
    let cases = [
        ("GET", "/api/v1/notifications"),
        ("DELETE", "/api/v1/notifications"),
        ("GET", "/api/v1/notifications/batch"),
        ("PUT", "/api/v1/groups/org_5/events"),
        ("POST", "/api/v1/users/42/notifications"),
        ("DELETE", "/api/v1/users/42/presence"),
        ("POST", "/healthz"),
        ("POST", "/readyz"),
    ];
    for (method, path) in cases {
        let (status, resp) = send(
            common::api()
                .request(method.parse().unwrap(), s.http(path))
                .bearer_auth(API_KEY),
        )
        .await;
        assert_error(status, &resp, 405, &format!("{method} {path}"));
    }
}

/// `/healthz` and `/readyz` answer 200 on a serving node (no key needed).
async fn health_endpoints_answer_200(db: Db) {
    let s = common::start(db).await;
    for path in ["/healthz", "/readyz"] {
        let r = common::api().get(s.http(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {:?}", r.text().await);
    }
}

// ---------------------------------------------------------------------------------
// Store unreachable (PostgreSQL only: SQLite cannot be cut off)
// ---------------------------------------------------------------------------------

/// A node whose one pooled connection (`--db-pool 1`) is kept busy by queries that
/// complete stays ready. Four clients list notifications without pause while two
/// sessions of the test take turns holding a lock on the table, 0.75 s each, with
/// no gap between turns: each listing holds the connection until the next turn
/// (a waiting turn asks for the lock only halfway through the current one, after
/// the listing), then completes, so one listing completes every 0.75 s and the
/// other three wait 2.25 s for the connection, within the pool's 3 s acquire
/// timeout. A ping of the store probe's own would wait as long as they do, past its
/// 2 s limit; the probe counts the listings that complete instead, and `/readyz`
/// stays 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_saturated_pool_stays_ready() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const CLIENTS: usize = 4;
    const HOLD: Duration = Duration::from_millis(750);
    let s = Arc::new(common::start_with(Db::Postgres, &["--db-pool", "1"]).await);
    let url = s
        .storage
        .pg
        .as_ref()
        .expect("a PostgreSQL database")
        .url
        .clone();
    let stop = Arc::new(AtomicBool::new(false));

    // The two lock holders, half a turn apart: the node's listings wait for a turn
    // to end, then complete.
    let holders: Vec<_> = [Duration::ZERO, HOLD / 2]
        .into_iter()
        .map(|offset| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                tokio::time::sleep(offset).await;
                let mut turns = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let mut tx = conn.begin().await.unwrap();
                    sqlx::query("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tokio::time::sleep(HOLD).await;
                    tx.commit().await.unwrap();
                    turns += 1;
                    tokio::time::sleep(HOLD / 2).await;
                }
                turns
            })
        })
        .collect();
    let (answered, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (s, stop) = (s.clone(), stop.clone());
            let (answered, refused) = (answered.clone(), refused.clone());
            tokio::spawn(async move {
                let path = format!("/api/v1/users/busy{i}/notifications");
                while !stop.load(Ordering::Relaxed) {
                    match get(&s, &path).await {
                        (200, _) => answered.fetch_add(1, Ordering::Relaxed),
                        (status, body) => {
                            eprintln!("listing {i}: {status} {body}");
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    // Several probe periods, with the pool saturated from the start.
    let mut not_ready = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let status = status_of(s.http("/readyz")).await;
        if status != Some(200) {
            not_ready.push((started.elapsed(), status));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut turns = 0;
    for h in holders {
        turns += h.await.unwrap();
    }
    for c in clients {
        c.await.unwrap();
    }
    let (answered, refused) = (
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    // The pool really was saturated by queries that complete: each listing waited
    // for a turn of the lock, and they kept completing.
    assert!(turns >= 8, "the lock was taken {turns} times");
    assert!(answered >= 6, "{answered} listings answered");
    assert_eq!(refused, 0, "listings refused ({answered} answered)");
    assert!(
        not_ready.is_empty(),
        "/readyz was not 200 while queries completed: {not_ready:?}"
    );
}

/// With its PostgreSQL cut off, the node answers POSTs with 503 JSON, `/readyz` turns
/// 503 (and `/healthz` stays 200); once the database is back, `/readyz` is 200 again
/// and the listing holds exactly what got 201: nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_store_is_503_and_writes_nothing() {
    let s = common::start(Db::Postgres).await;
    let name = s
        .storage
        .pg
        .as_ref()
        .expect("a PostgreSQL database")
        .name
        .clone();
    let before = s.notify("cut", json!({"phase": "before"})).await;

    PgDb::admin_exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    PgDb::admin_exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;

    // Writes while cut off: 503 JSON, every time.
    for i in 0..3 {
        let (status, resp) = post(
            &s,
            "/api/v1/notifications",
            &json!({"user":"cut","message":{"phase":"during","i":i}}),
        )
        .await;
        assert_error(
            status,
            &resp,
            503,
            &format!("POST #{i} while the store is cut off"),
        );
        let (status, resp) = post(
            &s,
            "/api/v1/notifications/batch",
            &json!({"notifications":[
                {"user":"cut","message":{"phase":"during-batch","i":i}},
                {"user":"cut2","message":{"phase":"during-batch","i":i}}
            ]}),
        )
        .await;
        assert_error(
            status,
            &resp,
            503,
            &format!("batch #{i} while the store is cut off"),
        );
    }
    let (status, resp) = get(&s, "/api/v1/users/cut/notifications").await;
    assert_error(status, &resp, 503, "listing while the store is cut off");

    let readyz = s.http("/readyz");
    let down = eventually(Duration::from_secs(6), || {
        let u = readyz.clone();
        async move { status_of(u).await == Some(503) }
    })
    .await;
    assert!(down, "/readyz did not turn 503 while the store was cut off");
    assert_eq!(
        status_of(s.http("/healthz")).await,
        Some(200),
        "/healthz stays 200"
    );

    PgDb::admin_exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let up = eventually(Duration::from_secs(15), || {
        let u = readyz.clone();
        async move { status_of(u).await == Some(200) }
    })
    .await;
    assert!(
        up,
        "/readyz did not return to 200 after the store came back"
    );

    let after = s.notify("cut", json!({"phase": "after"})).await;
    assert!(after.id > before.id);
    let listed = listing(&s, "cut", "").await;
    assert_eq!(
        ids(&listed),
        vec![after.id, before.id],
        "only what got 201 is stored: {listed:?}"
    );
    assert!(
        listing(&s, "cut2", "").await.is_empty(),
        "no half-written batch"
    );
}
