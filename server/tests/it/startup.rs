//! Contract §8: configuration, defaults, first start with nothing configured, the
//! `token` command, SIGTERM, concurrent migrations, and refusals at start-up. Most
//! tests run the real `herald-server` binary.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_server::secrets::Secrets;
use herald_server::{Config, Herald, ServerError};
use herald_shared::{ErrorCode, ServerFrame, UserId};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::{
    self, ADMIN_TOKEN, API_KEY, Client, Db, JWT_SECRET, PgDb, Storage, post_notification,
};

const BIN: &str = env!("CARGO_BIN_EXE_herald-server");
const TEN_MIN: Duration = Duration::from_secs(600);

/// Environment variables of §8 (and the data dir) a test must not inherit.
const OWN_VARS: &[&str] = &[
    "HERALD_LISTEN",
    "HERALD_ADMIN_LISTEN",
    "HERALD_NODE_ID",
    "DATABASE_URL",
    "REDIS_URL",
    "HERALD_JWT_SECRET",
    "HERALD_API_KEY",
    "HERALD_ADMIN_TOKEN",
];

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// The binary, run in `dir`, with no `HERALD_*`/`DATABASE_URL`/`REDIS_URL` inherited.
fn bin(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info,sqlx=warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") || k == "DATABASE_URL" || k == "REDIS_URL" {
            c.env_remove(k);
        }
    }
    c
}

/// [`bin`] with its stdout on a terminal: run by `script` (util-linux), which gives
/// it a pseudo-terminal and copies what it prints to our pipe. `script` passes
/// SIGTERM on to it and exits with its status.
fn bin_on_tty(dir: &Path) -> Command {
    let c = bin(dir);
    let std = c.as_std();
    let mut tty = Command::new("script");
    tty.args(["-qfec", BIN, "/dev/null"]);
    tty.current_dir(dir)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in std.get_envs() {
        match v {
            Some(v) => tty.env(k, v),
            None => tty.env_remove(k),
        };
    }
    tty
}

/// Whether `text` shows any of `secrets`.
fn shows_any(text: &str, secrets: &[&str]) -> Option<String> {
    secrets
        .iter()
        .find(|s| text.contains(**s))
        .map(|s| s.to_string())
}

/// A running binary with its stdout and stderr collected as they come.
struct Proc {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

fn collect(r: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let mut b = b.lock().unwrap();
            b.push_str(&l);
            b.push('\n');
        }
    });
    buf
}

impl Proc {
    /// Starts `cmd` with its listeners on fresh loopback ports (via the environment).
    fn spawn(mut cmd: Command) -> Self {
        let (public, admin) = (common::free_addr(), common::free_addr());
        cmd.env("HERALD_LISTEN", public.to_string())
            .env("HERALD_ADMIN_LISTEN", admin.to_string());
        let mut child = cmd.spawn().expect("herald-server starts");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Self {
            child,
            public,
            admin,
            out,
            err,
        }
    }

    fn out(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    fn ws(&self, token: &str) -> String {
        format!("ws://{}/ws/notifications/?token={token}", self.public)
    }

    /// Waits until the node answers `/readyz` with 200; panics with its output if it
    /// exits or does not within `within`.
    async fn ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "herald-server exited with {status} before serving\nstdout:\n{}\nstderr:\n{}",
                    self.out(),
                    self.err()
                );
            }
            if status_of(self.http("/readyz")).await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "herald-server not ready within {within:?}\nstdout:\n{}\nstderr:\n{}",
                self.out(),
                self.err()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM.
    fn term(&self) {
        let pid = self.child.id().expect("still running");
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit; returns its status.
    async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(st) => st.unwrap(),
            Err(_) => panic!(
                "herald-server did not exit within {within:?}\nstderr:\n{}",
                self.err()
            ),
        }
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

/// Polls `f` until it holds or `within` passes.
async fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every word of `text` that looks like a JWT (three base64url parts, `eyJ` header).
fn jwts(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .filter(|w| w.starts_with("eyJ") && w.split('.').count() == 3)
        .map(str::to_owned)
        .collect()
}

