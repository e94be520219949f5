//! Contract §3, bad input on an open connection: error frames that keep it open,
//! and the close codes 1003, 1008, 1009 and 1013. Bad bodies on the backend, SSE
//! and admin endpoints: a clear 400, and nothing written or published.

use std::time::Duration;

use futures_util::SinkExt;
use herald_shared::{ErrorCode, ServerFrame};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::both_stores;
use crate::common::{self, ADMIN_TOKEN, API_KEY, Db, start, start_with};

both_stores!(json_nested_over_64_levels_is_refused);

/// POSTs `body` as is to `url` with `token`; the status and the `{"error"}` text.
async fn post_raw(url: String, token: &str, body: &str) -> (u16, String) {
    let r = common::api()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    (status, v["error"].as_str().unwrap_or_default().to_owned())
}

async fn expect_error(c: &mut common::Client, want: ErrorCode) -> String {
    match c.frame().await {
        ServerFrame::Error { code, message } if code == want => message,
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

/// Invalid JSON, unknown types, missing and ill-typed fields each get `bad_request`,
/// and the connection stays open.
#[tokio::test]
async fn malformed_frames_get_bad_request_and_stay_open() {
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect("42").await;
    for bad in [
        "not json",
        "[1,2]",
        r#"{"type":"fly"}"#,
        r#"{"no_type":true}"#,
        r#"{"type":"mark_read"}"#,
        r#"{"type":"mark_read","ids":"1"}"#,
        r#"{"type":"mark_read","ids":[1,"2"]}"#,
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","group":5}"#,
    ] {
        c.send_text(bad).await;
        let msg = expect_error(&mut c, ErrorCode::BadRequest).await;
        assert!(!msg.is_empty(), "{bad}: the error says why");
    }
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.raw().await, json!({"type": "pong"}));
}

/// A text frame over the configured maximum closes with 1009.
#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let s = start_with(Db::Sqlite, &["--max-frame-bytes", "1024"]).await;
    let (mut c, _) = s.connect("42").await;
    // Just under the limit is served (unknown fields are ignored).
    c.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(900)))
        .await;
    assert_eq!(c.frame().await, ServerFrame::Pong);
    c.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(2000)
    ))
    .await;
    assert_eq!(c.close_code().await, 1009);

    // The default maximum is 64 KiB.
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect("42").await;
    c.send_text(&"x".repeat(60 * 1024)).await;
    expect_error(&mut c, ErrorCode::BadRequest).await;
    c.send_text(&"x".repeat(65 * 1024)).await;
    assert_eq!(c.close_code().await, 1009);
}

/// A binary frame closes with 1003.
#[tokio::test]
async fn binary_frame_closes_with_1003() {
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect("42").await;
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(c.close_code().await, 1003);
}

/// Past the rate (20/s, burst 40) frames get `rate_limited`; a client that keeps
/// going is closed with 1008.
#[tokio::test]
async fn frame_floods_are_limited_then_closed_with_1008() {
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect("42").await;
    for _ in 0..200 {
        if c.ws
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let (closed, frames) = c.closed().await;
    assert_eq!(closed.clone_code(), Some(1008), "{closed:?}");
    let pongs = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Pong))
        .count();
    let limited = frames
        .iter()
        .filter(|f| {
            matches!(
                f,
                ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            )
        })
        .count();
    // The burst (plus what refilled while sending) is served, then refusals, of
    // which only the first is answered.
    assert!((40..60).contains(&pongs), "pongs {pongs}");
    assert_eq!(limited, 1, "one rate_limited notice per window");
}

/// Sends a ping every `every` for at most `lasting`, while reading what comes back;
/// returns how the connection ended (`None`: still open), the frames sent, the
/// pongs, and when each `rate_limited` came, from the first frame sent.
async fn paced_pings(
    c: common::Client,
    every: Duration,
    lasting: Duration,
) -> (Option<u16>, usize, usize, Vec<Duration>) {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (mut tx, mut rx) = c.ws.split();
    let start = tokio::time::Instant::now();
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while start.elapsed() < lasting {
            tick.tick().await;
            if tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::SeqCst);
        }
        tx
    });
    let (mut pongs, mut limited) = (0, Vec::new());
    let deadline = start + lasting + Duration::from_secs(2);
    let end = loop {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) => break None,
            Ok(Some(Ok(Message::Text(t)))) => {
                match serde_json::from_str::<ServerFrame>(t.as_str()).unwrap() {
                    ServerFrame::Pong => pongs += 1,
                    ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    } => limited.push(start.elapsed()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => break Some(f.map_or(1005, |f| f.code.into())),
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break Some(1006),
        }
    };
    sender.abort();
    (end, sent.load(Ordering::SeqCst), pongs, limited)
}

