//! Draining a node: readiness, refused upgrades, 1012 closes paced over the window,
//! and serving again.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, ADMIN_TOKEN, Client, Closed, Db, refused, start};

async fn admin_post(s: &common::TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = common::api()
        .post(s.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A drain flips readiness, refuses upgrades with 503 and Retry-After, closes every
/// connection with 1012 spread over the window, ends `drained`; undrain serves again.
#[tokio::test]
async fn drain_is_paced_and_undrain_serves_again() {
    let s = start(Db::Sqlite).await;
    const N: usize = 10;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(s.connect(&format!("u{i}")).await.0);
    }
    let window = 2.0;
    // Each client notes when its close frame arrives.
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (closed, _) = c.closed().await;
                (closed, Instant::now())
            })
        })
        .collect();
    let started = Instant::now();
    let (code, status) = admin_post(&s, "/admin/drain", json!({"window_s": 2})).await;
    assert_eq!(code, 202);
    assert_eq!(status["state"], "draining");

    let ready = common::api().get(s.http("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let url = s.ws_url(&format!("?token={}", s.token("late", &[], 60)));
    let (code, _, headers) = refused(&url, &[]).await;
    assert_eq!(code, 503);
    assert!(headers.contains_key("retry-after"));

    let mut closed_at = Vec::new();
    for w in waits {
        let (closed, at) = w.await.unwrap();
        match closed {
            Closed::Code(1012, reason) => assert!(reason.contains("another node")),
            other => panic!("expected 1012, got {other:?}"),
        }
        closed_at.push(at.duration_since(started).as_secs_f64());
    }
    closed_at.sort_by(f64::total_cmp);
    let spread = closed_at[N - 1] - closed_at[0];
    // Even pacing puts the last close at (N-1)/N of the window after the first.
    assert!(
        spread >= 0.7 * window * (N - 1) as f64 / N as f64,
        "closes bunched: {closed_at:?}"
    );
    assert!(
        closed_at[N - 1] <= window + 1.0,
        "drain overran its window: {closed_at:?}"
    );
    // No two halves of the window hold all closes: it is a trickle, not a burst.
    let first_half = closed_at.iter().filter(|t| **t < window / 2.0).count();
    assert!((3..=7).contains(&first_half), "uneven: {closed_at:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st: Value = s.admin_get("/admin/status").await;
        if st["state"] == "drained" {
            assert_eq!(st["connections"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, status) = admin_post(&s, "/admin/undrain", json!({})).await;
    assert_eq!((code, status["state"].as_str()), (200, Some("serving")));
    assert_eq!(
        common::api()
            .get(s.http("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    Client::connect(&url).await.expect("serving again");
}

/// The admin API refuses a missing or wrong token with 401, and serves the right one.
#[tokio::test]
async fn admin_requires_its_token() {
    let s = start(Db::Sqlite).await;
    let r = common::api()
        .get(s.admin_url("/admin/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = common::api()
        .get(s.admin_url("/admin/status"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("wrong")
    );
    let r = common::api()
        .post(s.admin_url("/admin/drain"))
        .json(&json!({"window_s": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let st: Value = s.admin_get("/admin/status").await;
    for key in [
        "node",
        "version",
        "state",
        "connections",
        "capacity",
        "fd_limit",
        "fd_open",
        "uptime_s",
        "redis",
        "store",
    ] {
        assert!(st.get(key).is_some(), "status lacks {key}: {st}");
    }
    assert_eq!(st["redis"], "off");
    assert_eq!(st["store"], "up");
    assert_eq!(st["state"], "serving");
}

/// Stopping the node (the SIGTERM path of `run`) closes open connections with 1012
/// and returns once they are gone.
#[tokio::test]
async fn shutdown_drains_then_returns() {
    let s = start(Db::Sqlite).await;
    let (mut c, _) = s.connect("42").await;
    let waiter = tokio::spawn(async move { c.closed().await.0 });
    s.stop().await.expect("clean stop");
    match waiter.await.unwrap() {
        Closed::Code(1012, _) => {}
        other => panic!("expected 1012, got {other:?}"),
    }
}