fn secrets(jwt: &str, api: &str, admin: &str) -> Secrets {
    Secrets {
        jwt_secret: jwt.into(),
        api_key: api.into(),
        admin_token: admin.into(),
    }
}

/// Connects with `token`, returns the client and its `welcome` (after `initial_state`).
async fn connect(url: &str) -> (Client, String, String, Vec<herald_shared::Notification>) {
    let mut c = Client::connect(url).await.expect("upgrade accepted");
    let (user, node) = match c.frame().await {
        ServerFrame::Welcome { user, node, .. } => (user, node),
        f => panic!("expected welcome, got {f:?}"),
    };
    let initial = match c.frame().await {
        ServerFrame::InitialState { notifications, .. } => notifications,
        f => panic!("expected initial_state, got {f:?}"),
    };
    (c, user, node, initial)
}

/// A node built by the library, served on fresh loopback listeners.
struct Served {
    public: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ServerError>>,
}

async fn serve(herald: Herald) -> Served {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = public.local_addr().unwrap();
    let (stop, rx) = oneshot::channel();
    let handle = tokio::spawn(async move {
        herald
            .serve(public, admin, async {
                let _ = rx.await;
            })
            .await
    });
    Served {
        public: addr,
        stop,
        handle,
    }
}

impl Served {
    fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    async fn stop(self) {
        self.stop.send(()).ok();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("node stops within 30 s")
            .expect("node task did not panic")
            .expect("node stops cleanly");
    }
}

// ---------------------------------------------------------------------------------
// Defaults and environment
// ---------------------------------------------------------------------------------

/// With nothing given, `Config::from_args` has the contract's defaults: listeners on
/// 127.0.0.1:8000 and :9091, SQLite in ./herald-data, no Redis, no secrets, and the
/// documented limits.
#[test]
fn defaults_match_the_contract() {
    for v in OWN_VARS {
        assert!(
            std::env::var_os(v).is_none(),
            "{v} is set in the test environment; defaults cannot be checked"
        );
    }
    let c = Config::from_args(Vec::<String>::new()).expect("no flags parse");
    assert_eq!(c.listen, "127.0.0.1:8000".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.admin_listen,
        "127.0.0.1:9091".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.node_id, None);
    assert_eq!(c.database_url, None);
    let db = c.database_url();
    assert!(
        db.starts_with("sqlite://") && db.contains("herald-data/"),
        "default store {db:?} is not a SQLite file in ./herald-data/"
    );
    assert_eq!(c.redis_url, None);
    assert!(!c.cluster_mode());
    assert_eq!(c.jwt_secret, None);
    assert_eq!(c.api_key, None);
    assert_eq!(c.admin_token, None);
    assert_eq!(c.data_dir, Path::new("./herald-data"));
    assert_eq!(c.queue_capacity, 1500);
    assert_eq!(c.max_frame_bytes, 64 * 1024);
    assert_eq!(c.max_message_bytes, 16 * 1024);
    assert_eq!(c.client_rate, 20);
    assert_eq!(c.client_burst, 40);
    assert_eq!(c.heartbeat_s, 25);
    assert!(c.allowed_origins.is_empty(), "no origin list by default");
}

/// With no node id given, a node's id is the host name plus a short random suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_node_id_is_the_host_name_and_a_random_suffix() {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.data_dir = dir.path().into();
        assert_eq!(config.node_id, None);
        let herald = Herald::start(config).await.expect("node starts");
        ids.push(herald.node_id().to_owned());
        herald.shutdown().await;
    }
    for id in &ids {
        assert!(
            id.starts_with(&host) && id.len() > host.len(),
            "node id {id:?} is not {host:?} plus a suffix"
        );
    }
    assert!(
        ids.iter().any(|i| i != &ids[0]),
        "suffix is not random: {ids:?}"
    );
}

