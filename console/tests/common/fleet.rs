//! A fleet of real `herald-server` processes in cluster mode: one fresh PostgreSQL
//! database, one Redis prefix, each node in `<tmp>/<node id>/` with `start.sh` (its
//! environment, starts the binary in the background, writes `pid`), `restart.sh`
//! (SIGTERM by pidfile, wait for the exit, start again, append the old pid to
//! `restarts`), `log` and `data/`. Used by the rollout and by the fleet at the size
//! of a million connections.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use herald_console::client::AdminClient;
use herald_console::discover;

use super::{ADMIN_TOKEN, API_KEY, JWT_SECRET};

pub const REDIS: &str = "redis://127.0.0.1:6379";
const PG_ADMIN: &str = "postgres://root@127.0.0.1:5432/postgres";

/// A random tag that names this test's database, Redis prefix and node ids.
pub fn tag() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:08x}",
        RandomState::new().hash_one(std::time::SystemTime::now()) as u32
    )
}

/// The workspace's `herald-server` binary (`target/debug`, or `$CARGO_TARGET_DIR`),
/// built first if it is not there.
pub fn server_bin() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
        Some(t) => ws.join(t),
        None => ws.join("target"),
    };
    let bin = target.join("debug/herald-server");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "herald-server", "--bin", "herald-server"])
            .current_dir(&ws)
            .status()
            .expect("cargo runs");
        assert!(st.success(), "cargo build -p herald-server failed");
    }
    assert!(bin.exists(), "no {}", bin.display());
    bin.canonicalize().unwrap()
}

fn psql(sql: &str) {
    let o = Command::new("psql")
        .args([PG_ADMIN, "-qAtc", sql])
        .output()
        .expect("psql is installed");
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A fresh PostgreSQL database, dropped (with its connections) at the end.
pub struct Database {
    pub name: String,
}

impl Database {
    pub fn create(tag: &str) -> Self {
        let name = format!("herald_console_{tag}");
        psql(&format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                PG_ADMIN,
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A port nothing listens on now (the node binds it; restarts bind it again).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node: its directory, ports and scripts.
pub struct NodeDir {
    pub id: String,
    pub dir: PathBuf,
    pub public: String,
    pub admin: String,
}

impl NodeDir {
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The pids `restart.sh` stopped, one line each.
    pub fn restarts(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("restarts"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// The log's last lines, after the line that says why the node stopped (an
    /// `Error:` from main, or a panic) when there is one: a backtrace alone would
    /// fill the tail.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        match lines
            .iter()
            .find(|l| l.starts_with("Error:") || l.contains("panicked at"))
        {
            Some(why) => format!("{why}\n...\n{tail}"),
            None => tail,
        }
    }
}

/// `n` processes; on drop each is stopped (SIGKILL by its pidfile) and the Redis
/// prefix's keys are deleted.
pub struct Fleet {
    pub nodes: Vec<NodeDir>,
    pub prefix: String,
    pub root: tempfile::TempDir,
}

impl Fleet {
    /// Starts `n` nodes on `db`, each with a pool of `pool` PostgreSQL connections.
    pub fn start(db: &Database, tag: &str, n: usize, pool: u32) -> Self {
        let bin = server_bin();
        let root = tempfile::tempdir().unwrap();
        let prefix = format!("fleet{tag}");
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = format!("n{tag}-{i:02}");
            let dir = root.path().join(&id);
            std::fs::create_dir_all(dir.join("data")).unwrap();
            let (public, admin) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            let start = format!(
                r#"#!/bin/sh
# Starts node {id} in the background with its environment; its pid goes to ./pid.
d="$(cd "$(dirname "$0")" && pwd)"
export HERALD_NODE_ID='{id}'
export HERALD_LISTEN='{public}'
export HERALD_ADMIN_LISTEN='{admin}'
export DATABASE_URL='{db}'
export REDIS_URL='{REDIS}'
export HERALD_REDIS_PREFIX='{prefix}'
export HERALD_CHANNELS_PREFIX='asgi{tag}'
export HERALD_JWT_SECRET='{JWT_SECRET}'
export HERALD_API_KEY='{API_KEY}'
export HERALD_ADMIN_TOKEN='{ADMIN_TOKEN}'
export HERALD_DATA_DIR="$d/data"
export HERALD_SHUTDOWN_DRAIN_S=1
export HERALD_DB_POOL={pool}
export RUST_LOG=info
'{bin}' >>"$d/log" 2>&1 </dev/null &
echo $! >"$d/pid"
"#,
                db = db.url(),
                bin = bin.display(),
            );
            // A stopped child of nobody may stay a zombie (PID 1 need not reap), so
            // "exited" is: no /proc entry, or state Z.
            let restart = r#"#!/bin/sh
# Stops this node (SIGTERM by pidfile: it drains and exits), waits for the exit,
# starts it again with the same environment.
set -e
d="$(cd "$(dirname "$0")" && pwd)"
pid=$(cat "$d/pid")
kill -TERM "$pid"
alive() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
i=0
while alive "$pid"; do
  i=$((i + 1))
  if [ "$i" -gt 200 ]; then echo "pid $pid did not exit in 20 s" >&2; exit 1; fi
  sleep 0.1
done
echo "$pid" >>"$d/restarts"
sh "$d/start.sh"
"#;
            std::fs::write(dir.join("start.sh"), start).unwrap();
            std::fs::write(dir.join("restart.sh"), restart).unwrap();
            let st = Command::new("sh")
                .arg(dir.join("start.sh"))
                .status()
                .unwrap();
            assert!(st.success());
            nodes.push(NodeDir {
                id,
                dir,
                public,
                admin,
            });
        }
        Self {
            nodes,
            prefix,
            root,
        }
    }

    /// The rollout's command: `{node}` is the node id, which is also its directory.
    pub fn exec(&self) -> String {
        format!("sh {}/{{node}}/restart.sh", self.root.path().display())
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} log:\n{}", n.id, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every node answers `/readyz` 200 and the registry lists all.
    pub async fn until_ready(&self, limit: Duration) {
        let client = AdminClient::new(None, Duration::from_millis(500));
        let start = Instant::now();
        for n in &self.nodes {
            while !client.ready(&n.public).await {
                assert!(
                    start.elapsed() < limit,
                    "{} never ready\n{}",
                    n.id,
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut con = discover::connect(REDIS, &herald_server::RedisTls::default())
            .await
            .unwrap();
        loop {
            let live = discover::registry(&mut con, &self.prefix).await.unwrap();
            if live.len() == self.nodes.len() {
                break;
            }
            assert!(start.elapsed() < limit, "registry has {live:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &self.nodes {
            if let Ok(pid) = std::fs::read_to_string(n.dir.join("pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
        let pattern = format!("{{{}}}:*", self.prefix);
        if let Ok(client) = redis::Client::open(REDIS)
            && let Ok(mut con) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut con)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut con);
            }
        }
    }
}
