//! `GET /sse/notifications/` and `POST /sse/notifications/commands` (PROTOCOL.md 3.12):
//! the WebSocket's rules over Server-Sent Events, read by `curl -N` and by a streaming
//! HTTP client.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::both_stores;
use crate::common::{self, ADMIN_TOKEN, Db, TestServer, start, start_with};

both_stores!(
    curl_receives_the_opening_and_live_notifications_and_resumes_by_last_event_id,
    an_sse_stream_resumes_from_after_and_the_newer_of_after_and_last_event_id,
);

/// One Server-Sent Event (or a comment, as kind `:`).
#[derive(Debug)]
struct Event {
    kind: String,
    id: Option<i64>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// An open stream, read event by event.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(s: &TestServer, query: &str, headers: &[(&str, &str)]) -> Self {
        match Self::try_open(s, query, headers).await {
            Ok(st) => st,
            Err((code, body, _)) => panic!("stream refused with {code}: {body}"),
        }
    }

    async fn try_open(
        s: &TestServer,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, (u16, Value, HeaderMap)> {
        let mut req = common::api().get(s.http(&format!("/sse/notifications/{query}")));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        if resp.status() != 200 {
            let code = resp.status().as_u16();
            let h = resp.headers().clone();
            return Err((code, resp.json().await.unwrap(), h));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Self {
            resp,
            buf: String::new(),
        })
    }

    /// The next event or comment; `None` when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event {
                    kind: String::new(),
                    id: None,
                    data: String::new(),
                };
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        ev.kind = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    } else if line.starts_with(':') {
                        ev.kind = ":".into();
                    }
                }
                ev.data = data.join("\n");
                if !ev.kind.is_empty() {
                    return Some(ev);
                }
                // A `retry:` block alone: nothing to hand out.
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream read");
            match chunk {
                Some(c) => self.buf.push_str(std::str::from_utf8(&c).unwrap()),
                None => return None,
            }
        }
    }

    /// The next event that is not a heartbeat comment.
    async fn event(&mut self) -> Event {
        loop {
            let ev = self.next().await.expect("stream still open");
            if ev.kind != ":" {
                return ev;
            }
        }
    }

    /// Reads `welcome`, `initial_state` (and `missed` when `resuming`); returns the
    /// opening frames' JSON.
    async fn opening(&mut self, resuming: bool) -> Vec<Value> {
        let mut frames = Vec::new();
        for kind in ["welcome", "initial_state", "missed"] {
            if kind == "missed" && !resuming {
                break;
            }
            let ev = self.event().await;
            assert_eq!(ev.kind, kind, "{ev:?}");
            assert_eq!(ev.json()["type"], kind, "the data is the WebSocket frame");
            frames.push(ev.json());
        }
        frames
    }
}

