//! The test harness: start a real node, dial it, read its frames.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_server::{Config, Herald};
use herald_shared::{Notification, ServerFrame};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub const API_KEY: &str = "test-api-key";
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// At least 32 bytes, as every node requires (PROTOCOL.md 8).
pub const JWT_SECRET: &str = "test-jwt-secret-at-least-32-bytes-long";
/// How long a test waits for any one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn name(db: Db)` once per store, as `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Postgres).await
                }
            )*
        }
    };
}

/// A PostgreSQL database of its own, dropped with the value.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

pub const PG_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres";

impl PgDb {
    pub async fn create() -> Self {
        let name = format!("herald_test_{:016x}", rand_u64());
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (see .ci/run)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = format!("postgres://root@127.0.0.1:5432/{name}");
        Self { name, url }
    }

    /// Runs one statement as the admin user (e.g. to cut the node off).
    pub async fn admin_exec(sql: String) {
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(admin) = sqlx::PgPool::connect(PG_ADMIN_URL).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    admin.close().await;
                }
            })
        })
        .join();
    }
}

/// A loopback address nothing listens on: bound to port 0, then released, for a
/// process or server that must be told its port before it binds it.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The port of [`free_addr`].
pub fn free_port() -> u16 {
    free_addr().port()
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Where a node keeps its state for one test.
pub struct Storage {
    pub url: String,
    pub pg: Option<PgDb>,
    pub dir: tempfile::TempDir,
}

impl Storage {
    pub async fn new(db: Db) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match db {
            Db::Sqlite => Self {
                url: format!("sqlite://{}/herald.db", dir.path().display()),
                pg: None,
                dir,
            },
            Db::Postgres => {
                let pg = PgDb::create().await;
                Self {
                    url: pg.url.clone(),
                    pg: Some(pg),
                    dir,
                }
            }
        }
    }
}

/// A running node.
pub struct TestServer {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub herald: Herald,
    pub storage: Arc<Storage>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), herald_server::ServerError>>>,
}

/// Flags every test node gets; `extra` may override (a flag it gives replaces the
/// default's, which clap would refuse to see twice) or add.
pub fn config(storage: &Storage, extra: &[&str]) -> Config {
    let data_dir = storage.dir.path().display().to_string();
    let defaults = [
        ("--database-url", storage.url.as_str()),
        ("--data-dir", data_dir.as_str()),
        ("--jwt-secret", JWT_SECRET),
        ("--api-key", API_KEY),
        ("--admin-token", ADMIN_TOKEN),
        ("--shutdown-drain-s", "1"),
        ("--db-pool", "4"),
    ];
    let mut args: Vec<String> = Vec::new();
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Config::from_args(args).expect("test config parses")
}

