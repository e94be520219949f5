//! Contract §8, the public listener: connections that never send a complete request
//! are closed after the header-read timeout, and connections that are not sessions
//! are bounded, over which a new one gets 503; neither gets in the way of health
//! checks and upgrades.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, Db};

/// Reads until the peer closes (EOF or reset); `false` if it is still open at
/// `deadline`.
async fn closed_by(mut s: TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// The status of `GET /healthz`, or 0 if the request failed.
async fn healthz(s: &common::TestServer) -> u16 {
    common::api()
        .get(s.http("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// One more connection sends its request and gets the over-bound answer (503,
/// `Retry-After: 1`, then closed at once), counted as a refusal.
async fn assert_refused_as_pending(s: &common::TestServer) {
    let mut over = TcpStream::connect(s.public).await.unwrap();
    over.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_string(&mut answer))
        .await
        .expect("answered and closed at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.to_lowercase().contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("too many pending connections"), "{answer}");
    assert!(s.metric("herald_pending_refused_total", &[]).await >= 1.0);
}

/// 500 connections that send one byte of a request head and then nothing are
/// closed by the node within 15 s (default header-read timeout, 10 s), while
/// `/healthz` and WebSocket upgrades keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_are_closed_and_the_node_keeps_serving() {
    // A bound above the 500 (the default depends on the open-file limit).
    let s = common::start_with(Db::Sqlite, &["--max-pending-connections", "1024"]).await;
    let started = tokio::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut c = TcpStream::connect(s.public).await.unwrap();
        c.write_all(b"G").await.unwrap();
        slow.push(c);
    }
    assert_eq!(healthz(&s).await, 200);
    let (mut client, _) = s.connect("42").await;
    let sent = s.notify("42", serde_json::json!("through")).await;
    assert_eq!(client.notifications(1).await[0].id, sent.id);

    let deadline = started + Duration::from_secs(15);
    let closed =
        futures_util::future::join_all(slow.into_iter().map(|c| closed_by(c, deadline))).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open, 0,
        "{open} of 500 slow connections still open after 15 s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed after {:?}: sooner than the timeout",
        started.elapsed()
    );
    // The session is not a slow connection: it is still open.
    let again = s.notify("42", serde_json::json!("still")).await;
    assert_eq!(client.notifications(1).await[0].id, again.id);
}

/// With a bound of 5 connections that are not sessions, a sixth gets 503 with
/// `Retry-After: 1` once it sent its request, and is closed; sessions do not
/// count, and a closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_pending_bound_get_503() {
    let s = common::start_with(Db::Sqlite, &["--max-pending-connections", "5"]).await;
    // WebSockets are sessions: more of them than the bound, all accepted.
    let mut sessions = Vec::new();
    for i in 0..8 {
        sessions.push(s.connect(&format!("u{i}")).await.0);
    }
    assert_eq!(healthz(&s).await, 200, "sessions hold no pending place");

    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(s.public).await.unwrap());
    }
    assert_refused_as_pending(&s).await;
    assert_eq!(s.metric("herald_pending_connections", &[]).await, 5.0);

    drop(idle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while healthz(&s).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "places never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sessions and pending connections share one descriptor budget, the open-file
/// limit minus the reserve, and neither is kept back from the other: with room for
/// four connections in all, four sessions fit; with three sessions open, one idle
/// connection may be pending and the next is refused with 503; closing a session
/// makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_pending_connections_share_the_descriptor_budget() {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0;
    let reserve = (limit - 4).to_string();
    let s = common::start_with(Db::Sqlite, &["--fd-reserve", &reserve]).await;
    assert_eq!(s.metric("herald_fd_limit", &[]).await, limit as f64);
    assert_eq!(
        s.metric("herald_connection_capacity", &[]).await,
        4.0,
        "the pending bound is not kept back from capacity"
    );

    let mut sessions = Vec::new();
    for i in 0..3 {
        sessions.push(s.connect(&format!("u{i}")).await.0);
    }
    // The harness's HTTP client may keep an idle connection from start-up: it is
    // pending too. Fill the budget's last place with one idle connection in all.
    let already = s.metric("herald_pending_connections", &[]).await as usize;
    assert!(already <= 1, "{already} pending before the test's own");
    let _idle: Vec<_> =
        futures_util::future::join_all((already..1).map(|_| TcpStream::connect(s.public))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.metric("herald_pending_connections", &[]).await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection is not pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_refused_as_pending(&s).await;

    drop(sessions.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while healthz(&s).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed session freed no room"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The header-read timeout is also the keep-alive idle timeout: a connection that
/// got its answer and sends nothing more is closed after it, not kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let s = common::start_with(Db::Sqlite, &["--header-timeout-s", "2"]).await;
    let mut c = TcpStream::connect(s.public).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        !answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    let answered = tokio::time::Instant::now();
    assert!(
        closed_by(c, answered + Duration::from_secs(6)).await,
        "an idle keep-alive connection still open 6 s after its answer"
    );
    assert!(
        answered.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}: sooner than the timeout",
        answered.elapsed()
    );
}