/// 100 frames a second against 20/s: a token comes back every fifth frame, and the
/// client is still closed with 1008 (abuse is judged over a window, not refusals in
/// a row), within a bounded time, with one `rate_limited` notice per window at most.
/// A client just under the rate, on the same node, is never refused nor closed.
#[tokio::test]
async fn a_steady_flood_above_the_rate_is_closed_and_just_under_is_not() {
    let s = start(Db::Sqlite).await;
    let (flooder, _) = s.connect("42").await;
    let (steady, _) = s.connect("43").await;
    let flood = paced_pings(flooder, Duration::from_millis(10), Duration::from_secs(15));
    let under = paced_pings(
        steady,
        Duration::from_millis(1000 / 18),
        Duration::from_secs(12),
    );
    let ((end, _, pongs, limited), (steady_end, steady_sent, steady_pongs, steady_limited)) =
        tokio::join!(flood, under);

    assert_eq!(end, Some(1008), "flooder closed with 1008");
    assert!(pongs >= 40, "the burst was served: {pongs}");
    let window = Duration::from_secs(5);
    for pair in limited.windows(2) {
        assert!(
            pair[1] - pair[0] >= window,
            "two notices in one window: {limited:?}"
        );
    }
    assert!(!limited.is_empty(), "told once before the close");

    assert_eq!(steady_end, None, "the steady client is still open");
    assert!(
        steady_limited.is_empty(),
        "never refused: {steady_limited:?}"
    );
    assert!(steady_sent > 100, "well past the burst: {steady_sent}");
    assert_eq!(steady_pongs, steady_sent, "every ping answered");
    assert_eq!(
        s.metric("herald_disconnects_total", &[("code", "1008")])
            .await,
        1.0
    );
}

/// This process's resident memory in bytes: the node under test runs in it.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// 200 sockets resume from 0 for a user with 4.5 MB of large stored notifications,
/// then never read, while 9 MB more are published to them. Each holds its opening write (at most 1 MiB of notifications per
/// frame, and a write buffer of 8 KiB plus one frame), so the node's memory grows
/// by a bounded amount per socket, not by what the user has stored; /healthz keeps
/// answering; and each socket is closed as a slow consumer (1013) once its write
/// outlasts the queue expiry.
///
/// The node runs in this test process, so RSS is the process's: other tests running
/// beside it add to it, hence a loose bound (3 MiB a socket, where the unbounded
/// frames were about 10 MB a socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_read_keep_the_node_bounded_and_end_with_1013() {
    const SOCKETS: usize = 200;
    let s = start_with(
        Db::Sqlite,
        &[
            "--max-connections-per-user",
            "200",
            "--queue-expiry-ms",
            "3000",
        ],
    )
    .await;
    let big = "x".repeat(15_000);
    for _ in 0..6 {
        let items: Vec<_> = (0..50)
            .map(|_| json!({"user": "42", "message": big}))
            .collect();
        s.notify_batch(items).await;
    }
    let before = rss();
    let url = s.ws_url(&format!("?token={}&after=0", s.token("42", &[], 600)));
    let mut sockets = Vec::with_capacity(SOCKETS);
    let mut peak = before;
    for _ in 0..SOCKETS {
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("upgrade accepted");
        sockets.push(ws);
        peak = peak.max(rss());
    }
    // The kernel's socket buffers (up to 4 MB a socket for sending, with
    // net.ipv4.tcp_wmem's default maximum) took the openings; 9 MB of live
    // notifications fill them, and the writes stall.
    for _ in 0..12 {
        let items: Vec<_> = (0..50)
            .map(|_| json!({"user": "42", "message": big}))
            .collect();
        s.notify_batch(items).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        peak = peak.max(rss());
        let health = tokio::time::timeout(
            Duration::from_secs(5),
            common::api().get(s.http("/healthz")).send(),
        )
        .await
        .expect("/healthz answers while the sockets sit")
        .unwrap();
        assert_eq!(health.status(), 200);
        let closed = s
            .metric("herald_disconnects_total", &[("code", "1013")])
            .await;
        if closed as usize == SOCKETS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{closed} of {SOCKETS} closed as slow consumers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = peak.saturating_sub(before);
    println!("RSS grew by {} MiB at most", grown >> 20);
    assert!(
        grown < (SOCKETS as u64) * 3 * 1024 * 1024,
        "RSS grew by {} MiB for {SOCKETS} sockets",
        grown >> 20
    );
    drop(sockets);
}