/// The binary honours the contract's environment variables: HERALD_LISTEN,
/// HERALD_ADMIN_LISTEN, HERALD_NODE_ID, DATABASE_URL and the three secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("custom.db");
    let mut cmd = bin(dir.path());
    cmd.env("HERALD_NODE_ID", "env-node-1")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("HERALD_JWT_SECRET", "env-jwt-secret-of-at-least-32-bytes")
        .env("HERALD_API_KEY", "env-api")
        .env("HERALD_ADMIN_TOKEN", "env-admin");
    let mut p = Proc::spawn(cmd);
    p.ready(Duration::from_secs(30)).await; // HERALD_LISTEN

    // HERALD_ADMIN_LISTEN + HERALD_ADMIN_TOKEN + HERALD_NODE_ID.
    let r = common::api()
        .get(format!("http://{}/admin/status", p.admin))
        .bearer_auth("env-admin")
        .send()
        .await
        .expect("admin listener on HERALD_ADMIN_LISTEN");
    assert_eq!(r.status(), 200);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["node"], "env-node-1", "{status}");
    let r = common::api()
        .get(format!("http://{}/admin/status", p.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "another admin token is refused");

    // HERALD_JWT_SECRET signs client tokens; another secret's tokens are refused.
    let token = secrets("env-jwt-secret-of-at-least-32-bytes", "-", "-").client_token(
        &herald_server::Config::defaults(),
        &UserId::parse("e1").unwrap(),
        &[],
        TEN_MIN,
    );
    let (mut c, user, node, _) = connect(&p.ws(&token)).await;
    assert_eq!((user.as_str(), node.as_str()), ("e1", "env-node-1"));
    let foreign = secrets(JWT_SECRET, "-", "-").client_token(
        &herald_server::Config::defaults(),
        &UserId::parse("e1").unwrap(),
        &[],
        TEN_MIN,
    );
    let (status, body, _) = common::refused(&p.ws(&foreign), &[]).await;
    assert_eq!(status, 401, "{body}");

    // HERALD_API_KEY guards the API; the notification lands in DATABASE_URL's file.
    let (status, n) = post_notification(
        p.http("/api/v1/notifications"),
        "env-api",
        "e1",
        json!("hi"),
    )
    .await;
    assert_eq!(status, 201, "{n}");
    match c.frame().await {
        ServerFrame::Notification { notification } => assert_eq!(json!(notification.id), n["id"]),
        f => panic!("expected the notification, got {f:?}"),
    }
    let (status, _) =
        post_notification(p.http("/api/v1/notifications"), API_KEY, "e1", json!("hi")).await;
    assert_eq!(status, 401, "another API key is refused");
    assert!(db.exists(), "DATABASE_URL's SQLite file was created");
    assert!(
        !dir.path().join("herald-data").join("herald.db").exists(),
        "the default SQLite file is not used when DATABASE_URL is set"
    );
    assert!(
        !dir.path().join("herald-data").join("secrets.json").exists(),
        "no secrets are generated when all three are given"
    );

    // Secrets the operator gave are never printed or logged.
    let given = [
        "env-api",
        "env-admin",
        "env-jwt-secret-of-at-least-32-bytes",
    ];
    assert_eq!(shows_any(&(p.out() + &p.err()), &given), None);
    p.term();
    assert!(p.exit(Duration::from_secs(30)).await.success());
}

// ---------------------------------------------------------------------------------
// First start with nothing configured
// ---------------------------------------------------------------------------------

