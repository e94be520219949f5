//! `ops/nginx/herald.conf` in front of a real cluster: a real `nginx` process (never
//! skipped: a missing binary fails the test) balancing three nodes, WebSocket
//! upgrades and the backend API through it, and a drain whose 1012 reconnects go back
//! through nginx onto the other nodes without losing or repeating a notification.
//!
//! The test renders the template as the README says: the `BEGIN/END HERALD_UPSTREAMS`
//! block gets one `server` line per node (keeping the template's parameters), and the
//! `# HERALD_LISTEN` line listens on a free loopback port. It wraps the result in a
//! minimal `nginx.conf` whose paths all live in a temporary directory.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_shared::ServerFrame;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::cluster::{Cluster, until_ready};
use crate::common::{self, ADMIN_TOKEN, API_KEY, Client, Db, FRAME_TIMEOUT, TestServer};

const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/nginx/herald.conf");

/// The `nginx` binary: on PATH, or Debian's /usr/sbin/nginx.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nginx"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is required by the nginx:: tests and was not found on PATH or at \
                 /usr/sbin/nginx: install it (apt-get install -y nginx); do not start it \
                 as a service, the tests run their own"
            )
        })
}

/// `ops/nginx/herald.conf` with its upstreams and listen address replaced.
fn render_template(
    template: &str,
    upstreams: &[SocketAddr],
    listen: SocketAddr,
    access_log: &Path,
) -> String {
    let mut out = Vec::new();
    let (mut in_block, mut seen_block, mut seen_listen) = (false, false, false);
    let mut seen_log = false;
    let mut params: Option<String> = None;
    for line in template.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("# BEGIN HERALD_UPSTREAMS") {
            in_block = true;
            seen_block = true;
            out.push(line.to_owned());
        } else if trimmed.starts_with("# END HERALD_UPSTREAMS") {
            let params = params
                .take()
                .expect("a server line inside HERALD_UPSTREAMS");
            for a in upstreams {
                out.push(format!("    server {a}{params};"));
            }
            in_block = false;
            out.push(line.to_owned());
        } else if in_block {
            // `server <addr> <params>;`: keep the first line's parameters.
            if let Some(rest) = trimmed.strip_prefix("server ")
                && params.is_none()
            {
                let rest = rest.trim_end().trim_end_matches(';');
                let p = rest.split_once(' ').map_or("", |(_, p)| p);
                params = Some(if p.is_empty() {
                    String::new()
                } else {
                    format!(" {p}")
                });
            }
        } else if line.contains("# HERALD_ACCESS_LOG") {
            // The path only: the format is the file's own, as in production.
            let format = trimmed
                .strip_prefix("access_log ")
                .and_then(|r| r.split_whitespace().nth(1))
                .filter(|_| !seen_log)
                .unwrap_or_else(|| {
                    panic!("{TEMPLATE}: `# HERALD_ACCESS_LOG` must mark exactly one `access_log <path> <format>;` line: {line}")
                });
            seen_log = true;
            out.push(format!(
                "    access_log {} {format}  # HERALD_ACCESS_LOG",
                access_log.display()
            ));
        } else if line.contains("# HERALD_LISTEN") {
            assert!(
                trimmed.starts_with("listen ") && !seen_listen,
                "{TEMPLATE}: `# HERALD_LISTEN` must mark exactly one `listen` line: {line}"
            );
            seen_listen = true;
            out.push(format!("    listen {listen};  # HERALD_LISTEN"));
        } else {
            out.push(line.to_owned());
        }
    }
    assert!(
        seen_block && !in_block,
        "{TEMPLATE}: no BEGIN/END HERALD_UPSTREAMS block"
    );
    assert!(seen_listen, "{TEMPLATE}: no `# HERALD_LISTEN` line");
    assert!(seen_log, "{TEMPLATE}: no `# HERALD_ACCESS_LOG` line");
    out.join("\n") + "\n"
}

