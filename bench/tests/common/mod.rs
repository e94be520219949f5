//! A real Herald node in this process, and the bench's command line against it.

#![allow(dead_code)]

use std::net::SocketAddr;

use clap::Parser;
use herald_bench::config::{Cli, Command, RampArgs, RunArgs};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// At least 32 bytes, as every node requires.
pub const JWT_SECRET: &str = "bench-test-jwt-secret-of-32-bytes-or-more";
pub const API_KEY: &str = "k";
pub const ADMIN_TOKEN: &str = "t";

/// A node serving on free ports until dropped.
pub struct Node {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    _dir: Option<tempfile::TempDir>,
    _shutdown: oneshot::Sender<()>,
}

/// Nodes of one cluster: a shared SQLite file and a Redis key prefix of their own,
/// deleted when dropped.
pub struct Cluster {
    pub nodes: Vec<Node>,
    prefix: String,
    _dir: tempfile::TempDir,
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

impl Cluster {
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("herald-bench-test-{}-{}", std::process::id(), rand_suffix());
        let db = format!("sqlite://{}/h.db", dir.path().display());
        let mut nodes = Vec::new();
        for i in 0..n {
            let data = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            nodes.push(
                Node::start_with(
                    None,
                    vec![
                        "--database-url".into(),
                        db.clone(),
                        "--data-dir".into(),
                        data.display().to_string(),
                        "--redis-url".into(),
                        REDIS_URL.into(),
                        "--redis-prefix".into(),
                        prefix.clone(),
                        "--node-id".into(),
                        format!("bench-test-{i}"),
                    ],
                )
                .await,
            );
        }
        Self {
            nodes,
            prefix,
            _dir: dir,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(REDIS_URL)
            && let Ok(mut c) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut c)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut c);
            }
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000
}

impl Node {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        Self::start_with(
            Some(dir),
            vec![
                "--database-url".to_owned(),
                format!("sqlite://{d}/h.db"),
                "--data-dir".into(),
                d.clone(),
            ],
        )
        .await
    }

    /// A node with the bench's secrets and `store` (database and data-dir flags).
    async fn start_with(dir: Option<tempfile::TempDir>, store: Vec<String>) -> Self {
        let mut argv = store;
        argv.extend(
            [
                "--jwt-secret",
                JWT_SECRET,
                "--api-key",
                API_KEY,
                "--admin-token",
                ADMIN_TOKEN,
                "--shutdown-drain-s",
                "0",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let cfg = herald_server::Config::from_args(argv).expect("config parses");
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = public.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let herald = herald_server::Herald::start(cfg)
            .await
            .expect("node starts");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            herald
                .serve(public, admin, async {
                    let _ = rx.await;
                })
                .await
        });
        Self {
            public: addr,
            admin: admin_addr,
            _dir: dir,
            _shutdown: tx,
        }
    }

    /// `POST /admin/drain` with this window.
    pub async fn drain(&self, window_s: u64) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/admin/drain", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "window_s": window_s }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "drain refused");
    }

    /// `POST /admin/undrain`: serving again.
    pub async fn undrain(&self) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/admin/undrain", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "undrain refused");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    /// `herald-bench <cmd> --node <this> --jwt-secret s --api-key k --quiet <extra>`.
    fn argv(&self, cmd: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["herald-bench", cmd, "--node", &self.url()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(
            ["--jwt-secret", JWT_SECRET, "--api-key", API_KEY, "--quiet"]
                .iter()
                .map(|s| s.to_string()),
        );
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    pub fn run_args(&self, extra: &[&str]) -> RunArgs {
        match Cli::try_parse_from(self.argv("run", extra))
            .unwrap()
            .command
        {
            Command::Run(a) => a,
            _ => unreachable!(),
        }
    }

    pub fn ramp_args(&self, extra: &[&str]) -> RampArgs {
        match Cli::try_parse_from(self.argv("ramp", extra))
            .unwrap()
            .command
        {
            Command::Ramp(a) => a,
            _ => unreachable!(),
        }
    }
}
