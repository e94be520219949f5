//! A real Herald node in this process, and the bench's command line against it.

#![allow(dead_code)]

use std::net::SocketAddr;

use clap::Parser;
use herald_bench::config::{Cli, Command, RampArgs, RunArgs};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const JWT_SECRET: &str = "s";
pub const API_KEY: &str = "k";

/// A node serving on free ports until dropped.
pub struct Node {
    pub public: SocketAddr,
    _dir: tempfile::TempDir,
    _shutdown: oneshot::Sender<()>,
}

impl Node {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let cfg = herald_server::Config::from_args([
            "--database-url".to_owned(),
            format!("sqlite://{d}/h.db"),
            "--data-dir".into(),
            d.clone(),
            "--jwt-secret".into(),
            JWT_SECRET.into(),
            "--api-key".into(),
            API_KEY.into(),
            "--admin-token".into(),
            "t".into(),
            "--shutdown-drain-s".into(),
            "0".into(),
        ])
        .expect("config parses");
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = public.local_addr().unwrap();
        let node = herald_server::build(cfg).await.expect("node builds");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(herald_server::serve(node, public, admin, async {
            let _ = rx.await;
        }));
        Self {
            public: addr,
            _dir: dir,
            _shutdown: tx,
        }
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