/// Waits for a `herald-server` process started by a test: `Ok` once `/readyz` at
/// `public` answers 200, `Err` with its exit status if it stops first (`exited`
/// polls the child: std's and tokio's `try_wait` alike). Fails the test after
/// `limit`, with `detail()` (its log, say) in the message.
pub async fn ready_or_exited(
    public: SocketAddr,
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
    limit: Duration,
    detail: impl Fn() -> String,
) -> Result<(), std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = exited() {
            return Err(status);
        }
        let ready = api()
            .get(format!("http://{public}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return Ok(());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither ready nor stopped in {limit:?}:\n{}",
            detail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn start(db: Db) -> TestServer {
    start_with(db, &[]).await
}

pub async fn start_with(db: Db, extra: &[&str]) -> TestServer {
    let storage = Arc::new(Storage::new(db).await);
    start_on(storage, extra).await
}

/// Starts a node on an existing storage (a second node, or a restart).
pub async fn start_on(storage: Arc<Storage>, extra: &[&str]) -> TestServer {
    let mut cfg = config(&storage, extra);
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    // Where it listens, as the binary's config would say.
    (cfg.listen, cfg.admin_listen) = (public_addr, admin_addr);
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
    TestServer {
        public: public_addr,
        admin: admin_addr,
        herald,
        storage,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestServer {
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws/notifications/{}", self.public, query)
    }

    /// A client token for `user` with `groups`, valid `ttl_s` seconds.
    pub fn token(&self, user: &str, groups: &[&str], ttl_s: u64) -> String {
        self.herald
            .token(user, groups, Duration::from_secs(ttl_s))
            .unwrap()
    }

    /// The node's id (as in `welcome`, status and the registry).
    pub fn node_id(&self) -> &str {
        self.herald.node_id()
    }

    /// Connects as `user` and reads `welcome` and `initial_state`.
    pub async fn connect(&self, user: &str) -> (Client, Vec<Notification>) {
        self.connect_with(user, &[], None).await
    }

    /// Connects with extra groups and an optional `after`; returns after `initial_state`.
    pub async fn connect_with(
        &self,
        user: &str,
        groups: &[&str],
        after: Option<i64>,
    ) -> (Client, Vec<Notification>) {
        let token = self.token(user, groups, 3600);
        let q = match after {
            Some(a) => format!("?token={token}&after={a}"),
            None => format!("?token={token}"),
        };
        let mut c = Client::connect(&self.ws_url(&q))
            .await
            .expect("upgrade accepted");
        let welcome = c.frame().await;
        assert!(
            matches!(welcome, ServerFrame::Welcome { .. }),
            "{welcome:?}"
        );
        match c.frame().await {
            ServerFrame::InitialState { notifications, .. } => (c, notifications),
            other => panic!("expected initial_state, got {other:?}"),
        }
    }

    /// POSTs one notification through the API; returns it as stored.
    pub async fn notify(&self, user: &str, message: Value) -> Notification {
        let r = reqwest::Client::new()
            .post(self.http("/api/v1/notifications"))
            .bearer_auth(API_KEY)
            .json(&json!({"user": user, "message": message}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), herald_server::ServerError> {
        self.shutdown.take().unwrap().send(()).ok();
        tokio::time::timeout(Duration::from_secs(30), self.handle.take().unwrap())
            .await
            .expect("server stops within 30 s")
            .expect("server task did not panic")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// An authenticated HTTP client for the backend API.
pub fn api() -> reqwest::Client {
    reqwest::Client::new()
}

/// A WebSocket client that reads frames as the contract's types.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16, String),
    /// The stream ended without a close frame.
    NoFrame,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = connect_async(url).await?;
        Ok(Self { ws })
    }

    /// Connects with a request the caller built (headers).
    pub async fn connect_request(
        req: impl IntoClientRequest + Unpin,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Self { ws })
    }

    /// The next text frame, parsed; panics on timeout, close or garbage.
    pub async fn frame(&mut self) -> ServerFrame {
        self.frame_as().await
    }

    /// The next text frame parsed as `T` (`Value` keeps the wire bytes' content
    /// exactly, where `ServerFrame` compacts payloads).
    pub async fn frame_as<T: serde::de::DeserializeOwned>(&mut self) -> T {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("a frame within the timeout")
                .expect("stream open")
                .expect("no transport error");
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("unparseable frame {t}: {e}"));
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame as JSON, read straight from the wire.
    pub async fn raw(&mut self) -> Value {
        self.frame_as().await
    }

    /// Nothing arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_owned())).await.unwrap();
    }

    /// Reads until the connection closes; returns the close frame it got, skipping
    /// (and returning) the text frames before it.
    pub async fn closed(&mut self) -> (Closed, Vec<ServerFrame>) {
        let mut before = Vec::new();
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("close within the timeout");
            match next {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (
                        Closed::Code(u16::from(f.code), f.reason.to_string()),
                        before,
                    );
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return (Closed::NoFrame, before);
                }
                Some(Ok(Message::Text(t))) => {
                    before.push(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The close code, ignoring frames before it.
    pub async fn close_code(&mut self) -> u16 {
        match self.closed().await.0 {
            Closed::Code(c, _) => c,
            Closed::NoFrame => panic!("connection ended without a close frame"),
        }
    }

    /// Reads frames until `n` notification frames arrived; returns their notifications.
    pub async fn notifications(&mut self, n: usize) -> Vec<Notification> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.frame().await {
                ServerFrame::Notification { notification } => out.push(notification),
                other => panic!("expected a notification, got {other:?}"),
            }
        }
        out
    }
}

/// The HTTP status and body of a refused upgrade.
pub async fn refused(
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match connect_async(req).await {
        Ok(_) => panic!("upgrade unexpectedly accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.body().clone().unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in headers.iter() {
                h.insert(
                    reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
                    reqwest::header::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                );
            }
            (status, json, h)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

impl Closed {
    pub fn clone_code(&self) -> Option<u16> {
        match self {
            Closed::Code(c, _) => Some(*c),
            Closed::NoFrame => None,
        }
    }
}

/// GETs `url` with a bearer token and returns the JSON body (any status).
pub async fn get_json(url: String, token: &str) -> Value {
    api()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

impl TestServer {
    /// The node's `/metrics` exposition, as text.
    pub async fn metrics_text(&self) -> String {
        api()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the sample `name` (with exactly `labels`) in `/metrics`; 0 when
    /// the node has not exported it yet (a labelled counter appears on first use).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics_text().await, name, labels)
    }

    /// GET on the admin listener with the admin token.
    pub async fn admin_get(&self, path: &str) -> Value {
        get_json(self.admin_url(path), ADMIN_TOKEN).await
    }

    /// GET on the backend API with the API key.
    pub async fn api_get(&self, path: &str) -> Value {
        get_json(self.http(path), API_KEY).await
    }

    /// POSTs one batch of `{"user", "message"}` items; expects 201 and returns the
    /// stored ids in order.
    pub async fn notify_batch(&self, items: Vec<Value>) -> Vec<i64> {
        let r = api()
            .post(self.http("/api/v1/notifications/batch"))
            .bearer_auth(API_KEY)
            .json(&json!({ "notifications": items }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        let v: Value = r.json().await.unwrap();
        v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_i64().unwrap())
            .collect()
    }

    /// Publishes an event to `group`; expects 202.
    pub async fn event(&self, group: &str, payload: Value) {
        let r = api()
            .post(self.http(&format!("/api/v1/groups/{group}/events")))
            .bearer_auth(API_KEY)
            .json(&json!({ "payload": payload }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
    }
}

/// POSTs one notification to `url` with the API key `key`: the status, and the body
/// (`null` if it is not JSON). For tests that expect refusals as well as 201s.
pub async fn post_notification(url: String, key: &str, user: &str, message: Value) -> (u16, Value) {
    let r = api()
        .post(url)
        .bearer_auth(key)
        .json(&json!({"user": user, "message": message}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The value of the sample `name` with exactly `labels` in a Prometheus text
/// exposition; 0 when there is no such sample.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses");
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.len() == labels.len())
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is not a plain value: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}