/// A client whose queue overflows is closed with 1013, and resuming with `after`
/// gets every notification it did not receive: nothing stored is lost.
#[tokio::test]
async fn queue_overflow_closes_with_1013_and_resume_loses_nothing() {
    let s = start_with(Db::Sqlite, &["--queue-capacity", "5"]).await;
    let (mut c, _) = s.connect("42").await;
    let items: Vec<_> = (0..300)
        .map(|i| json!({"user": "42", "message": {"n": i}}))
        .collect();
    let all = s.notify_batch(items).await;

    let (closed, frames) = c.closed().await;
    assert_eq!(closed.clone_code(), Some(1013), "{closed:?}");
    let mut got: Vec<i64> = frames
        .iter()
        .map(|f| match f {
            ServerFrame::Notification { notification } => notification.id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(
        got.len() < all.len(),
        "the queue overflowed before everything was sent"
    );
    let last = got.last().copied().unwrap_or(0);
    let (mut c, _) = s.connect_with("42", &[], Some(last)).await;
    match c.frame().await {
        ServerFrame::Missed { notifications, .. } => got.extend(notifications.iter().map(|n| n.id)),
        other => panic!("expected missed, got {other:?}"),
    }
    assert_eq!(got, all, "received + replayed = everything, once, in order");
    assert_eq!(
        s.metric("herald_slow_consumer_disconnects_total", &[])
            .await,
        1.0
    );
}

/// A client that stops reading until its oldest queued frame is older than the
/// expiry is dropped as a slow consumer; it then resumes without loss.
#[tokio::test]
async fn stalled_reader_is_dropped_after_expiry_and_resumes() {
    let s = start_with(
        Db::Sqlite,
        &["--queue-expiry-ms", "300", "--max-message-bytes", "65536"],
    )
    .await;
    let (mut c, _) = s.connect("42").await;
    // Big messages fill the socket buffers quickly; the client reads nothing meanwhile.
    let big = "y".repeat(60_000);
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s
        .metric("herald_slow_consumer_disconnects_total", &[])
        .await
        == 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never detected as slow"
        );
        let items: Vec<_> = (0..20)
            .map(|_| json!({"user": "42", "message": big}))
            .collect();
        all.extend(s.notify_batch(items).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Now read what did arrive, then resume.
    let (_, frames) = c.closed().await;
    let mut got: Vec<i64> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Notification { notification } => Some(notification.id),
            _ => None,
        })
        .collect();
    // Resume from the last id, and again while `missed` is truncated (1 MiB a frame).
    loop {
        let last = got.last().copied().unwrap_or(0);
        let (mut c, _) = s.connect_with("42", &[], Some(last)).await;
        match c.frame().await {
            ServerFrame::Missed {
                notifications,
                truncated,
            } => {
                got.extend(notifications.iter().map(|n| n.id));
                if !truncated {
                    break;
                }
            }
            other => panic!("expected missed, got {other:?}"),
        }
    }
    assert_eq!(got, all);
}