fn ids(frame: &Value) -> Vec<i64> {
    frame["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect()
}

/// `curl -N` on a stream, read event by event (each as curl printed it).
struct Curl {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Curl {
    fn open(url: &str, headers: &[&str]) -> Self {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.arg("-sN").arg(url);
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("curl is installed (.ci/run installs it)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            lines,
        }
    }

    /// The next event's lines (a `retry:` block alone is skipped).
    async fn event(&mut self) -> String {
        let mut block = String::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
                .await
                .expect("curl printed an event within 10 s")
                .unwrap()
                .expect("curl's stream still open");
            if !line.is_empty() {
                block.push_str(&line);
                block.push('\n');
            } else if block.contains("event: ") {
                return block;
            } else {
                block.clear();
            }
        }
    }
}

/// The JSON of an event as curl printed it.
fn data(event: &str) -> Value {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    serde_json::from_str(&lines.join("\n")).unwrap()
}

/// `curl -N` is a client: it prints the opening frames and live notifications whose
/// event id is the notification's; a second curl sending the last id it saw as
/// `Last-Event-ID` gets exactly what was published in between, in `missed`.
async fn curl_receives_the_opening_and_live_notifications_and_resumes_by_last_event_id(db: Db) {
    let s = start(db).await;
    let old = s.notify("42", json!({"text": "before"})).await;
    let url = s.http(&format!(
        "/sse/notifications/?token={}",
        s.token("42", &[], 600)
    ));
    let mut curl = Curl::open(&url, &[]);
    let welcome = curl.event().await;
    assert!(
        welcome.starts_with("event: welcome\ndata: {\"type\":\"welcome\""),
        "{welcome}"
    );
    let initial = curl.event().await;
    assert!(
        initial.starts_with(&format!("event: initial_state\nid: {}\n", old.id)),
        "initial_state carries the newest id it holds: {initial}"
    );
    assert_eq!(data(&initial)["unread_count"], 1);
    // A message whose JSON holds a line break arrives byte for byte.
    let raw = "{\"text\":\n \"live\"}";
    let r = common::api()
        .post(s.http("/api/v1/notifications"))
        .bearer_auth(common::API_KEY)
        .body(format!(r#"{{"user":"42","message":{raw}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let live: Value = r.json().await.unwrap();
    let ev = curl.event().await;
    assert!(
        ev.starts_with(&format!("event: notification\nid: {}\n", live["id"])),
        "{ev}"
    );
    let lines: Vec<&str> = ev
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(lines.join("\n").contains(raw), "message bytes kept: {ev}");
    drop(curl);

    // Missed while away: exactly the two published after the last id seen.
    let a = s.notify("42", json!({"text": "away 1"})).await;
    let b = s.notify("42", json!({"text": "away 2"})).await;
    let mut curl = Curl::open(&url, &[&format!("Last-Event-ID: {}", live["id"])]);
    assert!(curl.event().await.starts_with("event: welcome"));
    assert!(curl.event().await.starts_with("event: initial_state"));
    let missed = curl.event().await;
    assert!(
        missed.starts_with(&format!("event: missed\nid: {}\n", b.id)),
        "{missed}"
    );
    assert_eq!(ids(&data(&missed)), vec![a.id, b.id]);
}

/// `after` works as on the WebSocket; with both, the newer of `after` and
/// `Last-Event-ID` wins (EventSource sends the id it saw with the URL it first used).
async fn an_sse_stream_resumes_from_after_and_the_newer_of_after_and_last_event_id(db: Db) {
    let s = start(db).await;
    let n: Vec<i64> = s
        .notify_batch((0..4).map(|i| json!({"user": "7", "message": i})).collect())
        .await;
    let token = s.token("7", &[], 600);
    let mut st = Stream::open(&s, &format!("?token={token}&after={}", n[0]), &[]).await;
    let opening = st.opening(true).await;
    assert_eq!(ids(&opening[2]), n[1..].to_vec());
    let last = n[2].to_string();
    let mut st = Stream::open(
        &s,
        &format!("?token={token}&after={}", n[0]),
        &[("last-event-id", &last)],
    )
    .await;
    assert_eq!(ids(&st.opening(true).await[2]), vec![n[3]]);
    let mut st = Stream::open(
        &s,
        &format!("?token={token}&after={}", n[3]),
        &[("last-event-id", &n[0].to_string())],
    )
    .await;
    assert_eq!(ids(&st.opening(true).await[2]), Vec::<i64>::new());
}

/// Every refusal of the WebSocket upgrade, with the same status and body, plus the
/// stream's own: a bad `Last-Event-ID`, and `groups` the token does not allow.
#[tokio::test]
async fn bad_requests_get_the_websocket_refusals() {
    let s = start_with(Db::Sqlite, &["--allowed-origins", "https://app.example"]).await;
    let token = s.token("42", &["org_5"], 600);
    /// Query, headers, status, and a piece of the error text.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("".into(), vec![], 401, "missing token"),
        ("?token=nope".into(), vec![], 401, "malformed token"),
        (
            format!("?token={token}&after=-1"),
            vec![],
            400,
            "after must be",
        ),
        (
            format!("?token={token}"),
            vec![("last-event-id", "x")],
            400,
            "Last-Event-ID",
        ),
        (
            format!("?token={token}&groups=org_6"),
            vec![],
            403,
            "does not allow group org_6",
        ),
        (
            format!("?token={token}&groups=bad%20name"),
            vec![],
            400,
            "groups",
        ),
        (
            format!("?token={token}"),
            vec![("origin", "https://evil.example")],
            403,
            "origin",
        ),
    ];
    for (query, headers, code, text) in cases {
        let Err((got, body, _)) = Stream::try_open(&s, &query, &headers).await else {
            panic!("{query} {headers:?} was accepted");
        };
        assert_eq!(got, code, "{query} {headers:?}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(text), "{query}: {error:?} lacks {text:?}");
    }
    // An allowed origin is fine, and so are the token's own groups.
    let mut st = Stream::open(
        &s,
        &format!("?token={token}&groups=org_5,user_42"),
        &[("origin", "https://app.example")],
    )
    .await;
    st.opening(false).await;
}

/// Events reach the groups chosen at open (token-allowed), and no other group's;
/// with no `groups` at all, every group of the token.
#[tokio::test]
async fn events_reach_the_groups_chosen_when_the_stream_opened() {
    let s = start(Db::Sqlite).await;
    let token = s.token("42", &["org_5", "org_6"], 600);
    let mut all = Stream::open(&s, &format!("?token={token}"), &[]).await;
    all.opening(false).await;
    let mut none = Stream::open(&s, &format!("?token={token}&groups="), &[]).await;
    none.opening(false).await;
    s.event("org_6", json!("org_6")).await;
    s.event("org_5", json!("org_5")).await;
    s.event("user_42", json!("mine")).await;
    for want in ["org_6", "org_5", "mine"] {
        assert_eq!(all.event().await.json()["payload"], want);
    }
    let ev = none.event().await;
    assert_eq!(
        ev.json()["payload"],
        "mine",
        "groups= joins no extra group: {ev:?}"
    );

    let mut st = Stream::open(&s, &format!("?token={token}&groups=org_5"), &[]).await;
    st.opening(false).await;
    s.event("org_6", json!("not joined")).await;
    s.event("org_5", json!({"n": 1})).await;
    s.event("user_42", json!({"n": 2})).await;
    for want in [json!({"n": 1}), json!({"n": 2})] {
        let ev = st.event().await;
        assert_eq!((ev.kind.as_str(), ev.id), ("event", None), "{ev:?}");
        assert_eq!(ev.json()["payload"], want);
    }
}

/// The command endpoint answers a client frame with its WebSocket reply, and every
/// bad request with a status and `{"error"}`, marking nothing.
#[tokio::test]
async fn commands_answer_like_the_websocket_and_refuse_bad_input() {
    let s = start(Db::Sqlite).await;
    let n1 = s.notify("42", json!(1)).await;
    let n2 = s.notify("42", json!(2)).await;
    let other = s.notify("43", json!(3)).await;
    let token = s.token("42", &[], 600);
    let post = |body: String, token: Option<String>| {
        let mut req = common::api()
            .post(s.http("/sse/notifications/commands"))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let t = || Some(token.clone());
    for (body, token, code, text) in [
        (r#"{"type":"ping"}"#.to_owned(), None, 401, "missing token"),
        (
            r#"{"type":"ping"}"#.to_owned(),
            Some("x.y.z".into()),
            401,
            "token",
        ),
        ("not json".to_owned(), t(), 400, "expected"),
        (r#"{"ids":[1]}"#.to_owned(), t(), 400, "no \"type\""),
        (
            r#"{"type":"subscribe","group":"org_5"}"#.to_owned(),
            t(),
            400,
            "groups=",
        ),
        (
            r#"{"type":"unsubscribe","group":"org_5"}"#.to_owned(),
            t(),
            400,
            "groups=",
        ),
        (
            format!(r#"{{"type":"mark_read","ids":{:?}}}"#, vec![1; 1001]),
            t(),
            400,
            "at most 1000",
        ),
    ] {
        let (got, body_json) = post(body.clone(), token).await;
        assert_eq!(got, code, "{body}: {body_json}");
        assert!(
            body_json["error"].as_str().unwrap().contains(text),
            "{body}: {body_json} lacks {text:?}"
        );
    }
    let unread = s
        .api_get("/api/v1/users/42/notifications?unread=true")
        .await;
    assert_eq!(
        unread["notifications"].as_array().unwrap().len(),
        2,
        "nothing marked"
    );

    assert_eq!(
        post(r#"{"type":"ping"}"#.into(), t()).await,
        (200, json!({"type":"pong"}))
    );
    let (code, reply) = post(
        format!(r#"{{"type":"mark_read","ids":[{},{}]}}"#, n1.id, other.id),
        t(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        reply,
        json!({"type":"marked_read","ids":[n1.id],"unread_count":1}),
        "another user's id is left out"
    );
    let (code, reply) = post(r#"{"type":"mark_all_read"}"#.into(), t()).await;
    assert_eq!(
        (code, reply),
        (
            200,
            json!({"type":"marked_read","all":true,"unread_count":0})
        )
    );
    let unread = s
        .api_get("/api/v1/users/42/notifications?unread=true")
        .await;
    assert_eq!(unread["notifications"], json!([]), "{} marked too", n2.id);
}

/// A paced drain closes streams like sockets: spread over the window, each with a
/// `close` event carrying 1012; the node then refuses new streams with 503 and
/// `Retry-After`.
#[tokio::test]
async fn a_drain_closes_streams_paced_with_1012() {
    let s = start(Db::Sqlite).await;
    let mut streams = Vec::new();
    for u in 0..4 {
        let mut st = Stream::open(
            &s,
            &format!("?token={}", s.token(&u.to_string(), &[], 600)),
            &[],
        )
        .await;
        st.opening(false).await;
        streams.push(st);
    }
    let started = Instant::now();
    let r = common::api()
        .post(s.admin_url("/admin/drain"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"window_s": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Each stream read on its own task, so each close is timed as it arrives.
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut st| {
            tokio::spawn(async move {
                let ev = st.event().await;
                let at = started.elapsed();
                assert_eq!(ev.kind, "close");
                assert_eq!(ev.json()["code"], 1012, "{ev:?}");
                assert!(st.next().await.is_none(), "the stream ends after close");
                at
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for r in readers {
        closed_at.push(r.await.unwrap());
    }
    closed_at.sort();
    let spread = closed_at[3] - closed_at[0];
    assert!(
        spread >= Duration::from_millis(900),
        "closes spread over the 2 s window, not at once: {closed_at:?}"
    );
    let Err((code, body, headers)) =
        Stream::try_open(&s, &format!("?token={}", s.token("9", &[], 600)), &[]).await
    else {
        panic!("a draining node accepted a stream");
    };
    assert_eq!(code, 503, "{body}");
    assert_eq!(headers["retry-after"], "5");
    // A plain GET of the WebSocket URL (a browser client's diagnostic) reads it too.
    let r = common::api()
        .get(
            s.ws_url(&format!("?token={}", s.token("9", &[], 600)))
                .replace("ws://", "http://"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
}

/// The token's expiry ends the stream with a `close` event carrying 1008; the
/// heartbeat is a comment line every `heartbeat_s`.
#[tokio::test]
async fn heartbeats_are_comments_and_expiry_closes_with_1008() {
    let s = start_with(Db::Sqlite, &["--heartbeat-s", "1"]).await;
    let mut st = Stream::open(&s, &format!("?token={}", s.token("42", &[], 3)), &[]).await;
    st.opening(false).await;
    let mut comments = 0;
    let close = loop {
        let ev = st.next().await.expect("open until the close event");
        if ev.kind == ":" {
            comments += 1;
        } else {
            break ev;
        }
    };
    assert!(comments >= 1, "a heartbeat before the token expired");
    let metrics = s.metrics_text().await;
    assert!(metrics.contains("herald_sse_streams_total 1"), "{metrics}");
    assert_eq!(close.kind, "close");
    assert_eq!(close.json()["code"], 1008);
    assert!(
        close.json()["reason"]
            .as_str()
            .unwrap()
            .contains("token expired")
    );
}

/// Streams count against capacity like sockets: at capacity, 503 with `Retry-After: 1`.
#[tokio::test]
async fn streams_count_against_capacity() {
    let s = start_with(Db::Sqlite, &["--max-connections", "1"]).await;
    let mut st = Stream::open(&s, &format!("?token={}", s.token("1", &[], 600)), &[]).await;
    st.opening(false).await;
    let Err((code, body, headers)) =
        Stream::try_open(&s, &format!("?token={}", s.token("2", &[], 600)), &[]).await
    else {
        panic!("a full node accepted a stream");
    };
    assert_eq!(code, 503);
    assert!(body["error"].as_str().unwrap().contains("capacity"));
    assert_eq!(headers["retry-after"], "1");
}

/// A stream is a session: it does not hold a place among the pending connections
/// (more streams than the bound open), and the header-read timeout does not end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_sessions_for_the_listener() {
    let s = start_with(
        Db::Sqlite,
        &["--max-pending-connections", "2", "--header-timeout-s", "1"],
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut st = Stream::open(&s, &format!("?token={}", s.token("7", &[], 600)), &[]).await;
        st.opening(false).await;
        streams.push(st);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let sent = s.notify("7", json!("past the timeout")).await;
    for st in &mut streams {
        let ev = st.event().await;
        assert_eq!(ev.kind, "notification", "{ev:?}");
        assert_eq!(ev.id, Some(sent.id));
    }
}

/// One user may hold at most `HERALD_MAX_CONNECTIONS_PER_USER` connections on a
/// node, sockets and streams counted together: one more is refused with 429 and a
/// JSON reason on either transport (and to a plain GET of the upgrade URL), while
/// other users still connect, and a closed connection frees its place.
#[tokio::test]
async fn one_user_is_capped_across_sockets_and_streams() {
    let s = start_with(Db::Sqlite, &["--max-connections-per-user", "3"]).await;
    let token = s.token("42", &[], 600);
    let (ws_a, _) = s.connect("42").await;
    let (_ws_b, _) = s.connect("42").await;
    let mut st = Stream::open(&s, &format!("?token={token}"), &[]).await;
    st.opening(false).await;

    let (code, body, _) = common::refused(&s.ws_url(&format!("?token={token}")), &[]).await;
    assert_eq!(code, 429, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("connections"),
        "{body}"
    );
    let Err((code, body, _)) = Stream::try_open(&s, &format!("?token={token}"), &[]).await else {
        panic!("a fourth connection of the user was accepted as a stream");
    };
    assert_eq!(code, 429, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("connections"),
        "{body}"
    );
    assert_eq!(
        s.metric("herald_upgrades_refused_total", &[("code", "429")])
            .await,
        2.0
    );

    // A plain GET of the upgrade URL (a browser client's diagnostic, its WebSocket
    // hides the status) reads the same 429, and takes no place; another user's reads
    // the 400 of a request that is not an upgrade.
    let plain = |token: String| {
        common::api()
            .get(s.http(&format!("/ws/notifications/?token={token}")))
            .send()
    };
    let r = plain(token.clone()).await.unwrap();
    assert_eq!(r.status(), 429);
    let diagnosed: Value = r.json().await.unwrap();
    assert_eq!(diagnosed["error"], body["error"]);
    let r = plain(s.token("43", &[], 600)).await.unwrap();
    assert_eq!(r.status(), 400, "{:?}", r.text().await);

    // Another user is not affected.
    let (_other, _) = s.connect("43").await;
    // Closing one of the three frees a place, once its session is cleaned up.
    drop(ws_a);
    let url = s.ws_url(&format!("?token={token}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while common::Client::connect(&url).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "place never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that stops reading is a slow consumer: once its queue overflows, the
/// stream is closed and counted under 1013, and a resume gets everything.
#[tokio::test]
async fn a_stream_that_is_not_read_is_closed_as_a_slow_consumer() {
    let s = start_with(
        Db::Sqlite,
        &["--queue-capacity", "4", "--queue-expiry-ms", "1000"],
    )
    .await;
    let token = s.token("42", &[], 600);
    let mut tcp = tokio::net::TcpStream::connect(s.public).await.unwrap();
    tcp.write_all(
        format!("GET /sse/notifications/?token={token} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // Wait until the stream is registered, then never read again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.admin_get("/admin/status").await["connections"] != 1 {
        assert!(Instant::now() < deadline, "stream never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let big = "x".repeat(16_000);
    let mut published = Vec::new();
    for _ in 0..20 {
        published.extend(
            s.notify_batch(
                (0..20)
                    .map(|_| json!({"user": "42", "message": big}))
                    .collect(),
            )
            .await,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = s.metrics_text().await;
        if text.contains(r#"herald_disconnects_total{code="1013"} 1"#) {
            break;
        }
        assert!(Instant::now() < deadline, "no 1013 within 15 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(tcp);
    // 6.4 MB of notifications: `missed` is truncated at 1 MiB, and the client
    // resumes from its last id until it is not.
    let (mut resumed, mut after) = (Vec::new(), 0);
    loop {
        let mut st = Stream::open(&s, &format!("?token={token}&after={after}"), &[]).await;
        let opening = st.opening(true).await;
        resumed.extend(ids(&opening[2]));
        after = *resumed.last().unwrap();
        if opening[2].get("truncated").is_none() {
            break;
        }
    }
    assert_eq!(resumed, published, "everything published is in the resumes");
}

/// Pages on other origins may call the client endpoints (no credentials: tokens are
/// bearer tokens); with an allow-list, only its origins.
#[tokio::test]
async fn cors_preflight_follows_the_allowed_origins() {
    let s = start_with(Db::Sqlite, &["--allowed-origins", "https://app.example"]).await;
    let preflight = |origin: &'static str| {
        common::api()
            .request(
                reqwest::Method::OPTIONS,
                s.http("/sse/notifications/commands"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let no = preflight("https://evil.example").await.unwrap();
    assert!(no.headers().get("access-control-allow-origin").is_none());
}