/// In an empty directory with nothing configured the binary starts, creates
/// herald-data/secrets.json and herald-data/herald.db, prints the API key, a client
/// token and a curl example that work; a second start reuses the same secrets (old
/// tokens still valid, data kept), and `herald-server token` there signs with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_start_generates_prints_and_reuses_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // On a terminal: the banner is for a person.
    let mut p = Proc::spawn(bin_on_tty(dir.path()));
    p.ready(Duration::from_secs(30)).await;
    let data = dir.path().join("herald-data");
    let secrets_path = data.join("secrets.json");
    assert!(secrets_path.is_file(), "herald-data/secrets.json created");
    assert!(
        data.join("herald.db").is_file(),
        "herald-data/herald.db created"
    );
    let stored: Value = serde_json::from_slice(&std::fs::read(&secrets_path).unwrap()).unwrap();
    let api_key = stored["api_key"]
        .as_str()
        .expect("api_key in secrets.json")
        .to_owned();
    let admin_token = stored["admin_token"]
        .as_str()
        .expect("admin_token in secrets.json")
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secrets_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "secrets.json readable by others: {mode:o}");
    }

    // The banner: API key, a client token, a curl example using the key.
    let out = p.out();
    assert!(out.contains(&api_key), "API key not printed:\n{out}");
    let tokens = jwts(&out);
    assert!(!tokens.is_empty(), "no client token printed:\n{out}");
    let curl = out
        .find("curl")
        .unwrap_or_else(|| panic!("no curl example:\n{out}"));
    let example = &out[curl..];
    assert!(
        example.contains(&api_key) && example.contains("/api/v1/notifications"),
        "curl example does not post with the key:\n{out}"
    );
    assert!(
        example.contains(&p.public.to_string()),
        "curl example does not target this node's listener {}:\n{out}",
        p.public
    );

    // The live page's URL, with the printed token in its fragment, serves the page.
    let page = format!("http://{}/demo/#token={}", p.public, tokens[0]);
    assert!(out.contains(&page), "no live page URL {page}:\n{out}");
    let r = common::api().get(&page).send().await.unwrap();
    assert_eq!(r.status(), 200, "the live page is served");
    let html = r.text().await.unwrap();
    assert!(
        html.to_lowercase().contains("herald"),
        "not Herald's page:\n{html}"
    );

    // The printed token connects; the printed key publishes to that user.
    let token = tokens[0].clone();
    let (mut c, user, node, _) = connect(&p.ws(&token)).await;
    let (status, n) = post_notification(
        p.http("/api/v1/notifications"),
        &api_key,
        &user,
        json!({"text":"hello"}),
    )
    .await;
    assert_eq!(status, 201, "{n}");
    match c.frame().await {
        ServerFrame::Notification { notification } => assert_eq!(json!(notification.id), n["id"]),
        f => panic!("expected the notification, got {f:?}"),
    }
    // The default node id is the host name plus a suffix, also in the admin status.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        node.starts_with(&host) && node.len() > host.len(),
        "node id {node:?}"
    );
    let r = common::api()
        .get(format!("http://{}/admin/status", p.admin))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "generated admin token works");
    let st: Value = r.json().await.unwrap();
    assert_eq!(st["node"], json!(node));
    drop(c);
    p.term();
    assert!(
        p.exit(Duration::from_secs(30)).await.success(),
        "first run exits 0"
    );

    // Second start: same secrets, file untouched, old token still valid, data kept.
    let before = std::fs::read(&secrets_path).unwrap();
    let mut p2 = Proc::spawn(bin(dir.path()));
    p2.ready(Duration::from_secs(30)).await;
    assert_eq!(
        std::fs::read(&secrets_path).unwrap(),
        before,
        "secrets.json rewritten"
    );
    // Not generated by this start (and not on a terminal either): nothing shown.
    let jwt_secret = stored["jwt_secret"].as_str().unwrap().to_owned();
    let secrets = [api_key.as_str(), admin_token.as_str(), jwt_secret.as_str()];
    assert_eq!(
        shows_any(&p2.out(), &secrets),
        None,
        "a secret printed again"
    );
    assert_eq!(shows_any(&p2.err(), &secrets), None, "a secret logged");
    let (_c, user2, _, initial) = connect(&p2.ws(&token)).await;
    assert_eq!(user2, user);
    assert!(
        initial.iter().any(|x| json!(x.id) == n["id"]),
        "the first run's notification is still there"
    );

    // `token` in the same directory signs with the generated secret.
    let out = bin(dir.path())
        .args(["token", "--user", "t7", "--groups", "org_5"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t7 = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (mut c7, u7, _, _) = connect(&p2.ws(&t7)).await;
    assert_eq!(u7, "t7");
    c7.send_json(json!({"type":"subscribe","group":"org_5"}))
        .await;
    assert_eq!(
        c7.frame().await,
        ServerFrame::Subscribed {
            group: "org_5".into()
        }
    );

    p2.term();
    assert!(
        p2.exit(Duration::from_secs(30)).await.success(),
        "second run exits 0"
    );
}

/// A first start whose stdout is a pipe (a service manager, CI) generates the
/// secrets but prints none of them: they are in the file, mode 0600, and the log
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secrets_are_not_printed_to_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(bin(dir.path()));
    p.ready(Duration::from_secs(30)).await;
    let stored: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("herald-data").join("secrets.json")).unwrap(),
    )
    .unwrap();
    let secrets: Vec<&str> = ["api_key", "admin_token", "jwt_secret"]
        .iter()
        .map(|k| stored[k].as_str().unwrap())
        .collect();
    p.term();
    assert!(p.exit(Duration::from_secs(30)).await.success());
    wait_until(Duration::from_secs(5), || p.err().contains("stopped")).await;
    assert_eq!(shows_any(&p.out(), &secrets), None, "printed:\n{}", p.out());
    assert_eq!(shows_any(&p.err(), &secrets), None, "logged:\n{}", p.err());
    assert!(
        jwts(&p.out()).is_empty(),
        "a client token printed:\n{}",
        p.out()
    );
    assert!(
        p.err()
            .contains("not printed, since stdout is not a terminal"),
        "{}",
        p.err()
    );
}