/// Every body and command frame is a JSON object with named fields: the positional
/// arrays serde's derives would read (`["u1", {"text": 1}]` for `{"user", "message"}`)
/// get 400 (`bad_request` on a socket) saying an object was expected, at the top and
/// inside batches, and nothing is stored or published. The same requests as objects
/// succeed.
#[tokio::test]
async fn bodies_and_frames_must_be_objects_not_arrays() {
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect("u1").await;
    let api = |p: &str| s.http(&format!("/api/v1{p}"));
    for (url, token, body) in [
        (api("/notifications"), API_KEY, r#"["u1", {"text": 1}]"#),
        (
            api("/notifications/batch"),
            API_KEY,
            r#"[[["u1", {"text": 1}]]]"#,
        ),
        (
            api("/notifications/batch"),
            API_KEY,
            r#"{"notifications": [["u1", {"text": 1}]]}"#,
        ),
        (api("/groups/user_u1/events"), API_KEY, "[1]"),
        (api("/events/batch"), API_KEY, r#"[[["user_u1", 1]]]"#),
        (
            api("/events/batch"),
            API_KEY,
            r#"{"events": [["user_u1", 1]]}"#,
        ),
        (s.admin_url("/admin/drain"), ADMIN_TOKEN, "[5]"),
    ] {
        let (status, error) = post_raw(url.clone(), token, body).await;
        assert_eq!(status, 400, "{url} {body}: {error}");
        assert!(
            error.contains("expected a JSON object"),
            "{url} {body}: {error}"
        );
    }
    let sse = s.token("u1", &[], 600);
    let (status, error) =
        post_raw(s.http("/sse/notifications/commands"), &sse, r#"["ping"]"#).await;
    assert_eq!(
        (status, error.contains("expected a JSON object")),
        (400, true),
        "{error}"
    );
    c.send_text(r#"["ping"]"#).await;
    let msg = expect_error(&mut c, ErrorCode::BadRequest).await;
    assert!(msg.contains("expected a JSON object"), "{msg}");

    // Nothing was stored, published or drained.
    c.silent_for(Duration::from_millis(300)).await;
    assert_eq!(
        s.api_get("/api/v1/users/u1/notifications").await["notifications"],
        json!([])
    );
    assert_eq!(s.admin_get("/admin/status").await["state"], "serving");

    // The same, as objects.
    s.event("user_u1", json!(1)).await;
    assert_eq!(
        c.raw().await,
        json!({"type": "event", "group": "user_u1", "payload": 1})
    );
    let n = s.notify("u1", json!({"text": 1})).await;
    assert_eq!(
        c.frame().await,
        ServerFrame::Notification { notification: n }
    );
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.frame().await, ServerFrame::Pong);
}

/// `n` arrays inside one another around `1`: JSON nested `n` levels deep.
fn nested(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

/// A message or payload nested 65 levels deep gets 400 naming the depth, on every
/// endpoint that carries backend JSON, and nothing of its request is stored or
/// published (deeper still, past the store's own JSON limits, the same 400); 64
/// levels are accepted, stored as sent, and delivered.
async fn json_nested_over_64_levels_is_refused(db: Db) {
    let s = start(db).await;
    let (mut c, _) = s.connect("u1").await;
    let api = |p: &str| s.http(&format!("/api/v1{p}"));
    let (ok, deep, deepest) = (nested(64), nested(65), nested(5000));
    for too_deep in [&deep, &deepest] {
        for (url, body, what) in [
            (
                api("/notifications"),
                format!(r#"{{"user":"u1","message":{too_deep}}}"#),
                "message",
            ),
            (
                api("/notifications/batch"),
                format!(
                    r#"{{"notifications":[{{"user":"u1","message":1}},{{"user":"u1","message":{too_deep}}}]}}"#
                ),
                "notifications[1].message",
            ),
            (
                api("/groups/user_u1/events"),
                format!(r#"{{"payload":{too_deep}}}"#),
                "payload",
            ),
            (
                api("/events/batch"),
                format!(
                    r#"{{"events":[{{"group":"user_u1","payload":1}},{{"group":"user_u1","payload":{too_deep}}}]}}"#
                ),
                "events[1].payload",
            ),
        ] {
            let (status, error) = post_raw(url.clone(), API_KEY, &body).await;
            assert_eq!(status, 400, "{url}: {error}");
            assert!(
                error.starts_with(&format!("{what} nests "))
                    && error.ends_with("levels deep; the maximum is 64"),
                "{url}: {error}"
            );
        }
    }
    let embedded: serde_json::Value = serde_json::from_str(&deep).unwrap();
    assert!(
        s.herald.notify("u1", &embedded).await.is_err(),
        "embedding API too"
    );
    c.silent_for(Duration::from_millis(300)).await;
    assert_eq!(
        s.api_get("/api/v1/users/u1/notifications").await["notifications"],
        json!([])
    );

    let (status, _) = post_raw(
        api("/groups/user_u1/events"),
        API_KEY,
        &format!(r#"{{"payload":{ok}}}"#),
    )
    .await;
    assert_eq!(status, 202);
    let (status, body) = post_raw(
        api("/notifications"),
        API_KEY,
        &format!(r#"{{"user":"u1","message":{ok}}}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = post_raw(
        api("/notifications/batch"),
        API_KEY,
        &format!(r#"{{"notifications":[{{"user":"u1","message":{ok}}}]}}"#),
    )
    .await;
    assert_eq!(status, 201);
    match c.frame().await {
        ServerFrame::Event { payload, .. } => assert_eq!(payload.get(), ok),
        other => panic!("expected the event, got {other:?}"),
    }
    for n in c.notifications(2).await {
        assert_eq!(n.message.get(), ok);
    }
    let listed = s.api_get("/api/v1/users/u1/notifications").await;
    assert_eq!(listed["notifications"].as_array().unwrap().len(), 2);
}
