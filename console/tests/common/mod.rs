//! The test harness: real Herald nodes in-process (as in server/tests/it/common.rs),
//! WebSocket clients to give them connections and deliveries, and helpers that
//! turn a node's real answers into console state.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use herald_console::app::App;
use herald_console::client::AdminClient;
use herald_console::msg::Msg;
use herald_console::poller::fetch_sample;
use herald_server::{Config, Herald};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub mod fleet;

pub const API_KEY: &str = "k";
pub const ADMIN_TOKEN: &str = "t";
pub const JWT_SECRET: &str = "console-test-jwt-secret-of-32-bytes-or-more";

/// A running node with its own temporary store and sysctl root.
pub struct TestNode {
    pub id: String,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub herald: Herald,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), herald_server::ServerError>>,
}

/// Starts node `id`. `somaxconn` is what its (fake) sysctl root reports; with
/// `lenient`, its tuning profile asks only for `somaxconn >= 100`.
pub async fn start_node(id: &str, somaxconn: u32, lenient: bool, extra: &[&str]) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sys");
    std::fs::create_dir_all(root.join("net/core")).unwrap();
    std::fs::write(root.join("net/core/somaxconn"), format!("{somaxconn}\n")).unwrap();
    let profile = dir.path().join("profile.conf");
    std::fs::write(
        &profile,
        "profile = test-lenient\nnet.core.somaxconn >= 100\n",
    )
    .unwrap();
    let d = dir.path().display().to_string();
    let mut args: Vec<String> = [
        "--database-url",
        &format!("sqlite://{d}/h.db"),
        "--data-dir",
        &d,
        "--jwt-secret",
        JWT_SECRET,
        "--api-key",
        API_KEY,
        "--admin-token",
        ADMIN_TOKEN,
        "--node-id",
        id,
        "--sysctl-root",
        &root.display().to_string(),
        "--shutdown-drain-s",
        "1",
        "--db-pool",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if lenient {
        args.push("--tuning-profile".into());
        args.push(profile.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    serve_node(id, dir, args).await
}

/// Starts node `id` as a single node does with no secrets configured: it generates
/// them into `<cwd>/herald-data/secrets.json`, where the console looks when it is
/// started in `cwd` with no flags.
pub async fn start_local_node(id: &str, cwd: &std::path::Path) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let data = cwd.join("herald-data");
    let args = [
        "--data-dir",
        &data.display().to_string(),
        "--node-id",
        id,
        "--shutdown-drain-s",
        "1",
        "--db-pool",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    serve_node(id, dir, args).await
}

/// Starts a node with `args` (and loopback listeners on free ports).
async fn serve_node(id: &str, dir: tempfile::TempDir, args: Vec<String>) -> TestNode {
    let mut cfg = Config::from_args(args).expect("test config parses");
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pa, aa) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    (cfg.listen, cfg.admin_listen) = (pa, aa);
    let herald = Herald::start(cfg).await.expect("node starts");
    let (tx, rx) = oneshot::channel();
    let serving = herald.clone();
    let handle = tokio::spawn(async move {
        serving
            .serve(public, admin, async {
                let _ = rx.await;
            })
            .await
    });
    TestNode {
        id: id.into(),
        public: pa,
        admin: aa,
        herald,
        dir,
        shutdown: Some(tx),
        handle,
    }
}

impl TestNode {
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// A connected WebSocket client for `user` (upgrade accepted).
    pub async fn connect(&self, user: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        let token = self
            .herald
            .token(user, &[], Duration::from_secs(3600))
            .unwrap();
        let url = format!("ws://{}/ws/notifications/?token={token}", self.public);
        let (ws, _) = connect_async(url).await.expect("upgrade accepted");
        ws
    }

    /// Posts one notification to `user` through the backend API.
    pub async fn notify(&self, user: &str) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/api/v1/notifications", self.public))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({"user": user, "message": {"text": "hi"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    pub async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).ok();
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.handle).await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Reads frames until `n` text frames arrived (welcome, initial state, notifications).
pub async fn read_frames(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>, n: usize) {
    let mut got = 0;
    while got < n {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if m.is_text() {
            got += 1;
        }
    }
}

pub fn client() -> AdminClient {
    AdminClient::new(Some(ADMIN_TOKEN.into()), Duration::from_millis(900))
}

/// Polls `admin` once, as the poller does, and feeds the result to `app`.
pub async fn poll_into(app: &mut App, admin: &str) {
    let msg = match fetch_sample(&client(), admin).await {
        Ok(s) => Msg::Sample(admin.to_owned(), Box::new(s)),
        Err(e) => Msg::Down(admin.to_owned(), e),
    };
    app.update(msg);
}

/// Fetches `admin`'s tuning report into `app`.
pub async fn tuning_into(app: &mut App, admin: &str) {
    let r = client().tuning(admin).await.map_err(|e| e.to_string());
    app.update(Msg::Tuning(admin.to_owned(), r));
}

/// Draws `app` on a `w`×`h` TestBackend and returns the screen as text lines.
pub fn screen(app: &App, w: u16, h: u16) -> String {
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
    t.draw(|f| herald_console::view::draw(f, app)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// An admin URL nothing listens on.
pub async fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}

/// Runs `tmux <args>`; returns its standard output.
pub fn tmux(args: &[&str]) -> String {
    let o = std::process::Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is installed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts a detached tmux session `width` × `height` running `sh -c "<cmd>; sleep 30"`
/// (the pane stays to be read after the command ends).
pub fn tmux_session(session: &str, width: u16, height: u16, cmd: &str) {
    tmux(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        &width.to_string(),
        "-y",
        &height.to_string(),
        "sh",
        "-c",
        &format!("{cmd}; sleep 30"),
    ]);
}

/// Captures the pane of tmux `session` until `pred` holds (or `limit` passed);
/// returns the last capture.
pub async fn until_pane(session: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let pane = tmux(&["capture-pane", "-p", "-t", session]);
        if pred(&pane) || start.elapsed() > limit {
            return pane;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