/// A foreground nginx serving the rendered template; stopped when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(nodes: &[TestServer]) -> Self {
        let bin = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        // Worker processes drop root for `nobody`: they must reach their temp paths.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let addr = common::free_addr();
        let template =
            std::fs::read_to_string(TEMPLATE).unwrap_or_else(|e| panic!("read {TEMPLATE}: {e}"));
        let upstreams: Vec<SocketAddr> = nodes.iter().map(|n| n.public).collect();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("herald.conf"),
            render_template(&template, &upstreams, addr, &dir.path().join("access.log")),
        )
        .unwrap();
        let main = format!(
            "worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   include {d}/herald.conf;\n\
             }}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let out = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut nginx = Self { child, addr, dir };
        nginx.wait_up().await;
        nginx
    }

    /// Waits until nginx answers `/healthz` (proxied to a node) with 200.
    async fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited with {status}:\n{}", self.logs());
            }
            if let Ok(r) = common::api().get(self.http("/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not answer /healthz within 10 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws/notifications/{}", self.addr, query)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- stderr\n{}--- error.log\n{}",
            self.read("stderr.log"),
            self.read("error.log")
        )
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them, still
        // holding the port. Fall back to SIGKILL if it does not stop in time.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects through nginx as `user`; returns the client, the node that took it, and
/// the `initial_state` notifications' ids.
async fn connect(ng: &Nginx, token: &str, after: Option<i64>) -> (Client, String, Vec<i64>) {
    let q = match after {
        Some(a) => format!("?token={token}&after={a}"),
        None => format!("?token={token}"),
    };
    let mut c = Client::connect(&ng.ws_url(&q))
        .await
        .unwrap_or_else(|e| panic!("upgrade through nginx refused: {e}\n{}", ng.logs()));
    let node = match c.frame().await {
        ServerFrame::Welcome { node, .. } => node,
        other => panic!("expected welcome, got {other:?}"),
    };
    let initial = match c.frame().await {
        ServerFrame::InitialState { notifications, .. } => {
            notifications.iter().map(|n| n.id).collect()
        }
        other => panic!("expected initial_state, got {other:?}"),
    };
    (c, node, initial)
}