/// A secrets file that group or others can read stops the node at start-up, with
/// the chmod that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secrets_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("herald-data");
    std::fs::create_dir_all(&data).unwrap();
    let path = data.join("secrets.json");
    let json = json!({"jwt_secret": JWT_SECRET, "api_key": "k", "admin_token": "t"});
    std::fs::write(&path, json.to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut p = Proc::spawn(bin(dir.path()));
    let status = p.exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "started with a 0644 secrets file");
    wait_until(Duration::from_secs(5), || p.err().contains("chmod")).await;
    let err = p.err();
    assert!(
        err.contains("is readable by group or others (mode 644)")
            && err.contains("chmod 600 ./herald-data/secrets.json"),
        "{err}"
    );
    assert_eq!(shows_any(&(p.out() + &err), &[JWT_SECRET]), None);
}

// ---------------------------------------------------------------------------------
// `herald-server token`
// ---------------------------------------------------------------------------------

/// `herald-server token --user 42 --groups org_5,broadcast --ttl 60` prints one JWT,
/// signed with the configured secret, that a node accepts: user 42, allowed to
/// subscribe to org_5 and broadcast (not org_6), expiring in 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_prints_an_accepted_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path())
        .env("HERALD_JWT_SECRET", JWT_SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .args([
            "token",
            "--user",
            "42",
            "--groups",
            "org_5,broadcast",
            "--ttl",
            "60",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim();
    assert_eq!(
        jwts(token),
        vec![token.to_owned()],
        "stdout is one JWT: {stdout:?}"
    );

    let s = common::start(Db::Sqlite).await;
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
        groups: Vec<String>,
    }
    let id = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .expect("signed with the configured secret")
    .claims;
    assert_eq!(id.sub, "42");
    assert_eq!(id.groups, ["org_5", "broadcast"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = id.exp as i64 - now as i64;
    assert!((50..=61).contains(&left), "--ttl 60 gave {left} s");

    let (mut c, user, _, _) = connect(&s.ws_url(&format!("?token={token}"))).await;
    assert_eq!(user, "42");
    for g in ["org_5", "broadcast"] {
        c.send_json(json!({"type":"subscribe","group":g})).await;
        assert_eq!(c.frame().await, ServerFrame::Subscribed { group: g.into() });
    }
    c.send_json(json!({"type":"subscribe","group":"org_6"}))
        .await;
    match c.frame().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Forbidden),
        f => panic!("expected forbidden for org_6, got {f:?}"),
    }
    let r = common::api()
        .post(s.http("/api/v1/groups/org_5/events"))
        .bearer_auth(API_KEY)
        .json(&json!({"payload": {"k": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    match c.frame().await {
        ServerFrame::Event { group, payload } => {
            assert_eq!(group, "org_5");
            assert_eq!(payload.get(), r#"{"k":1}"#);
        }
        f => panic!("expected the org_5 event, got {f:?}"),
    }

    // Signed with the configured secret: a different one makes a token the node refuses.
    let out = bin(dir.path())
        .env(
            "HERALD_JWT_SECRET",
            "some-other-secret-of-at-least-32-bytes",
        )
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(["token", "--user", "42"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let other = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, body, _) = common::refused(&s.ws_url(&format!("?token={other}")), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid token signature")),
        "token ignores the configured secret"
    );
}

// ---------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------

/// SIGTERM drains: connected clients are closed with 1012, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_1012_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.env("HERALD_JWT_SECRET", JWT_SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HERALD_SHUTDOWN_DRAIN_S", "1");
    let mut p = Proc::spawn(cmd);
    p.ready(Duration::from_secs(30)).await;
    let secrets = secrets(JWT_SECRET, API_KEY, ADMIN_TOKEN);
    let mut clients = Vec::new();
    for u in ["s1", "s2", "s3"] {
        let t = secrets.client_token(
            &herald_server::Config::defaults(),
            &UserId::parse(u).unwrap(),
            &[],
            TEN_MIN,
        );
        clients.push(connect(&p.ws(&t)).await.0);
    }

    p.term();
    for c in &mut clients {
        assert_eq!(
            c.close_code().await,
            1012,
            "closed as draining (service restart)"
        );
    }
    let st = p.exit(Duration::from_secs(30)).await;
    assert!(st.success(), "exit status {st}\nstderr:\n{}", p.err());
    assert_eq!(st.code(), Some(0));
}

// ---------------------------------------------------------------------------------
// Two nodes at once against one PostgreSQL
// ---------------------------------------------------------------------------------

/// Two nodes built at the same moment against one fresh PostgreSQL database (both
/// running migrations) both come up and both serve the same data; tried on three
/// fresh databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_starting_at_once_on_one_postgres_both_serve() {
    for round in 0..3 {
        let storage = Arc::new(Storage::new(Db::Postgres).await);
        let ca = common::config(&storage, &["--node-id", "node-a"]);
        let cb = common::config(&storage, &["--node-id", "node-b"]);
        let (a, b) = tokio::join!(
            tokio::spawn(Herald::start(ca)),
            tokio::spawn(Herald::start(cb))
        );
        let a = a
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: node a failed: {e}"));
        let b = b
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: node b failed: {e}"));
        let (sa, sb) = (serve(a).await, serve(b).await);

        let (st, na) = post_notification(
            sa.http("/api/v1/notifications"),
            API_KEY,
            "both",
            json!("via a"),
        )
        .await;
        assert_eq!(st, 201, "round {round}: node a: {na}");
        let (st, nb) = post_notification(
            sb.http("/api/v1/notifications"),
            API_KEY,
            "both",
            json!("via b"),
        )
        .await;
        assert_eq!(st, 201, "round {round}: node b: {nb}");
        for s in [&sa, &sb] {
            assert_eq!(status_of(s.http("/readyz")).await, Some(200));
            let r = common::api()
                .get(s.http("/api/v1/users/both/notifications"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let list: Value = r.json().await.unwrap();
            let got: Vec<&Value> = list["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| &n["id"])
                .collect();
            assert_eq!(
                got,
                vec![&nb["id"], &na["id"]],
                "round {round}: one shared store"
            );
        }
        sa.stop().await;
        sb.stop().await;
    }
}

// ---------------------------------------------------------------------------------
// Refusals and retries at start-up
// ---------------------------------------------------------------------------------

/// `run` refuses an admin listener on a non-loopback address without an admin token
/// (a configuration error, nothing served), and serves it when a token is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_admin_needs_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let base = |with_token: bool| {
        let mut args = vec![
            "--database-url".to_owned(),
            format!("sqlite://{}/herald.db", dir.path().display()),
            "--data-dir".to_owned(),
            dir.path().display().to_string(),
            "--jwt-secret".to_owned(),
            JWT_SECRET.to_owned(),
            "--api-key".to_owned(),
            API_KEY.to_owned(),
            "--shutdown-drain-s".to_owned(),
            "1".to_owned(),
        ];
        if with_token {
            args.extend(["--admin-token".to_owned(), ADMIN_TOKEN.to_owned()]);
        }
        Config::from_args(args).unwrap()
    };

    let cfg = base(false);
    assert_eq!(cfg.admin_token, None);
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_addr = public.local_addr().unwrap();
    let admin = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        herald_server::run(cfg, public, admin, std::future::pending()),
    )
    .await
    .expect("run returns at once instead of serving");
    match res {
        Err(ServerError::Config(msg)) => assert!(
            msg.to_lowercase().contains("admin"),
            "the error should name the admin token: {msg}"
        ),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(
        status_of(format!("http://{public_addr}/healthz")).await,
        None,
        "nothing is served after the refusal"
    );

    // With a token the same non-loopback admin listener serves.
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_addr = public.local_addr().unwrap();
    let admin = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let admin_port = admin.local_addr().unwrap().port();
    let (tx, rx) = oneshot::channel::<()>();
    let run = tokio::spawn(herald_server::run(base(true), public, admin, async {
        let _ = rx.await;
    }));
    let up = wait_until_async(Duration::from_secs(30), || {
        status_of(format!("http://{public_addr}/healthz"))
    })
    .await;
    assert!(up, "node with an admin token did not serve");
    let r = common::api()
        .get(format!("http://127.0.0.1:{admin_port}/admin/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("stops")
        .unwrap()
        .expect("run ends cleanly");
}

async fn wait_until_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<u16>>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await == Some(200) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With REDIS_URL set (cluster mode) a missing secret is not generated: the binary
/// refuses to start, naming the missing secret, and writes no secrets file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url_without_secrets_refuses_naming_the_secret() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "HERALD_JWT_SECRET"),
        (&[("HERALD_JWT_SECRET", "j")], "HERALD_API_KEY"),
        (
            &[("HERALD_JWT_SECRET", "j"), ("HERALD_API_KEY", "a")],
            "HERALD_ADMIN_TOKEN",
        ),
    ];
    for (given, missing) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = bin(dir.path());
        cmd.env("REDIS_URL", "redis://127.0.0.1:1/")
            .env("HERALD_LISTEN", common::free_addr().to_string())
            .env("HERALD_ADMIN_LISTEN", common::free_addr().to_string());
        for (k, v) in given {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .unwrap_or_else(|_| {
                panic!("with {given:?}: still running after 30 s instead of refusing")
            })
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "with {given:?}: started anyway:\n{text}"
        );
        assert!(
            text.contains(missing),
            "with {given:?}: message does not name {missing}:\n{text}"
        );
        assert!(
            !dir.path().join("herald-data").join("secrets.json").exists(),
            "with {given:?}: secrets were generated in cluster mode"
        );
    }
}

/// A node whose PostgreSQL is unreachable at start-up (nothing listening) retries
/// with backoff and says why in its log instead of exiting, then serves once the
/// database can be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_store_at_start_is_retried() {
    let pg = PgDb::create().await;
    let port = common::free_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.env(
        "DATABASE_URL",
        format!("postgres://root@127.0.0.1:{port}/{}", pg.name),
    )
    .env("HERALD_JWT_SECRET", JWT_SECRET)
    .env("HERALD_API_KEY", API_KEY)
    .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
    .env("HERALD_SHUTDOWN_DRAIN_S", "1");
    let mut p = Proc::spawn(cmd);

    // It says why, more than once, and keeps running.
    let err = p.err.clone();
    let retried = wait_until(Duration::from_secs(20), || {
        err.lock().unwrap().to_lowercase().matches("retr").count() >= 2
    })
    .await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited instead of retrying:\n{}",
        p.err()
    );
    assert!(retried, "no repeated retry message:\n{}", p.err());
    let log = p.err().to_lowercase();
    assert!(
        log.contains("refused") || log.contains("unreachable") || log.contains("connect"),
        "the log does not say why:\n{log}"
    );

    // Now make the database reachable on that port: a TCP relay to the real server.
    let relay = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let relay_task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = relay.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    p.ready(Duration::from_secs(30)).await;
    let (status, n) =
        post_notification(p.http("/api/v1/notifications"), API_KEY, "r", json!(1)).await;
    assert_eq!(status, 201, "{n}");
    p.term();
    assert!(p.exit(Duration::from_secs(30)).await.success());
    relay_task.abort();
}

/// A node whose PostgreSQL database refuses connections at start-up (ALLOW_CONNECTIONS
/// false) retries instead of exiting, and serves once connections are allowed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_database_at_start_is_retried() {
    let pg = PgDb::create().await;
    PgDb::admin_exec(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        pg.name
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.env("DATABASE_URL", &pg.url)
        .env("HERALD_JWT_SECRET", JWT_SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("HERALD_SHUTDOWN_DRAIN_S", "1");
    let mut p = Proc::spawn(cmd);

    let err = p.err.clone();
    let retried = wait_until(Duration::from_secs(20), || {
        err.lock().unwrap().to_lowercase().matches("retr").count() >= 2
    })
    .await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited instead of retrying:\n{}",
        p.err()
    );
    assert!(retried, "no repeated retry message:\n{}", p.err());

    PgDb::admin_exec(format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", pg.name)).await;
    p.ready(Duration::from_secs(30)).await;
    let (status, n) =
        post_notification(p.http("/api/v1/notifications"), API_KEY, "r", json!(1)).await;
    assert_eq!(status, 201, "{n}");
    p.term();
    assert!(p.exit(Duration::from_secs(30)).await.success());
}

/// A listener that accepts every connection and never answers, like a paused server
/// or a service on the wrong port; it holds the sockets until the task ends.
async fn silent_listener() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// Starts the binary with `var` set to `url` (a service that fails); within 15 s it
/// must have logged at least twice, naming `service` and saying `why`, that it
/// retries, and still be running.
async fn a_failing_service_is_named(var: &str, url: String, service: &str, why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.env(var, url)
        .env("HERALD_JWT_SECRET", JWT_SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN);
    let mut p = Proc::spawn(cmd);
    let err = p.err.clone();
    let named = wait_until(Duration::from_secs(15), || {
        let log = err.lock().unwrap();
        log.lines()
            .filter(|l| l.contains(service) && l.contains(why) && l.contains("retr"))
            .count()
            >= 2
    })
    .await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited instead of retrying:\n{}",
        p.err()
    );
    assert!(
        named,
        "no repeated line naming {service} and saying {why:?}:\n{}",
        p.err()
    );
}

/// A Redis that accepts the connection and never answers: start-up says so, naming
/// Redis, every few seconds, instead of hanging in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_at_start_is_named_and_retried() {
    let (addr, silent) = silent_listener().await;
    a_failing_service_is_named("REDIS_URL", format!("redis://{addr}"), "Redis", "within").await;
    silent.abort();
}

/// The same for a PostgreSQL that accepts and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_postgres_at_start_is_named_and_retried() {
    let (addr, silent) = silent_listener().await;
    a_failing_service_is_named(
        "DATABASE_URL",
        format!("postgres://root@{addr}/x"),
        "PostgreSQL",
        "within",
    )
    .await;
    silent.abort();
}

/// A Redis port where nothing listens: the line says the connection was refused,
/// at once, not a timeout after the connection manager's own silent retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_redis_at_start_is_named_with_the_reason() {
    let addr = common::free_addr();
    a_failing_service_is_named("REDIS_URL", format!("redis://{addr}"), "Redis", "refused").await;
}

/// A heartbeat past an hour would overflow the clock when the first ping is due: the
/// binary refuses it at start-up, naming the setting and its range, and so does an
/// embedded node given it in code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_past_an_hour_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(dir.path());
    cmd.env("HERALD_HEARTBEAT_S", "18446744073709551615")
        .env("HERALD_LISTEN", common::free_addr().to_string())
        .env("HERALD_ADMIN_LISTEN", common::free_addr().to_string());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("refused, not running")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway:\n{text}");
    assert!(
        text.contains("heartbeat") && text.contains("3600"),
        "{text}"
    );

    let storage = common::Storage::new(common::Db::Sqlite).await;
    let mut cfg = common::config(&storage, &[]);
    cfg.heartbeat_s = u64::MAX;
    match Herald::start(cfg).await {
        Err(e) => assert!(e.to_string().contains("HERALD_HEARTBEAT_S"), "{e}"),
        Ok(_) => panic!("an embedded node started with a heartbeat of u64::MAX s"),
    }
}
