//! A node killed with SIGKILL (no clean-up at all): the cluster's view heals by
//! itself once the dead node's registry entry expires.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, ADMIN_TOKEN, API_KEY, Client, Db, JWT_SECRET, Storage};

const BIN: &str = env!("CARGO_BIN_EXE_herald-server");

/// A `herald-server` process in cluster mode, killed on drop.
struct Proc {
    child: Child,
    public: u16,
}

impl Proc {
    fn spawn(db_url: &str, prefix: &str, id: &str) -> Self {
        let (public, admin) = (common::free_port(), common::free_port());
        let child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HERALD_LISTEN", format!("127.0.0.1:{public}"))
            .env("HERALD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("HERALD_NODE_ID", id)
            .env("DATABASE_URL", db_url)
            .env("REDIS_URL", crate::cluster::REDIS)
            .env("HERALD_REDIS_PREFIX", prefix)
            .env("HERALD_JWT_SECRET", JWT_SECRET)
            .env("HERALD_API_KEY", API_KEY)
            .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("herald-server starts");
        Self { child, public }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public)
    }

    async fn until_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = common::api().get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn connect(&self, user: &str) -> Client {
        let claims = serde_json::json!({"sub": user, "exp": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 600});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap();
        let mut c = Client::connect(&format!(
            "ws://127.0.0.1:{}/ws/notifications/?token={token}",
            self.public
        ))
        .await
        .unwrap();
        c.frame().await;
        c.frame().await;
        c
    }

    async fn presence(&self, user: &str) -> u64 {
        let v: Value = common::api()
            .get(self.url(&format!("/api/v1/users/{user}/presence")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["connections"].as_u64().unwrap()
    }

    fn kill9(&mut self) {
        // Child::kill is SIGKILL: no drain, no deregistration, nothing cleaned up.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Presence and the registry forget a node killed with SIGKILL within the registry
/// TTL, while the survivor keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_leaves_presence_and_registry() {
    let storage = Storage::new(Db::Postgres).await;
    let prefix = format!("hkill{:08x}", common::rand_u64() as u32);
    let a = Proc::spawn(&storage.url, &prefix, "survivor");
    let mut b = Proc::spawn(&storage.url, &prefix, "victim");
    a.until_ready().await;
    b.until_ready().await;
    let _ca = a.connect("42").await;
    let _cb1 = b.connect("42").await;
    let _cb2 = b.connect("42").await;
    until("presence of 3", Duration::from_secs(10), async || {
        a.presence("42").await == 3
    })
    .await;

    b.kill9();
    // Registry TTL is 6 s; allow a few beats more.
    until("presence back to 1", Duration::from_secs(12), async || {
        a.presence("42").await == 1
    })
    .await;
    let client = redis::Client::open(crate::cluster::REDIS).unwrap();
    let mut con = redis::aio::ConnectionManager::new(client).await.unwrap();
    let ids: Vec<String> = herald_server::list_nodes(&mut con, &prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, vec!["survivor"]);
    assert_eq!(a.presence("42").await, 1, "and it stays right");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut con)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}