/// POSTs a notification through nginx; returns its id.
async fn publish(http: &reqwest::Client, ng: &Nginx, user: &str, message: Value) -> i64 {
    let r = http
        .post(ng.http("/api/v1/notifications"))
        .bearer_auth(API_KEY)
        .json(&json!({"user": user, "message": message}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// Publishes one notification to each of users `u0..u<users>` through nginx,
/// recording the ids per user.
async fn publish_round(
    http: &reqwest::Client,
    ng: &Nginx,
    users: usize,
    round: usize,
    sent: &mut HashMap<String, Vec<i64>>,
) {
    for i in 0..users {
        let user = format!("u{i}");
        let id = publish(http, ng, &user, json!({"round": round})).await;
        sent.entry(user).or_default().push(id);
    }
}

async fn status(s: &TestServer) -> Value {
    s.admin_get("/admin/status").await
}

/// Six clients connecting through nginx are spread two per node by `least_conn`,
/// notifications published through nginx reach exactly their users, and the admin
/// surface is not reachable through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_spreads_clients_and_carries_notifications() {
    let c = Cluster::start(3).await;
    until_ready(&c.nodes).await;
    let ng = Nginx::start(&c.nodes).await;

    let mut clients = Vec::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        let user = format!("u{i}");
        let token = c.nodes[0].token(&user, &[], 3600);
        let (cl, node, initial) = connect(&ng, &token, None).await;
        assert!(initial.is_empty());
        *per_node.entry(node).or_default() += 1;
        clients.push((user, cl));
    }
    let want: BTreeMap<String, usize> = ["node0", "node1", "node2"]
        .into_iter()
        .map(|n| (n.to_owned(), 2))
        .collect();
    assert_eq!(per_node, want, "least_conn spreads 6 connections 2/2/2");
    for s in &c.nodes {
        assert_eq!(status(s).await["connections"], 2, "{}", s.public);
    }

    let http = reqwest::Client::new();
    let mut sent: HashMap<String, Vec<i64>> = HashMap::new();
    for round in 0..3 {
        for (user, _) in &clients {
            let id = publish(&http, &ng, user, json!({"round": round})).await;
            sent.entry(user.clone()).or_default().push(id);
        }
    }
    for (user, cl) in &mut clients {
        let got: Vec<i64> = cl.notifications(3).await.iter().map(|n| n.id).collect();
        assert_eq!(&got, &sent[user.as_str()], "{user}");
    }
    for (_, cl) in &mut clients {
        cl.silent_for(Duration::from_millis(200)).await;
    }

    // Reads and health through nginx.
    let r = http
        .get(ng.http("/api/v1/users/u3/notifications?limit=10"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed: Vec<i64> = r.json::<Value>().await.unwrap()["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .rev()
        .collect();
    assert_eq!(listed, sent["u3"]);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http.get(ng.http(path)).send().await.unwrap().status(), 200);
    }
    // The admin listener's routes are not behind nginx, token or not.
    for path in ["/admin/status", "/metrics", "/admin/tuning"] {
        let r = http
            .get(ng.http(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} must not be exposed");
    }
    // A refused upgrade passes through with the node's own status and body.
    let (code, body, _) = common::refused(&ng.ws_url("?token=garbage"), &[]).await;
    assert_eq!(code, 401);
    assert!(body["error"].is_string(), "{body}");
}

/// What one client saw over the test.
#[derive(Debug)]
struct Seen {
    user: String,
    /// Notification ids from live frames and `missed`, in arrival order.
    ids: Vec<i64>,
    /// The node of each connection, in order.
    nodes: Vec<String>,
    /// Close codes the client got (and reconnected after).
    closes: Vec<u16>,
}

/// Follows one user's notifications until `want` arrived, reconnecting through nginx
/// with `after` (the highest id seen, per the resume rule) whenever the node closes
/// with 1012; then checks nothing more arrives.
async fn follow(
    ng_ws: String,
    token: String,
    user: String,
    mut cl: Client,
    node: String,
    want: usize,
) -> Seen {
    let mut seen = Seen {
        user,
        ids: Vec::new(),
        nodes: vec![node],
        closes: Vec::new(),
    };
    let mut last = 0i64;
    while seen.ids.len() < want {
        let msg = tokio::time::timeout(FRAME_TIMEOUT, cl.ws.next())
            .await
            .unwrap_or_else(|_| panic!("{}: nothing for 10 s: {seen:?}", seen.user))
            .unwrap_or_else(|| panic!("{}: stream ended without close: {seen:?}", seen.user))
            .unwrap_or_else(|e| panic!("{}: transport error {e}: {seen:?}", seen.user));
        match msg {
            Message::Text(t) => match serde_json::from_str(t.as_str()).unwrap() {
                ServerFrame::Notification { notification } => {
                    last = last.max(notification.id);
                    seen.ids.push(notification.id);
                }
                other => panic!("{}: unexpected {other:?}", seen.user),
            },
            Message::Close(f) => {
                let code = f.map_or(1005, |f| u16::from(f.code));
                assert_eq!(code, 1012, "{}: close {code}", seen.user);
                seen.closes.push(code);
                // Jitter, as the contract asks of clients after a 1012.
                tokio::time::sleep(Duration::from_millis(common::rand_u64() % 200)).await;
                let q = format!("?token={token}&after={last}");
                cl = Client::connect(&format!("{ng_ws}{q}"))
                    .await
                    .unwrap_or_else(|e| panic!("{}: reconnect refused: {e}", seen.user));
                match cl.frame().await {
                    ServerFrame::Welcome { node, .. } => seen.nodes.push(node),
                    other => panic!("expected welcome, got {other:?}"),
                }
                let initial = match cl.frame().await {
                    ServerFrame::InitialState { notifications, .. } => notifications,
                    other => panic!("expected initial_state, got {other:?}"),
                };
                match cl.frame().await {
                    ServerFrame::Missed {
                        notifications,
                        truncated,
                    } => {
                        assert!(!truncated);
                        // Whatever the snapshot holds past `after` is in `missed` too.
                        for n in initial.iter().filter(|n| n.id > last) {
                            assert!(notifications.iter().any(|m| m.id == n.id), "{n:?}");
                        }
                        for n in notifications {
                            assert!(n.id > last, "missed {} is not after {last}", n.id);
                            last = n.id;
                            seen.ids.push(n.id);
                        }
                    }
                    other => panic!("expected missed, got {other:?}"),
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{}: unexpected {other:?}", seen.user),
        }
    }
    cl.silent_for(Duration::from_millis(300)).await;
    seen
}

/// Draining a node behind nginx: its clients get 1012 and reconnect through nginx
/// with `after`, nginx retries the drained node's 503 on another node, and every
/// notification published before, during and after the drain reaches every client
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_behind_nginx_moves_clients_and_loses_nothing() {
    const USERS: usize = 6;
    const BEFORE: usize = 2;
    const DURING: usize = 15;
    const AFTER: usize = 2;
    const ROUNDS: usize = BEFORE + DURING + AFTER;

    let c = Cluster::start(3).await;
    until_ready(&c.nodes).await;
    let ng = Nginx::start(&c.nodes).await;
    let drained = &c.nodes[0];
    let drained_id = drained.node_id().to_owned();

    let mut tasks = Vec::new();
    let mut on_drained = 0;
    for i in 0..USERS {
        let user = format!("u{i}");
        let token = drained.token(&user, &[], 3600);
        let (cl, node, initial) = connect(&ng, &token, None).await;
        assert!(initial.is_empty());
        on_drained += usize::from(node == drained_id);
        tasks.push(tokio::spawn(follow(
            ng.ws_url(""),
            token,
            user,
            cl,
            node,
            ROUNDS,
        )));
    }
    assert_eq!(on_drained, 2, "least_conn gave the drained node its 2 of 6");

    let http = reqwest::Client::new();
    let mut sent: HashMap<String, Vec<i64>> = HashMap::new();
    for r in 0..BEFORE {
        publish_round(&http, &ng, USERS, r, &mut sent).await;
    }

    let refused_before = drained
        .metric("herald_upgrades_refused_total", &[("code", "503")])
        .await;
    let r = common::api()
        .post(drained.admin_url("/admin/drain"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"window_s": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // The node itself says it is not ready; through nginx the cluster still is.
    let direct = common::api()
        .get(drained.http("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 503);
    assert_eq!(
        http.get(ng.http("/readyz")).send().await.unwrap().status(),
        200
    );

    // Publishing goes on through the whole window and past it (through nginx, which
    // may hand some of these POSTs to the draining node: its API keeps working).
    for r in BEFORE..BEFORE + DURING {
        publish_round(&http, &ng, USERS, r, &mut sent).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A fresh client while the node is draining or drained: least_conn sees that
    // node empty and tries it first, gets 503, and nginx hands the upgrade on.
    let probe = drained.token("probe", &[], 3600);
    let (_probe, probe_node, _) = connect(&ng, &probe, None).await;
    assert_ne!(probe_node, drained_id);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(drained).await;
        if st["state"] == "drained" {
            assert_eq!(st["connections"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "never drained: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in BEFORE + DURING..ROUNDS {
        publish_round(&http, &ng, USERS, r, &mut sent).await;
    }

    let mut moved = 0;
    for t in tasks {
        let seen = t.await.expect("client task");
        assert_eq!(
            &seen.ids,
            &sent[seen.user.as_str()],
            "{}: every notification once, in order",
            seen.user
        );
        if seen.nodes[0] == drained_id {
            moved += 1;
            assert_eq!(seen.closes, vec![1012], "{seen:?}");
            assert_eq!(seen.nodes.len(), 2, "{seen:?}");
            assert_ne!(seen.nodes[1], drained_id, "reconnected to the drained node");
        } else {
            assert!(seen.closes.is_empty(), "{seen:?}");
        }
    }
    assert_eq!(moved, 2);

    let refused = drained
        .metric("herald_upgrades_refused_total", &[("code", "503")])
        .await
        - refused_before;
    assert!(
        refused >= 1.0,
        "nginx never tried the drained node for an upgrade"
    );
    // And nginx's own log shows it: a 503 from the drained node, then a 101 from
    // another, within one request (upgrades are logged when they end).
    drop(_probe);
    let drained_addr = drained.public.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = ng.read("access.log");
        let retried = log.lines().any(|l| {
            l.contains("/ws/notifications/")
                && l.contains(&format!("upstream=[{drained_addr}, "))
                && l.contains("upstream_status=[503, 101]")
        });
        if retried {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no upgrade retried past the drained node ({drained_addr}) in {}:\n{log}",
            ng.path().join("access.log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The access log that real nginx writes with `ops/nginx/herald.conf` holds no
/// client token: not for a WebSocket, an SSE stream, or a refused upgrade, whose
/// tokens all ride in the query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_records_no_token() {
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let ng = Nginx::start(&c.nodes).await;
    let token = c.nodes[0].token("logged", &[], 3600);
    let (ws, _, _) = connect(&ng, &token, None).await;
    drop(ws);
    let sse = common::api()
        .get(ng.http(&format!("/sse/notifications/?token={token}&after=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    drop(sse);
    let (code, _, _) = common::refused(&ng.ws_url("?token=refused-token-value"), &[]).await;
    assert_eq!(code, 401);
    // A request is logged when it ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = ng.read("access.log");
        let ws_lines = log
            .lines()
            .filter(|l| l.contains("/ws/notifications/"))
            .count();
        if ws_lines >= 2 && log.contains("/sse/notifications/") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "requests not logged yet:\n{log}\n{}",
            ng.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for secret in [token.as_str(), "token=", "refused-token-value", "after=0"] {
        assert!(
            !log.contains(secret),
            "{secret:?} in the access log:\n{log}"
        );
    }
    assert!(
        log.contains("\"GET /ws/notifications/ HTTP/1.1\" 101"),
        "{log}"
    );
}

/// A valid token for `user` of the most bytes the node reads (8192), padded with a
/// claim the node ignores.
fn largest_token(user: &str) -> String {
    let sign = |pad: usize| {
        let claims = json!({"sub": user, "exp": 4_000_000_000u64, "pad": "x".repeat(pad)});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(common::JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    // Base64 makes 4 bytes of 3: each padding byte adds about 4/3 of a byte.
    (5_000..7_000)
        .rev()
        .map(sign)
        .find(|t| t.len() <= 8192)
        .filter(|t| t.len() > 8188)
        .expect("a token of 8189 to 8192 bytes")
}

/// nginx's error log writes the request line of a request it could not proxy, query
/// string and all, and no setting removes it: with a node down, a client whose token
/// rides in the URL (`?token=`) leaves it in the log. A client that offers it as the
/// WebSocket subprotocol (`herald, bearer.<jwt>`, which nginx passes to the node and
/// whose `herald` answer it passes back) leaves the same error line without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_log_holds_no_subprotocol_token() {
    let node = common::start(Db::Sqlite).await;
    let ng = Nginx::start(std::slice::from_ref(&node)).await;
    let in_header = node.token("in-header", &[], 3600);
    let in_url = node.token("in-url", &[], 3600);
    let offer = format!("herald, bearer.{in_header}");

    let mut req = ng.ws_url("").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", offer.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("upgrade through nginx refused: {e}\n{}", ng.logs()));
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"herald"[..])
    );
    let mut c = Client { ws };
    match c.frame().await {
        ServerFrame::Welcome { user, .. } => assert_eq!(user, "in-header"),
        other => panic!("expected welcome, got {other:?}"),
    }
    drop(c);
    // The largest token the node reads fits in nginx's header buffers.
    let big = largest_token("big");
    let mut req = ng.ws_url("").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("herald, bearer.{big}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a {}-byte token through nginx: {e}\n{}",
                big.len(),
                ng.logs()
            )
        });
    let mut c = Client { ws };
    assert!(matches!(c.frame().await, ServerFrame::Welcome { .. }));
    drop(c);

    node.stop().await.expect("the node stops");
    let (code, _, _) = common::refused(&ng.ws_url(""), &[("sec-websocket-protocol", &offer)]).await;
    assert_eq!(code, 502, "{}", ng.logs());
    let (code, _, _) = common::refused(&ng.ws_url(&format!("?token={in_url}")), &[]).await;
    assert_eq!(code, 502, "{}", ng.logs());

    // nginx writes the error line as it answers, but the file may lag the answer.
    let subprotocol_line = "request: \"GET /ws/notifications/ HTTP/1.1\"";
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = ng.read("error.log");
        if log.contains(subprotocol_line) && log.contains(&in_url) {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no error line for both failed upgrades:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !log.contains(&in_header),
        "the subprotocol's token is in the error log:\n{log}"
    );
}

#[test]
fn template_renders_every_node_with_its_parameters() {
    let template = std::fs::read_to_string(TEMPLATE).unwrap();
    let a: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:4002".parse().unwrap();
    let l: SocketAddr = "127.0.0.1:4999".parse().unwrap();
    let out = render_template(&template, &[a, b], l, Path::new("/tmp/x/access.log"));
    assert!(out.contains("    server 127.0.0.1:4001 max_fails=3 fail_timeout=10s;\n"));
    assert!(out.contains("    server 127.0.0.1:4002 max_fails=3 fail_timeout=10s;\n"));
    assert!(!out.contains("10.0.0.1"));
    assert!(out.contains("listen 127.0.0.1:4999;"));
    assert!(!out.contains("listen 80;"));
    assert!(out.contains("access_log /tmp/x/access.log herald_public;"));
}
